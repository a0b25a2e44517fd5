"""GnssTwin through real pseudo-terminals, read with pyserial and parsed with pynmeagps."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import serial
from pynmeagps import NMEAMessage, NMEAParseError, NMEAReader

from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from sim import TrafficGenerator, VehicleModel, load_scenario
from sim.gnss_twin import GnssFaults, GnssTwin, Interval, parse_interval
from sim.pty_twin import TwinConfigError

TIMEOUT = 10.0
NOON = dt.datetime(2024, 5, 6, 12, 34, 56, 780_000, tzinfo=dt.UTC)
KNOT_KPH = 1.852


def _fixed_clock() -> dt.datetime:
    return NOON


def _open(path: str | Path) -> serial.Serial:
    return serial.Serial(str(path), baudrate=9600, timeout=TIMEOUT)


async def _lines(port: serial.Serial, count: int) -> list[bytes]:
    def read() -> list[bytes]:
        lines = []
        for _ in range(count):
            line = port.readline()
            assert line.endswith(b"\r\n"), f"no complete line within {TIMEOUT} s: {line!r}"
            lines.append(line)
        return lines

    return await asyncio.to_thread(read)


def _parse(line: bytes) -> NMEAMessage:
    msg = NMEAReader.parse(line)
    assert msg is not None, line
    return msg


def _speed_kph(msg: NMEAMessage) -> float:
    return float(msg.spd) * KNOT_KPH if msg.msgID == "RMC" else float(msg.sogk)


async def test_speed_agrees_with_the_can_traffic_of_the_same_vehicle() -> None:
    database: Any = (await asyncio.to_thread(load_dbc, SAMPLE_VEHICLE_DBC)).database
    model = VehicleModel(load_scenario("highway"), seed=3)
    generator = TrafficGenerator({"can0": [database]}, model, seed=3)
    # A slow rate: the twin's own epochs stay out of the way of the one this test sends.
    async with GnssTwin(generator.model, rate_hz=0.1, talker="GP", clock=_fixed_clock) as gnss:
        port = _open(gnss.path)
        try:
            first = [_parse(line) for line in await _lines(port, 4)]
            assert [m.identity for m in first] == ["GPRMC", "GPVTG", "GPGGA", "GPGSA"]
            assert _speed_kph(first[0]) == 0.0  # parked at the start

            frames = generator.frames_until(30.0)  # the generator steps the shared model
            gnss.send_epoch()
            rmc, vtg, gga, gsa = (_parse(line) for line in await _lines(port, 4))
        finally:
            port.close()
    values = model.values()
    speed_frame = database.get_message_by_name("ESC_VehicleSpeed")
    last = [f for f in frames if f.arbitration_id == speed_frame.frame_id][-1]
    can_speed = speed_frame.decode(bytes(last.data))["ESC_VehSpd"]
    assert values["speed_kph"] > 50
    for msg in (rmc, vtg):
        assert _speed_kph(msg) == pytest.approx(values["speed_kph"], abs=0.01)
        assert _speed_kph(msg) == pytest.approx(can_speed, abs=0.5)
    assert rmc.status == "A"
    assert rmc.lat == pytest.approx(values["latitude_deg"], abs=1e-6)
    assert rmc.lon == pytest.approx(values["longitude_deg"], abs=1e-6)
    assert rmc.cog == pytest.approx(values["heading_deg"] % 360, abs=0.01)
    assert (rmc.date, rmc.time) == (NOON.date(), dt.time(12, 34, 56, 780_000))
    assert gga.time == rmc.time and gga.quality == 1
    assert gga.alt == pytest.approx(values["altitude_m"], abs=0.05)
    assert gga.numSV == int(values["gnss_satellites"])
    hdop = gsa.HDOP
    assert gsa.navMode == 3 and hdop == round(values["gnss_hdop"], 1)


async def test_standalone_drives_its_own_vehicle_faster_than_real_time() -> None:
    speed, rate = 20.0, 10.0
    epochs = 12
    async with GnssTwin.standalone(
        "highway", seed=2, speed=speed, rate_hz=rate, clock=_fixed_clock
    ) as gnss:
        port = _open(gnss.path)
        try:
            lines = await _lines(port, 4 * epochs)
        finally:
            port.close()
    reference = VehicleModel(load_scenario("highway"), seed=2)
    for n in range(epochs):
        if n:
            reference.step(speed / rate)
        rmc, vtg, gga, _ = (_parse(line) for line in lines[4 * n : 4 * n + 4])
        values = reference.values()
        assert _speed_kph(vtg) == pytest.approx(values["speed_kph"], abs=0.01), n
        assert _speed_kph(rmc) == pytest.approx(values["speed_kph"], abs=0.01), n
        assert gga.lat == pytest.approx(values["latitude_deg"], abs=1e-6), n
    assert _speed_kph(vtg) > 20  # 11 s of vehicle time: well under way


def _classify(line: bytes) -> str:
    if not line.startswith(b"$"):
        return "garbage"
    try:
        msg = NMEAReader.parse(line)
    except NMEAParseError as e:
        assert "checksum" in str(e)
        return "bad_checksum"
    return "good" if msg is not None else "truncated"


async def test_faults_appear_as_configured_and_repeat_for_a_seed() -> None:
    faults = GnssFaults(garbage=0.1, truncated=0.15, bad_checksum=0.2)

    async def run(seed: int) -> list[bytes]:
        twin = GnssTwin.standalone("city", seed=seed, rate_hz=10, faults=faults, clock=_fixed_clock)
        async with twin:
            port = _open(twin.path)
            try:
                return await _lines(port, 200)
            finally:
                port.close()

    first, again, other = await asyncio.gather(run(7), run(7), run(8))
    assert first == again
    assert first != other
    kinds = [_classify(line) for line in first]
    counts = {kind: kinds.count(kind) for kind in ("good", "garbage", "truncated", "bad_checksum")}
    # 200 sentences: expected 110 / 20 / 30 / 40; bounds far outside chance.
    assert 70 <= counts["good"] <= 150, counts
    assert 5 <= counts["garbage"] <= 45, counts
    assert 10 <= counts["truncated"] <= 55, counts
    assert 15 <= counts["bad_checksum"] <= 70, counts
    for line, kind in zip(first, kinds, strict=True):
        if kind == "garbage":
            assert b"$" not in line
        if kind == "truncated":
            assert b"*" not in line


async def test_no_fix_and_silent_windows() -> None:
    rate = 10.0
    faults = GnssFaults(no_fix=(Interval(0.5, 1.0),), silent=(parse_interval("1.0-1.5"),))
    twin: GnssTwin

    def clock() -> dt.datetime:
        # The epoch's own time (epochs counts it already), so each line says which epoch it is.
        return NOON + dt.timedelta(seconds=(twin.epochs - 1) / rate)

    twin = GnssTwin.standalone("highway", rate_hz=rate, faults=faults, clock=clock)
    async with twin:
        port = _open(twin.path)
        try:
            # Epochs 0–19 less the five silent ones, four sentences each.
            lines = await _lines(port, 4 * 15)
        finally:
            port.close()
    by_epoch: dict[int, list[NMEAMessage]] = {}
    for line in lines:
        msg = _parse(line)
        if msg.msgID in ("RMC", "GGA"):
            moment = dt.datetime.combine(NOON.date(), msg.time, tzinfo=dt.UTC)
            epoch = round((moment - NOON).total_seconds() * rate)
            by_epoch.setdefault(epoch, []).append(msg)
    assert sorted(by_epoch) == [*range(10), *range(15, 20)]
    for epoch, (rmc, gga) in by_epoch.items():
        if 5 <= epoch < 10:
            assert (rmc.status, rmc.posMode, rmc.lat) == ("V", "N", ""), epoch
            assert (gga.quality, gga.numSV, gga.lat) == (0, 0, ""), epoch
        else:
            assert (rmc.status, gga.quality) == ("A", 1), epoch
            assert isinstance(rmc.lat, float)


async def test_unplugged_receiver_comes_back_behind_its_link(tmp_path: Path) -> None:
    link = tmp_path / "gnss0"
    async with GnssTwin.standalone("city", rate_hz=10, link=link) as gnss:
        port = _open(link)
        assert _parse((await _lines(port, 1))[0]).msgID == "RMC"
        unplug = asyncio.create_task(gnss.unplug(0.5))
        await asyncio.sleep(0)
        with pytest.raises(serial.SerialException):
            await _lines(port, 1000)
        port.close()
        await asyncio.wait_for(unplug, TIMEOUT)
        port = _open(link)
        try:
            lines = await _lines(port, 8)
        finally:
            port.close()
    assert any(_parse(line).msgID == "RMC" for line in lines)
    assert gnss.stats.unplugs == 1


class Parked:
    """A position source that is not a VehicleModel (the PositionSource protocol)."""

    def __init__(self, **extra: float) -> None:
        self._values = {
            "latitude_deg": -33.8568,
            "longitude_deg": 151.2153,
            "heading_deg": 370.0,
            "altitude_m": 12.34,
            "speed_kph": 0.0,
            **extra,
        }

    def values(self) -> Mapping[str, float]:
        return self._values


def test_fix_quality_comes_from_the_source() -> None:
    dgps = GnssTwin(Parked(gnss_fix=3, gnss_satellites=14, gnss_hdop=0.6))
    rmc, vtg, gga, gsa = (_parse(s) for s in dgps.epoch_sentences(dgps.source.values(), NOON))
    assert (rmc.posMode, vtg.posMode, gga.quality) == ("D", "D", 2)
    assert (rmc.lat, rmc.NS, rmc.lon, rmc.EW) == (pytest.approx(-33.8568), "S", 151.2153, "E")
    assert rmc.cog == pytest.approx(10.0)
    assert gga.numSV == 14 and gsa.svid_12 == 30  # at most 12 in GSA
    assert math.isclose(gsa.PDOP, math.hypot(0.6, round(0.6 * 1.4, 1)), abs_tol=0.051)

    no_fix = GnssTwin(Parked(gnss_fix=0))
    rmc, vtg, gga, gsa = (_parse(s) for s in no_fix.epoch_sentences(no_fix.source.values(), NOON))
    assert (rmc.status, gga.quality, gsa.navMode, vtg.posMode) == ("V", 0, 1, "N")

    plain = GnssTwin(Parked())  # no fix keys at all: a 3D fix
    rmc, _, gga, gsa = (_parse(s) for s in plain.epoch_sentences(plain.source.values(), NOON))
    assert (rmc.status, gga.quality, gsa.navMode) == ("A", 1, 3)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: GnssTwin(Parked(), rate_hz=0), "rate"),
        (lambda: GnssTwin(Parked(), rate_hz=11), "rate"),
        (lambda: GnssTwin(Parked(), talker="GL"), "talker"),  # type: ignore[arg-type]
        (lambda: GnssTwin.standalone("city", speed=0), "speed"),
        (lambda: GnssFaults(garbage=1.5), "between 0 and 1"),
        (lambda: GnssFaults(garbage=0.5, truncated=0.4, bad_checksum=0.2), "at most 1"),
        (lambda: parse_interval("20-10"), "START < END"),
        (lambda: parse_interval("soon"), "START-END"),
    ],
)
def test_bad_settings_are_explained(make: object, match: str) -> None:
    with pytest.raises(TwinConfigError, match=match):
        make()  # type: ignore[operator]

"""GNSS: NMEA sentences to signals (pure parser, hypothesis), and the receiver through real ptys."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pynmeagps import NMEAReader, calc_checksum

from agent.errors import InputError, UsageError
from agent.gnss import (
    GNSS_BUS,
    GNSS_MESSAGE,
    GNSS_SIGNALS,
    GnssHealth,
    GnssReceiver,
    GnssUpdate,
    NmeaChecksumError,
    NmeaError,
    NmeaGarbageError,
    NmeaTruncatedError,
    parse_sentence,
)
from agent.schemes.model import SignalRef
from agent.serial_device import StateChange
from tests.agent.test_serial_device import (
    FAST,
    PATIENCE,
    Pacer,
    Pty,
    next_item,
    pty_factory,
    state_is,
    until,
)

# Textbook sentences (NMEA 0183 references), with their published checksums.
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"
GSA = b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39"
VTG = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48"
GSV = b"$GPGSV,3,1,11,03,03,111,00,04,15,270,00,06,01,010,00,13,06,292,00*74"


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[Callable[[], Pty]]:
    """Make ptys on one symlink path; all closed after the test."""
    yield from pty_factory(tmp_path)


POSITION = {"latitude", "longitude", "altitude", "speed", "heading", "hdop", "pdop", "vdop", "utc"}


def sentence(body: str) -> bytes:
    """``$<body>*<checksum>``."""
    return f"${body}*{calc_checksum(body)}".encode()


# --- the parser ------------------------------------------------------------------------------


def test_signal_names_are_valid_signal_refs() -> None:
    for name in GNSS_SIGNALS:
        ref = SignalRef.parse(f"{GNSS_BUS}:{GNSS_MESSAGE}.{name}")
        assert (ref.bus, ref.message, ref.signal) == (GNSS_BUS, GNSS_MESSAGE, name)


def test_rmc_textbook_example() -> None:
    parsed = parse_sentence(RMC)
    assert (parsed.talker, parsed.kind) == ("GP", "RMC")
    theirs = NMEAReader.parse(RMC)
    assert parsed.signals == {
        "fix": 1,
        "latitude": theirs.lat,
        "longitude": theirs.lon,
        "speed": pytest.approx(22.4 * 1.852),
        "heading": 84.4,
        "utc": dt.datetime(1994, 3, 23, 12, 35, 19, tzinfo=dt.UTC).timestamp(),
    }
    assert parsed.signals["latitude"] == pytest.approx(48 + 7.038 / 60)
    assert parsed.signals["longitude"] == pytest.approx(11 + 31.0 / 60)


def test_gga_gsa_vtg_textbook_examples() -> None:
    theirs = NMEAReader.parse(GGA)
    assert parse_sentence(GGA).signals == {
        "fix_quality": 1,
        "fix": 1,
        "satellites": 8,
        "latitude": theirs.lat,
        "longitude": theirs.lon,
        "altitude": 545.4,
        "hdop": 0.9,
    }
    assert parse_sentence(GSA).signals == {"fix": 1, "pdop": 2.5, "hdop": 1.3, "vdop": 2.1}
    # Speed in km/h as the sentence gives it; no mode field (NMEA < 2.3): no fix claim.
    assert parse_sentence(VTG).signals == {"heading": 54.7, "speed": 10.2}


def test_south_west_and_fractional_seconds_and_nmea4_fields() -> None:
    body = "GNRMC,235959.50,A,3352.12800,S,15112.61800,W,0.5,,311224,,,D,V"
    signals = parse_sentence(sentence(body)).signals
    assert signals["latitude"] == pytest.approx(-(33 + 52.128 / 60))
    assert signals["longitude"] == pytest.approx(-(151 + 12.618 / 60))
    assert signals["utc"] == dt.datetime(2024, 12, 31, 23, 59, 59, 500000, dt.UTC).timestamp()
    assert "heading" not in signals  # empty course (standing still): left out, not 0
    assert parse_sentence(sentence("GNVTG,,T,,M,1.0,N,,K,A")).signals == {
        "fix": 1,
        "speed": pytest.approx(1.852),  # from knots when the km/h field is empty
    }


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        # u-blox before its first fix.
        (sentence("GPRMC,,V,,,,,,,,,,N"), {"fix": 0}),
        (sentence("GPGGA,,,,,,0,00,99.99,,,,,,"), {"fix": 0, "fix_quality": 0, "satellites": 0}),
        (sentence("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"), {"fix": 0}),
        (sentence("GPVTG,,,,,,,,,N"), {"fix": 0}),
        # Stale position with a void status, and "valid" status contradicted by mode N.
        (sentence("GPRMC,123519,V,4807.038,N,01131.000,E,022.4,084.4,230394,,,N"), {"fix": 0}),
        (sentence("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,,,N"), {"fix": 0}),
        (
            sentence("GPGGA,123519,4807.038,N,01131.000,E,0,03,9.9,545.4,M,,,,"),
            {"fix": 0, "fix_quality": 0, "satellites": 3},
        ),
    ],
)
def test_no_fix_gives_fix_0_and_no_position(line: bytes, expected: dict[str, int]) -> None:
    assert parse_sentence(line).signals == expected


def test_valid_sentences_without_signals_are_not_errors() -> None:
    for line in (GSV, sentence("GPTXT,01,01,02,ANTSTATUS=OK"), sentence("PUBX,00,1")):
        assert parse_sentence(line).signals == {}


def test_corrupt_fields_under_a_good_checksum_are_left_out() -> None:
    # A receiver bug or a bit flip before the checksum was computed: out-of-range values.
    rmc = sentence("GPRMC,123519,A,9907.038,N,01131.000,E,nan,400.0,320394")
    assert parse_sentence(rmc).signals == {"fix": 1}
    gga = sentence("GPGGA,123519,48x7.038,N,01131.000,E,1,08,0.9,,M,,M,,")
    assert parse_sentence(gga).signals == {"fix": 1, "fix_quality": 1, "satellites": 8, "hdop": 0.9}


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (RMC[:-3], NmeaTruncatedError),  # cut before the checksum
        (RMC[:-1], NmeaTruncatedError),  # cut inside the checksum
        (RMC[:30], NmeaTruncatedError),
        (RMC[20:], NmeaTruncatedError),  # opened mid-sentence
        (GGA[:25] + RMC, NmeaTruncatedError),  # a sentence cut off by the next
        (RMC[:-2] + b"6B", NmeaChecksumError),
        (RMC.replace(b"4807", b"4808"), NmeaChecksumError),
        (RMC.lower(), NmeaChecksumError),  # checksum covers case
        (b"\x00\xff\xb5b\x01\x07", NmeaGarbageError),  # UBX binary
        (b"\xa0\xa2garbled at the wrong baud rate", NmeaGarbageError),
        (b"hello world", NmeaGarbageError),
        (b"$GPRMC,1*XY", NmeaGarbageError),
        (sentence("gp,lower"), NmeaGarbageError),
        (sentence("GPGSV,x,y"), NmeaGarbageError),  # pynmeagps refuses it: wrapped
        (sentence("GPGGA,123519,4807.038,N,01131.000,E,x,08,0.9,,M,,M,,"), NmeaGarbageError),
        (b"", NmeaGarbageError),
    ],
)
def test_bad_lines_are_classified(line: bytes, error: type[NmeaError]) -> None:
    with pytest.raises(error) as caught:
        parse_sentence(line)
    assert isinstance(caught.value, InputError)
    assert type(caught.value) is error


@given(st.binary(max_size=120))
def test_any_bytes_parse_or_raise_nmea_error(data: bytes) -> None:
    try:
        parsed = parse_sentence(data)
    except NmeaError:
        return
    assert set(parsed.signals) <= set(GNSS_SIGNALS)


_FIELD_TEXT = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*,"),
    max_size=12,
)


@given(
    talker=st.sampled_from(["GP", "GN", "GL", "GA", "BD", "P"]),
    kind=st.sampled_from(["RMC", "GGA", "GSA", "VTG", "GSV", "GLL", "ZDA", "TXT", "UBX"]),
    fields=st.lists(
        st.one_of(
            _FIELD_TEXT,
            st.sampled_from(["A", "V", "N", "S", "E", "W", "M", "K", "T", "0", "1", "3", "99"]),
            st.floats(allow_nan=True, allow_infinity=True).map(str),
            st.integers(-(10**9), 10**9).map(str),
        ),
        max_size=20,
    ),
)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_sentences_with_good_checksums_and_odd_fields_never_crash(
    talker: str, kind: str, fields: list[str]
) -> None:
    """Whatever the fields, valid-checksum sentences give sane signals or a clean NmeaError."""
    try:
        parsed = parse_sentence(sentence(",".join([talker + kind, *fields])))
    except NmeaError:
        return
    signals = parsed.signals
    assert set(signals) <= set(GNSS_SIGNALS)
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in signals.values())
    assert signals.get("fix", 1) in (0, 1)
    if signals.get("fix") == 0:
        assert not POSITION & set(signals)
    assert abs(signals.get("latitude", 0)) <= 90 and abs(signals.get("longitude", 0)) <= 180
    assert ("latitude" in signals) == ("longitude" in signals)
    assert 0 <= signals.get("heading", 0) <= 360 and signals.get("speed", 0) >= 0


@given(
    lat_deg=st.integers(0, 89),
    lat_min=st.integers(0, 5_999_999),
    lon_deg=st.integers(0, 179),
    lon_min=st.integers(0, 5_999_999),
    north=st.booleans(),
    east=st.booleans(),
    knots=st.integers(0, 10_000),  # up to 1000 kn; faster is taken for corruption
    course=st.integers(0, 3599),
    moment=st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2079, 12, 31)),
)
def test_rmc_round_trip(
    lat_deg: int,
    lat_min: int,
    lon_deg: int,
    lon_min: int,
    north: bool,
    east: bool,
    knots: int,
    course: int,
    moment: dt.datetime,
) -> None:
    """Numbers written the way receivers write them come back as signals."""
    moment = moment.replace(microsecond=moment.microsecond // 10_000 * 10_000)
    body = (
        f"GNRMC,{moment:%H%M%S}.{moment.microsecond // 10_000:02d},A,"
        f"{lat_deg:02d}{lat_min // 100_000:02d}.{lat_min % 100_000:05d},{'N' if north else 'S'},"
        f"{lon_deg:03d}{lon_min // 100_000:02d}.{lon_min % 100_000:05d},{'E' if east else 'W'},"
        f"{knots / 10:.1f},{course / 10:.1f},{moment:%d%m%y},,,A,V"
    )
    signals = parse_sentence(sentence(body)).signals
    latitude = (lat_deg + lat_min / 100_000 / 60) * (1 if north else -1)
    longitude = (lon_deg + lon_min / 100_000 / 60) * (1 if east else -1)
    assert signals["fix"] == 1
    assert signals["latitude"] == pytest.approx(latitude, abs=1e-7)
    assert signals["longitude"] == pytest.approx(longitude, abs=1e-7)
    assert signals["speed"] == pytest.approx(knots / 10 * 1.852)
    assert signals["heading"] == pytest.approx(course / 10)
    assert signals["utc"] == pytest.approx(moment.replace(tzinfo=dt.UTC).timestamp())


@given(
    line=st.sampled_from([RMC, GGA, GSA, VTG, GSV]),
    position=st.integers(1, 200),
    replacement=st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters="$*"),
)
def test_any_changed_character_is_a_checksum_error(
    line: bytes, position: int, replacement: str
) -> None:
    """The XOR checksum catches every single-character change in the body."""
    star = line.index(b"*")
    position = 1 + position % (star - 1)
    assume(line[position : position + 1] != replacement.encode())
    changed = line[:position] + replacement.encode() + line[position + 1 :]
    with pytest.raises(NmeaChecksumError):
        parse_sentence(changed)


@given(line=st.sampled_from([RMC, GGA, GSA, VTG, GSV]), cut=st.integers(1, 200))
def test_every_cut_is_truncated(line: bytes, cut: int) -> None:
    """Every prefix and every suffix holding the checksum is a truncated sentence."""
    cut = cut % (len(line) - 1)
    with pytest.raises(NmeaTruncatedError):
        parse_sentence(line[: max(cut, 1)] if cut < len(line) - 3 else line[:-1])
    if cut >= 1 and len(line) - cut >= 3:
        with pytest.raises(NmeaTruncatedError):
            parse_sentence(line[cut:])


# --- the receiver, through a pty ---------------------------------------------------------------


def receiver(pty: Pty, **settings_: float) -> GnssReceiver:
    return GnssReceiver(
        str(pty.link),
        baudrate=9600,
        silence_timeout_s=settings_.get("silence_timeout_s", 5.0),
        fix_timeout_s=settings_.get("fix_timeout_s", 5.0),
        backoff=FAST,
    )


def is_update(sentence_kind: str) -> Callable[[object], bool]:
    return lambda item: isinstance(item, GnssUpdate) and item.sentence == sentence_kind


async def test_sentences_become_updates_and_bad_lines_are_counted(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with receiver(pty) as gnss:
        stream = aiter(gnss)
        async with asyncio.timeout(PATIENCE):
            await gnss.wait_open()
        before = time.time()
        pty.write(
            b"\xb5b\x01\x07garbage\r\n"
            + GGA[:30]
            + b"\r\n"
            + RMC[:-2]
            + b"00\r\n"
            + GGA
            + b"\r\n"
            + GSV
            + b"\r\n"
            + RMC
            + b"\r\n"
            + GSA
            + b"\r\n"
            + VTG
            + b"\r\n"
        )
        seen: list[object] = []
        vtg = await next_item(stream, is_update("VTG"), seen)
        updates = [i for i in seen if isinstance(i, GnssUpdate)]
        assert [u.sentence for u in updates] == ["GGA", "RMC", "GSA"]  # GSV: no signals
        assert updates[0].signals == parse_sentence(GGA).signals
        assert updates[1].signals == parse_sentence(RMC).signals
        assert isinstance(vtg, GnssUpdate) and vtg.signals == {"heading": 54.7, "speed": 10.2}
        assert all(before <= u.time <= time.time() for u in updates)
        changes = [i for i in seen if isinstance(i, StateChange)]
        assert [c.state for c in changes] == ["no_fix", "ok"]  # garbage first, then a fix
        health = gnss.health
        assert isinstance(health, GnssHealth)
        assert (health.sentences, health.garbage, health.truncated, health.bad_checksum) == (
            5,
            1,
            1,
            1,
        )
        assert health.state == "ok" and health.last_fix_time == updates[2].time  # GSA: 3D fix
        assert "checksum" in health.last_rejected or "part" in health.last_rejected


async def test_a_receiver_without_fix_reports_no_fix_and_no_position(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with receiver(pty) as gnss:
        stream = aiter(gnss)
        async with asyncio.timeout(PATIENCE):
            await gnss.wait_open()
        pty.write(sentence("GPRMC,,V,,,,,,,,,,N") + b"\r\n")
        pty.write(sentence("GPGGA,,,,,,0,00,99.99,,,,,,") + b"\r\n")
        change = await next_item(stream, state_is("no_fix"))
        rmc = await next_item(stream, is_update("RMC"))
        gga = await next_item(stream, is_update("GGA"))
        assert isinstance(change, StateChange) and "no valid fix" in change.reason
        assert isinstance(rmc, GnssUpdate) and rmc.signals == {"fix": 0}
        assert isinstance(gga, GnssUpdate) and not POSITION & set(gga.signals)
        assert gnss.health.last_fix_time is None


async def test_a_fix_that_is_not_renewed_expires(ptys: Callable[[], Pty]) -> None:
    pty = ptys()
    async with receiver(pty, fix_timeout_s=0.2) as gnss:
        stream = aiter(gnss)
        async with asyncio.timeout(PATIENCE):
            await gnss.wait_open()
        pty.write(GGA + b"\r\n")
        await next_item(stream, state_is("ok"))
        # Still talking (satellites in view), but nothing says "fix" any more.
        async with Pacer(pty, GSV + b"\r\n"):
            change = await next_item(stream, state_is("no_fix"))
        assert isinstance(change, StateChange) and "no valid fix reported for" in change.reason


async def test_silence_then_recovery(ptys: Callable[[], Pty]) -> None:
    pty = ptys()
    async with receiver(pty, silence_timeout_s=0.3) as gnss:
        stream = aiter(gnss)
        async with asyncio.timeout(PATIENCE):
            await gnss.wait_open()
        pty.write(RMC + b"\r\n")
        await next_item(stream, state_is("ok"))
        silent = await next_item(stream, state_is("silent"))
        assert isinstance(silent, StateChange) and str(pty.link) in silent.reason
        assert gnss.health.state == "silent"
        async with Pacer(pty, RMC + b"\r\n"):
            await next_item(stream, state_is("ok"))
            await next_item(stream, is_update("RMC"))
        assert gnss.health.reopens >= 1


async def test_port_lost_then_back_on_a_re_pointed_symlink(ptys: Callable[[], Pty]) -> None:
    first = ptys()
    async with receiver(first) as gnss:
        stream = aiter(gnss)
        async with asyncio.timeout(PATIENCE):
            await gnss.wait_open()
        first.write(GGA + b"\r\n")
        await next_item(stream, state_is("ok"))
        first.unplug()  # the USB receiver is pulled: EOF/EIO, and its device node vanishes
        lost = await next_item(stream, state_is("port_lost"))
        assert isinstance(lost, StateChange) and lost.previous == "ok"
        await until(lambda: "cannot open" in gnss.health.last_error)  # retrying a missing path
        second = ptys()  # plugged in again: same symlink, another device node
        async with Pacer(second, GGA + b"\r\n"):
            back = await next_item(stream, state_is("ok"))
            update = await next_item(stream, is_update("GGA"))
        assert isinstance(back, StateChange) and back.previous == "port_lost"
        assert isinstance(update, GnssUpdate) and update.signals["fix"] == 1
        assert gnss.health.reopens == 1


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="silence_timeout_s"):
        GnssReceiver("/dev/ttyS0", silence_timeout_s=0)
    with pytest.raises(UsageError, match="fix_timeout_s"):
        GnssReceiver("/dev/ttyS0", fix_timeout_s=math.nan)

"""DBC-driven traffic: rates, jitter, the wire, counters/checksums, decoding, foreign DBCs."""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from can_dbc import SAMPLE_VEHICLE_DBC
from can_dbc.integrity import IntegritySpec
from sim import SimError, TrafficGenerator, VehicleModel, load_scenario
from sim.bindings import TBOX_EV_BINDINGS
from sim.scenario import parse_scenario
from sim.wire import frame_bits

RAV4_DBC = Path("/work/shared/data/rav4-2018-comma2k19/toyota_new_mc_pt_generated.dbc")
BITRATE = 500_000
SECONDS = 60.0
STEP = 0.01


@dataclass
class Run:
    db: Any
    frames: list[can.Message]
    speeds: list[tuple[float, float]]  # (sim time, model speed) after every call
    load: dict[str, float]
    generator: TrafficGenerator


@pytest.fixture(scope="module")
def db() -> Any:
    return cantools.database.load_file(SAMPLE_VEHICLE_DBC, strict=True)


@pytest.fixture(scope="module")
def run(db: Any) -> Run:
    """60 s of the city scenario on one 500 kbit/s bus, pulled in 10 ms slices."""
    model = VehicleModel(load_scenario("city"), seed=1)
    gen = TrafficGenerator({"can0": [db]}, model, bitrate=BITRATE, seed=1, start_time=1000.0)
    frames: list[can.Message] = []
    speeds: list[tuple[float, float]] = []
    loads = []
    for k in range(1, round(SECONDS / STEP) + 1):
        t = k * STEP
        frames += gen.frames_until(t)
        speeds.append((t, model.values()["speed_kph"]))
        if k % 500 == 0:
            loads.append(gen.bus_load()["can0"])
    return Run(db, frames, speeds, {"can0": statistics.mean(loads)}, gen)


def _duration(frame: can.Message, bitrate: int = BITRATE, data_bitrate: int = 2_000_000) -> float:
    nominal, fast = frame_bits(
        frame.arbitration_id, frame.is_extended_id, frame.data, fd=frame.is_fd
    )
    return nominal / bitrate + fast / data_bitrate


def _by_id(frames: list[can.Message]) -> dict[int, list[can.Message]]:
    out: dict[int, list[can.Message]] = defaultdict(list)
    for f in frames:
        out[f.arbitration_id].append(f)
    return out


def test_frames_are_well_formed(run: Run) -> None:
    assert run.generator.skipped_messages == {}
    ids = {f.arbitration_id for f in run.frames}
    assert all(f.channel == "can0" for f in run.frames)
    assert all(
        not f.is_extended_id and not f.is_fd and f.dlc == len(f.data) == 8 for f in run.frames
    )
    stamps = [f.timestamp for f in run.frames]
    assert stamps == sorted(stamps)
    assert stamps[0] > 1000.0 and stamps[-1] <= 1000.0 + SECONDS
    # No diagnostics, ever.
    assert not ids & {m.frame_id for m in run.db.messages if m.send_type == "NoMsgSendType"}


def test_rates_match_cycle_times(run: Run, db: Any) -> None:
    per_id = _by_id(run.frames)
    for msg in db.messages:
        if msg.send_type != "Cyclic":
            continue
        period = msg.cycle_time / 1000
        expected = SECONDS / period
        count = len(per_id[msg.frame_id])
        assert abs(count - expected) <= max(1.0, 0.02 * expected), (msg.name, count, expected)
        if count > 10:
            stamps = [f.timestamp for f in per_id[msg.frame_id]]
            mean = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
            assert mean == pytest.approx(period, rel=0.02), msg.name


def test_jitter_present_but_bounded(run: Run, db: Any) -> None:
    per_id = _by_id(run.frames)
    for name in ("ESC_VehicleSpeed", "BMS_SoC", "IC_Odometer"):
        msg = db.get_message_by_name(name)
        period = msg.cycle_time / 1000
        stamps = [f.timestamp for f in per_id[msg.frame_id]]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        spread = statistics.pstdev(gaps)
        assert 0.005 * period < spread < 0.1 * period, name  # default jitter is 3 % of the period
        # Late by at most half a period, plus a few frames of queueing.
        assert min(gaps) > 0.5 * period - 0.002
        assert max(gaps) < 1.5 * period + 0.002


def test_phase_offsets_spread_the_start(run: Run, db: Any) -> None:
    first: dict[int, float] = {}
    for f in run.frames:
        first.setdefault(f.arbitration_id, f.timestamp - 1000.0)
    slow = [first[m.frame_id] for m in db.messages if m.cycle_time == 1000]
    assert max(slow) - min(slow) > 0.3  # 1 s messages do not all start together


def test_frames_never_overlap_on_the_wire(run: Run) -> None:
    previous_end = 0.0
    for f in run.frames:
        start = f.timestamp - _duration(f)
        assert start >= previous_end - 1e-9
        previous_end = f.timestamp


def test_bus_load_is_plausible(run: Run) -> None:
    busy = sum(_duration(f) for f in run.frames if f.timestamp > 1000.0 + SECONDS - 1.0)
    assert run.generator.bus_load()["can0"] == pytest.approx(busy, abs=0.01)
    assert 0.2 < run.load["can0"] < 0.45  # a realistic powertrain/body bus at 500 kbit/s
    assert run.generator.overruns == {"can0": 0}


def test_counters_increment_wrap_and_checksums_verify(run: Run, db: Any) -> None:
    per_id = _by_id(run.frames)
    checked = 0
    for msg in db.messages:
        spec = IntegritySpec.for_message(msg)
        if spec is None or not per_id[msg.frame_id]:
            continue
        counters = [spec.read_counter(f.data) for f in per_id[msg.frame_id]]
        assert all(
            spec.counter_follows(a, b)
            for a, b in itertools.pairwise(counters)
            if a is not None and b is not None
        ), msg.name
        if len(counters) > 16:
            assert 15 in counters and 0 in counters[counters.index(15) :]
        assert all(spec.verify(f.data) for f in per_id[msg.frame_id]), msg.name
        checked += 1
    assert checked >= 12


def test_every_frame_decodes_and_matches_the_layout(run: Run, db: Any) -> None:
    """cantools decodes every frame, and re-encoding the decoded values gives the same bytes."""
    for f in run.frames[::7]:
        msg = db.get_message_by_frame_id(f.arbitration_id)
        decoded = msg.decode(bytes(f.data), decode_choices=False)
        assert msg.encode(decoded, strict=False) == bytes(f.data), msg.name


def test_decoded_speed_equals_model_speed(run: Run, db: Any) -> None:
    times = [t for t, _ in run.speeds]
    msg = db.get_message_by_name("ESC_VehicleSpeed")
    frames = [f for f in run.frames if f.arbitration_id == msg.frame_id]
    moving = 0
    for f in frames:
        decoded = msg.decode(bytes(f.data))["ESC_VehSpd"]
        t = f.timestamp - 1000.0
        # The frame was built at its release, a model step or two before the end of transmission.
        lo = bisect.bisect_left(times, t - 0.04)
        hi = bisect.bisect_right(times, t)
        candidates = [s for _, s in run.speeds[max(0, lo - 1) : hi + 1]]
        assert min(abs(decoded - s) for s in candidates) <= 0.005 + 1e-9
        moving += decoded > 10
    assert moving > 1000


def test_bound_values_follow_the_model(run: Run, db: Any) -> None:
    last: dict[int, can.Message] = {}
    for f in reversed(run.frames):
        last.setdefault(f.arbitration_id, f)
    values = run.generator.model.values()
    gear = db.decode_message(0x100, bytes(last[0x100].data), decode_choices=True)
    assert str(gear["VCU_Gear"]) == "D"
    pack = db.decode_message(0x200, bytes(last[0x200].data))
    assert pack["BMS_PackVoltage"] == pytest.approx(values["battery_voltage_v"], abs=0.5)
    soc = db.decode_message(0x210, bytes(last[0x210].data))
    assert soc["BMS_SoC"] == pytest.approx(values["battery_soc_pct"], abs=0.1)
    odo = db.decode_message(0x500, bytes(last[0x500].data))
    assert odo["IC_Odometer"] == pytest.approx(values["odometer_km"], abs=0.2)
    vin = "".join(
        chr(int(v))
        for f in [x for x in run.frames if x.arbitration_id == 0x510][-3:]
        for k, v in sorted(db.decode_message(0x510, bytes(f.data)).items())
        if k.startswith("GW_VinChar")
    )
    assert sorted(vin) == sorted("TBXEV5M20R0000001")


def test_multiplexed_cells_cycle_all_groups(run: Run, db: Any) -> None:
    msg = db.get_message_by_name("BMS_CellVoltages")
    frames = [f for f in run.frames if f.arbitration_id == msg.frame_id]
    groups = [msg.decode(bytes(f.data))["BMS_CellGroup"] for f in frames[:64]]
    assert groups[:32] == groups[32:64]
    assert sorted(groups[:32]) == list(range(32))
    cells = {}
    for f in frames[-32:]:
        cells.update({k: v for k, v in msg.decode(bytes(f.data)).items() if k != "BMS_CellGroup"})
    assert len(cells) == 96
    assert all(3.0 < v < 4.3 for v in cells.values())


def test_event_messages_only_on_change(run: Run, db: Any) -> None:
    per_id = _by_id(run.frames)
    assert len(per_id[db.get_message_by_name("GW_SwVersions").frame_id]) == 1
    assert len(per_id[db.get_message_by_name("TBOX_RemoteCmd").frame_id]) == 1
    doors = db.get_message_by_name("BCM_Doors")
    states = [doors.decode(bytes(f.data))["BCM_DoorFL"] for f in per_id[doors.frame_id]]
    assert states[0] == "Open" and states[-1] == "Closed"


def test_bindings_are_complete() -> None:
    db: Any = cantools.database.load_file(SAMPLE_VEHICLE_DBC)
    names = {s.name for m in db.messages for s in m.signals}
    assert set(TBOX_EV_BINDINGS) <= names
    quantities = VehicleModel(load_scenario("city")).values()
    assert set(TBOX_EV_BINDINGS.values()) <= set(quantities)


def test_incremental_calls_equal_one_call(db: Any) -> None:
    def frames(steps: list[float]) -> list[tuple[float, int, bytes]]:
        gen = TrafficGenerator({"can0": [db]}, VehicleModel(load_scenario("highway")), seed=5)
        out = []
        for t in steps:
            out += [(f.timestamp, f.arbitration_id, bytes(f.data)) for f in gen.frames_until(t)]
        return out

    one = frames([5.0])
    many = frames([i * 0.0173 for i in range(1, 290)] + [5.0])
    assert one == many
    other_seed = TrafficGenerator({"can0": [db]}, VehicleModel(load_scenario("highway")), seed=6)
    assert [f.timestamp for f in other_seed.frames_until(5.0)] != [t for t, _, _ in one]


def test_overloaded_bus_arbitrates_by_id(db: Any) -> None:
    gen = TrafficGenerator({"can0": [db]}, VehicleModel(load_scenario("city")), bitrate=50_000)
    frames = gen.frames_until(10.0)
    per_id = _by_id(frames)
    assert gen.bus_load()["can0"] > 0.99
    assert gen.overruns["can0"] > 0
    assert len(per_id[0x0A0]) == pytest.approx(1000, abs=3)  # highest priority keeps its rate
    assert len(per_id.get(0x549, [])) < 5  # low priority starves
    previous_end = 0.0
    for f in frames:
        start = f.timestamp - _duration(f, 50_000)
        assert start >= previous_end - 1e-9
        previous_end = f.timestamp


def test_two_buses_share_one_model(db: Any) -> None:
    gen = TrafficGenerator(
        {"pt": [db], "body": [db]}, VehicleModel(load_scenario("city")), jitter=0.05
    )
    frames = gen.frames_until(3.0) + gen.frames_until(6.0)
    assert [f.timestamp for f in frames] == sorted(f.timestamp for f in frames)
    assert {f.channel for f in frames} == {"pt", "body"}
    for bus in ("pt", "body"):
        own = [f for f in frames if f.channel == bus]
        previous_end = 0.0
        for f in own:
            assert f.timestamp - _duration(f) >= previous_end - 1e-9
            previous_end = f.timestamp
    loads = gen.bus_load()
    assert set(loads) == {"pt", "body"} and all(0.2 < v < 0.45 for v in loads.values())


def test_foreign_dbc_rav4() -> None:
    db: Any = cantools.database.load_file(RAV4_DBC, strict=False)
    model = VehicleModel(load_scenario("highway"))
    gen = TrafficGenerator({"can0": [db]}, model, bindings={"SPEED": "speed_kph"})
    frames = gen.frames_until(20.0)
    assert len(frames) > 5000
    assert gen.skipped_messages  # one message has overlapping signals
    assert all("overlap" in r or "cannot decode" in r for r in gen.skipped_messages.values())
    for f in frames:
        db.decode_message(f.arbitration_id, bytes(f.data))  # never raises
    speed = [f for f in frames if f.arbitration_id == 0xB4]
    assert len(speed) == pytest.approx(200, abs=2)  # no cycle times in the DBC: 100 ms default
    decoded = db.decode_message(0xB4, bytes(speed[-1].data))["SPEED"]
    assert decoded == pytest.approx(model.values()["speed_kph"], abs=0.01)
    lka = [f for f in frames if f.arbitration_id == 0x2E4]  # STEERING_LKA: 6-bit COUNTER
    counters = [db.decode_message(0x2E4, bytes(f.data))["COUNTER"] for f in lka]
    assert len(counters) > 64
    assert all(b == (a + 1) % 64 for a, b in itertools.pairwise(counters))


def test_unknown_binding_is_an_error(db: Any) -> None:
    with pytest.raises(SimError, match="sped_kph"):
        TrafficGenerator(
            {"can0": [db]}, VehicleModel(load_scenario("city")), bindings={"X": "sped_kph"}
        )


FD_DBC = """VERSION ""
NS_ :
BS_:
BU_: A B
BO_ 2147484160 Radar: 64 A
 SG_ Range : 0|16@1+ (0.01,0) [0|655] "m" B
 SG_ Count : 16|8@1+ (1,0) [0|255] "" B
BO_ 768 Classic: 8 A
 SG_ Speed : 0|16@1+ (0.01,0) [0|300] "km/h" B
 SG_ Temp : 16|32@1- (1,0) [0|0] "" B
BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG",
"reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved",
"reserved","StandardCAN_FD","ExtendedCAN_FD";
BA_DEF_ BO_ "GenMsgCycleTime" INT 0 10000;
BA_DEF_DEF_ "VFrameFormat" "StandardCAN";
BA_DEF_DEF_ "GenMsgCycleTime" 0;
BA_ "VFrameFormat" BO_ 2147484160 15;
BA_ "GenMsgCycleTime" BO_ 2147484160 20;
SIG_VALTYPE_ 768 Temp : 1;
"""


def test_fd_extended_and_float_signals() -> None:
    db: Any = cantools.database.load_string(FD_DBC, database_format="dbc")
    scenario = parse_scenario("[[phase]]\nduration_s = 60\ntarget_speed_kph = 50\n")
    model = VehicleModel(scenario)
    bindings = {"Speed": "speed_kph", "Radar.Range": "speed_kph"}
    gen = TrafficGenerator({"can1": [db]}, model, bindings=bindings)
    frames = gen.frames_until(30.0)
    radar = [f for f in frames if f.arbitration_id == 0x200]
    classic = [f for f in frames if f.arbitration_id == 0x300]
    assert len(radar) == pytest.approx(1500, abs=2) and len(classic) == pytest.approx(300, abs=2)
    assert all(f.is_fd and f.bitrate_switch and f.is_extended_id and f.dlc == 64 for f in radar)
    assert all(not f.is_fd and not f.is_extended_id for f in classic)
    decoded = db.decode_message(0x300, bytes(classic[-1].data))
    assert decoded["Speed"] == pytest.approx(model.values()["speed_kph"], abs=0.01)
    assert db.get_message_by_name("Radar").decode(bytes(radar[-1].data))["Range"] == pytest.approx(
        50, abs=0.01
    )
    assert decoded["Temp"] == 0.0  # float signal, no range: midpoint of [0, 0]
    # 64 mostly-zero bytes (a stuff bit every 5 bits) take ~0.33 ms at 2 Mbit/s, plus ~0.1 ms
    # of 29-bit arbitration, ACK and EOF at 500 kbit/s; classic CAN could not carry them at all.
    assert 0.0003 < _duration(radar[0]) < 0.00045


def _naive_bits(frame_id: int, data: bytes) -> int:
    """Classic 11-bit data frame length with stuffing counted bit by bit from scratch."""
    bits = [0] + [(frame_id >> i) & 1 for i in range(10, -1, -1)] + [0, 0, 0]
    bits += [(len(data) >> i) & 1 for i in range(3, -1, -1)]
    for byte in data:
        bits += [(byte >> i) & 1 for i in range(7, -1, -1)]
    stuffed, run, last = 0, 0, None
    for b in bits:
        run = run + 1 if b == last else 1
        last = b
        if run == 5:
            stuffed += 1
            last, run = 1 - b, 1
    return len(bits) + stuffed + 15 + 1 + 2 + 7 + 3


@pytest.mark.parametrize(
    "data", [bytes(8), b"\xff" * 8, b"\x55" * 8, bytes(range(8)), b"\x0f\xf0" * 4, b""]
)
def test_frame_bits_count_stuffing(data: bytes) -> None:
    for frame_id in (0x000, 0x0B0, 0x7FF, 0x555):
        nominal, fast = frame_bits(frame_id, False, data)
        assert fast == 0
        assert nominal == _naive_bits(frame_id, data)
    assert frame_bits(0x555, False, b"\x55" * 8)[0] == 47 + 64  # alternating bits: no stuffing
    worst = frame_bits(0, False, bytes(8))[0]
    assert 47 + 64 + 10 <= worst <= 135

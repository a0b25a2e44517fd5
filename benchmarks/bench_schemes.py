"""Collection schemes: `SchemeEvaluator` vs the same schemes evaluated naively, in the same run.

The RAV4 log's 37,740 known ``can0`` frames (tests/data) are decoded once up front (every signal
of every message, more than an agent subscribing to its schemes' signals would decode), then fed
through a realistic mix of 2 periodic, 2 on-change and 3 condition schemes with window functions
and capture windows:

* ``SchemeEvaluator`` — routes each (bus, message) once, evaluates a condition only when a signal
  it reads is updated;
* ``naive`` — the straightforward loop over the same model, the same compiled conditions and the
  same histories: every frame goes through every scheme, every name is matched against every
  frame, and every condition is re-evaluated on every frame.

Times are CPU time (``time.process_time``), median of ``--reps`` interleaved runs. Prints frames/s,
µs per frame, the ratio, the records each made, and the share of one core the schemes would take
at 18,000 frames/s (four 500 kbit/s buses at full load, the issue's budget).

    .venv/bin/python benchmarks/bench_schemes.py [--reps 5]
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from agent.canlog import read_log
from agent.schemes import (
    CollectedRecord,
    Condition,
    OnChange,
    Periodic,
    Sample,
    Scheme,
    SchemeEvaluator,
    SignalRef,
    parse_schemes,
)
from agent.schemes.history import Clock, History, SignalSlot, Value
from can_dbc import Decoder, load_dbc

RAV4 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rav4-2018-comma2k19"
BUDGET_FPS = 18_000

MIX = """
[[scheme]]
id = "powertrain-1hz"
kind = "periodic"
period_ms = 1000
signals = ["SPEED.SPEED", "ENGINE_RPM.RPM", "GAS_PEDAL.GAS_PEDAL", "GEAR_PACKET.GEAR"]

[[scheme]]
id = "chassis-10hz"
kind = "periodic"
period_ms = 100
signals = [
    "STEER_ANGLE_SENSOR.STEER_ANGLE", "KINEMATICS.ACCEL_X", "KINEMATICS.ACCEL_Y",
    "KINEMATICS.YAW_RATE", "WHEEL_SPEEDS.WHEEL_SPEED_FL", "WHEEL_SPEEDS.WHEEL_SPEED_FR",
    "BRAKE_MODULE.BRAKE_PRESSURE",
]
min_sample_period_ms = { "BRAKE_MODULE.BRAKE_PRESSURE" = 500 }

[[scheme]]
id = "driver-inputs"
kind = "on_change"
signals = [
    "BRAKE_MODULE.BRAKE_PRESSED", "PCM_CRUISE.CRUISE_ACTIVE", "PCM_CRUISE.CRUISE_STATE",
    "GEAR_PACKET.GEAR", "LIGHT_STALK.LOW_BEAM", "DOOR_LOCKS.LOCK_STATUS",
]

[[scheme]]
id = "speed-rpm-deadband"
kind = "on_change"
signals = ["SPEED.SPEED", "ENGINE_RPM.RPM", "STEER_TORQUE_SENSOR.STEER_TORQUE_DRIVER"]
min_sample_period_ms = 200
[scheme.deadband]
"SPEED.SPEED" = 1.0
"ENGINE_RPM.RPM" = 100
"STEER_TORQUE_SENSOR.STEER_TORQUE_DRIVER" = 50

[[scheme]]
id = "over-60"
kind = "condition"
priority = 1
condition = "SPEED.SPEED > 60 and prev(SPEED.SPEED) <= 60"
capture = ["SPEED.SPEED", "ENGINE_RPM.RPM", "GAS_PEDAL.GAS_PEDAL"]
pre_ms = 2000
post_ms = 1000

[[scheme]]
id = "speed-swing"
kind = "condition"
priority = 2
condition = 'max(SPEED.SPEED, "3s") - min(SPEED.SPEED, "3s") > 4'
min_interval_ms = 5000
capture = ["SPEED.SPEED", "BRAKE_MODULE.BRAKE_PRESSURE", "KINEMATICS.ACCEL_X"]
pre_ms = 3000
post_ms = 1000
min_sample_period_ms = 50

[[scheme]]
id = "revving-straight"
kind = "condition"
priority = 3
condition = 'avg(ENGINE_RPM.RPM, "1s") > 2000 and abs(STEER_ANGLE_SENSOR.STEER_ANGLE) < 45'
rising_edge_only = true
min_interval_ms = 2000
capture = ["ENGINE_RPM.RPM", "STEER_ANGLE_SENSOR.STEER_ANGLE"]
pre_ms = 1000
post_ms = 500
"""

Frame = tuple[float, str, str, dict[str, Value]]


def decoded_frames() -> list[Frame]:
    decoder = Decoder(load_dbc(RAV4 / "toyota_new_mc_pt_generated.dbc").database)
    frames: list[Frame] = []
    for m in read_log(RAV4 / "rav4_60s.log"):
        if m.channel != "can0":
            continue
        decoded = decoder.decode(m.arbitration_id, m.data)
        if decoded is not None:
            frames.append((m.timestamp, m.channel, decoded.message, decoded.signals))
    return frames


class NaiveEvaluator:
    """The same schemes the straightforward way: every frame through every scheme."""

    def __init__(self, schemes: Sequence[Scheme]) -> None:
        self.schemes = list(schemes)
        keep: dict[str, float] = {}
        for s in self.schemes:
            c = s.collection
            if isinstance(c, Condition):
                for name, span in c.expression.windows:
                    keep[name] = max(keep.get(name, 0.0), span)
                for spec in c.capture:
                    span = (c.pre_ms + c.post_ms) / 1000 + 0.001
                    keep[spec.name] = max(keep.get(spec.name, 0.0), span)
        names = sorted({n for s in self.schemes for n in s.signals_used()})
        self.slots = {n: SignalSlot(n, History(keep[n]) if n in keep else None) for n in names}
        self.refs = [(SignalRef.parse(n), self.slots[n]) for n in names]
        self.ref = {n: SignalRef.parse(n) for n in names}
        self.clock = Clock()
        self.fns: dict[str, Callable[[], bool | None]] = {}
        self.last: dict[tuple[str, str], Value] = {}
        self.kept: dict[tuple[str, str], float] = {}
        self.result: dict[str, bool] = {}
        self.fired: dict[str, float] = {}
        self.open: dict[str, tuple[float, list[tuple[float, Value | None]]]] = {}
        self.due: dict[str, float] = {}
        for s in self.schemes:
            if isinstance(s.collection, Condition):
                self.fns[s.id] = s.collection.expression.bind(self.slots.__getitem__, self.clock)

    def feed(
        self, t: float, bus: str, message: str, signals: Mapping[str, Value]
    ) -> list[CollectedRecord]:
        out: list[CollectedRecord] = []
        self.clock.now = t
        for s in self.schemes:  # timers first, as the values just before t count
            c = s.collection
            if isinstance(c, Periodic):
                p = c.period_ms / 1000
                due = self.due.setdefault(s.id, (math.floor(t / p) + 1) * p)
                if t >= due:
                    boundary = math.floor(t / p) * p
                    samples = [
                        Sample(x.name, self.slots[x.name].t, v)
                        for x in c.signals
                        if (v := self.slots[x.name].value) is not None
                    ]
                    if samples:
                        out.append(CollectedRecord(s.id, s.priority, boundary, tuple(samples)))
                    self.due[s.id] = boundary + p
            elif isinstance(c, Condition) and s.id in self.open:
                trigger, _ = self.open[s.id]
                if t > trigger + c.post_ms / 1000:
                    out.append(self.capture(s, c, *self.open.pop(s.id)))
        for ref, slot in self.refs:
            if ref.matches(bus, message) and ref.signal in signals:
                slot.update(t, signals[ref.signal])
        for s in self.schemes:
            c = s.collection
            if isinstance(c, OnChange):
                changed = []
                for x in c.signals:
                    ref = self.ref[x.name]
                    if not ref.matches(bus, message) or ref.signal not in signals:
                        continue
                    v = signals[ref.signal]
                    old = self.last.get((s.id, x.name))
                    if old is not None and (
                        v == old if isinstance(v, str) else abs(v - old) <= x.deadband  # type: ignore[operator]
                    ):
                        continue
                    if t - self.kept.get((s.id, x.name), -math.inf) < x.min_sample_period_ms / 1000:
                        continue
                    self.last[(s.id, x.name)] = v
                    self.kept[(s.id, x.name)] = t
                    changed.append(Sample(x.name, t, v))
                if changed:
                    out.append(CollectedRecord(s.id, s.priority, t, tuple(changed)))
            elif isinstance(c, Condition):
                result = self.fns[s.id]() is True
                fire = result and not self.result.get(s.id, False) if c.rising_edge_only else result
                self.result[s.id] = result
                if fire and s.id not in self.open:
                    if t - self.fired.get(s.id, -math.inf) < c.min_interval_ms / 1000:
                        continue
                    self.fired[s.id] = t
                    snapshot = [(self.slots[x.name].t, self.slots[x.name].value) for x in c.capture]
                    self.open[s.id] = (t, snapshot)
        return out

    def capture(
        self, s: Scheme, c: Condition, trigger: float, snapshot: list[tuple[float, Value | None]]
    ) -> CollectedRecord:
        samples = []
        for x, (snap_t, snap_v) in zip(c.capture, snapshot, strict=True):
            h = self.slots[x.name].history
            assert h is not None
            times, values = h.between(trigger - c.pre_ms / 1000, trigger + c.post_ms / 1000)
            if snap_v is not None and (not times or times[0] > trigger):
                times.insert(0, snap_t)
                values.insert(0, snap_v)
            kept = -math.inf
            for ts, v in zip(times, values, strict=True):
                if ts - kept >= x.min_sample_period_ms / 1000:
                    samples.append(Sample(x.name, ts, v))
                    kept = ts
        return CollectedRecord(s.id, s.priority, trigger, tuple(samples))


def _time(feed: Callable[[float, str, str, Mapping[str, Value]], list[CollectedRecord]],
          frames: list[Frame]) -> tuple[float, list[CollectedRecord]]:  # fmt: skip
    records: list[CollectedRecord] = []
    gc.collect()
    start = time.process_time()
    for t, bus, message, signals in frames:
        out = feed(t, bus, message, signals)
        if out:
            records += out
    return time.process_time() - start, records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    frames = decoded_frames()
    schemes = parse_schemes(MIX, "bench mix")
    ours: list[float] = []
    naive: list[float] = []
    our_records: list[CollectedRecord] = []
    naive_records: list[CollectedRecord] = []
    for _ in range(args.reps):
        seconds, naive_records = _time(NaiveEvaluator(schemes).feed, frames)
        naive.append(seconds)
        seconds, our_records = _time(SchemeEvaluator(schemes).feed, frames)
        ours.append(seconds)
    n = len(frames)
    a, b = statistics.median(naive), statistics.median(ours)
    kinds = {s.id: s.kind for s in schemes}

    def count(records: list[CollectedRecord]) -> str:
        c = Counter(kinds[r.scheme_id] for r in records)
        return f"{c['periodic']}/{c['on_change']}/{c['condition']}"

    print(
        f"schemes (2 periodic, 2 on-change, 3 condition; {n:,} decoded RAV4 frames x "
        f"{args.reps} reps, CPU time): SchemeEvaluator {n / b:,.0f} frames/s "
        f"({b / n * 1e6:.2f} µs/frame) vs naive {n / a:,.0f} frames/s "
        f"({a / n * 1e6:.2f} µs/frame): {a / b:.1f}x"
    )
    print(
        f"records periodic/on-change/condition: SchemeEvaluator {count(our_records)}, "
        f"naive {count(naive_records)}"
    )
    print(
        f"at {BUDGET_FPS:,} frames/s the schemes take {BUDGET_FPS * b / n * 100:.1f} % of one "
        f"core (naive: {BUDGET_FPS * a / n * 100:.1f} %)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

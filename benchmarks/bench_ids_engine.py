"""Benchmark: the IDS engine against a naive rule loop, measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_ids_engine.py [--reps N]``

Rules are learned (``security.learn``) from the first half of the RAV4 log (tests/data) with its
DBC for ``can0``: allowlists, unknown bursts, bus load, DLCs, timing and silences of ~120
periodic ids, and signal ranges and rates — the rule set ``tbox ids learn`` writes. Both
contenders then judge the whole log (98,800 frames, read into memory first: reading is not
measured):

* ``engine``: :meth:`security.engine.IdsEngine.process` per frame — dict lookups by bus and CAN
  id into rules compiled once, one decode per frame of a message with signal rules;
* ``naive``: every rule entry checked against every frame (is it for this bus and id? then run
  the same detector), decoding with cantools' ``decode_message`` for each signal entry that
  applies — what a straightforward rule interpreter does. It runs on the first 10,000 frames
  only, to keep the benchmark short.

Times are CPU time of this process (``time.process_time``), the median of ``--reps`` runs. Prints
frames per second of both and the ratio; exits 1 if the engine judges fewer than 200,000 frames
per second (the issue's target on one core), 0 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from agent.canlog import read_log
from can_dbc import load_dbc
from security.compiler import compile_rules
from security.engine import IdsEngine
from security.learn import learn_rules
from security.rulefile import format_rules, parse_rules
from security.rules import RuleSet

RAV4 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rav4-2018-comma2k19"
REQUIRED_FRAMES_PER_S = 200_000
NAIVE_FRAMES = 10_000


def learned_rules(frames: list[Any], database: Any) -> RuleSet:
    half = len(frames) // 2
    learned = learn_rules(frames[:half], {"can0": [database]}, source="rav4 first half")
    return parse_rules(format_rules(learned), "learned.toml")


def run_engine(rules: RuleSet, databases: dict[str, list[Any]], frames: list[Any]) -> float:
    engine = IdsEngine(rules, databases=databases)
    process = engine.process
    gc.collect()
    started = time.process_time()
    for frame in frames:
        process(frame)
    engine.finish()
    return time.process_time() - started


def run_naive(rules: RuleSet, databases: dict[str, list[Any]], frames: list[Any]) -> float:
    """Every entry of every rule, checked against every frame."""
    compiled = compile_rules(rules, databases)
    frame_checks: list[tuple[str, int | None, Any]] = []
    value_checks: list[tuple[str, int, str, Any]] = []
    for plan in compiled.buses.values():
        frame_checks += [(plan.name, None, check) for _, check in plan.bus_checks]
        for node in plan.nodes.values():
            frame_checks += [(plan.name, node.can_id, check) for _, check in node.checks]
            value_checks += [
                (plan.name, node.can_id, name, check) for name, _, check in node.signal_checks
            ]
    known = {(plan.name, i) for plan in compiled.buses.values() for i in plan.nodes}
    unknown_checks = {
        plan.name: [check for _, check in plan.unknown_checks]
        for plan in compiled.buses.values()
        if plan.has_allowlist
    }
    gc.collect()
    started = time.process_time()
    for frame in frames:
        bus, can_id, t = frame.channel, frame.arbitration_id, frame.timestamp
        if (bus, can_id) not in known:
            for check in unknown_checks.get(bus, ()):
                check(frame, t)
        for rule_bus, rule_id, check in frame_checks:
            if rule_bus == bus and (rule_id is None or rule_id == can_id):
                check(frame, t)
        for rule_bus, rule_id, name, check_value in value_checks:
            if rule_bus == bus and rule_id == can_id:
                signals = databases[bus][0].decode_message(can_id, frame.data, decode_choices=False)
                check_value(signals[name], t)
    return time.process_time() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="runs of each contender (default 5)")
    args = parser.parse_args()

    frames = list(read_log(RAV4 / "rav4_60s.log"))
    database = load_dbc(RAV4 / "toyota_new_mc_pt_generated.dbc").database
    databases = {"can0": [database]}
    rules = learned_rules(frames, database)
    entries = sum(len(getattr(rule.spec, "entries", ())) or 1 for rule in rules)
    naive_frames = frames[:NAIVE_FRAMES]

    engine_times, naive_times = [], []
    for _ in range(max(1, args.reps)):
        engine_times.append(run_engine(rules, databases, frames))
        naive_times.append(run_naive(rules, databases, naive_frames))
    engine_rate = len(frames) / statistics.median(engine_times)
    naive_rate = len(naive_frames) / statistics.median(naive_times)

    print(f"rule set: {len(rules)} rules, {entries} entries, learned from the first half")
    print(f"{'':8} {'frames':>8} {'µs/frame':>9} {'frames/s':>10}")
    for name, count, rate in (
        ("engine", len(frames), engine_rate),
        ("naive", len(naive_frames), naive_rate),
    ):
        print(f"{name:8} {count:8,} {1e6 / rate:9.2f} {rate:10,.0f}")
    print(f"engine / naive: {engine_rate / naive_rate:.1f}x")
    if engine_rate < REQUIRED_FRAMES_PER_S:
        print(
            f"FAIL: the engine judges {engine_rate:,.0f} frames/s, below {REQUIRED_FRAMES_PER_S:,}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading a candump -L log: `agent.canlog.read_log` vs python-can's `can.LogReader`.

Both read the real RAV4 log (98,800 frames) in the same run; prints frames/s and the ratio.

    .venv/bin/python benchmarks/bench_canlog.py [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import can

from agent.canlog import read_log

LOG = Path(__file__).resolve().parents[1] / "tests/data/rav4-2018-comma2k19/rav4_60s.log"


def _time(reader: Callable[[], Iterable[Any]]) -> tuple[float, int]:
    start = time.process_time()
    n = sum(1 for _ in reader())
    return time.process_time() - start, n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    ours, theirs = [], []
    n = 0
    for _ in range(args.reps):
        seconds, n = _time(lambda: can.LogReader(str(LOG)))
        theirs.append(seconds)
        seconds, n2 = _time(lambda: read_log(LOG))
        ours.append(seconds)
        assert n == n2, (n, n2)
    a, b = statistics.median(theirs), statistics.median(ours)
    print(
        f"read candump -L log: tbox read_log {n / b:,.0f} frames/s vs can.LogReader "
        f"{n / a:,.0f} frames/s: {a / b:.2f}x ({n} frames x {args.reps} reps, CPU time)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

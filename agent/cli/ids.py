"""``tbox ids …``: the intrusion detection engine on CAN logs (contract C4).

* ``tbox ids run --rules FILE [--dbc [BUS=]FILE …] [--keys FILE] [--frames] LOG`` — one JSON
  object per security event on stdout (with ``--frames``: one per flagged frame,
  ``{"index", "t", "channel", "id", "rules"}``); a summary on stderr.
* ``tbox ids learn [--dbc [BUS=]FILE …] LOG -o RULES`` — a rule file learned from clean traffic.

LOG is any format ``tbox decode`` reads (contract C2), or ``-`` for stdin. A malformed rule file
is reported in one line naming file, line, key and rule (exit status 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from agent.cli.dbc_args import DbcSet, add_dbc_option, load_dbc_args
from agent.errors import InputError, UsageError

# Events are collected from the engine every this many frames (and at the end of the log).
_POLL_FRAMES = 4096
_SHOWN_RULES = 8


def register(subparsers: Any) -> None:
    """Add ``tbox ids`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ids",
        help="intrusion detection on CAN logs: run rules, learn a baseline",
        description=(
            "Intrusion detection: 'run' checks a CAN log against a rule file and prints "
            "security events; 'learn' writes a baseline rule file from clean traffic."
        ),
    )
    sub = parser.add_subparsers(dest="ids_command", metavar="SUBCOMMAND")
    sub.required = True

    run_parser: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="check a CAN log against a rule file",
        description=(
            "Print one JSON object per security event (rule, bus, CAN id, count, observed, "
            "expected, AUTOSAR IdsM fields, forensic frames); with --frames, one object per "
            'flagged frame instead: {"index", "t", "channel", "id", "rules"}. A summary goes '
            "to stderr. LOG may be any format python-can reads (.log .asc .blf .trc .csv .mf4), "
            "candump screen output, or - for stdin."
        ),
    )
    run_parser.add_argument("--rules", required=True, metavar="FILE", help="the rule file")
    add_dbc_option(run_parser)
    run_parser.add_argument("--keys", metavar="FILE", help="SecOC key file (needed by secoc rules)")
    run_parser.add_argument(
        "--frames", action="store_true", help="print per-frame verdicts instead of events"
    )
    run_parser.add_argument(
        "--idsm-instance", type=int, default=1, metavar="N", help="IdsM instance id (0-1023)"
    )
    run_parser.add_argument(
        "--window",
        type=float,
        default=1.0,
        metavar="S",
        help="aggregation window in seconds (default 1; doubles while an attack goes on)",
    )
    run_parser.add_argument(
        "--forensic",
        type=int,
        default=16,
        metavar="N",
        help="frames kept before and after each event (default 16)",
    )
    run_parser.add_argument("log", metavar="LOG", help="CAN log file, or - for stdin")
    run_parser.set_defaults(handler=run)

    learn_parser: argparse.ArgumentParser = sub.add_parser(
        "learn",
        help="learn a baseline rule file from clean traffic",
        description=(
            "Write a rule file learned from a recording of clean traffic: ids per bus, data "
            "lengths, timing and silences of periodic ids, bus load, and with DBC files "
            "counters, checksums and signal ranges and rates. Review it before use."
        ),
    )
    add_dbc_option(learn_parser)
    learn_parser.add_argument(
        "-o", "--output", required=True, metavar="RULES", help="the rule file to write"
    )
    learn_parser.add_argument(
        "--window-periods",
        type=int,
        default=10,
        metavar="N",
        help="periods per timing window (default 10)",
    )
    learn_parser.add_argument("log", metavar="LOG", help="CAN log file, or - for stdin")
    learn_parser.set_defaults(handler=learn)


class _BusDatabases(Mapping[str, list[Any]]):
    """The ``--dbc`` databases of each bus, looked up when a bus shows up (a bare ``--dbc``
    applies to every bus, so the buses cannot be listed in advance)."""

    def __init__(self, dbcs: DbcSet) -> None:
        self._dbcs = dbcs

    def __getitem__(self, bus: str) -> list[Any]:
        databases = self._dbcs.for_bus(bus)
        if not databases:
            raise KeyError(bus)
        return databases

    def __iter__(self) -> Iterator[str]:
        return iter(self._dbcs.per_bus)

    def __len__(self) -> int:
        return len(self._dbcs.per_bus)


def _check_log(log: str) -> None:
    if log != "-" and not Path(log).is_file():
        raise UsageError(f"log file {log!r} does not exist")


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox ids run``."""
    from security.aggregate import AggregationPolicy
    from security.engine import EngineConfig, IdsEngine
    from security.keys import load_keys
    from security.rulefile import load_rules

    _check_log(args.log)
    if not Path(args.rules).is_file():
        raise UsageError(f"rule file {args.rules!r} does not exist")
    if args.keys is not None and not Path(args.keys).is_file():
        raise UsageError(f"key file {args.keys!r} does not exist")
    if not 0 <= args.idsm_instance <= 0x3FF:
        raise UsageError("--idsm-instance must be in 0-1023")
    if not args.window > 0 or args.window > 3600:
        raise UsageError("--window must be in (0, 3600] seconds")
    if not 0 <= args.forensic <= 1000:
        raise UsageError("--forensic must be in 0-1000 frames")
    rules = load_rules(args.rules)
    keys = load_keys(args.keys) if args.keys is not None else None
    dbcs = load_dbc_args(args.dbc, verbose=args.verbose, prog="tbox ids run")
    config = EngineConfig(
        idsm_instance_id=args.idsm_instance,
        aggregation=AggregationPolicy(window_s=args.window, max_window_s=max(60.0, args.window)),
        forensic_before=args.forensic,
        forensic_after=args.forensic,
    )
    engine = IdsEngine(rules, databases=_BusDatabases(dbcs), keys=keys, config=config)
    try:
        counts = run_log(args.log, engine, frames=args.frames, out=sys.stdout)
    except BrokenPipeError:
        raise  # `tbox ids run … --frames | head`: the reader is done (the CLI exits 0)
    except OSError as e:
        raise InputError(f"cannot read {args.log}: {e.strerror or e}") from e
    finally:
        sys.stdout.flush()
    print(_run_summary(args.log, counts, engine), file=sys.stderr)
    return 0


def run_log(log: str, engine: Any, *, frames: bool, out: IO[str]) -> dict[str, Any]:
    """Feed every frame of *log* to *engine*; write events (or flagged frames) to *out*."""
    from agent.canlog import LogReadStats, read_log

    stats = LogReadStats()
    events_by_rule: Counter[str] = Counter()
    write = out.write
    process = engine.process
    index = -1
    for index, frame in enumerate(read_log(log, stats)):
        hits = process(frame)
        if hits and frames:
            write(
                json.dumps(
                    {
                        "index": index,
                        "t": frame.timestamp,
                        "channel": frame.channel,
                        "id": frame.arbitration_id,
                        "rules": list(hits),
                    }
                )
            )
            write("\n")
        if not index % _POLL_FRAMES:
            _write_events(engine.pop_events(), events_by_rule, None if frames else write)
    _write_events(engine.finish(), events_by_rule, None if frames else write)
    return {
        "frames": index + 1,
        "malformed": stats.malformed,
        "malformed_examples": list(stats.first_errors),
        "events": events_by_rule,
    }


def _write_events(events: list[Any], counter: Counter[str], write: Any) -> None:
    for event in events:
        counter[event.rule_id] += 1
        if write is not None:
            write(json.dumps(event.to_json()))
            write("\n")


def _run_summary(log: str, counts: dict[str, Any], engine: Any) -> str:
    stats = engine.stats
    events: Counter[str] = counts["events"]
    text = (
        f"tbox ids run: {log}: {counts['frames']} frames, {stats.flagged_frames} flagged, "
        f"{sum(events.values())} events"
    )
    if events:
        top = ", ".join(f"{rule}×{n}" for rule, n in events.most_common(_SHOWN_RULES))
        more = len(events) - min(len(events), _SHOWN_RULES)
        text += f" ({top}" + (f" and {more} more rules" if more else "") + ")"
    if counts["malformed"]:
        text += f"; {counts['malformed']} malformed lines skipped"
        if counts["malformed_examples"]:
            text += f" (first: {counts['malformed_examples'][0]})"
    return text


def learn(args: argparse.Namespace) -> int:
    """Handle ``tbox ids learn``."""
    from agent.canlog import LogReadStats, read_log
    from agent.durable_file import write_durably
    from security.learn import BaselineLearner, LearnOptions
    from security.rulefile import format_rules

    _check_log(args.log)
    output = Path(args.output)
    if output.is_dir():
        raise UsageError(f"-o {args.output!r} is a directory")
    if not output.parent.is_dir():
        raise UsageError(f"-o {args.output!r}: directory {str(output.parent)!r} does not exist")
    if not 2 <= args.window_periods <= 1000:
        raise UsageError("--window-periods must be in 2-1000")
    dbcs = load_dbc_args(args.dbc, verbose=args.verbose, prog="tbox ids learn")
    stats = LogReadStats()
    learner = BaselineLearner(
        _BusDatabases(dbcs),
        LearnOptions(window_periods=args.window_periods),
        source=Path(args.log).name if args.log != "-" else "stdin",
    )
    try:
        for frame in read_log(args.log, stats):
            learner.add(frame)
    except OSError as e:
        raise InputError(f"cannot read {args.log}: {e.strerror or e}") from e
    if not learner.frames:
        raise InputError(f"{args.log}: no frames to learn from")
    rules = learner.rules()
    header = (
        f"IDS baseline learned by tbox ids learn from {args.log} ({learner.frames} frames).\n"
        "Review before use: the rules describe this recording, not the vehicle's every mode."
    )
    write_durably(output, format_rules(rules, header=header).encode())
    kinds = Counter(rule.kind for rule in rules)
    print(
        f"tbox ids learn: {args.log}: {learner.frames} frames, {len(rules)} rules written to "
        f"{args.output} (" + ", ".join(f"{k}×{n}" for k, n in sorted(kinds.items())) + ")",
        file=sys.stderr,
    )
    return 0

"""``tbox decode --dbc FILE … LOG``: decoded frames as JSON lines (contract C3)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path
from typing import IO, Any

from agent.cli.dbc_args import DbcSet, add_dbc_option, load_dbc_args
from agent.errors import InputError, UsageError

_SHOWN_FAILURES = 5


def register(subparsers: Any) -> None:
    """Add ``tbox decode``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "decode",
        help="decode a CAN log with DBC files into JSON lines",
        description=(
            "Print one JSON object per decoded frame: "
            '{"t", "channel", "id", "message", "signals"}. Frames whose id no DBC knows are '
            "skipped; a summary of skipped and failed frames goes to stderr. LOG may be any "
            "format python-can reads (.log .asc .blf .trc .csv .mf4), candump screen output, "
            "or - for stdin."
        ),
    )
    add_dbc_option(parser, required=True)
    parser.add_argument(
        "--choices", action="store_true", help="print value-table names instead of numbers"
    )
    parser.add_argument("log", metavar="LOG", help="CAN log file, or - for stdin")
    parser.set_defaults(handler=run)


class _Decoders:
    """One compiled decoder per bus, built the first time a bus shows up in the log."""

    def __init__(self, dbcs: DbcSet, decode_choices: bool) -> None:
        self._dbcs = dbcs
        self._choices = decode_choices
        self._by_bus: dict[str, Any] = {}

    def for_bus(self, bus: str) -> Any:
        decoder = self._by_bus.get(bus)
        if decoder is None:
            from can_dbc import Decoder

            databases = self._dbcs.for_bus(bus)
            decoder = (
                Decoder.from_databases(databases, decode_choices=self._choices)
                if databases
                else None
            )
            self._by_bus[bus] = decoder
        return decoder


def _finite(value: Any) -> Any:
    # JSON has no NaN or infinity; a float signal carrying one is printed as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _line(t: float, channel: str, frame_id: int, message: str, signals: dict[str, Any]) -> str:
    obj = {"t": t, "channel": channel, "id": frame_id, "message": message, "signals": signals}
    text = json.dumps(obj)
    if "NaN" in text or "Infinity" in text:
        obj["signals"] = {k: _finite(v) for k, v in signals.items()}
        text = json.dumps(obj)
    return text


def decode_log(log: str, dbcs: DbcSet, *, decode_choices: bool, out: IO[str]) -> dict[str, Any]:
    """Decode every frame of *log* to JSON lines on *out*; return the counters for the summary."""
    from agent.canlog import LogReadStats, read_log
    from can_dbc import DecodeError

    decoders = _Decoders(dbcs, decode_choices)
    read_stats = LogReadStats()
    decoded = 0
    unknown: Counter[tuple[str, int]] = Counter()
    failures: list[str] = []
    failed = 0
    write = out.write
    for frame in read_log(log, read_stats):
        channel = str(frame.channel) if frame.channel is not None else ""
        decoder = decoders.for_bus(channel)
        frame_id = frame.arbitration_id
        if decoder is None or frame.is_remote_frame or frame.is_error_frame:
            unknown[(channel, frame_id)] += 1
            continue
        try:
            result = decoder.decode(frame_id, frame.data)
        except DecodeError as e:
            failed += 1
            if len(failures) < _SHOWN_FAILURES:
                failures.append(f"t={frame.timestamp:.6f} {channel} 0x{frame_id:X}: {e}")
            continue
        if result is None:
            unknown[(channel, frame_id)] += 1
            continue
        decoded += 1
        write(_line(frame.timestamp, channel, frame_id, result.message, result.signals))
        write("\n")
    return {
        "frames": read_stats.frames,
        "decoded": decoded,
        "unknown": unknown,
        "failed": failed,
        "failures": failures,
        "malformed": read_stats.malformed,
        "malformed_examples": list(read_stats.first_errors),
    }


def _summary(log: str, counts: dict[str, Any]) -> list[str]:
    unknown: Counter[tuple[str, int]] = counts["unknown"]
    lines = [
        f"tbox decode: {log}: {counts['frames']} frames read, {counts['decoded']} decoded, "
        f"{sum(unknown.values())} skipped (unknown id), {counts['failed']} failed, "
        f"{counts['malformed']} malformed lines"
    ]
    if unknown:
        top = ", ".join(f"{bus} 0x{fid:X}×{n}" for (bus, fid), n in unknown.most_common(5))
        more = len(unknown) - min(len(unknown), 5)
        lines.append(f"tbox decode: unknown ids: {top}" + (f" and {more} more ids" if more else ""))
    lines += [f"tbox decode: failed: {f}" for f in counts["failures"]]
    lines += [f"tbox decode: malformed: {m}" for m in counts["malformed_examples"]]
    return lines


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox decode``."""
    if args.log != "-" and not Path(args.log).is_file():
        raise UsageError(f"log file {args.log!r} does not exist")
    dbcs = load_dbc_args(args.dbc, verbose=args.verbose, prog="tbox decode")
    try:
        counts = decode_log(args.log, dbcs, decode_choices=args.choices, out=sys.stdout)
    except OSError as e:
        raise InputError(f"cannot read {args.log}: {e.strerror or e}") from e
    finally:
        sys.stdout.flush()
    for line in _summary(args.log, counts):
        print(line, file=sys.stderr)
    return 0

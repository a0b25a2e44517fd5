"""Attacking a CAN log file: the attacked log, per-frame labels and the attack's description.

:func:`attack_log` reads any log :func:`agent.canlog.read_log` reads, streams it through an
:class:`~sim.attacks.AttackStream` and writes three files:

``OUT``
    The attacked log in ``candump -L`` format (:func:`sim.record.format_candump_line`).
``OUT.labels.csv``
    Header ``index,attack``, then one row per injected or forged frame: its 0-based index in
    ``OUT`` and the attack's kind. Original frames have no row; a suspension writes none at all.
``OUT.attack.json``
    One JSON object: ``kind``, ``log``, ``output``, ``labels``, ``start`` and ``end`` (absolute log
    time of the window), ``start_offset`` and ``duration`` (seconds, relative to the log's first
    frame), ``channel``, ``target_ids`` (ints), ``seed``, ``parameters`` (the kind's options and
    what was worked out: rates, learned period, forged signal and value, checksum model),
    ``frames_in``, ``frames_out``, ``injected``, ``removed``, ``first_injected_time`` and
    ``first_removed_time`` (absolute, or null), ``log_start`` and ``log_end`` (first and last
    frame times of the input).

The three files appear together or not at all: each is written to a temporary name in the same
folder and renamed once everything succeeded.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import IO, Any

from agent.canlog import LogReadStats, read_log
from agent.errors import InputError, UsageError
from sim.attacks import Attack, AttackStream
from sim.errors import SimError
from sim.record import format_candump_line

__all__ = ["attack_log", "description_path", "labels_path"]

_CHUNK = 10_000  # lines written at a time


def labels_path(output: str | Path) -> Path:
    """Where the labels of the attacked log *output* go: ``OUT.labels.csv``."""
    return Path(f"{output}.labels.csv")


def description_path(output: str | Path) -> Path:
    """Where the description of the attacked log *output* goes: ``OUT.attack.json``."""
    return Path(f"{output}.attack.json")


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _open(path: Path, shown: Path) -> IO[str]:
    try:
        return path.open("w", encoding="ascii", newline="\n")
    except OSError as e:
        raise UsageError(f"cannot write {shown}: {e.strerror or e}") from e


def attack_log(
    log: str | Path,
    output: str | Path,
    attack: Attack,
    *,
    read_stats: LogReadStats | None = None,
) -> dict[str, Any]:
    """Write *log* with *attack* applied to *output*, its labels and description (see the module
    docstring); return the description.

    Raises :class:`UsageError` for a missing log or an unwritable output, :class:`InputError` for
    an unreadable or empty log and :class:`SimError` when the log ends before the attack starts.
    """
    if str(output) == "-":
        raise UsageError("the attacked log must be a file (-o OUT): its labels go next to it")
    out = Path(output)
    targets = (out, labels_path(out), description_path(out))
    temps = tuple(_temporary(p) for p in targets)
    stats = read_stats if read_stats is not None else LogReadStats()
    stream = AttackStream(attack)
    first_time: float | None = None
    try:
        with _open(temps[0], out) as log_file, _open(temps[1], targets[1]) as label_file:
            label_file.write("index,attack\n")
            lines: list[str] = []
            rows: list[str] = []
            for index, (frame, kind) in enumerate(stream.apply(read_log(log, stats))):
                lines.append(format_candump_line(frame))
                if kind is not None:
                    rows.append(f"{index},{kind}\n")
                if len(lines) >= _CHUNK:
                    log_file.writelines(lines)
                    label_file.writelines(rows)
                    lines.clear()
                    rows.clear()
            log_file.writelines(lines)
            label_file.writelines(rows)
        first_time = stream.origin
        if first_time is None or stream.last_time is None:
            raise InputError(f"{log}: no CAN frames to attack")
        if stream.last_time < first_time + attack.start:
            raise SimError(
                f"{log} ends {stream.last_time - first_time:.1f} s after its first frame, before "
                f"the attack starts at {attack.start:g} s (choose an earlier --start)"
            )
        description = {
            "kind": attack.kind,
            "log": str(log),
            "output": str(out),
            "labels": str(targets[1]),
            **{k: v for k, v in stream.describe().items() if k != "kind"},
            "log_start": first_time,
            "log_end": stream.last_time,
        }
        try:
            temps[2].write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise UsageError(f"cannot write {targets[2]}: {e.strerror or e}") from e
        for temp, target in zip(temps, targets, strict=True):
            temp.replace(target)
    except OSError as e:
        raise InputError(f"cannot write {out}: {e.strerror or e}") from e
    finally:
        for temp in temps:
            with contextlib.suppress(OSError):
                temp.unlink()
    return description

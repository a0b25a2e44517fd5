"""``--dbc [BUS=]FILE`` options shared by the bench commands.

A bare ``--dbc FILE`` applies to every bus; ``--dbc can0=FILE`` only to the bus named ``can0``.
Files are loaded once through the tolerant loader and their repair warnings reported on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.errors import UsageError

_SHOWN_WARNINGS = 5


@dataclass(frozen=True, slots=True)
class DbcBinding:
    """One ``--dbc`` option: a file and the bus it is bound to (``None``: every bus)."""

    path: Path
    bus: str | None = None


def parse_dbc_arg(text: str) -> DbcBinding:
    """Parse ``FILE`` or ``BUS=FILE`` (a file whose own name contains ``=`` still works)."""
    if "=" in text and not Path(text).exists():
        bus, _, path = text.partition("=")
        if not bus or not path:
            raise UsageError(f"--dbc {text!r}: write FILE or BUS=FILE, e.g. can0=vehicle.dbc")
        return DbcBinding(Path(path), bus)
    return DbcBinding(Path(text))


def add_dbc_option(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    """Add the repeatable ``--dbc [BUS=]FILE`` option and ``--verbose`` for all repair warnings."""
    parser.add_argument(
        "--dbc",
        action="append",
        default=[],
        metavar="[BUS=]FILE",
        required=required,
        help="DBC file; repeat for several; BUS=FILE binds it to one bus (e.g. can0=pt.dbc)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print every DBC repair warning, not just a few"
    )


@dataclass
class DbcSet:
    """The loaded DBC databases, for every bus and per bus."""

    common: list[Any] = field(default_factory=list)
    per_bus: dict[str, list[Any]] = field(default_factory=dict)

    def for_bus(self, bus: str) -> list[Any]:
        """Databases that apply to *bus*: the common ones first, then its own (which win)."""
        return [*self.common, *self.per_bus.get(bus, [])]

    @property
    def all(self) -> list[Any]:
        """Every loaded database."""
        return [*self.common, *(db for dbs in self.per_bus.values() for db in dbs)]


def load_dbc_args(texts: Sequence[str], *, verbose: bool = False, prog: str = "tbox") -> DbcSet:
    """Load every ``--dbc`` option; print repair warnings on stderr; raise on unloadable files."""
    from can_dbc import load_dbc

    dbcs = DbcSet()
    cache: dict[Path, Any] = {}
    for text in texts:
        binding = parse_dbc_arg(text)
        if not binding.path.is_file():
            raise UsageError(f"DBC file {str(binding.path)!r} does not exist")
        resolved = binding.path.resolve()
        if resolved not in cache:
            loaded = load_dbc(binding.path)
            cache[resolved] = loaded.database
            _report_warnings(prog, binding.path, loaded.warnings, verbose)
        if binding.bus is None:
            dbcs.common.append(cache[resolved])
        else:
            dbcs.per_bus.setdefault(binding.bus, []).append(cache[resolved])
    return dbcs


def _report_warnings(prog: str, path: Path, warnings: Sequence[object], verbose: bool) -> None:
    shown = warnings if verbose else warnings[:_SHOWN_WARNINGS]
    for warning in shown:
        print(f"{prog}: {warning}", file=sys.stderr)
    hidden = len(warnings) - len(shown)
    if hidden:
        print(
            f"{prog}: {path}: {hidden} more repair warnings (--verbose shows them)",
            file=sys.stderr,
        )

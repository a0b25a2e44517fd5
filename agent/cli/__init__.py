"""The ``tbox`` command line (contract C1).

One module per subcommand, each with ``register(subparsers)`` that adds its parser and sets
``handler`` to a function ``(argparse.Namespace) -> int``. Exit status: 0 on success, 2 on bad
usage, 1 on a failure explained in one line on stderr; a traceback only with ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from agent.errors import TboxError, UsageError

# Subcommand modules, in the order `tbox --help` lists them.
_SUBCOMMANDS = (
    "check_config",
    "command",
    "debug",
    "decode",
    "demo",
    "ecu",
    "events",
    "flash",
    "ids",
    "monitor",
    "ota",
    "run",
    "sim",
    "status",
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on usage errors already; keep its one-line message format."""


def build_parser() -> argparse.ArgumentParser:
    """The full ``tbox`` argument parser with every subcommand registered."""
    parser = _Parser(
        prog="tbox",
        description="tbox-agent: CAN intake, DBC decoding and the virtual vehicle.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks and debug logging on failure"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in _SUBCOMMANDS:
        module = importlib.import_module(f"agent.cli.{name}")
        module.register(subparsers)
    return parser


def _explained_errors() -> tuple[type[Exception], ...]:
    """Every package's base error: each carries a one-line message a user can act on."""
    from can_dbc.errors import DbcError
    from sim.errors import SimError

    return (TboxError, DbcError, SimError)


def _first_explained(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    explained = _explained_errors()
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found = _first_explained(exc)
            if found is not None:
                return found
        elif isinstance(exc, explained):
            return exc
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tbox`` with *argv* (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.debug:
        # python-can's socketcand client logs a warning whenever TCP splits a frame.
        logging.getLogger("can.interfaces.socketcand").setLevel(logging.ERROR)
    prog = f"tbox {args.command}"
    try:
        status: int = args.handler(args)
    except UsageError as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except _explained_errors() as e:
        if args.debug:
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # A task group failed: report the first error a user can act on, like any other.
        leaf = _first_explained(group)
        if leaf is None or args.debug:
            raise
        print(f"{prog}: error: {leaf}", file=sys.stderr)
        return 2 if isinstance(leaf, UsageError) else 1
    except BrokenPipeError:
        # `tbox decode … | head` closes stdout early; that is not a failure.
        sys.stderr.close()
        return 0
    return status

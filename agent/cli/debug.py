"""``tbox debug …``: tools for developers and test rigs.

* ``tbox debug crashpoints [--json]`` — every crash point (contract C6) with its description;
  ``TBOX_CRASHPOINT=<name>:<n>`` makes a process exit with status 137 the n-th time it reaches
  ``<name>``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``tbox debug`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "debug",
        help="developer tools: list crash points",
        description="Developer and test-rig tools.",
    )
    sub = parser.add_subparsers(dest="debug_command", metavar="SUBCOMMAND")
    sub.required = True
    p = sub.add_parser(
        "crashpoints",
        help="list every crash point (contract C6)",
        description=(
            "List every named crash point, one per line: NAME, then its description. With "
            "TBOX_CRASHPOINT=NAME:N in its environment, any tbox process exits at once with "
            "status 137 the N-th time it reaches NAME, as a power cut would."
        ),
    )
    p.add_argument(
        "--json",
        action="store_true",
        help='print one JSON array of {"name", "description"} objects instead',
    )
    p.set_defaults(handler=_crashpoints)


def _crashpoints(args: argparse.Namespace) -> int:
    from agent.crashpoints import all_crashpoints

    points = all_crashpoints()
    if args.json:
        print(json.dumps([{"name": p.name, "description": p.description} for p in points]))
        return 0
    width = max((len(p.name) for p in points), default=0)
    for point in points:
        print(f"{point.name:<{width}}  {point.description}")
    return 0

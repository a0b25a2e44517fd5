"""``tbox run --config FILE``: the agent (contract C1).

Loads and validates the configuration once (:mod:`agent.config`), then runs
:class:`~agent.service.AgentService` until SIGTERM or SIGINT, which start its staged shutdown;
a second signal during the shutdown is ignored (each stage is bounded by its own timeout). Logs
go to stderr (systemd's journal when run as a service).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from agent.errors import TboxError

_LEVELS = ("debug", "info", "warning", "error")


def register(subparsers: Any) -> None:
    """Add ``tbox run``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the agent with a TOML configuration",
        description=(
            "Run the agent: read the configured CAN buses, collect telemetry by the collection "
            "schemes, keep it in the upload queue and upload it over MQTT; answer signed "
            "commands. Stops cleanly on SIGTERM or Ctrl-C. Check a configuration first with "
            "`tbox check-config FILE`."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="the TOML configuration")
    parser.add_argument(
        "--log-level", choices=_LEVELS, default="info", help="least severity logged (info)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox run``."""
    from agent.config import load_config

    config = load_config(args.config)
    level = logging.DEBUG if args.debug else getattr(logging, args.log_level.upper())
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    try:
        asyncio.run(_serve(config))
    except OSError as e:
        # A state directory or queue file that cannot be created, a socket path in use …
        where = f" ({e.filename})" if e.filename else ""
        raise TboxError(f"{e.strerror or e}{where}") from e
    return 0


async def _serve(config: Any) -> None:
    from agent.service import AgentService

    service = AgentService(config)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    stopping = False

    def stop(signum: int) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        logging.getLogger("agent").info("%s received: shutting down", signal.Signals(signum).name)
        task.cancel()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop, signum)
    try:
        await service.run()
    except asyncio.CancelledError:
        if not stopping:
            raise

"""``tbox monitor``: a live table of the latest values per message and signal, with rates per id.

Three sources: live buses (``--bus URL``, C7), a log file (C2), or the built-in simulator
(``--sim [SCENARIO]``) running in this process on a python-can virtual bus.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from agent.busurl import BusSpec, parse_bus_url
from agent.cli.dbc_args import DbcSet, add_dbc_option, load_dbc_args
from agent.errors import UsageError
from agent.live_view import LiveView, units_of

if TYPE_CHECKING:
    from agent.frame_source import BusStats

_REFRESH_S = 0.25
_SIM_BUS = "can0"


def register(subparsers: Any) -> None:
    """Add ``tbox monitor``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "monitor",
        help="live table of decoded signals and rates per id (bus, log or simulator)",
        description=(
            "Show the latest value of every message and signal with its rate per id. "
            "Give buses (--bus URL, repeatable), a LOG file, or --sim to watch the built-in "
            "virtual vehicle. Without a terminal (or with --once) the final table is printed."
        ),
    )
    parser.add_argument("log", nargs="?", metavar="LOG", help="read frames from a CAN log")
    parser.add_argument(
        "--bus", action="append", default=[], metavar="URL", help="bus URL (C7); repeatable"
    )
    parser.add_argument(
        "--sim",
        nargs="?",
        const="city",
        metavar="SCENARIO",
        help="watch the built-in simulator (scenario name or TOML file; default city)",
    )
    add_dbc_option(parser)
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--once", action="store_true", help="no live view: print the table once at the end"
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator seed (with --sim)")
    parser.set_defaults(handler=run)


class _Watch:
    """Decodes frames into a :class:`LiveView`, one compiled decoder per bus."""

    def __init__(self, dbcs: DbcSet) -> None:
        from can_dbc import Decoder

        self.view = LiveView(units_of(dbcs.all))
        self.bus_stats: list[BusStats] = []
        self.dbcs = dbcs
        self._decoders: dict[str, Any] = {}
        self._decoder_cls = Decoder

    def decoder(self, bus: str) -> Any:
        if bus not in self._decoders:
            dbs = self.dbcs.for_bus(bus)
            self._decoders[bus] = (
                self._decoder_cls.from_databases(dbs, decode_choices=True) if dbs else None
            )
        return self._decoders[bus]

    def add(self, frame: Any) -> None:
        from can_dbc import DecodeError

        bus = str(frame.channel) if frame.channel is not None else ""
        decoder = self.decoder(bus)
        decoded = None
        if decoder is not None and not frame.is_remote_frame:
            try:
                decoded = decoder.decode(frame.arbitration_id, frame.data)
            except DecodeError:
                self.view.failed += 1
        self.view.add(bus, frame.arbitration_id, frame.timestamp, frame.data, decoded)


def _dbcs_for(args: argparse.Namespace) -> DbcSet:
    texts = list(args.dbc)
    if not texts and (args.sim is not None or not args.log):
        from can_dbc import SAMPLE_VEHICLE_DBC

        texts = [str(SAMPLE_VEHICLE_DBC)]
    return load_dbc_args(texts, verbose=args.verbose, prog="tbox monitor")


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox monitor``."""
    chosen = sum((bool(args.bus), args.log is not None, args.sim is not None))
    if chosen != 1:
        raise UsageError("give exactly one source: --bus URL (repeatable), a LOG file, or --sim")
    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    if args.log is not None and args.log != "-" and not Path(args.log).is_file():
        raise UsageError(f"log file {args.log!r} does not exist")
    specs = [parse_bus_url(url) for url in args.bus]
    watch = _Watch(_dbcs_for(args))
    console = Console()
    live_view = console.is_terminal and not args.once
    title = _title(args)
    if args.log is not None:
        _read_log(args.log, watch, console if live_view else None, title)
    else:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_watch_buses(args, specs, watch, console if live_view else None, title))
    console.print(watch.view.render(title=title))
    console.print(
        f"{watch.view.frames} frames, {watch.view.decoded} decoded, {watch.view.failed} failed",
        highlight=False,
    )
    for bus in watch.bus_stats:
        if bus.errors:
            print(
                f"tbox monitor: bus {bus.name}: {bus.errors} errors, {bus.reopens} reopens "
                f"(last: {bus.last_error})",
                file=sys.stderr,
            )
    return 0


def _title(args: argparse.Namespace) -> str:
    if args.sim is not None:
        return f"tbox monitor — simulator ({args.sim})"
    if args.log is not None:
        return f"tbox monitor — {args.log}"
    return "tbox monitor — " + ", ".join(args.bus)


def _read_log(path: str, watch: _Watch, console: Console | None, title: str) -> None:
    from agent.canlog import LogReadStats, read_log

    stats = LogReadStats()
    live = Live(console=console, auto_refresh=False) if console else None
    next_refresh = time.monotonic()
    with live or contextlib.nullcontext():
        for frame in read_log(path, stats):
            watch.add(frame)
            if live is not None and time.monotonic() >= next_refresh:
                live.update(watch.view.render(title=title), refresh=True)
                next_refresh = time.monotonic() + _REFRESH_S
    if stats.malformed:
        print(f"tbox monitor: {path}: {stats.malformed} malformed lines skipped", file=sys.stderr)


async def _watch_buses(
    args: argparse.Namespace,
    specs: Sequence[BusSpec],
    watch: _Watch,
    console: Console | None,
    title: str,
) -> None:
    from agent.frame_source import FrameSource

    async with contextlib.AsyncExitStack() as stack:
        if args.sim is not None:
            specs = [await stack.enter_async_context(_simulator(args, watch))]
        source = await stack.enter_async_context(FrameSource(specs))
        live = stack.enter_context(Live(console=console, auto_refresh=False)) if console else None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration), asyncio.TaskGroup() as tasks:
                if live is not None:
                    tasks.create_task(_refresh(live, watch, title), name="monitor-refresh")
                async for batch in source:
                    for frame in batch:
                        watch.add(frame)
        watch.bus_stats = list(source.stats.values())


async def _refresh(live: Live, watch: _Watch, title: str) -> None:
    while True:
        live.update(watch.view.render(title=title), refresh=True)
        await asyncio.sleep(_REFRESH_S)


@contextlib.asynccontextmanager
async def _simulator(args: argparse.Namespace, watch: _Watch) -> AsyncIterator[BusSpec]:
    """Run the virtual vehicle on an in-process virtual bus; yield the spec to read it from."""
    from sim import TrafficGenerator, VehicleModel, load_scenario
    from sim.runner import BusSink, SimulationRunner

    # A channel name unique to this process run, so two monitors in one test don't mix.
    channel = f"tbox-monitor-{id(watch):x}"
    spec = parse_bus_url(f"virtual://{channel}?name={_SIM_BUS}")
    scenario = load_scenario(args.sim)
    model = VehicleModel(scenario, seed=args.seed)
    databases = watch.dbcs.for_bus(_SIM_BUS)
    generator = TrafficGenerator(
        {_SIM_BUS: databases}, model, seed=args.seed, start_time=time.time()
    )
    async with BusSink(spec) as sink, SimulationRunner(generator, [sink]) as runner:
        runner.start()
        yield spec

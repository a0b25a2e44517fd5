"""``tbox sim``: the virtual vehicle and log replay on buses or to socketcand clients.

* ``tbox sim serve --socketcand HOST:PORT`` — serve the simulator (or ``--replay LOG``) to
  socketcand clients (other processes connect with ``socketcand://HOST:PORT/can0``).
* ``tbox sim run --bus URL …`` — drive buses with the simulator.
* ``tbox sim replay LOG --bus URL …`` — replay a log onto buses.
* ``tbox sim record --bus URL … -o FILE`` — record buses as a ``candump -L`` log.
* ``tbox sim attack KIND LOG -o OUT`` / ``--bus URL`` — attacks (:mod:`agent.cli.sim_attack`);
  ``serve`` and ``run`` take ``--attack KIND[:NAME=VALUE,…]``.

Every command stops cleanly on Ctrl-C or SIGTERM (exit status 0) or after ``--duration``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from agent.busurl import BusSpec, parse_bus_url
from agent.errors import TboxError, UsageError

_DEFAULT_BITRATE = 500_000
_STATUS_INTERVAL_S = 1.0
_CHANNEL_SCAN_FRAMES = 10_000  # frames of a replayed log scanned for its channel names


def register(subparsers: Any) -> None:
    """Add ``tbox sim`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="the virtual vehicle: serve it over socketcand, drive buses, replay and record logs",
        description=(
            "The virtual vehicle. 'serve' offers it (or a replayed log) to socketcand clients, "
            "'run' drives CAN buses with it, 'replay' plays a log onto buses, 'record' writes "
            "what is on buses to a candump -L log; 'attack' attacks a log or a bus; 'gnss', "
            "'modem' and 'slcan' are simulated serial devices on pseudo-terminals."
        ),
    )
    sub = parser.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_serve(sub)
    _add_run(sub)
    _add_replay(sub)
    _add_record(sub)
    from agent.cli import sim_attack, sim_twins

    sim_twins.register(sub)
    sim_attack.register(sub)


# --- argument parsers --------------------------------------------------------------------------


def _add_generator_options(parser: argparse.ArgumentParser) -> None:
    from agent.cli.dbc_args import add_dbc_option

    add_dbc_option(parser)
    parser.add_argument(
        "--scenario",
        default="city",
        metavar="NAME|FILE",
        help="driving scenario: a built-in name (city, highway, charging) or a TOML file "
        "(default city)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def _add_common_run_options(parser: argparse.ArgumentParser, *, speed: bool = True) -> None:
    parser.add_argument(
        "--duration", type=_non_negative, metavar="S", help="stop after S seconds of run time"
    )
    if speed:
        parser.add_argument(
            "--speed",
            type=_non_negative,
            default=1.0,
            metavar="X",
            help="time scale: 1 real time (default), 2 twice as fast, 0 as fast as possible",
        )
    parser.add_argument(
        "--record", metavar="FILE", help="also write every frame sent to FILE (candump -L)"
    )
    parser.add_argument("--quiet", action="store_true", help="no status line on stderr")


def _add_serve(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve the simulator or a replayed log to socketcand clients",
        description=(
            "Listen for socketcand clients (python-can: socketcand://HOST:PORT/can0) and send "
            "them the simulator's traffic, or a replayed log with --replay. Prints the listening "
            "address on stderr; runs until Ctrl-C, SIGTERM or --duration (or the end of a "
            "replayed log). Frames clients send are relayed to the other clients."
        ),
    )
    p.add_argument(
        "--socketcand",
        required=True,
        metavar="HOST:PORT",
        help="address to listen on (port 0: any free port; see --port-file)",
    )
    _add_generator_options(p)
    p.add_argument("--replay", metavar="LOG", help="serve this CAN log instead of the simulator")
    p.add_argument("--loop", action="store_true", help="repeat the replayed log without end")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="LOGCH=BUS",
        help="rename a log channel when replaying (repeatable)",
    )
    p.add_argument(
        "--bus-name",
        action="append",
        default=[],
        metavar="NAME",
        help="channel name(s) clients open (default: the DBC buses, the log's channels, or can0)",
    )
    p.add_argument(
        "--bitrate",
        type=_positive_int,
        default=_DEFAULT_BITRATE,
        metavar="N",
        help="nominal bit rate for bus-load figures (default 500000)",
    )
    p.add_argument(
        "--port-file", metavar="FILE", help="write the port listened on to FILE once listening"
    )
    p.add_argument(
        "--wait-clients",
        type=_non_negative_int,
        default=0,
        metavar="N",
        help="start sending only once N clients are connected (default 0)",
    )
    _add_common_run_options(p)
    _add_companion_options(p)
    _add_attack_options(p)
    p.set_defaults(handler=_handle(_serve))


def _add_run(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="drive CAN buses with the simulator",
        description=(
            "Send the virtual vehicle's traffic to CAN buses (bus URLs: socketcan://can0, "
            "virtual://NAME, socketcand://HOST:PORT/can0, slcan:///dev/ttyUSB0?bitrate=500000). "
            "--dbc can0=FILE binds a DBC to the bus named can0; a bare --dbc FILE goes to the "
            "first bus. Prints frames/s and bus load per bus once a second unless --quiet."
        ),
    )
    p.add_argument(
        "--bus", action="append", default=[], required=True, metavar="URL", help="bus URL"
    )
    _add_generator_options(p)
    _add_common_run_options(p)
    _add_companion_options(p)
    _add_attack_options(p)
    p.set_defaults(handler=_handle(_run))


def _add_replay(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "replay",
        help="replay a CAN log onto buses",
        description=(
            "Replay LOG (any format tbox reads: candump -L or screen output, .asc, .blf, .trc, "
            ".csv, .mf4; '-' for standard input) onto buses with its original timing, scaled by "
            "--speed. A frame goes to the bus whose name is its channel (rename with --map); "
            "with one bus every frame goes to it."
        ),
    )
    p.add_argument("log", metavar="LOG", help="the CAN log to replay")
    p.add_argument(
        "--bus", action="append", default=[], required=True, metavar="URL", help="bus URL"
    )
    p.add_argument("--loop", action="store_true", help="repeat the log without end")
    p.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="LOGCH=BUS",
        help="send frames of log channel LOGCH to the bus named BUS (repeatable)",
    )
    _add_common_run_options(p)
    p.set_defaults(handler=_handle(_replay))


def _add_record(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "record",
        help="record CAN buses to a candump -L log",
        description=(
            "Write every frame seen on the buses to FILE in candump -L format ('-': standard "
            "output), until Ctrl-C, SIGTERM, --duration or --max-frames."
        ),
    )
    p.add_argument(
        "--bus", action="append", default=[], required=True, metavar="URL", help="bus URL"
    )
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="log file to write")
    p.add_argument("--duration", type=_non_negative, metavar="S", help="stop after S seconds")
    p.add_argument("--max-frames", type=_positive_int, metavar="N", help="stop after N frames")
    p.add_argument("--quiet", action="store_true", help="no status line on stderr")
    p.set_defaults(handler=_handle(_record))


def _add_companion_options(parser: argparse.ArgumentParser) -> None:
    from agent.cli.sim_twins import add_companion_options

    add_companion_options(parser)


def _add_attack_options(parser: argparse.ArgumentParser) -> None:
    from agent.cli.sim_attack import add_attack_options

    add_attack_options(parser)


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number ≥ 0")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


# --- shared plumbing ---------------------------------------------------------------------------


Handler = Callable[[argparse.Namespace, "_Stopper"], Coroutine[Any, Any, int]]


def _handle(coroutine: Handler) -> Callable[[argparse.Namespace], int]:
    """Run an async handler with SIGINT/SIGTERM turned into a clean stop."""

    def handler(args: argparse.Namespace) -> int:
        async def main() -> int:
            stopper = _Stopper()
            stopper.install()
            try:
                return await coroutine(args, stopper)
            finally:
                stopper.uninstall()

        try:
            return asyncio.run(main())
        except asyncio.CancelledError:  # a second Ctrl-C or SIGTERM: stopped the hard way
            return 130
        except BaseExceptionGroup as group:
            # A task group around the work wraps its failure; report the first TboxError plainly.
            first = _first_tbox_error(group)
            if first is None:
                raise
            raise first from group

    return handler


def _first_tbox_error(group: BaseExceptionGroup[Any]) -> TboxError | None:
    for error in group.exceptions:
        if isinstance(error, TboxError):
            return error
        if isinstance(error, BaseExceptionGroup):
            found = _first_tbox_error(error)
            if found is not None:
                return found
    return None


class _Stopper:
    """The first Ctrl-C/SIGTERM asks the running work to stop cleanly; the second cancels it."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.callbacks: list[Callable[[], None]] = []
        self._task = asyncio.current_task()
        self._signals: list[int] = []

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self._on_signal)
                self._signals.append(sig)

    def uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)

    def _on_signal(self) -> None:
        if self.event.is_set():
            if self._task is not None:
                self._task.cancel()
            return
        self.event.set()
        for callback in self.callbacks:
            callback()

    def on_stop(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)
        if self.event.is_set():
            callback()

    async def until_stopped(self, awaitable: Coroutine[Any, Any, Any]) -> bool:
        """Await *awaitable* unless a stop comes first; True if it completed."""
        task = asyncio.ensure_future(awaitable)
        stop = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            task.result()
            return True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return False


def _parse_buses(urls: Sequence[str]) -> list[BusSpec]:
    specs = [parse_bus_url(url) for url in urls]
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UsageError(
            f"bus name {duplicates[0]!r} is used twice: give each bus a distinct ?name=… in its URL"
        )
    return specs


def _parse_map(texts: Sequence[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for text in texts:
        log_channel, sep, bus = text.partition("=")
        if not sep or not log_channel or not bus:
            raise UsageError(f"--map {text!r}: write LOGCHANNEL=BUSNAME, e.g. can1=body")
        mapping[log_channel] = bus
    return mapping


def _databases_per_bus(
    args: argparse.Namespace, buses: Sequence[str], prog: str
) -> dict[str, list[Any]]:
    """DBC databases per bus name: ``--dbc BUS=FILE`` to that bus, a bare ``--dbc FILE`` to the
    first bus; the sample vehicle's DBC on the first bus when no ``--dbc`` is given."""
    from agent.cli.dbc_args import load_dbc_args, parse_dbc_arg
    from can_dbc import SAMPLE_VEHICLE_DBC

    texts = list(args.dbc)
    for text in texts:
        binding = parse_dbc_arg(text)
        if binding.bus is not None and binding.bus not in buses:
            raise UsageError(
                f"--dbc {text!r}: no bus is named {binding.bus!r} (buses: {', '.join(buses)})"
            )
    if not texts:
        texts = [str(SAMPLE_VEHICLE_DBC)]
    dbcs = load_dbc_args(texts, verbose=args.verbose, prog=prog)
    per_bus: dict[str, list[Any]] = {}
    if dbcs.common:
        per_bus[buses[0]] = list(dbcs.common)
    for bus, databases in dbcs.per_bus.items():
        per_bus.setdefault(bus, []).extend(databases)
    return per_bus


def _make_generator(
    args: argparse.Namespace, per_bus: Mapping[str, list[Any]], bitrate: int
) -> Any:
    """The DBC traffic generator over the scenario's vehicle model; frames carry live times."""
    from sim import TrafficGenerator, VehicleModel, load_scenario

    scenario = load_scenario(args.scenario)
    model = VehicleModel(scenario, seed=args.seed)
    try:
        return TrafficGenerator(
            dict(per_bus), model, bitrate=bitrate, seed=args.seed, start_time=time.time()
        )
    except ValueError as e:
        raise UsageError(str(e)) from e


def _status_line(prog: str, runner: Any, bitrates: Mapping[str, int]) -> str:
    stats = runner.stats
    rates = stats.bus_rates()
    bit_rates = stats.bus_bit_rates()
    # The traffic generator knows the exact wire time (stuff bits, FD data phase); estimate
    # from frame sizes for other producers.
    exact = runner.producer.bus_load() if hasattr(runner.producer, "bus_load") else {}
    parts = [f"{prog}: t={stats.run_time:7.1f}s  {stats.frames} frames"]
    for bus in sorted(rates):
        if bus in exact:
            load = 100.0 * exact[bus]
        else:
            load = 100.0 * bit_rates.get(bus, 0.0) / bitrates.get(bus, _DEFAULT_BITRATE)
        parts.append(f"{bus} {rates[bus]:6.0f} fr/s {load:3.0f}% load")
    if stats.unrouted:
        parts.append(f"{stats.unrouted} unrouted")
    return "  ".join(parts)


async def _report_status(
    prog: str, runner: Any, bitrates: Mapping[str, int], out: TextIO = sys.stderr
) -> None:
    tty = out.isatty()
    try:
        while True:
            await asyncio.sleep(_STATUS_INTERVAL_S)
            line = _status_line(prog, runner, bitrates)
            if tty:
                out.write("\r\x1b[K" + line)
            else:
                out.write(line + "\n")
            out.flush()
    finally:
        if tty:
            out.write("\n")
            out.flush()


async def _drive(
    prog: str,
    args: argparse.Namespace,
    stopper: _Stopper,
    producer: Any,
    sinks: Sequence[Any],
    bitrates: Mapping[str, int],
    *,
    status: bool,
) -> Any:
    """Run *producer* into *sinks* until the end, --duration or a stop; return the runner."""
    from sim.runner import SimulationRunner

    runner = SimulationRunner(producer, sinks, speed=args.speed)
    async with runner:
        stopper.on_stop(runner.stop)
        # Not a TaskGroup: it would wrap a failure of the run in an ExceptionGroup, and the
        # command line reports TboxError subclasses in one line.
        reporter = asyncio.create_task(_report_status(prog, runner, bitrates)) if status else None
        if hasattr(producer, "start_time"):
            # Live timestamps count from now, not from when the producer was built (serve may
            # have waited for clients since).
            producer.start_time = time.time()
        try:
            await runner.run(args.duration)
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
    return runner


def _write_port_file(path: str, port: int) -> None:
    # Write then rename, so that a reader polling for the file never sees it half written.
    target = Path(path)
    tmp = target.with_name(target.name + f".{os.getpid()}.tmp")
    try:
        tmp.write_text(f"{port}\n", encoding="ascii")
        tmp.replace(target)
    except OSError as e:
        raise UsageError(f"cannot write --port-file {path}: {e.strerror or e}") from e


def _split_host_port(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--socketcand {text!r}: write HOST:PORT, e.g. 127.0.0.1:29536")
    return host, int(port_text)


def _scan_channels(path: str, mapping: Mapping[str, str]) -> list[str]:
    from agent.canlog import LogReadStats, read_log

    seen: dict[str, None] = {}
    for i, msg in enumerate(read_log(path, LogReadStats())):
        channel = str(msg.channel)
        seen.setdefault(mapping.get(channel, channel))
        if i >= _CHANNEL_SCAN_FRAMES:
            break
    return list(seen)


def _replay_summary(prog: str, name: str, replay: Any) -> list[str]:
    stats = replay.read_stats
    lines = []
    if stats.malformed:
        first = f" (first: {stats.first_errors[0]})" if stats.first_errors else ""
        lines.append(f"{prog}: {name}: {stats.malformed} malformed lines skipped{first}")
    return lines


# --- subcommands -------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace, stopper: _Stopper) -> int:
    from agent.cli.sim_attack import attach_attack, parse_attack_option
    from agent.cli.sim_twins import open_companions
    from sim.record import LogRecorder
    from sim.replay import LogReplay
    from sim.socketcand import SocketcandServer

    prog = "tbox sim serve"
    host, port = _split_host_port(args.socketcand)
    mapping = _parse_map(args.map)
    if args.replay is None and (args.loop or mapping):
        raise UsageError("--loop and --map need --replay LOG")
    if args.replay is not None and args.dbc:
        raise UsageError("--dbc drives the simulator; --replay serves the log's frames as they are")
    replay: LogReplay | None = None
    per_bus: dict[str, list[Any]] = {}
    if args.replay is not None:
        if args.replay == "-":
            raise UsageError("serve cannot replay standard input; give a log file")
        replay = LogReplay(args.replay, channel_map=mapping, loop=args.loop)
        channels = (
            list(args.bus_name)
            or await asyncio.to_thread(_scan_channels, args.replay, mapping)
            or ["can0"]
        )
        producer: Any = replay
    else:
        channels = list(args.bus_name)
        if not channels:
            from agent.cli.dbc_args import parse_dbc_arg

            bindings = [parse_dbc_arg(text) for text in args.dbc]
            channels = list(dict.fromkeys(b.bus for b in bindings if b.bus)) or ["can0"]
        per_bus = _databases_per_bus(args, channels, prog)
        producer = _make_generator(args, per_bus, args.bitrate)
    attack = parse_attack_option(args, per_bus)
    server = SocketcandServer(host, port, channels, lossless=args.speed == 0)
    async with contextlib.AsyncExitStack() as stack:
        await open_companions(stack, args, getattr(producer, "model", None), prog)
        await stack.enter_async_context(server)
        if args.port_file:
            _write_port_file(args.port_file, server.port)
        print(
            f"{prog}: socketcand listening on {host}:{server.port} "
            f"(channels: {', '.join(server.channels)})",
            file=sys.stderr,
            flush=True,
        )
        sinks: list[Any] = [server]
        if args.record:
            sinks.append(await stack.enter_async_context(LogRecorder(args.record)))
        if args.wait_clients and not await stopper.until_stopped(
            server.wait_for_clients(args.wait_clients)
        ):
            return 0
        bitrates = dict.fromkeys(server.channels, args.bitrate)
        producer = await attach_attack(stack, args, producer, attack, sinks, prog)
        runner = await _drive(prog, args, stopper, producer, sinks, bitrates, status=False)
    stats = server.stats
    print(
        f"{prog}: sent {runner.stats.frames} frames in {runner.stats.wall_time:.1f} s "
        f"to {stats.clients_served} clients ({stats.clients_dropped} dropped as too slow), "
        f"received {sum(stats.frames_received.values())}",
        file=sys.stderr,
    )
    if replay is not None:
        for line in _replay_summary(prog, args.replay, replay):
            print(line, file=sys.stderr)
    return 0


async def _open_bus_sinks(stack: contextlib.AsyncExitStack, specs: Sequence[BusSpec]) -> list[Any]:
    from sim.runner import BusSink

    return [await stack.enter_async_context(BusSink(spec)) for spec in specs]


async def _run(args: argparse.Namespace, stopper: _Stopper) -> int:
    from agent.cli.sim_attack import attach_attack, parse_attack_option
    from agent.cli.sim_twins import open_companions
    from sim.record import LogRecorder

    prog = "tbox sim run"
    specs = _parse_buses(args.bus)
    names = [s.name for s in specs]
    per_bus = _databases_per_bus(args, names, prog)
    bitrates = {s.name: s.bitrate or _DEFAULT_BITRATE for s in specs}
    producer = _make_generator(args, per_bus, bitrates[names[0]])
    attack = parse_attack_option(args, per_bus)
    async with contextlib.AsyncExitStack() as stack:
        sinks = await _open_bus_sinks(stack, specs)
        if args.record:
            sinks.append(await stack.enter_async_context(LogRecorder(args.record)))
        await open_companions(stack, args, producer.model, prog)
        attacked = await attach_attack(stack, args, producer, attack, sinks, prog)
        runner = await _drive(prog, args, stopper, attacked, sinks, bitrates, status=not args.quiet)
    print(
        f"{prog}: sent {runner.stats.frames} frames in {runner.stats.wall_time:.1f} s",
        file=sys.stderr,
    )
    return 0


async def _replay(args: argparse.Namespace, stopper: _Stopper) -> int:
    from sim.record import LogRecorder
    from sim.replay import LogReplay

    prog = "tbox sim replay"
    specs = _parse_buses(args.bus)
    mapping = _parse_map(args.map)
    replay = LogReplay(args.log, channel_map=mapping, loop=args.loop)
    bitrates = {s.name: s.bitrate or _DEFAULT_BITRATE for s in specs}
    async with contextlib.AsyncExitStack() as stack:
        sinks = await _open_bus_sinks(stack, specs)
        if args.record:
            sinks.append(await stack.enter_async_context(LogRecorder(args.record)))
        runner = await _drive(prog, args, stopper, replay, sinks, bitrates, status=not args.quiet)
    line = f"{prog}: sent {runner.stats.frames} frames in {runner.stats.wall_time:.1f} s"
    if runner.stats.unrouted:
        line += (
            f", {runner.stats.unrouted} frames skipped: their channel names no bus "
            f"(buses: {', '.join(s.name for s in specs)}; use --map LOGCH=BUS)"
        )
    print(line, file=sys.stderr)
    for extra in _replay_summary(prog, args.log, replay):
        print(extra, file=sys.stderr)
    return 0


async def _record(args: argparse.Namespace, stopper: _Stopper) -> int:
    from sim.record import LogRecorder, record_buses

    prog = "tbox sim record"
    specs = _parse_buses(args.bus)
    tty = sys.stderr.isatty() and not args.quiet
    last = 0.0

    def progress(total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if tty and now - last >= _STATUS_INTERVAL_S:
            last = now
            sys.stderr.write(f"\r\x1b[K{prog}: {total} frames")
            sys.stderr.flush()

    async with LogRecorder(args.output) as recorder:
        await stopper.until_stopped(
            record_buses(
                specs,
                recorder,
                duration=args.duration,
                max_frames=args.max_frames,
                on_batch=progress,
            )
        )
    if tty:
        sys.stderr.write("\n")
    print(f"{prog}: recorded {recorder.frames} frames to {args.output}", file=sys.stderr)
    return 0

"""``tbox sim gnss|modem|slcan``: simulated serial devices on pseudo-terminals.

* ``tbox sim gnss [--scenario NAME] [--seed N] [--rate-hz R] [--speed X] [faults]`` — a GNSS
  receiver sending NMEA (RMC, VTG, GGA, GSA) for a vehicle driving the scenario.
* ``tbox sim modem [--degrade-at S] [--drop-at S] [--recover-at S]`` — a cellular modem's AT port.
* ``tbox sim slcan --bus URL`` — a Lawicel/slcan CAN adapter bridged to a bus.

Each prints the device path (``/dev/pts/N``) on stdout as its first line, and the new path again
after each ``--unplug-at``; ``--link PATH`` keeps a symlink pointing at the current device. They
run until Ctrl-C, SIGTERM or ``--duration S`` and then print a summary on stderr.

``tbox sim serve`` and ``tbox sim run`` take ``--gnss-link PATH`` and ``--modem-link PATH``
(:func:`add_companion_options`, :func:`open_companions`): the GNSS twin then reads the same vehicle
model as the CAN traffic, so GNSS speed and CAN speed agree.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

from agent.cli.sim import _handle, _non_negative, _Stopper
from agent.errors import UsageError

_DEFAULT_UNPLUG_S = 5.0


def register(sub: Any) -> None:
    """Add ``tbox sim gnss``, ``tbox sim modem`` and ``tbox sim slcan`` to ``tbox sim``."""
    _add_gnss(sub)
    _add_modem(sub)
    _add_slcan(sub)


def add_companion_options(parser: argparse.ArgumentParser) -> None:
    """``--gnss-link`` and ``--modem-link`` for the commands that run the virtual vehicle."""
    parser.add_argument(
        "--gnss-link",
        metavar="PATH",
        help="also run a GNSS receiver twin fed by the same vehicle, with a symlink PATH to its "
        "pty (e.g. /tmp/gnss0)",
    )
    parser.add_argument(
        "--modem-link",
        metavar="PATH",
        help="also run a cellular modem twin (AT commands), with a symlink PATH to its pty",
    )


async def open_companions(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, model: Any, prog: str
) -> None:
    """Start the twins ``--gnss-link`` / ``--modem-link`` ask for inside *stack*; the GNSS twin
    reads *model* (the traffic generator's vehicle; None when there is none, e.g. a replay)."""
    from sim.gnss_twin import GnssTwin
    from sim.modem_twin import ModemTwin

    if args.gnss_link:
        if model is None:
            raise UsageError("--gnss-link needs the simulated vehicle; a replayed log has none")
        gnss = await stack.enter_async_context(GnssTwin(model, link=args.gnss_link))
        print(f"{prog}: GNSS twin on {gnss.path} (link {args.gnss_link})", file=sys.stderr)
    if args.modem_link:
        modem = await stack.enter_async_context(ModemTwin(link=args.modem_link))
        print(f"{prog}: modem twin on {modem.path} (link {args.modem_link})", file=sys.stderr)


# --- argument parsers --------------------------------------------------------------------------


def _add_twin_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--link",
        metavar="PATH",
        help="keep a symlink PATH pointing at the device (like a udev /dev/gnss0)",
    )
    parser.add_argument("--duration", type=_non_negative, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--unplug-at",
        type=_non_negative,
        action="append",
        default=[],
        metavar="S",
        help="unplug the device S seconds after start (repeatable); it comes back on a new pty",
    )
    parser.add_argument(
        "--unplug-for",
        type=_non_negative,
        default=_DEFAULT_UNPLUG_S,
        metavar="S",
        help=f"how long the device stays unplugged (default {_DEFAULT_UNPLUG_S:g})",
    )


def _add_gnss(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "gnss",
        help="a simulated GNSS receiver (NMEA on a pseudo-terminal)",
        description=(
            "A GNSS receiver on a pseudo-terminal: NMEA RMC, VTG, GGA and GSA sentences for a "
            "vehicle driving the scenario. Prints the device path on stdout; runs until Ctrl-C, "
            "SIGTERM or --duration. Faults are reproducible for a --seed."
        ),
    )
    p.add_argument(
        "--scenario",
        default="city",
        metavar="NAME|FILE",
        help="driving scenario: city, highway, charging or a TOML file (default city)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--rate-hz",
        type=_rate,
        default=1.0,
        metavar="R",
        help="epochs per second, up to 10 (default 1)",
    )
    p.add_argument(
        "--speed",
        type=_positive,
        default=1.0,
        metavar="X",
        help="the vehicle drives X times faster than real time (default 1)",
    )
    p.add_argument("--talker", choices=("GN", "GP"), default="GN", help="talker id (default GN)")
    p.add_argument(
        "--garbage", type=_probability, default=0.0, metavar="P", help="share of garbage lines"
    )
    p.add_argument(
        "--truncated",
        type=_probability,
        default=0.0,
        metavar="P",
        help="share of sentences cut short",
    )
    p.add_argument(
        "--bad-checksum",
        type=_probability,
        default=0.0,
        metavar="P",
        help="share of sentences with a wrong checksum",
    )
    p.add_argument(
        "--no-fix",
        type=_window,
        action="append",
        default=[],
        metavar="START-END",
        help="no fix from START to END seconds after start (repeatable)",
    )
    p.add_argument(
        "--silent",
        type=_window,
        action="append",
        default=[],
        metavar="START-END",
        help="no output from START to END seconds after start (repeatable)",
    )
    _add_twin_options(p)
    p.set_defaults(handler=_handle(_gnss))


def _add_modem(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "modem",
        help="a simulated cellular modem (AT commands on a pseudo-terminal)",
        description=(
            "A cellular modem's AT command port on a pseudo-terminal (AT, ATE0/1, ATI, +CGMI, "
            "+CGMM, +CSQ, +CREG?, +CEREG?, +COPS?, +CMEE). The link degrades (weak signal, 3G), "
            "drops (searching) and recovers at the given seconds after start. Prints the device "
            "path on stdout; runs until Ctrl-C, SIGTERM or --duration."
        ),
    )
    p.add_argument("--degrade-at", type=_non_negative, metavar="S", help="weaken the link at S")
    p.add_argument("--drop-at", type=_non_negative, metavar="S", help="lose the network at S")
    p.add_argument("--recover-at", type=_non_negative, metavar="S", help="restore the link at S")
    p.add_argument(
        "--operator", default="TBOX SIM", metavar="NAME", help="operator name (default TBOX SIM)"
    )
    _add_twin_options(p)
    p.set_defaults(handler=_handle(_modem))


def _add_slcan(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "slcan",
        help="a simulated slcan (Lawicel) CAN adapter bridged to a bus",
        description=(
            "A Lawicel/slcan CAN adapter on a pseudo-terminal, bridged to the bus --bus names "
            "(e.g. socketcand://127.0.0.1:29536/can0 from 'tbox sim serve'). python-can's slcan "
            "interface, slcand or a terminal can use it. Prints the device path on stdout; runs "
            "until Ctrl-C, SIGTERM or --duration."
        ),
    )
    p.add_argument("--bus", required=True, metavar="URL", help="the bus to bridge to")
    _add_twin_options(p)
    p.set_defaults(handler=_handle(_slcan))


def _positive(text: str) -> float:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0")
    return value


def _rate(text: str) -> float:
    value = _positive(text)
    if value > 10:
        raise argparse.ArgumentTypeError(f"{text!r}: at most 10 epochs per second")
    return value


def _probability(text: str) -> float:
    value = _non_negative(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def _window(text: str) -> Any:
    from sim.gnss_twin import parse_interval
    from sim.pty_twin import TwinConfigError

    try:
        return parse_interval(text)
    except TwinConfigError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# --- subcommands -------------------------------------------------------------------------------


async def _gnss(args: argparse.Namespace, stopper: _Stopper) -> int:
    from sim.gnss_twin import GnssFaults, GnssTwin

    faults = GnssFaults(
        garbage=args.garbage,
        truncated=args.truncated,
        bad_checksum=args.bad_checksum,
        no_fix=tuple(args.no_fix),
        silent=tuple(args.silent),
    )
    twin = GnssTwin.standalone(
        args.scenario,
        seed=args.seed,
        speed=args.speed,
        rate_hz=args.rate_hz,
        talker=args.talker,
        faults=faults,
        link=args.link,
    )
    await _run_twin(twin, args, stopper)
    _summary("tbox sim gnss", twin, f"{twin.epochs} epochs, {twin.sentences} sentences")
    return 0


async def _modem(args: argparse.Namespace, stopper: _Stopper) -> int:
    from sim.modem_twin import ModemLink, ModemTwin, link_schedule

    good = ModemLink(operator=args.operator)
    schedule = link_schedule(
        degrade_at=args.degrade_at, drop_at=args.drop_at, recover_at=args.recover_at, good=good
    )
    twin = ModemTwin(network=good, schedule=schedule, link=args.link)
    await _run_twin(twin, args, stopper)
    _summary("tbox sim modem", twin, f"{twin.interpreter.commands} command lines")
    return 0


async def _slcan(args: argparse.Namespace, stopper: _Stopper) -> int:
    from sim.slcan_twin import SlcanTwin

    twin = SlcanTwin(args.bus, link=args.link)
    await _run_twin(twin, args, stopper)
    f = twin.frames
    _summary(
        "tbox sim slcan",
        twin,
        f"{f.to_bus} frames to the bus, {f.to_host} to the host, {f.closed} while closed, "
        f"{f.lost} lost",
    )
    return 0


async def _run_twin(twin: Any, args: argparse.Namespace, stopper: _Stopper) -> None:
    async with twin:
        print(twin.path, flush=True)
        await stopper.until_stopped(_lifetime(twin, args.duration, args.unplug_at, args.unplug_for))


async def _lifetime(
    twin: Any, duration: float | None, unplug_at: list[float], unplug_for: float
) -> None:
    """Unplug at the given times (printing each new path) until *duration* (None: forever)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            for at in sorted(unplug_at):
                await asyncio.sleep(max(start + at - loop.time(), 0.0))
                await twin.unplug(unplug_for)
                print(twin.path, flush=True)
            await asyncio.Future()  # until the duration ends or a stop cancels us


def _summary(prog: str, twin: Any, what: str) -> None:
    s = twin.stats
    line = f"{prog}: {what}; {s.bytes_out} bytes out, {s.bytes_in} in"
    if s.dropped_bytes:
        line += f", {s.dropped_bytes} bytes dropped (host not reading or device unplugged)"
    if s.unplugs:
        line += f", unplugged {s.unplugs} time{'' if s.unplugs == 1 else 's'}"
    print(line, file=sys.stderr)

"""``tbox sim attack``: attacks on a CAN log or a live bus, and ``--attack`` for the simulator.

* ``tbox sim attack KIND LOG -o OUT [--start S] [--duration S] [--target-id ID] [--dbc FILE]
  [--seed N] [kind options]`` — write the attacked log OUT (candump -L), ``OUT.labels.csv`` and
  ``OUT.attack.json`` (:mod:`sim.attack_log`).
* ``tbox sim attack KIND --bus URL [--labels FILE] …`` — inject into a live bus until the attack's
  window has passed (:class:`sim.attack_live.LiveAttack`); suspension and masquerade are refused
  there (no one can silence another sender on a shared bus).
* ``tbox sim serve|run --attack KIND[:NAME=VALUE,…] [--attack-labels FILE]`` — the same attacks on
  the simulator's own frames before they go out (:func:`add_attack_options`,
  :func:`parse_attack_option`, :func:`attach_attack`); suspension and masquerade work there.

Kinds and options are those of :mod:`sim.attacks`; option text is read by
:mod:`sim.attack_options`, so ``--rate 1000`` here and ``rate=1000`` in ``--attack`` mean the same.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from agent.cli.sim import _handle, _Stopper
from agent.errors import UsageError

_PROG = "tbox sim attack"

# Kept here rather than imported from sim.attacks, so that `tbox --help` does not import the
# simulator (and python-can); a test holds both to sim.attack_options.kind_options.
KIND_OPTIONS: dict[str, tuple[str, ...]] = {
    "flooding": ("target-id", "load", "rate", "data", "bitrate", "extended"),
    "fuzzing": ("rate", "id-min", "id-max", "dlc", "extended"),
    "spoofing": ("target-id", "signal", "value", "data", "rate"),
    "replay": ("target-id", "source-start"),
    "suspension": ("target-id", "ecu"),
    "masquerade": ("target-id", "signal", "value", "data", "jitter"),
    "diagnostic": ("target-id", "interval", "gap", "security-level", "send-key", "padding"),
}
#: Options every kind takes.
COMMON_OPTIONS = ("start", "duration", "seed", "channel")

_METAVARS = {
    "start": "S",
    "duration": "S",
    "seed": "N",
    "channel": "BUS",
    "target-id": "ID",
    "id-min": "ID",
    "id-max": "ID",
    "data": "HEX",
    "signal": "NAME",
    "ecu": "NODE",
    "dlc": "N",
}

#: Help text per option name (``--rate`` here, ``rate=`` in ``--attack``).
OPTION_HELP: dict[str, str] = {
    "start": "seconds after the first frame (live: after launch) at which the attack starts "
    "(default 5)",
    "duration": "how long the attack lasts, in seconds (default 10)",
    "seed": "random seed: the same seed gives the same attack (default 0)",
    "channel": "bus the attack acts on (default: where the target id is seen, else the first)",
    "target-id": "the id to flood (default 0x000), spoof, masquerade or send diagnostics on "
    "(default 0x7DF); the ids to silence (suspension) or replay (default all); 0x7DF or 2015; "
    "repeatable",
    "load": "flooding: share of the bus to fill, 0…1 (default 0.5)",
    "rate": "flooding, fuzzing (default 200), spoofing (default: the real sender's): frames/s",
    "data": "flooding: the flood payload (default 8 zero bytes); spoofing, masquerade: fixed "
    "payload (hex)",
    "bitrate": "flooding: bit rate of the bus, for --load (default 500000)",
    "extended": "flooding, fuzzing: 29-bit ids (yes/no)",
    "id-min": "fuzzing: lowest random id (default 0x000)",
    "id-max": "fuzzing: highest random id (default 0x7FF)",
    "dlc": "fuzzing: fixed payload length (default random 0…8)",
    "signal": "spoofing, masquerade: DBC signal to forge (default: the message's widest)",
    "value": "spoofing, masquerade: physical value forged (default: the signal's maximum)",
    "jitter": "masquerade: lateness of forged frames, std as a share of the period (default 0.03)",
    "source-start": "replay: where the replayed window starts (default: just before --start)",
    "ecu": "suspension: silence every message this DBC node sends",
    "interval": "diagnostic: seconds between request cycles (default 1)",
    "gap": "diagnostic: seconds between the requests of one cycle (default 0.01)",
    "security-level": "diagnostic: SecurityAccess requestSeed level, odd (default 1)",
    "send-key": "diagnostic: follow requestSeed with a random sendKey (yes/no, default yes)",
    "padding": "diagnostic: ISO-TP padding byte (default 0xAA)",
}


def register(sub: Any) -> None:
    """Add ``tbox sim attack`` to ``tbox sim``."""
    kinds = "\n".join(f"  {kind:<11} {', '.join(names)}" for kind, names in KIND_OPTIONS.items())
    p: argparse.ArgumentParser = sub.add_parser(
        "attack",
        help="attack a CAN log (with per-frame labels) or a live bus",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Apply an attack to LOG (any format tbox reads) and write the attacked log OUT in "
            "candump -L format, OUT.labels.csv (index,attack: the 0-based index in OUT of every "
            "injected or forged frame) and OUT.attack.json (kind, window in log time, target "
            "ids, parameters, counts). With --bus URL instead of LOG, inject into a live bus "
            "until the attack is over. Times are seconds after the log's first frame (live: "
            "after launch). Suspension and masquerade silence a sender, which only the "
            "simulator can do live: use 'tbox sim serve|run --attack KIND:NAME=VALUE,…'."
        ),
        epilog=f"kinds and their options (all also take {', '.join(COMMON_OPTIONS)}):\n{kinds}",
    )
    p.add_argument("kind", metavar="KIND", help=f"the attack: {', '.join(KIND_OPTIONS)}")
    p.add_argument("log", nargs="?", metavar="LOG", help="the CAN log to attack")
    p.add_argument("-o", "--output", metavar="OUT", help="the attacked log to write (with LOG)")
    p.add_argument("--bus", metavar="URL", help="attack this live bus instead of a log")
    p.add_argument(
        "--labels", metavar="FILE", help="with --bus: write the labels of the frames sent to FILE"
    )
    from agent.cli.dbc_args import add_dbc_option

    add_dbc_option(p)
    for name, text in OPTION_HELP.items():
        p.add_argument(
            f"--{name}",
            dest=_dest(name),
            metavar=_METAVARS.get(name, "VALUE"),
            action="append" if name == "target-id" else "store",
            help=text,
        )
    p.set_defaults(handler=_run_attack)


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """``--attack`` and ``--attack-labels`` for the commands that run the simulator."""
    parser.add_argument(
        "--attack",
        metavar="KIND[:NAME=VALUE,…]",
        help="attack the simulator's frames before they go out, e.g. "
        "masquerade:target-id=0xB0,start=5,duration=10 (kinds and options: tbox sim attack "
        "--help)",
    )
    parser.add_argument(
        "--attack-labels",
        metavar="FILE",
        help="write index,time,attack,channel,id of every injected frame sent to FILE (the index "
        "counts every frame sent, as in --record) and the attack's description as JSON next to it",
    )


def parse_attack_option(args: argparse.Namespace, databases: Mapping[str, Sequence[Any]]) -> Any:
    """The attack ``--attack`` names (None without one), read before anything starts so that a
    mistake is reported alone; *databases* (per bus) resolve forged signals and ``ecu=``."""
    from sim.attack_options import parse_attack_spec

    if args.attack is None:
        if args.attack_labels:
            raise UsageError("--attack-labels needs --attack KIND[:NAME=VALUE,…]")
        return None
    every = [db for dbs in databases.values() for db in dbs]
    return parse_attack_spec(args.attack, databases=every)


async def attach_attack(
    stack: contextlib.AsyncExitStack,
    args: argparse.Namespace,
    producer: Any,
    attack: Any,
    sinks: list[Any],
    prog: str,
) -> Any:
    """*producer* with *attack* (from :func:`parse_attack_option`) applied, itself without one;
    with ``--attack-labels`` a labels sink joins *sinks*."""
    from sim.attack_live import AttackedProducer, SentLabelSink

    if attack is None:
        return producer
    attacked = AttackedProducer(producer, attack, track_labels=bool(args.attack_labels))
    if args.attack_labels:
        labels = SentLabelSink(
            args.attack_labels, attacked.label_of, describe=attacked.stream.describe
        )
        sinks.append(await stack.enter_async_context(labels))

    def summary() -> None:
        stream = attacked.stream
        print(
            f"{prog}: attack {attack.kind}: {stream.injected} frames injected, "
            f"{stream.removed} removed",
            file=sys.stderr,
        )

    stack.callback(summary)
    print(
        f"{prog}: attack {attack.kind} from {attack.start:g} s for {attack.duration:g} s",
        file=sys.stderr,
    )
    return attacked


# --- tbox sim attack ---------------------------------------------------------------------------


def _dest(name: str) -> str:
    return "attack_" + name.replace("-", "_")


def _option_pairs(args: argparse.Namespace) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for name in OPTION_HELP:
        value = getattr(args, _dest(name))
        if value is None:
            continue
        for text in value if isinstance(value, list) else [value]:
            pairs.append((name, text))
    return pairs


def _build(args: argparse.Namespace) -> Any:
    from agent.cli.dbc_args import load_dbc_args
    from sim.attack_options import build_attack, kind_options

    kind_options(args.kind)  # an unknown kind is reported before anything is loaded
    dbcs = load_dbc_args(args.dbc, verbose=args.verbose, prog=_PROG)
    channel = args.attack_channel
    databases = [*dbcs.for_bus(channel), *dbcs.all] if channel else dbcs.all
    return build_attack(args.kind, _option_pairs(args), databases=databases)


def _run_attack(args: argparse.Namespace) -> int:
    if args.log is not None and args.bus is not None:
        raise UsageError("give either a LOG to attack or --bus URL, not both")
    if args.log is None and args.bus is None:
        raise UsageError("give a LOG to attack (with -o OUT), or --bus URL to attack a live bus")
    if args.log is not None:
        if args.output is None:
            raise UsageError("-o OUT is needed: where the attacked log goes")
        if args.labels is not None:
            raise UsageError("--labels is for --bus; a log's labels go to OUT.labels.csv")
        return _attack_log_file(args)
    if args.output is not None:
        raise UsageError("-o is for a LOG; with --bus use --labels FILE")
    attack = _build(args)

    async def live(args: argparse.Namespace, stopper: _Stopper) -> int:
        return await _attack_bus(args, stopper, attack)

    return _handle(live)(args)


def _attack_log_file(args: argparse.Namespace) -> int:
    from agent.canlog import LogReadStats
    from sim.attack_log import attack_log

    attack = _build(args)
    stats = LogReadStats()
    described = attack_log(args.log, args.output, attack, read_stats=stats)
    if stats.malformed:
        first = f" (first: {stats.first_errors[0]})" if stats.first_errors else ""
        skipped = f"{stats.malformed} malformed lines skipped{first}"
        print(f"{_PROG}: {args.log}: {skipped}", file=sys.stderr)
    print(
        f"{_PROG}: {attack.kind}: {described['injected']} frames injected, "
        f"{described['removed']} removed; wrote {described['output']} "
        f"({described['frames_out']} frames), {described['labels']} and "
        f"{described['output']}.attack.json",
        file=sys.stderr,
    )
    if not described["injected"] and not described["removed"]:
        print(
            f"{_PROG}: warning: the attack changed nothing: are the target ids on "
            f"{described['channel']} inside the window?",
            file=sys.stderr,
        )
    return 0


async def _attack_bus(args: argparse.Namespace, stopper: _Stopper, attack: Any) -> int:
    from agent.busurl import parse_bus_url
    from sim.attack_live import LiveAttack, SentLabelSink

    spec = parse_bus_url(args.bus)
    live = LiveAttack(spec, attack)
    async with contextlib.AsyncExitStack() as stack:
        if args.labels:
            labels = SentLabelSink(
                args.labels, lambda _frame: str(attack.kind), describe=live.stream.describe
            )
            live.labels = await stack.enter_async_context(labels)
        await stack.enter_async_context(live)
        print(
            f"{_PROG}: {attack.kind} on {spec.url} from {attack.start:g} s for "
            f"{attack.duration:g} s",
            file=sys.stderr,
            flush=True,
        )
        await stopper.until_stopped(live.run())
    sink = live.sink
    sent = sink.frames_sent if sink is not None else 0
    failed = f" ({sink.send_errors} failed)" if sink is not None and sink.send_errors else ""
    print(
        f"{_PROG}: {attack.kind}: sent {sent} frames{failed}, read {live.received}",
        file=sys.stderr,
    )
    return 0

"""``tbox status``: what the running agent is doing, read from its status socket.

The agent's :class:`~agent.status_endpoint.StatusEndpoint` writes one JSON line (the status
snapshot) to every client of its unix socket. This command shows it as tables, or raw with
``--json``; ``--watch`` refreshes it until Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from agent.errors import TboxError, UsageError

__all__ = [
    "DEFAULT_SOCKET",
    "AgentNotRunningError",
    "fetch_status",
    "fetch_status_line",
    "human_bytes",
    "human_duration",
    "register",
    "render_status",
    "run",
]

DEFAULT_SOCKET: Final = Path("/var/lib/tbox/status.sock")
_CONNECT_TIMEOUT_S: Final = 3.0
# sockaddr_un.sun_path is 108 bytes on Linux, including the terminating NUL.
_MAX_UNIX_PATH: Final = 107
_MISSING: Final = "–"


class AgentNotRunningError(TboxError):
    """Nothing listens on the status socket: no agent runs there."""


def register(subparsers: Any) -> None:
    """Add ``tbox status``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        help="show what the running agent is doing (buses, queue, uplink, commands)",
        description=(
            "Ask the running agent for its status over its unix socket and show it: buses, "
            "pipeline, upload queue, uplink, commands and schemes. The socket is "
            f"{DEFAULT_SOCKET} unless --socket or --config (its status.socket) says otherwise."
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="the agent's status socket")
    where.add_argument(
        "--config", metavar="FILE", help="take the socket from this agent configuration"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the status as one JSON line, as the agent sent it",
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1) until Ctrl-C",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox status``."""
    if args.watch is not None and not args.watch > 0:
        raise UsageError("--watch SECONDS must be positive")
    if args.config is not None:
        path = _socket_from_config(args.config)
        hint = f"is status.socket in {args.config} right?"
    else:
        path = Path(args.socket) if args.socket is not None else DEFAULT_SOCKET
        hint = "is --socket right?"
    if args.watch is None:
        line = fetch_status_line(path, hint=hint)
        snapshot = _parse(line, path)  # even for --json: garbage is an error, not output
        if args.json:
            print(line)
        else:
            Console(highlight=False).print(render_status(snapshot))
        return 0
    # Ctrl-C is how --watch is meant to end.
    with contextlib.suppress(KeyboardInterrupt):
        _watch(path, hint, args.watch, as_json=args.json)
    return 0


def _socket_from_config(file: str) -> Path:
    # Imported here: validating a configuration pulls in much that `tbox status` otherwise skips.
    from agent.config import load_config

    return load_config(Path(file)).status.socket


# --- talking to the agent --------------------------------------------------------------------


def fetch_status_line(
    path: Path, *, timeout: float = _CONNECT_TIMEOUT_S, hint: str = "is --socket right?"
) -> str:
    """The JSON line the agent at *path* answers with, without its newline.

    Raises :class:`AgentNotRunningError` if nothing listens there (the message ends with
    *hint*), another :class:`~agent.errors.TboxError` if the agent does not answer within
    *timeout* seconds or cannot be reached.
    """
    if len(os.fsencode(path)) > _MAX_UNIX_PATH:
        raise UsageError(f"socket path {str(path)!r} is too long for a unix socket")
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, NotADirectoryError, ConnectionRefusedError):
            raise AgentNotRunningError(
                f"no agent is running at {path} (is the agent started? {hint})"
            ) from None
        except PermissionError:
            raise TboxError(
                f"cannot connect to {path}: permission denied (the status socket is only open "
                "to the agent's user)"
            ) from None
        except TimeoutError:
            raise TboxError(
                f"the agent at {path} did not accept the connection within {timeout:g} s"
            ) from None
        except OSError as e:
            raise TboxError(f"cannot connect to {path}: {e.strerror or e}") from None
        received = bytearray()
        while not received.endswith(b"\n"):
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TboxError(
                    f"the agent at {path} did not answer within {timeout:g} s"
                ) from None
            except OSError as e:
                raise TboxError(f"reading from {path}: {e.strerror or e}") from None
            if not chunk:
                break
            received += chunk
    if not received.strip():
        raise TboxError(f"the agent at {path} closed the connection without answering")
    return received.decode("utf-8", "replace").strip()


def fetch_status(path: Path, *, timeout: float = _CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """The status snapshot of the agent at *path* (see :func:`fetch_status_line`)."""
    return _parse(fetch_status_line(path, timeout=timeout), path)


def _parse(line: str, path: Path) -> dict[str, Any]:
    try:
        snapshot = json.loads(line)
    except json.JSONDecodeError as e:
        raise TboxError(f"the agent at {path} sent an unreadable status: {e}") from None
    if not isinstance(snapshot, dict):
        raise TboxError(f"the agent at {path} sent a status that is not a JSON object")
    return snapshot


def _pause(seconds: float) -> None:
    time.sleep(seconds)


def _watch(path: Path, hint: str, interval: float, *, as_json: bool) -> None:
    # Only the first fetch must succeed: afterwards an agent restarting is something to watch,
    # not a reason to stop watching.
    line = fetch_status_line(path, hint=hint)
    snapshot = _parse(line, path)
    if as_json:
        while True:
            print(line, flush=True)
            _pause(interval)
            while True:
                try:
                    line = fetch_status_line(path, hint=hint)
                    _parse(line, path)
                except TboxError as e:
                    print(f"tbox status: {e}", file=sys.stderr, flush=True)
                    _pause(interval)
                else:
                    break
    console = Console(highlight=False)
    last = render_status(snapshot)
    view: RenderableType = last
    if not console.is_terminal:
        # Off a terminal Live prints only when it stops; a pipe gets one view per refresh.
        while True:
            console.print(view)
            console.print()
            _pause(interval)
            view, last = _refresh(path, hint, last)
    with Live(view, console=console, auto_refresh=False) as live:
        while True:
            _pause(interval)
            view, last = _refresh(path, hint, last)
            live.update(view, refresh=True)


def _refresh(path: Path, hint: str, last: RenderableType) -> tuple[RenderableType, RenderableType]:
    """``(view to show, last good view)`` after asking the agent again."""
    try:
        view = render_status(_parse(fetch_status_line(path, hint=hint), path))
    except TboxError as e:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        warning = Text(f"{stamp} {e}; showing the last status received", style="bold red")
        return Group(warning, last), last
    return view, view


# --- the human view --------------------------------------------------------------------------


def _section(snapshot: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = snapshot.get(key)
    return value if isinstance(value, Mapping) else {}


def _count(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISSING
    return f"{value:,}" if isinstance(value, int) else f"{value:,.1f}"


def human_bytes(value: object) -> str:
    """*value* bytes as ``512 B``, ``4.0 KiB``, ``256.0 MiB``…; ``–`` if not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return _MISSING
    amount = float(value)
    if abs(amount) < 1024:
        return f"{int(amount)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        amount /= 1024
        if abs(amount) < 1024 or unit == "TiB":
            break
    return f"{amount:.1f} {unit}"


def human_duration(value: object) -> str:
    """*value* seconds as ``1.5 s``, ``4m 05s``, ``2h 03m``, ``3d 04h``; ``–`` if not a number."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return _MISSING
    if value < 60:
        return f"{value:.1f} s"
    seconds = int(value)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s"


def _text(value: object) -> str:
    return _MISSING if value is None or value == "" else str(value)


def _items(pairs: list[tuple[str, str]]) -> str:
    """``label value · label value · …``, the compact form of one section's numbers."""
    return " · ".join(f"{label} {value}" if label else value for label, value in pairs)


def render_status(snapshot: Mapping[str, Any]) -> RenderableType:
    """The compact human view of a status *snapshot*: a header line, the buses, the rest.

    Missing sections and keys show as ``–`` or are left out; text from the agent is never read
    as rich markup.
    """
    parts: list[RenderableType] = [_header(snapshot)]
    buses = _section(snapshot, "buses")
    if buses:
        parts.append(_buses(buses))
    sections = Table.grid(padding=(0, 2))
    sections.add_column("section", style="bold", no_wrap=True)
    sections.add_column("details")
    for title, details in (
        ("Pipeline", _pipeline(_section(snapshot, "pipeline"))),
        ("Queue", _queue(_section(snapshot, "queue"))),
        ("Uplink", _uplink(_section(snapshot, "uplink"))),
        ("Devices", _devices(_section(snapshot, "devices"))),
        ("Commands", _commands(_section(snapshot, "commands"))),
        ("Schemes", _schemes(_section(snapshot, "schemes"))),
    ):
        if details is not None:
            sections.add_row(title, details)
    parts.append(Text(""))
    parts.append(sections)
    return Group(*parts)


def _header(snapshot: Mapping[str, Any]) -> Text:
    started = snapshot.get("started")
    since = ""
    if isinstance(started, int | float) and not isinstance(started, bool):
        # A nonsense start time is not worth failing the whole view for.
        with contextlib.suppress(OverflowError, OSError, ValueError):
            since = f" (since {dt.datetime.fromtimestamp(started):%Y-%m-%d %H:%M:%S})"
    return Text.assemble(
        ("tbox agent ", "bold"),
        (_text(snapshot.get("vehicle_id")), "bold cyan"),
        f" — version {_text(snapshot.get('version'))}, pid {_text(snapshot.get('pid'))}, "
        f"up {human_duration(snapshot.get('uptime_s'))}{since}",
    )


def _buses(buses: Mapping[str, Any]) -> RenderableType:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("bus", style="bold")
    table.add_column("state")
    for heading in ("frames", "filtered", "errors", "reopens"):
        table.add_column(heading, justify="right")
    table.add_column("url", overflow="fold")
    errors: list[Text] = []
    for name, bus in buses.items():
        stats = bus if isinstance(bus, Mapping) else {}
        is_open = stats.get("open")
        if is_open is True:
            state = Text("open", style="green")
        elif is_open is False:
            state = Text("closed", style="bold red")
        else:
            state = Text(_MISSING)
        table.add_row(
            Text(str(name)),
            state,
            _count(stats.get("frames")),
            _count(stats.get("filtered")),
            _count(stats.get("errors")),
            _count(stats.get("reopens")),
            Text(_text(stats.get("url"))),
        )
        if stats.get("last_error"):
            errors.append(Text(f"{name}: last error: {stats['last_error']}", style="red"))
    return Group(Text(""), table, *errors)


def _pipeline(pipeline: Mapping[str, Any]) -> Text | None:
    if not pipeline:
        return None
    pairs = [
        (label, _count(pipeline.get(key)))
        for key, label in (
            ("frames", "frames"),
            ("decoded", "decoded"),
            ("decode_errors", "decode errors"),
            ("encode_errors", "encode errors"),
            ("records", "records"),
            ("samples", "samples"),
            ("queued", "queued"),
            ("state_updates", "state updates"),
        )
        if key in pipeline
    ]
    return Text(_items(pairs))


def _queue(queue: Mapping[str, Any]) -> Text | None:
    if not queue:
        return None
    used, cap = queue.get("bytes"), queue.get("max_bytes")
    size = f"{human_bytes(used)} of {human_bytes(cap)}"
    if isinstance(used, int | float) and isinstance(cap, int | float) and cap > 0:
        size += f" ({100 * used / cap:.1f}%)"
    oldest = queue.get("oldest_age_s")
    dropped = _section(queue, "dropped")
    pairs = [
        ("", f"{_count(queue.get('items'))} items"),
        ("", size),
        ("payload", human_bytes(queue.get("payload_bytes"))),
        ("oldest", _MISSING if oldest is None else human_duration(oldest)),
        ("dropped:", ", ".join(f"{why} {_count(n)}" for why, n in dropped.items()) or _MISSING),
    ]
    text = Text(_items(pairs))
    if any(isinstance(n, int) and n > 0 for n in dropped.values()):
        text.stylize("yellow", len(_items(pairs[:-1])))
    return text


def _uplink(uplink: Mapping[str, Any]) -> Text | None:
    if not uplink:
        return None
    link = uplink.get("link")
    text = Text(_text(link), style="bold green" if link == "connected" else "bold red")
    pairs = [
        ("broker", _text(uplink.get("broker"))),
        ("MQTT", _text(uplink.get("protocol"))),
        ("batches", _count(uplink.get("batches"))),
        ("records", _count(uplink.get("records"))),
        ("sent", human_bytes(uplink.get("bytes"))),
        ("resent", _count(uplink.get("resent"))),
        ("reconnects", _count(uplink.get("reconnects"))),
        ("connect failures", _count(uplink.get("connect_failures"))),
        ("malformed", _count(uplink.get("malformed"))),
    ]
    text.append(" · " + _items(pairs))
    if uplink.get("last_error"):
        text.append(f"\nlast error: {uplink['last_error']}", style="red")
    events = uplink.get("link_events")
    if isinstance(events, list):
        # The cellular link's quality at the latest connections and losses explains gaps.
        for event in [e for e in events if isinstance(e, Mapping)][-3:]:
            quality = event.get("quality")
            shown = (
                _items([(str(k), _text(v)) for k, v in quality.items()])
                if isinstance(quality, Mapping) and quality
                else "link quality unknown"
            )
            text.append(f"\n{_clock(event.get('t'))} {_text(event.get('event'))}: {shown}")
    return text


def _devices(devices: Mapping[str, Any]) -> Text | None:
    if not devices:
        return None
    text = Text()
    for kind in ("gnss", "modem"):
        device = devices.get(kind)
        if not isinstance(device, Mapping):
            continue
        values = device.get("values")
        values = values if isinstance(values, Mapping) else {}
        state = device.get("state")
        if text:
            text.append("\n")
        text.append(f"{kind} ", style="bold")
        text.append(_text(state), style="green" if state == "ok" else "red")
        if kind == "gnss":
            lat, lon = values.get("latitude"), values.get("longitude")
            where = (
                f"{lat:.5f}, {lon:.5f}"
                if isinstance(lat, float | int) and isinstance(lon, float | int)
                else "no position"
            )
            pairs = [
                ("", where),
                ("speed", f"{_count(values.get('speed'))} km/h"),
                ("satellites", _count(values.get("satellites"))),
                ("sentences", _count(device.get("sentences"))),
                ("bad checksum", _count(device.get("bad_checksum"))),
                ("garbage", _count(device.get("garbage"))),
                ("reopens", _count(device.get("reopens"))),
            ]
        else:
            pairs = [
                ("", f"{_count(values.get('rssi_dbm'))} dBm"),
                ("", _text(values.get("access_technology"))),
                ("", _text(values.get("registration"))),
                ("", _text(values.get("operator"))),
                ("polls", _count(device.get("polls"))),
                ("timeouts", _count(device.get("timeouts"))),
                ("reopens", _count(device.get("reopens"))),
            ]
        text.append(" · " + _items(pairs))
        if state != "ok" and device.get("last_error"):
            text.append(f"\n  last error: {device['last_error']}", style="red")
    return text or None


def _clock(t: object) -> str:
    """Wall time *t* as local ``HH:MM:SS``; ``–`` if it is not a usable time."""
    if isinstance(t, bool) or not isinstance(t, int | float):
        return _MISSING
    try:
        return time.strftime("%H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return _MISSING


def _commands(commands: Mapping[str, Any]) -> Text | None:
    if not commands:
        return None
    pairs = [
        (key, _count(commands.get(key))) for key in ("received", "accepted", "rejected", "failed")
    ]
    by_code = _section(commands, "by_code")
    if by_code:
        codes = ", ".join(f"{code} {_count(n)}" for code, n in sorted(by_code.items()))
        pairs.append(("by code:", codes))
    return Text(_items(pairs))


def _schemes(schemes: Mapping[str, Any]) -> Text | None:
    if not schemes:
        return None
    ids = schemes.get("ids")
    listed = ", ".join(map(str, ids)) if isinstance(ids, list) and ids else _MISSING
    return Text(
        f"{_count(schemes.get('active'))} active from {_text(schemes.get('source'))}: {listed}"
    )

"""``tbox events watch``: a vehicle's security events as a backend receives them, for benches.

``tbox events watch --broker mqtt://HOST:PORT --vehicle-id ID [--json] [--frames] [--count N]
[--timeout S]`` subscribes to ``vehicles/<id>/events`` (contract C5, QoS 1), decodes every
``SecurityEventBatch`` the agent publishes there and prints one line per security event::

    2026-12-06 15:20:04.120  HIGH      can0.allowlist  can0 0x000  ×1969 in 1.00 s  observed CAN
    id 0x0; expected one of the 42 ids allowed on can0 — only the CAN ids of the clean …

(on one line): the time of the first occurrence (local time), severity, rule id, bus, CAN id
(``-`` when the event concerns no single id), how many occurrences it aggregates and over how
long, what was observed and what the rule expected, and the rule's description. ``--frames``
adds the forensic frames kept around the event, one indented line each, flagged ones marked;
``--json`` prints one JSON object per event instead, exactly as ``tbox ids run`` does (C4).

A batch the uplink sent again after a reconnect (same sequence number) is shown once. A payload
that is not a security event batch is reported on stderr as a warning naming its topic, and the
watch goes on. It ends after ``--count`` events (exit 0), after ``--timeout`` seconds (exit 0,
or 1 if ``--count`` events did not arrive by then), or on Ctrl-C or SIGTERM (exit 0); a summary
goes to stderr. A broker that cannot be reached, or that drops the connection, is an error
(exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import signal
import sys
from typing import TYPE_CHECKING, Any

from agent.cli.broker_args import parse_broker_url
from agent.errors import InputError, TboxError, UsageError

if TYPE_CHECKING:
    import aiomqtt

    from agent.proto.tbox.v1 import events_pb2
    from security.events import SecurityEvent

__all__ = ["event_from_proto", "event_json", "format_event", "register"]

_PROG = "tbox events"
# How many recent batch sequence numbers are remembered to drop re-sent batches.
_SEEN_BATCHES = 4096
_CONNECT_TIMEOUT_S = 10.0


def register(subparsers: Any) -> None:
    """Add ``tbox events``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "events",
        help="watch a vehicle's security events arrive at the broker (bench)",
        description="The backend's view of the vehicle's security events, for benches.",
    )
    sub = parser.add_subparsers(dest="events_command", metavar="COMMAND")
    sub.required = True
    watch: argparse.ArgumentParser = sub.add_parser(
        "watch",
        help="print the security events a vehicle publishes, with their explanations",
        description=(
            "Subscribe to vehicles/<ID>/events and print one line per security event: time, "
            "severity, rule, bus, CAN id, count, observed vs expected, explanation. Runs until "
            "--count events, --timeout or Ctrl-C."
        ),
    )
    watch.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    watch.add_argument("--vehicle-id", required=True, metavar="ID")
    watch.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per event, as `tbox ids run` prints (with its forensic frames)",
    )
    watch.add_argument(
        "--frames", action="store_true", help="also print each event's forensic frames"
    )
    watch.add_argument("--count", type=int, metavar="N", help="stop after N events")
    watch.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    watch.set_defaults(handler=_watch)


def _watch(args: argparse.Namespace) -> int:
    host, port = parse_broker_url(args.broker)
    vehicle_id: str = args.vehicle_id
    if not vehicle_id or any(c in vehicle_id for c in "/+#") or vehicle_id != vehicle_id.strip():
        raise UsageError(
            f"--vehicle-id {vehicle_id!r}: a vehicle id is not empty and has no '/', '+', '#' "
            "or surrounding whitespace"
        )
    if args.count is not None and args.count < 1:
        raise UsageError(f"--count {args.count}: must be at least 1")
    if args.timeout is not None and not args.timeout > 0:
        raise UsageError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    return asyncio.run(_Watcher(args, host, port).run())


class _Watcher:
    """One subscription to one vehicle's ``events`` topic and what it printed so far."""

    def __init__(self, args: argparse.Namespace, host: str, port: int) -> None:
        self.args = args
        self.host = host
        self.port = port
        self.topic = f"vehicles/{args.vehicle_id}/events"
        self.events = 0
        self.batches = 0
        self.duplicates = 0
        self.undecodable = 0
        self._seen: collections.deque[tuple[str, int]] = collections.deque(maxlen=_SEEN_BATCHES)

    async def run(self) -> int:
        """Watch until done; the exit status."""
        import aiomqtt

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        where = f"broker {self.host}:{self.port}"
        connected = False
        try:
            async with aiomqtt.Client(self.host, self.port, timeout=_CONNECT_TIMEOUT_S) as client:
                connected = True
                await client.subscribe(self.topic, qos=1)
                _note(f"watching {self.topic} on {self.host}:{self.port} (Ctrl-C stops)")
                finished = await self._until_done(client, stop)
        except aiomqtt.MqttError as e:
            if connected:
                raise TboxError(f"{where}: lost the connection: {e}") from None
            raise TboxError(
                f"{where}: cannot connect: {e} (is the broker running? is --broker right?)"
            ) from None
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
        self._summary()
        if not finished and self.args.count is not None and not stop.is_set():
            # Only --timeout ends a watch for --count events early, and that is a failure.
            raise TboxError(
                f"{self.events} of {self.args.count} security events from vehicle "
                f"{self.args.vehicle_id} within {self.args.timeout:g} s"
            )
        return 0

    async def _until_done(self, client: aiomqtt.Client, stop: asyncio.Event) -> bool:
        """True once ``--count`` events were printed; False on a timeout or a stop signal."""
        import aiomqtt

        consumer = asyncio.ensure_future(self._consume(client))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {consumer, stopper}, timeout=self.args.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (consumer, stopper):
                task.cancel()
            await asyncio.gather(consumer, stopper, return_exceptions=True)
        if consumer.done() and not consumer.cancelled():
            exc = consumer.exception()
            if exc is not None:
                raise exc
            if self.args.count is None or self.events < self.args.count:
                raise aiomqtt.MqttError("the broker closed it")
            return True
        return False

    async def _consume(self, client: aiomqtt.Client) -> None:
        """Print events until ``--count`` of them were printed (forever without it)."""
        async for message in client.messages:
            for event in self._decode(str(message.topic), message.payload):
                self._print(event)
                self.events += 1
                if self.args.count is not None and self.events >= self.args.count:
                    return

    def _decode(self, topic: str, payload: Any) -> list[events_pb2.SecurityEvent]:
        """The events of one message, in order; [] (and a warning) for anything else."""
        from agent.telemetry_codec import decode_event_batch

        if not isinstance(payload, bytes | bytearray):
            payload = b"" if payload is None else str(payload).encode()
        try:
            batch = decode_event_batch(bytes(payload))
        except InputError as e:
            self.undecodable += 1
            _note(f"warning: {topic}: undecodable payload of {len(payload)} bytes skipped: {e}")
            return []
        key = (batch.vehicle_id, batch.sequence)
        if key in self._seen:
            self.duplicates += 1
            return []
        self._seen.append(key)
        self.batches += 1
        return list(batch.events)

    def _print(self, message: events_pb2.SecurityEvent) -> None:
        event = event_from_proto(message)
        if self.args.json:
            text = json.dumps(event_json(message, event))
        else:
            text = format_event(
                event, frames=self.args.frames, severity=_severity_label(message, event)
            )
        print(text, flush=True)

    def _summary(self) -> None:
        extra = [
            f"{n} {what}"
            for n, what in (
                (self.duplicates, "repeated batches skipped"),
                (self.undecodable, "undecodable payloads"),
            )
            if n
        ]
        _note(
            f"{self.events} security events in {self.batches} batches"
            + (f" ({', '.join(extra)})" if extra else "")
        )


def _note(text: str) -> None:
    print(f"{_PROG}: {text}", file=sys.stderr, flush=True)


def event_from_proto(message: events_pb2.SecurityEvent) -> SecurityEvent:
    """The :class:`~security.events.SecurityEvent` a ``tbox.v1.SecurityEvent`` carries.

    A severity this version does not know (``SEVERITY_UNSPECIFIED``, or a newer one) reads as
    ``info`` here; :func:`event_json` (and the watcher's lines) show ``severity-<number>`` instead.
    """
    from security.events import ForensicFrame, SecurityEvent
    from security.rules import Severity

    try:
        severity = Severity(message.severity)
    except ValueError:
        severity = Severity.INFO
    return SecurityEvent(
        event_definition_id=message.event_definition_id,
        idsm_instance_id=message.idsm_instance_id,
        sensor_instance_id=message.sensor_instance_id,
        count=message.count,
        time_us=message.time_us,
        context_data=message.context_data,
        rule_id=message.rule_id,
        severity=severity,
        channel=message.channel,
        can_id=message.can_id if message.HasField("can_id") else None,
        observed=message.observed,
        expected=message.expected,
        description=message.description,
        last_time_us=message.last_time_us,
        frames=tuple(
            ForensicFrame(
                time_delta_us=f.time_delta_us,
                channel=f.channel,
                can_id=f.can_id,
                extended=f.extended,
                fd=f.fd,
                data=f.data,
                flagged=f.flagged,
            )
            for f in message.frames
        ),
    )


def _severity_label(message: events_pb2.SecurityEvent, event: SecurityEvent) -> str:
    if int(event.severity) == message.severity:
        return event.severity.label
    return f"severity-{message.severity}"


def event_json(message: events_pb2.SecurityEvent, event: SecurityEvent) -> dict[str, Any]:
    """``event.to_json()`` (what ``tbox ids run`` prints), with an unknown severity's number."""
    obj = event.to_json()
    obj["severity"] = _severity_label(message, event)
    return obj


def _local_time(time_us: int) -> str:
    try:
        moment = datetime.datetime.fromtimestamp(time_us / 1e6)
    except (OverflowError, OSError, ValueError):
        return f"t={time_us / 1e6:.3f}"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _can_id(can_id: int | None) -> str:
    if can_id is None:
        return "-"
    return f"0x{can_id:03X}" if can_id <= 0x7FF else f"0x{can_id:08X}"


def format_event(event: SecurityEvent, *, frames: bool = False, severity: str | None = None) -> str:
    """One readable line for *event* (and its forensic frames below it, with *frames*).

    *severity* replaces the event's own label (for a severity this version does not know).
    """
    span = (event.last_time_us - event.time_us) / 1e6
    count = f"×{event.count}" + (f" in {span:.2f} s" if span > 0 else "")
    line = (
        f"{_local_time(event.time_us)}  {(severity or event.severity.label).upper():<8}  "
        f"{event.rule_id}  {event.channel or '-'} {_can_id(event.can_id)}  {count}  "
        f"observed {event.observed or '?'}; expected {event.expected or '?'}"
    )
    if event.description:
        line += f" — {event.description}"
    if not frames:
        return line
    lines = [line]
    for f in event.frames:
        can_id = f"0x{f.can_id:08X}" if f.extended else f"0x{f.can_id:03X}"
        lines.append(
            f"    {f.time_delta_us / 1000:+9.3f} ms  {f.channel} {can_id:<10} "
            f"[{len(f.data)}] {f.data.hex(' ').upper() or '-'}"
            + ("  ← flagged" if f.flagged else "")
        )
    return "\n".join(lines)

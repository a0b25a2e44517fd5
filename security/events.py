"""Security events: AUTOSAR IdsM qualified events with the IDS's explanation and forensic frames.

A :class:`SecurityEvent` aggregates one or more occurrences of one finding (one rule, bus and CAN
id within an aggregation window; :mod:`security.aggregate`). It carries the fields of an IdsM
qualified security event — event definition id, IdsM instance id, sensor instance id, count,
timestamp, context data — and an explanation for a human: rule id, severity, bus, CAN id, what
was observed, what was expected, the rule's description. :meth:`SecurityEvent.to_proto` gives the
``tbox.v1.SecurityEvent`` of the ``events`` topic (contract C5); :meth:`SecurityEvent.to_json`
the JSON object ``tbox ids run`` prints (contract C4).

**Context data** (IdsM's sensor-specific bytes) is the first offending frame, so a backend can
see it without the forensic frames::

    version (1 byte, = 1) ‖ CAN id (4 bytes, big endian; bit 31 set for a 29-bit id)
                          ‖ data length (1 byte) ‖ data (0–64 bytes)

and just the version byte for an event without a frame (an id that went silent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from security.rules import Severity

if TYPE_CHECKING:
    from agent.proto.tbox.v1 import events_pb2

__all__ = [
    "CONTEXT_DATA_VERSION",
    "ForensicFrame",
    "SecurityEvent",
    "clamp_int64",
    "context_data",
    "time_us",
]

#: First byte of :attr:`SecurityEvent.context_data`.
CONTEXT_DATA_VERSION: Final = 1
_EXTENDED_FLAG: Final = 0x80000000
_INT64_MAX: Final = 2**63 - 1
_INT64_MIN: Final = -(2**63)


def time_us(t: float) -> int:
    """Seconds as whole microseconds, within an int64 (absurd clocks must not break encoding);
    0 for NaN."""
    if math.isnan(t):
        return 0
    us = t * 1_000_000
    if us >= _INT64_MAX:
        return _INT64_MAX
    if us <= _INT64_MIN:
        return _INT64_MIN
    return round(us)


def clamp_int64(value: int) -> int:
    """*value* limited to what a protobuf int64 holds (absurd clocks must not break encoding)."""
    return max(_INT64_MIN, min(_INT64_MAX, value))


def context_data(
    can_id: int | None, data: bytes | bytearray | None, *, extended: bool = False
) -> bytes:
    """The IdsM context data for an offending frame (see the module docstring)."""
    if can_id is None or data is None:
        return bytes((CONTEXT_DATA_VERSION,))
    word = (can_id & 0x1FFFFFFF) | (_EXTENDED_FLAG if extended else 0)
    payload = bytes(data[:64])
    return (
        bytes((CONTEXT_DATA_VERSION,)) + word.to_bytes(4, "big") + bytes((len(payload),)) + payload
    )


@dataclass(frozen=True, slots=True)
class ForensicFrame:
    """One frame kept around an event; ``time_delta_us`` is relative to the event's ``time_us``
    (negative before it); ``flagged`` says whether any rule flagged it."""

    time_delta_us: int
    channel: str
    can_id: int
    extended: bool
    fd: bool
    data: bytes
    flagged: bool

    def to_json(self) -> dict[str, Any]:
        """The frame as a JSON object (``data`` in hex)."""
        return {
            "dt_us": self.time_delta_us,
            "channel": self.channel,
            "id": self.can_id,
            "extended": self.extended,
            "fd": self.fd,
            "data": self.data.hex(),
            "flagged": self.flagged,
        }


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    """One qualified security event (see the module docstring).

    IdsM fields: ``event_definition_id`` (16 bits), ``idsm_instance_id`` (10 bits),
    ``sensor_instance_id`` (6 bits), ``count`` (≥ 1), ``time_us`` (first occurrence),
    ``context_data``. Explanation: ``rule_id``, ``severity``, ``channel``, ``can_id`` (None when
    the event concerns no single id), ``observed``, ``expected``, ``description``,
    ``last_time_us`` (last occurrence). ``frames`` are the forensic frames around the first
    occurrence.
    """

    event_definition_id: int
    idsm_instance_id: int
    sensor_instance_id: int
    count: int
    time_us: int
    context_data: bytes
    rule_id: str
    severity: Severity
    channel: str
    can_id: int | None
    observed: str
    expected: str
    description: str
    last_time_us: int
    frames: tuple[ForensicFrame, ...] = ()

    def to_proto(self) -> events_pb2.SecurityEvent:
        """The ``tbox.v1.SecurityEvent`` message of this event."""
        from agent.proto.tbox.v1 import events_pb2

        message = events_pb2.SecurityEvent(
            event_definition_id=self.event_definition_id & 0xFFFF,
            idsm_instance_id=self.idsm_instance_id & 0x3FF,
            sensor_instance_id=self.sensor_instance_id & 0x3F,
            count=min(self.count, 0xFFFFFFFF),
            time_us=self.time_us,
            context_data=self.context_data,
            rule_id=self.rule_id,
            severity=int(self.severity),  # type: ignore[arg-type]
            channel=self.channel,
            observed=self.observed,
            expected=self.expected,
            description=self.description,
            last_time_us=self.last_time_us,
        )
        if self.can_id is not None:
            message.can_id = self.can_id
        for frame in self.frames:
            message.frames.add(
                time_delta_us=frame.time_delta_us,
                channel=frame.channel,
                can_id=frame.can_id,
                extended=frame.extended,
                fd=frame.fd,
                data=frame.data,
                flagged=frame.flagged,
            )
        return message

    def to_json(self) -> dict[str, Any]:
        """The JSON object ``tbox ids run`` prints for this event (times in seconds)."""
        return {
            "t": self.time_us / 1e6,
            "last_t": self.last_time_us / 1e6,
            "rule_id": self.rule_id,
            "severity": self.severity.label,
            "channel": self.channel,
            "id": self.can_id,
            "count": self.count,
            "observed": self.observed,
            "expected": self.expected,
            "description": self.description,
            "event_definition_id": self.event_definition_id,
            "idsm_instance_id": self.idsm_instance_id,
            "sensor_instance_id": self.sensor_instance_id,
            "context_data": self.context_data.hex(),
            "frames": [frame.to_json() for frame in self.frames],
        }

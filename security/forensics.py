"""Forensic frames: the traffic of a bus just before and just after a security event.

A :class:`ForensicBuffer` per bus remembers the last ``before`` frames (references to the frame
objects, no copies) and which of them a rule flagged. When an event opens, :meth:`capture` takes
a :class:`ForensicCapture`: a snapshot of those frames, which then collects the next ``after``
frames of the bus — the offending frame first, when there is one. Per clean frame the cost is one
deque append; captures only exist while events are open.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from security.events import ForensicFrame, clamp_int64, time_us

__all__ = ["ForensicBuffer", "ForensicCapture"]


class ForensicCapture:
    """Frames around one event: ``before`` (oldest first) and ``after``, each ``(frame,
    flagged)``; ``complete`` once ``need`` frames came after."""

    __slots__ = ("after", "before", "need")

    def __init__(self, before: list[tuple[Any, bool]], need: int) -> None:
        self.before = before
        self.after: list[tuple[Any, bool]] = []
        self.need = need

    @property
    def complete(self) -> bool:
        """Whether every frame after the event has arrived."""
        return len(self.after) >= self.need

    def frames(self, event_time_us: int) -> tuple[ForensicFrame, ...]:
        """The captured frames as :class:`ForensicFrame` objects, times relative to the event."""
        out = []
        for frame, flagged in (*self.before, *self.after):
            channel = frame.channel
            out.append(
                ForensicFrame(
                    time_delta_us=clamp_int64(time_us(frame.timestamp) - event_time_us),
                    channel="" if channel is None else str(channel),
                    can_id=int(frame.arbitration_id),
                    extended=bool(frame.is_extended_id),
                    fd=bool(frame.is_fd),
                    data=bytes(frame.data or b""),
                    flagged=flagged,
                )
            )
        return tuple(out)


class ForensicBuffer:
    """The recent frames of one bus and the captures still collecting frames after an event."""

    __slots__ = ("after", "flagged", "frames", "waiting")

    def __init__(self, before: int, after: int) -> None:
        self.frames: deque[Any] = deque(maxlen=before)
        # Flagged frames among the recent ones, by identity: at most `before` of them can be
        # among the last `before` frames, so the same bound keeps every one that matters.
        self.flagged: deque[Any] = deque(maxlen=before)
        self.after = after
        self.waiting: list[ForensicCapture] = []

    def add(self, frame: Any, flagged: bool) -> None:
        """Remember *frame* (after the rules judged it) and hand it to waiting captures."""
        if self.frames.maxlen:
            self.frames.append(frame)
            if flagged:
                self.flagged.append(frame)
        waiting = self.waiting
        if waiting:
            for capture in waiting:
                capture.after.append((frame, flagged))
            if any(capture.complete for capture in waiting):
                self.waiting = [c for c in waiting if not c.complete]

    def capture(self) -> ForensicCapture:
        """A capture of the frames so far; it collects the next ``after`` frames (the frame being
        judged, if any, is the first of them)."""
        flagged = {id(f) for f in self.flagged}
        capture = ForensicCapture([(f, id(f) in flagged) for f in self.frames], self.after + 1)
        self.waiting.append(capture)
        return capture

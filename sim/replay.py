"""Replaying a CAN log as a frame producer.

:class:`LogReplay` reads any log :func:`agent.canlog.read_log` reads, streaming (a long log is
never held in memory), and hands out its frames by run time for
:class:`sim.runner.SimulationRunner`: a frame is due ``frame.timestamp - first.timestamp`` seconds
into the run. Emitted frames carry live times (``start_time`` + their run time, ``start_time``
being the wall clock when the run began), so receivers see the traffic as happening now.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import can

from agent.canlog import LogReadStats, read_log
from agent.errors import UsageError

__all__ = ["LogReplay"]


class LogReplay:
    """A :class:`~sim.runner.FrameProducer` over a CAN log.

    ``channel_map`` renames log channels to bus names (``{"can1": "body"}``; unlisted channels
    keep their names). With ``loop=True`` the log repeats without end, each pass shifted by the
    length of the log plus one mean frame gap, so the first frame of a pass does not coincide
    with the last of the one before. ``start_time`` is the wall-clock time of run time 0; by
    default it is taken when the first frames are asked for.

    ``read_stats`` counts what :func:`~agent.canlog.read_log` read (including malformed lines, over
    every pass), ``frames`` the frames handed out and ``passes`` the passes started.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        channel_map: Mapping[str, str] | None = None,
        loop: bool = False,
        start_time: float | None = None,
    ) -> None:
        if loop and str(path) == "-":
            raise UsageError("--loop cannot replay standard input: it can only be read once")
        self.path = path
        self.channel_map = dict(channel_map or {})
        self.loop = loop
        self.start_time = start_time
        self.read_stats = LogReadStats()
        self.frames = 0
        self.passes = 0
        self._offset = 0.0  # run time at which the current pass starts
        self._first_ts: float | None = None  # timestamp of the log's first frame
        self._last_rel = 0.0  # relative time of the latest frame read in this pass
        self._pass_frames = 0
        self._finished = False
        self._pending: can.Message | None = None
        self._pending_rel = 0.0
        self._frames: Iterator[can.Message] = self._open_pass()
        self._advance()  # fail early on a missing file; know when the first frame is due
        if self._pending is None:
            self._finished = True

    @property
    def finished(self) -> bool:
        """True when the log has been replayed to its end (never with ``loop``, unless empty)."""
        return self._finished

    @property
    def empty(self) -> bool:
        """True if the log has no frame at all."""
        return self._first_ts is None

    def next_frame_time(self) -> float | None:
        """Run time at which the next frame is due (None when finished)."""
        if self._pending is None:
            return None
        return self._offset + self._pending_rel

    def frames_until(self, t: float) -> list[can.Message]:
        """Every frame due by run time *t* not handed out before, with live timestamps."""
        if self.start_time is None:
            self.start_time = time.time() - t
        start = self.start_time
        channel_map = self.channel_map
        out: list[can.Message] = []
        while self._pending is not None:
            due = self._offset + self._pending_rel
            if due > t:
                break
            msg = self._pending
            msg.timestamp = start + due
            if channel_map:
                msg.channel = channel_map.get(str(msg.channel), msg.channel)
            out.append(msg)
            self._advance()
        self.frames += len(out)
        return out

    def _open_pass(self) -> Iterator[can.Message]:
        self.passes += 1
        self._pass_frames = 0
        return read_log(self.path, self.read_stats)

    def _advance(self) -> None:
        """Read the next frame into ``_pending`` (None at the end); start a new pass if looping."""
        msg = next(self._frames, None)
        if msg is None and self.loop and self._pass_frames > 0:
            # Next pass: shift by the log's length plus one mean gap between frames.
            gap = self._last_rel / max(self._pass_frames - 1, 1)
            self._offset += self._last_rel + max(gap, 1e-6)
            self._frames = self._open_pass()
            msg = next(self._frames, None)
        if msg is None:
            self._pending = None
            self._finished = True
            return
        if self._first_ts is None:
            self._first_ts = msg.timestamp
        rel = msg.timestamp - self._first_ts
        self._pending = msg
        self._pending_rel = rel
        self._pass_frames += 1
        if rel > self._last_rel or self._pass_frames == 1:
            self._last_rel = rel if self._pass_frames > 1 else max(rel, 0.0)

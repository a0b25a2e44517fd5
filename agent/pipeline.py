"""Frames in, records out: decoding, collection schemes and the last known state, without I/O.

:class:`TelemetryPipeline` holds one compiled :class:`~can_dbc.Decoder` per bus, subscribed to
exactly the signals the schemes and the ``state`` topic use, a
:class:`~agent.schemes.SchemeEvaluator` and a :class:`~agent.schemes.LastKnownState`. The agent
(:mod:`agent.service`) feeds it batches of frames from its :class:`~agent.frame_source.FrameSource`
and queues the records it returns; benchmarks and tests feed it directly.

Signal names resolve per bus: a scheme's ``ESC_VehSpd`` subscribes every bus whose DBC has such a
signal; a name that no bus's DBC knows is an error when the schemes are installed (at start-up,
or when a pushed set arrives), never a silent gap in the data.

Devices that are not CAN (the GNSS receiver, the modem) are *device buses*: a pseudo-bus name
(``gnss``) with its messages and signal names (``GNSS.latitude``). Their values arrive already
decoded through :meth:`TelemetryPipeline.process_signals` and resolve like CAN signals.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.schemes import CollectedRecord, LastKnownState, Sample, Scheme, SchemeError
from agent.schemes.evaluator import SchemeEvaluator
from agent.schemes.model import SignalRef
from can_dbc import DecodeError, Decoder

__all__ = ["PipelineStats", "TelemetryPipeline"]


@dataclass(slots=True)
class PipelineStats:
    """Counters since start: frames seen, decoded, failing to decode, records and samples made,
    and state values that changed."""

    frames: int = 0
    decoded: int = 0
    decode_errors: int = 0
    records: int = 0
    samples: int = 0
    state_updates: int = 0


def _known_names(databases: Sequence[Any]) -> set[str]:
    names: set[str] = set()
    for database in databases:
        for message in database.messages:
            for signal in message.signals:
                names.add(signal.name)
                names.add(f"{message.name}.{signal.name}")
    return names


class TelemetryPipeline:
    """Decodes frames of several buses and evaluates schemes and the last known state on them.

    *dbcs* maps a bus name to its databases (later ones win, as in :class:`~can_dbc.Decoder`).
    *device_buses* maps a pseudo-bus name to its messages and their signal names.
    Raises :class:`~agent.schemes.SchemeError` when a scheme or state signal is in no DBC and on
    no device bus.
    """

    def __init__(
        self,
        dbcs: Mapping[str, Sequence[Any]],
        schemes: Sequence[Scheme],
        *,
        state_signals: Iterable[str] = (),
        state_interval_ms: int = 1000,
        device_buses: Mapping[str, Mapping[str, Iterable[str]]] | None = None,
    ) -> None:
        self.stats = PipelineStats()
        self._dbcs = {bus: list(dbs) for bus, dbs in dbcs.items()}
        self._known = {bus: _known_names(dbs) for bus, dbs in self._dbcs.items()}
        for bus, messages in (device_buses or {}).items():
            if bus in self._dbcs:
                raise ValueError(f"device bus {bus!r} is also a CAN bus")
            self._known[bus] = {
                name
                for message, signals in messages.items()
                for signal in signals
                for name in (signal, f"{message}.{signal}")
            }
        self._state = LastKnownState(state_signals, min_interval_ms=state_interval_ms)
        self._state_refs = [SignalRef.parse(name) for name in sorted(self._state.signals_used())]
        self._state_changed = False
        self._evaluator = SchemeEvaluator(())
        self._decoders: dict[str, Decoder | None] = {}
        self.replace_schemes(schemes)

    # -- configuration ------------------------------------------------------------------------

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        """The schemes being evaluated."""
        return self._evaluator.schemes

    def frame_ids(self) -> dict[str, frozenset[int]]:
        """Per bus, every frame id its DBCs define (the ids worth reading at all)."""
        return {
            bus: frozenset(m.frame_id for db in dbs for m in db.messages)
            for bus, dbs in self._dbcs.items()
        }

    def check_schemes(self, schemes: Sequence[Scheme]) -> dict[str, Decoder | None]:
        """The decoders *schemes* need, per bus; :class:`SchemeError` if a signal is unknown."""
        probe = SchemeEvaluator(schemes)  # also checks that the ids are unique
        wanted: dict[str, set[str]] = {}
        unresolved = {str(ref): ref for ref in map(SignalRef.parse, probe.signals_used())}
        for ref in self._state_refs:
            unresolved.setdefault(str(ref), ref)
        for bus, known in self._known.items():
            names = set(probe.decoder_signals(bus))
            names.update(ref.decoder_name() for ref in self._state_refs if ref.bus in (None, bus))
            found = names & known
            wanted[bus] = found
            for name, ref in list(unresolved.items()):
                if ref.bus in (None, bus) and ref.decoder_name() in found:
                    del unresolved[name]
        if unresolved:
            name, ref = sorted(unresolved.items())[0]
            buses = ", ".join(sorted(self._known)) or "none"
            where = f"bus {ref.bus!r}" if ref.bus else f"the DBCs of any bus ({buses})"
            raise SchemeError("schemes", None, f"signal {name!r} is not defined in {where}")
        return {
            bus: (Decoder.from_databases(self._dbcs[bus], signals=sorted(names)) if names else None)
            for bus, names in wanted.items()
            if bus in self._dbcs
        }

    def replace_schemes(self, schemes: Sequence[Scheme]) -> list[CollectedRecord]:
        """Install a new scheme set; returns the records of capture windows it cut short."""
        decoders = self.check_schemes(schemes)
        records = self._evaluator.replace(schemes)
        self._decoders = decoders
        self._count(records)
        return records

    # -- the hot path -------------------------------------------------------------------------

    def process(self, frames: Iterable[Any]) -> list[CollectedRecord]:
        """Decode and evaluate a batch of python-can messages; return the completed records."""
        out: list[CollectedRecord] = []
        stats = self.stats
        decoders = self._decoders
        feed = self._evaluator.feed
        state_feed = self._state.feed
        n = decoded = errors = 0
        for frame in frames:
            n += 1
            bus = frame.channel
            decoder = decoders.get(bus)
            if decoder is None or frame.is_remote_frame or frame.is_error_frame:
                continue
            try:
                result = decoder.decode(frame.arbitration_id, frame.data)
            except DecodeError:
                errors += 1
                continue
            if result is None:
                continue
            decoded += 1
            t = frame.timestamp
            records = feed(t, bus, result.message, result.signals)
            if records:
                out.extend(records)
            if state_feed(t, bus, result.message, result.signals):
                self._state_changed = True
        stats.frames += n
        stats.decoded += decoded
        stats.decode_errors += errors
        if out:
            self._count(out)
        return out

    def process_signals(
        self, t: float, bus: str, message: str, signals: Mapping[str, float | int | str]
    ) -> list[CollectedRecord]:
        """Evaluate one device bus's already decoded values (a GNSS fix, a modem poll)."""
        records = self._evaluator.feed(t, bus, message, signals)
        if self._state.feed(t, bus, message, signals):
            self._state_changed = True
        self.stats.decoded += 1
        if records:
            self._count(records)
        return records

    def tick(self, t: float) -> list[CollectedRecord]:
        """Advance bus time when frames are sparse: periodic records and closed captures."""
        records = self._evaluator.tick(t)
        if self._state.poll(t):
            self._state_changed = True
        self._count(records)
        return records

    def flush(self) -> list[CollectedRecord]:
        """Close open capture windows (at shutdown)."""
        records = self._evaluator.flush()
        self._count(records)
        return records

    # -- the last known state -----------------------------------------------------------------

    def take_state(self) -> dict[str, Sample] | None:
        """The full last known state if a followed signal changed since the last call, else None."""
        if not self._state_changed:
            return None
        self._state_changed = False
        self.stats.state_updates += 1
        return self._state.snapshot()

    def state_snapshot(self) -> dict[str, Sample]:
        """The full last known state now."""
        return self._state.snapshot()

    def _count(self, records: Sequence[CollectedRecord]) -> None:
        self.stats.records += len(records)
        self.stats.samples += sum(len(r.samples) for r in records)

"""Compiling a rule set into per-bus lookup tables for the engine's per-frame path.

:func:`compile_rules` binds every rule to what it needs — DBC messages and signals of its bus,
SecOC keys — and builds, once, one :class:`BusPlan` per bus:

* ``nodes``: a dict from CAN id to an :class:`IdNode` holding that id's detectors as ``(detector,
  bound check)`` pairs, its decoder and signal detectors, and the condition slots its signals
  feed. An id that is not in ``nodes`` on a bus with an allowlist is unknown.
* plausibility rules put one detector among the signal checks of two ids: it judges the
  frames of the checked signal's id and records the partner's latest value from the frames of
  the partner's (``observe_partner``).
* ``bus_checks`` (flood rules) run on every frame of the bus; ``unknown_checks`` (allowlist,
  unknown bursts) on frames of unknown ids; ``suspensions`` are judged by the engine's periodic
  scan of the bus clock.

Only the messages and signals some rule names are decoded (one compiled
:class:`~can_dbc.Decoder` per bus, restricted to them). Errors binding a rule raise
:class:`~security.errors.RuleBindingError` at the rule's line in its file.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.schemes.history import Clock, History, SignalSlot
from agent.schemes.model import SignalRef
from agent.toml_lines import dotted_key, key_sites
from can_dbc.integrity import IntegritySpec, SignalField
from security.detectors import (
    AllowlistDetector,
    ChecksumDetector,
    ContextDetector,
    CounterDetector,
    Detector,
    DlcDetector,
    FloodDetector,
    PayloadDetector,
    PlausibilityDetector,
    ReplayDetector,
    SecOcDetector,
    SignalRangeDetector,
    SignalRateDetector,
    SuspensionDetector,
    TimingDetector,
    UnknownBurstDetector,
)
from security.errors import RuleBindingError
from security.forensics import ForensicBuffer
from security.rules import (
    AllowlistSpec,
    ChecksumSpec,
    ContextSpec,
    CounterSpec,
    DlcSpec,
    FloodSpec,
    PayloadSpec,
    PlausibilitySpec,
    ReplaySpec,
    Rule,
    RuleSet,
    SecOcSpec,
    SignalRangeSpec,
    SignalRateSpec,
    SuspensionSpec,
    TimingSpec,
    UnknownBurstSpec,
)
from security.secoc import SecOcVerifier

__all__ = ["BusPlan", "CompiledRules", "IdNode", "compile_rules"]

Check = tuple[Detector, Callable[[Any, float], object | None]]
ValueCheck = tuple[str, Detector, Callable[[float, float], object | None]]


class IdNode:
    """Everything the engine does with frames of one CAN id on one bus."""

    __slots__ = (
        "can_id",
        "checks",
        "decoder",
        "last_seen",
        "sequences",
        "signal_checks",
        "slots",
        "value_sequences",
    )

    def __init__(self, can_id: int) -> None:
        self.can_id = can_id
        self.checks: tuple[Check, ...] = ()
        self.decoder: Any = None
        self.signal_checks: tuple[ValueCheck, ...] = ()
        # (signal name in the decoded frame, condition slot) pairs to update.
        self.slots: tuple[tuple[str, SignalSlot], ...] = ()
        self.last_seen = -math.inf
        # The detectors of checks and signal_checks that follow a sequence (see forget_flagged).
        self.sequences: tuple[Detector, ...] = ()
        self.value_sequences: tuple[tuple[str, Detector], ...] = ()

    def forget_flagged(
        self, hits: list[tuple[Detector, object]], signals: Mapping[str, Any] | None
    ) -> None:
        """Have the sequence detectors that judged the frame just checked take it back when
        another rule found the frame itself bad (:meth:`~security.detectors.Detector.condemns`):
        a forged frame must not become the reference the sender's next frame is judged by.
        The detector that condemned it keeps it. What taking back brings to light (a timing
        window too full with the condemned frames) is added to *hits*.

        *hits* are the frame's findings, *signals* its decoded values (None when it was not
        decoded: then no signal detector judged it).
        """
        judges = [detector for detector, detail in hits if detector.condemns(detail)]
        if not judges:
            return
        alone = judges[0] if len(judges) == 1 else None
        found: list[tuple[Detector, object]] = []
        for detector in self.sequences:
            if detector is not alone:
                detail = detector.forget()
                if detail is not None and all(d is not detector for d, _ in hits):
                    found.append((detector, detail))
        if signals is not None:
            for name, detector in self.value_sequences:
                value = signals.get(name)
                if value is None or isinstance(value, str):
                    continue  # the engine did not have it judge the frame
                if detector is not alone:
                    detector.forget()
        hits += found


class BusPlan:
    """The compiled rules of one bus and its run-time state (clock, forensic buffer)."""

    __slots__ = (
        "bus_checks",
        "forensics",
        "has_allowlist",
        "name",
        "next_scan",
        "nodes",
        "started",
        "suspensions",
        "unknown_checks",
    )

    def __init__(self, name: str, forensics: ForensicBuffer) -> None:
        self.name = name
        self.nodes: dict[int, IdNode] = {}
        self.has_allowlist = False
        self.bus_checks: tuple[Check, ...] = ()
        self.unknown_checks: tuple[Check, ...] = ()
        self.suspensions: tuple[tuple[SuspensionDetector, IdNode], ...] = ()
        self.forensics = forensics
        self.started: float | None = None  # time of the bus's first frame
        self.next_scan = -math.inf


class CompiledRules:
    """Per-bus plans plus what conditions share (the evaluation clock)."""

    def __init__(self, buses: dict[str, BusPlan], clock: Clock) -> None:
        self.buses = buses
        self.clock = clock


class _Messages:
    """The DBC messages of one bus by id and name, later databases winning (as the Decoder)."""

    def __init__(self, databases: Sequence[Any]) -> None:
        self.by_id: dict[int, Any] = {}
        self.by_name: dict[str, Any] = {}
        for database in databases:
            for message in database.messages:
                self.by_id[int(message.frame_id)] = message
                self.by_name[message.name] = message


def compile_rules(
    rules: RuleSet,
    databases: Mapping[str, Sequence[Any]] | None = None,
    keys: Mapping[str, bytes] | None = None,
    *,
    forensic_before: int = 16,
    forensic_after: int = 16,
) -> CompiledRules:
    """Bind and compile *rules*; *databases* are the cantools databases per bus, *keys* the
    SecOC keys by id. Raises :class:`RuleBindingError` for what a rule needs and lacks."""
    return _Compiler(
        rules, databases if databases is not None else {}, keys, forensic_before, forensic_after
    ).compile()


class _Compiler:
    def __init__(
        self,
        rules: RuleSet,
        databases: Mapping[str, Sequence[Any]],
        keys: Mapping[str, bytes] | None,
        before: int,
        after: int,
    ) -> None:
        self.rules = rules
        self.databases = databases
        self.keys = keys
        self.before = before
        self.after = after
        self.messages: dict[str, _Messages] = {}
        self.plans: dict[str, BusPlan] = {}
        self.checks: dict[tuple[str, int], list[Check]] = {}
        self.value_checks: dict[tuple[str, int], list[ValueCheck]] = {}
        self.slot_feeds: dict[tuple[str, int], list[tuple[str, SignalSlot]]] = {}
        # Per bus: frame id -> qualified names of the signals to decode.
        self.decode: dict[str, dict[int, set[str]]] = {}
        self.bus_checks: dict[str, list[Check]] = {}
        self.unknown_checks: dict[str, list[Check]] = {}
        self.suspensions: dict[str, list[tuple[SuspensionDetector, int]]] = {}
        self.allowlists: dict[str, frozenset[int]] = {}
        self.clock = Clock(-math.inf)
        self.slots: dict[str, SignalSlot] = {}
        self._sites: Mapping[tuple[str | int, ...], Any] | None = None

    # -- errors -------------------------------------------------------------------------------

    def fail(self, rule: Rule, path: tuple[str | int, ...], problem: str) -> RuleBindingError:
        base: tuple[str | int, ...] = ("rule", rule.index if rule.index is not None else 0)
        full = (*base, *path)
        line = rule.line
        if self.rules.text is not None:
            if self._sites is None:
                self._sites = key_sites(self.rules.text)
            for depth in range(len(full), 1, -1):
                site = self._sites.get(full[:depth])
                if site is not None:
                    line = site.line
                    break
        key = dotted_key(full) if rule.index is not None else None
        return RuleBindingError(self.rules.source, key, problem, line=line, rule_id=rule.id)

    def entry_path(self, rule: Rule, list_key: str, j: int, key: str) -> tuple[str | int, ...]:
        """``(list_key, j, key)`` when the rule has a list of entries, else ``(key,)``."""
        if self.rules.text is not None and rule.index is not None:
            if self._sites is None:
                self._sites = key_sites(self.rules.text)
            if ("rule", rule.index, list_key) not in self._sites:
                return (key,)
        return (list_key, j, key)

    # -- DBC lookups --------------------------------------------------------------------------

    def bus_messages(self, bus: str) -> _Messages:
        found = self.messages.get(bus)
        if found is None:
            found = self.messages[bus] = _Messages(self.databases.get(bus, ()))
        return found

    def message(self, rule: Rule, bus: str, can_id: int, path: tuple[str | int, ...]) -> Any:
        messages = self.bus_messages(bus)
        if not messages.by_id and not self.databases.get(bus):
            raise self.fail(rule, path, f"needs the DBC files of bus {bus!r} (--dbc)")
        message = messages.by_id.get(can_id)
        if message is None:
            raise self.fail(rule, path, f"no DBC file given for {bus} has CAN id 0x{can_id:X}")
        return message

    def signal(
        self, rule: Rule, bus: str, name: str, path: tuple[str | int, ...]
    ) -> tuple[Any, Any]:
        """The (message, signal) a signal name means on *bus*."""
        ref = SignalRef.parse(name)
        messages = self.bus_messages(bus)
        if not messages.by_id:
            raise self.fail(rule, path, f"needs the DBC files of bus {bus!r} (--dbc)")
        if ref.message is not None:
            message = messages.by_name.get(ref.message)
            if message is None:
                raise self.fail(
                    rule, path, f"no DBC file given for {bus} has a message {ref.message}"
                )
            for signal in message.signals:
                if signal.name == ref.signal:
                    return message, signal
            raise self.fail(rule, path, f"message {ref.message} has no signal {ref.signal}")
        found = [(m, s) for m in messages.by_id.values() for s in m.signals if s.name == ref.signal]
        if not found:
            raise self.fail(rule, path, f"no message on {bus} has a signal {ref.signal}")
        if len(found) > 1:
            names = ", ".join(sorted(m.name for m, _ in found)[:4])
            raise self.fail(
                rule, path, f"signal {ref.signal} is in several messages ({names}): write MSG.SIG"
            )
        return found[0]

    def counter_field(
        self,
        rule: Rule,
        bus: str,
        can_id: int,
        signal: str | None,
        path_of: Callable[[str], tuple[str | int, ...]],
    ) -> SignalField:
        message = self.message(rule, bus, can_id, path_of("can_id"))
        if signal is None:
            try:
                spec = IntegritySpec.for_message(message)
            except ValueError as e:
                raise self.fail(rule, path_of("can_id"), str(e)) from None
            if spec is None or spec.counter is None:
                raise self.fail(
                    rule,
                    path_of("can_id"),
                    f"message {message.name} declares no counter in the DBC; name one in signal",
                )
            sig = spec.counter
        else:
            ref = SignalRef.parse(signal)
            if ref.message is not None and ref.message != message.name:
                raise self.fail(
                    rule, path_of("signal"), f"CAN id 0x{can_id:X} is message {message.name}"
                )
            sig = next((s for s in message.signals if s.name == ref.signal), None)
            if sig is None:
                raise self.fail(
                    rule, path_of("signal"), f"message {message.name} has no signal {ref.signal}"
                )
        try:
            return SignalField.of(sig, int(message.length))
        except ValueError as e:
            raise self.fail(rule, path_of("signal"), str(e)) from None

    # -- building -----------------------------------------------------------------------------

    def add_check(self, bus: str, can_id: int, detector: Any) -> None:
        self.checks.setdefault((bus, can_id), []).append((detector, detector.check))

    def bind_signal(
        self, rule: Rule, bus: str, name: str, path: tuple[str | int, ...]
    ) -> tuple[int, str]:
        """The CAN id and signal name a rule's signal means; the signal is then decoded."""
        message, signal = self.signal(rule, bus, name, path)
        can_id = int(message.frame_id)
        self.decode.setdefault(bus, {}).setdefault(can_id, set()).add(
            f"{message.name}.{signal.name}"
        )
        return can_id, str(signal.name)

    def add_value_check(self, bus: str, can_id: int, name: str, detector: Any) -> None:
        self.value_checks.setdefault((bus, can_id), []).append(
            (name, detector, detector.check_value)
        )

    def compile(self) -> CompiledRules:
        for rule in self.rules:
            self.rule(rule)
        for bus in {
            *self.allowlists,
            *(b for b, _ in self.checks),
            *(b for b, _ in self.value_checks),
            *(b for b, _ in self.slot_feeds),
            *self.bus_checks,
            *self.unknown_checks,
            *self.suspensions,
            *self.rules.buses,
        }:
            self.plans[bus] = self.plan(bus)
        return CompiledRules(self.plans, self.clock)

    def plan(self, bus: str) -> BusPlan:
        plan = BusPlan(bus, ForensicBuffer(self.before, self.after))
        ids: set[int] = set(self.allowlists.get(bus, ()))
        ids.update(i for b, i in self.checks if b == bus)
        ids.update(i for b, i in self.value_checks if b == bus)
        ids.update(i for b, i in self.slot_feeds if b == bus)
        ids.update(i for _, i in self.suspensions.get(bus, ()))
        allowlist = self.allowlists.get(bus)
        decoder = None
        wanted = self.decode.get(bus)
        if wanted:
            from can_dbc import Decoder

            decoder = Decoder.from_databases(
                list(self.databases.get(bus, ())),
                messages=sorted(wanted),
                signals=sorted({name for names in wanted.values() for name in names}),
            )
        for can_id in ids:
            node = IdNode(can_id)
            node.checks = tuple(self.checks.get((bus, can_id), ()))
            node.signal_checks = tuple(self.value_checks.get((bus, can_id), ()))
            node.slots = tuple(self.slot_feeds.get((bus, can_id), ()))
            node.sequences = tuple(d for d, _ in node.checks if d.follows_sequence)
            node.value_sequences = tuple(
                (name, d) for name, d, _ in node.signal_checks if d.follows_sequence
            )
            if decoder is not None and wanted is not None and can_id in wanted:
                node.decoder = decoder
            if allowlist is None or can_id in allowlist:
                plan.nodes[can_id] = node
            elif node.checks or node.signal_checks or node.slots:
                # A rule names an id the allowlist does not have: the frame is unknown, and
                # its own rules still judge it.
                plan.nodes[can_id] = node
                node.checks = (*self.unknown_checks.get(bus, ()), *node.checks)
        plan.has_allowlist = allowlist is not None
        plan.bus_checks = tuple(self.bus_checks.get(bus, ()))
        plan.unknown_checks = tuple(self.unknown_checks.get(bus, ()))
        plan.suspensions = tuple(
            (detector, plan.nodes[can_id]) for detector, can_id in self.suspensions.get(bus, ())
        )
        return plan

    def rule(self, rule: Rule) -> None:
        spec = rule.spec
        bus = spec.bus
        if isinstance(spec, AllowlistSpec):
            self.allowlists[bus] = spec.ids
            detector = AllowlistDetector(rule, len(spec.ids))
            self.unknown_checks.setdefault(bus, []).append((detector, detector.check))
        elif isinstance(spec, UnknownBurstSpec):
            burst = UnknownBurstDetector(rule, spec)
            self.unknown_checks.setdefault(bus, []).append((burst, burst.check))
        elif isinstance(spec, FloodSpec):
            flood = FloodDetector(rule, spec)
            self.bus_checks.setdefault(bus, []).append((flood, flood.check))
        elif isinstance(spec, DlcSpec):
            for dlc in spec.entries:
                self.add_check(bus, dlc.can_id, DlcDetector(rule, dlc))
        elif isinstance(spec, TimingSpec):
            for timing in spec.entries:
                self.add_check(
                    bus, timing.can_id, TimingDetector(rule, spec.window_periods, timing)
                )
        elif isinstance(spec, SuspensionSpec):
            for entry in spec.entries:
                self.suspensions.setdefault(bus, []).append(
                    (SuspensionDetector(rule, entry), entry.can_id)
                )
        elif isinstance(spec, PayloadSpec):
            for payload in spec.entries:
                self.add_check(
                    bus,
                    payload.can_id,
                    PayloadDetector(rule, payload.can_id, payload.pattern, spec.forbid),
                )
        elif isinstance(spec, SignalRangeSpec):
            for j, ranged in enumerate(spec.entries):
                path = self.entry_path(rule, "signals", j, "signal")
                can_id, name = self.bind_signal(rule, bus, ranged.signal, path)
                self.add_value_check(bus, can_id, name, SignalRangeDetector(rule, can_id, ranged))
        elif isinstance(spec, SignalRateSpec):
            for j, rated in enumerate(spec.entries):
                path = self.entry_path(rule, "signals", j, "signal")
                can_id, name = self.bind_signal(rule, bus, rated.signal, path)
                self.add_value_check(bus, can_id, name, SignalRateDetector(rule, can_id, rated))
        elif isinstance(spec, PlausibilitySpec):
            for j, paired in enumerate(spec.entries):
                path = self.entry_path(rule, "signals", j, "signal")
                can_id, name = self.bind_signal(rule, bus, paired.signal, path)
                partner_bus = paired.partner_bus if paired.partner_bus is not None else bus
                partner_path = self.entry_path(rule, "signals", j, "partner")
                partner_id, partner_name = self.bind_signal(
                    rule, partner_bus, paired.partner, partner_path
                )
                shown = paired.partner if partner_bus == bus else f"{partner_bus}:{paired.partner}"
                plausible = PlausibilityDetector(rule, can_id, paired, paired.signal, shown)
                self.add_value_check(bus, can_id, name, plausible)
                # The partner's frames feed the detector its latest value.
                self.value_checks.setdefault((partner_bus, partner_id), []).append(
                    (partner_name, plausible, plausible.observe_partner)
                )
        elif isinstance(spec, CounterSpec):
            for j, counted in enumerate(spec.entries):
                path_of = functools.partial(self.entry_path, rule, "messages", j)
                field = self.counter_field(rule, bus, counted.can_id, counted.signal, path_of)
                counter = CounterDetector(rule, counted.can_id, field, counted.max_step)
                self.add_check(bus, counted.can_id, counter)
        elif isinstance(spec, ReplaySpec):
            for j, replayed in enumerate(spec.entries):
                path_of = functools.partial(self.entry_path, rule, "messages", j)
                field = self.counter_field(rule, bus, replayed.can_id, replayed.signal, path_of)
                replay = ReplayDetector(rule, replayed.can_id, field, replayed.history)
                self.add_check(bus, replayed.can_id, replay)
        elif isinstance(spec, ChecksumSpec):
            for j, checked in enumerate(spec.entries):
                path = self.entry_path(rule, "messages", j, "can_id")
                message = self.message(rule, bus, checked.can_id, path)
                try:
                    integrity = IntegritySpec.for_message(
                        message, default_algorithm=checked.algorithm
                    )
                except ValueError as e:
                    raise self.fail(rule, path, str(e)) from None
                if integrity is None or integrity.checksum is None:
                    raise self.fail(
                        rule, path, f"message {message.name} has no checksum signal in the DBC"
                    )
                if integrity.algorithm is None:
                    raise self.fail(
                        rule,
                        path,
                        f"the DBC declares no algorithm for {message.name}'s checksum; "
                        "set algorithm",
                    )
                if checked.algorithm is not None and integrity.algorithm != checked.algorithm:
                    raise self.fail(
                        rule,
                        self.entry_path(rule, "messages", j, "algorithm"),
                        f"the DBC declares {integrity.algorithm} for {message.name}",
                    )
                self.add_check(
                    bus, checked.can_id, ChecksumDetector(rule, checked.can_id, integrity)
                )
        elif isinstance(spec, SecOcSpec):
            for j, secured in enumerate(spec.entries):
                key = None if self.keys is None else self.keys.get(secured.key)
                if key is None:
                    where = (
                        "no key file was given (--keys)"
                        if self.keys is None
                        else (f"the key file has no key {secured.key!r}")
                    )
                    raise self.fail(rule, self.entry_path(rule, "messages", j, "key"), where)
                try:
                    verifier = SecOcVerifier(
                        secured.profile, key, initial_freshness=secured.initial_freshness
                    )
                except ValueError as e:
                    raise self.fail(
                        rule, self.entry_path(rule, "messages", j, "key"), str(e)
                    ) from None
                self.add_check(bus, secured.can_id, SecOcDetector(rule, secured.can_id, verifier))
        elif isinstance(spec, ContextSpec):
            self.context(rule, spec)

    def context(self, rule: Rule, spec: ContextSpec) -> None:
        expression = spec.condition
        windows = dict(expression.windows)
        for name in sorted(expression.signals):
            ref = SignalRef.parse(name)
            bus = ref.bus or spec.bus
            plain = ref.signal if ref.message is None else f"{ref.message}.{ref.signal}"
            message, signal = self.signal(rule, bus, plain, ("condition",))
            slot = self.slots.get(name)
            if slot is None:
                span = windows.get(name)
                slot = self.slots[name] = SignalSlot(name, History(span) if span else None)
            can_id = int(message.frame_id)
            self.slot_feeds.setdefault((bus, can_id), []).append((signal.name, slot))
            self.decode.setdefault(bus, {}).setdefault(can_id, set()).add(
                f"{message.name}.{signal.name}"
            )
        condition = expression.bind(self.slots.__getitem__, self.clock)
        for can_id in sorted(spec.can_ids):
            self.add_check(
                spec.bus,
                can_id,
                ContextDetector(
                    rule,
                    can_id,
                    spec.uds,
                    spec.patterns,
                    condition,
                    self.clock,
                    expression.text,
                ),
            )

"""Fault injection for simulated ECUs: dropped and delayed responses, power cuts, bad blocks,
images that crash at start.

A :class:`FaultPlan` is immutable configuration; :class:`FaultState` counts what happened in one
ECU (requests per service, blocks written, persistence steps reached) and decides, one event at
a time, whether a fault fires. Faults that fire once (a power cut, a corrupted block) fire once
per process, however often the ECU reboots, so that a flash that resumes after the cut can
complete; ``boot-fails`` fires at every boot of that version (the firmware is broken).

Command-line form (``tbox ecu run --fault [ECU:]NAME=VALUE``; without ``ECU:`` for every ECU):

=========================  =====================================================================
``drop-response=SID@N``    drop the response to the N-th request of service SID (hex), e.g.
                           ``drop-response=36@3`` (the third TransferData); repeatable
``drop-rate=P``            drop each response with probability P (seeded by ``--seed``)
``delay=S``                delay every response by S seconds (P2 timeouts when above the
                           tester's)
``power-cut-at-block=N``   cut the power in the middle of writing the N-th TransferData block
                           (half of it reaches the bank, its progress record does not)
``power-cut-at=STEP[:N]``  cut the power the N-th time (default 1) the ECU reaches persistence
                           step STEP (a crash point name, e.g. ``ecu.after_progress``)
``power-off=S``            how long the ECU stays off after a power cut (default 0.5)
``corrupt-block=N``        flip a bit of the N-th block as it is stored (the check then fails)
``boot-fails=VERSION``     an image of that version passes its check but crashes at start: at
                           boot the bootloader marks its bank invalid (persistently, DTC
                           F00030) and boots the other bank, so activating it fails and the ECU
                           keeps running its previous image; repeatable
=========================  =====================================================================

A power cut by environment variable (contract C6, ``TBOX_CRASHPOINT=ecu.block_written:5``) ends
the whole process instead; see :mod:`firmware_stub.flash` for the step names.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from firmware_stub.errors import EcuConfigError, PowerCut

__all__ = ["FaultPlan", "FaultState", "parse_faults"]

DEFAULT_POWER_OFF_S = 0.5


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """What goes wrong in one ECU (all off by default)."""

    drop_responses: frozenset[tuple[int, int]] = frozenset()  # (service id, n-th request)
    drop_rate: float = 0.0
    delay_s: float = 0.0
    power_cut_at_block: int | None = None
    power_cut_at: tuple[str, int] | None = None
    power_off_s: float = DEFAULT_POWER_OFF_S
    corrupt_block: int | None = None
    boot_fails: frozenset[int] = frozenset()  # image versions that crash at start

    @property
    def any(self) -> bool:
        """True if any fault is configured."""
        return self != FaultPlan(power_off_s=self.power_off_s)


@dataclass
class FaultState:
    """The running counters of one ECU's :class:`FaultPlan` (shared by its boots)."""

    plan: FaultPlan
    seed: int = 0
    requests: Counter[int] = field(default_factory=Counter)
    steps: Counter[str] = field(default_factory=Counter)
    blocks: int = 0
    fired: set[str] = field(default_factory=set)
    dropped: int = 0
    power_cuts: int = 0
    boot_failures: int = 0

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)

    def drop_response(self, sid: int) -> bool:
        """Count a request of service *sid*; True if its response is to be dropped."""
        self.requests[sid] += 1
        drop = (sid, self.requests[sid]) in self.plan.drop_responses
        if not drop and self.plan.drop_rate > 0:
            drop = self._random.random() < self.plan.drop_rate
        if drop:
            self.dropped += 1
        return drop

    def step(self, name: str) -> None:
        """A persistence step was reached: raise :class:`PowerCut` if the plan says so."""
        self.steps[name] += 1
        target = self.plan.power_cut_at
        if target is not None and target == (name, self.steps[name]) and "step" not in self.fired:
            self.fired.add("step")
            self.power_cuts += 1
            raise PowerCut(name)

    def boot_fails(self, version: int) -> bool:
        """The bootloader starts an image of *version*: True if it crashes (every time)."""
        fails = version in self.plan.boot_fails
        if fails:
            self.boot_failures += 1
        return fails

    def block(self, data: bytes) -> tuple[bytes, bool]:
        """Count one block about to be stored: ``(bytes to store, cut the power halfway)``."""
        self.blocks += 1
        plan = self.plan
        if plan.corrupt_block == self.blocks and "corrupt" not in self.fired:
            self.fired.add("corrupt")
            if data:
                data = bytes([data[0] ^ 0x01]) + data[1:]
        cut = plan.power_cut_at_block == self.blocks and "block" not in self.fired
        if cut:
            self.fired.add("block")
            self.power_cuts += 1
        return data, cut


def parse_faults(
    texts: Iterable[str], ecu_names: Sequence[str], *, base: FaultPlan | None = None
) -> dict[str, FaultPlan]:
    """Parse ``--fault [ECU:]NAME=VALUE`` options into a plan per ECU name."""
    plans = dict.fromkeys(ecu_names, base or FaultPlan())
    for text in texts:
        target, name, value = _split(text, ecu_names)
        for ecu in [target] if target else list(ecu_names):
            plans[ecu] = _apply(plans[ecu], text, name, value)
    return plans


def _split(text: str, ecu_names: Sequence[str]) -> tuple[str | None, str, str]:
    head, eq, value = text.partition("=")
    if not eq or not value:
        raise EcuConfigError(f"--fault {text!r}: write [ECU:]NAME=VALUE, e.g. drop-response=36@3")
    target: str | None = None
    if ":" in head:
        target, _, head = head.partition(":")
        if target not in ecu_names:
            raise EcuConfigError(
                f"--fault {text!r}: no ECU is named {target!r} (ECUs: {', '.join(ecu_names)})"
            )
    return target, head, value


def _apply(plan: FaultPlan, text: str, name: str, value: str) -> FaultPlan:
    try:
        if name == "drop-response":
            sid_text, at, n_text = value.partition("@")
            sid = int(sid_text, 16)
            n = int(n_text) if at else 1
            if not 0 <= sid <= 0xFF or n < 1:
                raise ValueError
            return replace(plan, drop_responses=plan.drop_responses | {(sid, n)})
        if name == "drop-rate":
            rate = float(value)
            if not 0 <= rate <= 1:
                raise ValueError
            return replace(plan, drop_rate=rate)
        if name in {"delay", "power-off"}:
            seconds = float(value)
            if not 0 <= seconds < 3600:
                raise ValueError
            if name == "delay":
                return replace(plan, delay_s=seconds)
            return replace(plan, power_off_s=seconds)
        if name in {"power-cut-at-block", "corrupt-block"}:
            n = int(value)
            if n < 1:
                raise ValueError
            if name == "corrupt-block":
                return replace(plan, corrupt_block=n)
            return replace(plan, power_cut_at_block=n)
        if name == "boot-fails":
            version = int(value)
            if version < 0:
                raise ValueError
            return replace(plan, boot_fails=plan.boot_fails | {version})
        if name == "power-cut-at":
            step, colon, n_text = value.partition(":")
            n = int(n_text) if colon else 1
            if n < 1:
                raise ValueError
            from agent.crashpoints import all_crashpoints

            known = {p.name for p in all_crashpoints() if p.name.startswith("ecu.")}
            if step not in known:
                raise EcuConfigError(
                    f"--fault {text!r}: {step!r} is not an ECU persistence step "
                    f"(tbox debug crashpoints lists the ecu.* names)"
                )
            return replace(plan, power_cut_at=(step, n))
    except ValueError:
        raise EcuConfigError(
            f"--fault {text!r}: {value!r} is not a valid value for {name}"
        ) from None
    raise EcuConfigError(
        f"--fault {text!r}: unknown fault {name!r} (drop-response, drop-rate, delay, "
        "power-cut-at-block, power-cut-at, power-off, corrupt-block, boot-fails)"
    )

"""The A/B slot state of the T-box's own software, and every decision taken on it, without I/O.

The T-box has two slots, ``a`` and ``b``. One is *committed*: the known-good software the
bootloader falls back to. An update is written into the other one and goes through phases::

    WRITING ─finish_install─▶ INSTALLED ─boot─▶ TRYING ─record_health(pass)─▶ HEALTHY ─commit─▶ ✔
       │                          │               │   ▲                          │
       │                          │               │   └──── boot (a reboot) ─────┘
       ▼                          ▼               ▼
    install_failed           rolled_back       rolled_back
    (fail_install, or boot   (boot: no attempt (record_health(fail) or rollback; any boot with
    after an interruption)   left, bad image)   no attempt left, from HEALTHY too)

Every function here takes the persisted :class:`SlotState` and an event and returns the new
state, or raises an :mod:`ota.errors` exception that says why the event does not fit; the driver
(:class:`ota.ab_installer.AbInstaller`) does the I/O and persists the result atomically.

Usage::

    state = parse_state(path.read_bytes(), source=str(path))  # SlotStateError if broken
    state = begin_install(state, image, max_attempts=3, now=now)  # or UpdatePendingError, …
    path.write_bytes(encode_state(state))  # (the driver writes durably)

Rules decided here:

* **Never the active slot.** An update always goes into the slot that is not committed; a new
  install is refused while another update is pending, so that slot is never the active one.
* **Anti-rollback.** A release counter lower than the committed one is refused. An equal one is
  accepted only for the very image that is committed (same sha256): reinstalling it into the
  other slot repairs that slot, while a *different* image under the same counter would make the
  counter stop naming one image.
* **Boot counter.** Switching to an installed update grants ``max_attempts`` boots. Each boot of
  it uses one; a boot with none left, or one whose image does not verify, rolls back to the
  committed slot. Only a commit (after a health check passed in the same boot) ends the count.
* **Health before commit.** A reboot puts a ``HEALTHY`` update back to ``TRYING``: the check
  must pass again on the software that is running now.

The state file is JSON (``format`` 1)::

    {"format": 1,
     "active": "b",                 # the slot running now (derived; checked when read)
     "try_slot": "b",               # the slot the next boot tries, or null (derived; checked)
     "max_attempts": 3,
     "committed": {"slot": "a", "image": IMAGE},
     "pending": null | {"slot": "b", "image": IMAGE, "phase": "writing|installed|trying|healthy",
                        "attempts_left": 2, "started_at": "2026-11-30T10:00:00+00:00"},
     "last_failure": null | {"kind": "install_failed|rolled_back", "slot": "b", "image": IMAGE,
                             "reason": "…", "at": "…"}}

where ``IMAGE`` is ``{"release_counter": 6, "version": "2026.12", "sha256": "<64 hex>",
"length": 123}``. Each slot's ``manifest.json`` is ``{"format": 1, "image": IMAGE,
"installed_at": "…"}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, Literal, NoReturn

from ota.errors import DowngradeError, SlotSequenceError, SlotStateError, UpdatePendingError

__all__ = [
    "FORMAT",
    "SLOTS",
    "Committed",
    "FailureKind",
    "ImageInfo",
    "PendingUpdate",
    "Phase",
    "Slot",
    "SlotManifest",
    "SlotState",
    "SlotStatus",
    "UpdateFailure",
    "begin_install",
    "boot",
    "commit",
    "encode_manifest",
    "encode_state",
    "fail_install",
    "finish_install",
    "fresh_state",
    "image_problem",
    "parse_manifest",
    "parse_state",
    "record_health",
    "require_booted_update",
    "rollback",
    "snapshot",
    "trial_slot",
]

FORMAT: Final = 1

Slot = Literal["a", "b"]
SLOTS: Final[tuple[Slot, Slot]] = ("a", "b")

# As ota.target_info.MAX_RELEASE_COUNTER: a JSON integer every consumer can hold (signed 64-bit).
# Not imported: this module is read at every boot and must not pull in python-tuf.
_MAX_COUNTER: Final = 2**63 - 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_VERSION_LENGTH: Final = 128


def other_slot(slot: Slot) -> Slot:
    """The slot that is not *slot*."""
    return "b" if slot == "a" else "a"


class Phase(StrEnum):
    """How far a pending update has come."""

    WRITING = "writing"  # its slot is being written; nothing boots it
    INSTALLED = "installed"  # written, read back and verified; the next boot tries it
    TRYING = "trying"  # booted and running; its health check has not passed in this boot
    HEALTHY = "healthy"  # booted and its health check passed in this boot; commit may follow


class FailureKind(StrEnum):
    """How an update ended without being committed."""

    INSTALL_FAILED = "install_failed"  # never became bootable (bad image, storage, interrupted)
    ROLLED_BACK = "rolled_back"  # was booted (or due to be), then abandoned for the committed slot


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What identifies an image: its release counter, a version label, its sha256 and length."""

    release_counter: int
    sha256: str
    length: int
    version: str = ""

    def describe(self) -> str:
        """``release 6 (2026.12)`` — for messages."""
        return f"release {self.release_counter}" + (f" ({self.version})" if self.version else "")


@dataclass(frozen=True, slots=True)
class SlotManifest:
    """What a slot holds, stored beside its image: the image's identity and when it was written."""

    image: ImageInfo
    installed_at: str


@dataclass(frozen=True, slots=True)
class Committed:
    """The known-good software: its slot and image."""

    slot: Slot
    image: ImageInfo


@dataclass(frozen=True, slots=True)
class PendingUpdate:
    """An update on its way into the non-committed slot."""

    slot: Slot
    image: ImageInfo
    phase: Phase
    attempts_left: int  # boots it may still have; set to max_attempts by the switch
    started_at: str


@dataclass(frozen=True, slots=True)
class UpdateFailure:
    """The last update that ended without being committed, and why."""

    kind: FailureKind
    slot: Slot
    image: ImageInfo
    reason: str
    at: str


@dataclass(frozen=True, slots=True)
class SlotState:
    """Everything the state file holds."""

    committed: Committed
    max_attempts: int
    pending: PendingUpdate | None = None
    last_failure: UpdateFailure | None = None

    @property
    def active(self) -> Slot:
        """The slot running now: the update while it is being tried, else the committed one."""
        if self.pending is not None and self.pending.phase in _BOOTED:
            return self.pending.slot
        return self.committed.slot

    @property
    def try_slot(self) -> Slot | None:
        """The slot the next boot tries (it may still roll back if no attempt is left)."""
        if self.pending is not None and self.pending.phase in _SWITCHED:
            return self.pending.slot
        return None


_BOOTED: Final = frozenset({Phase.TRYING, Phase.HEALTHY})
_SWITCHED: Final = frozenset({Phase.INSTALLED, Phase.TRYING, Phase.HEALTHY})


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """A snapshot for reports: the state plus what each slot's manifest says it holds.

    ``a`` and ``b`` are ``None`` for a slot that holds no usable image: never written, being
    written, or with a missing or unreadable manifest.
    """

    active: Slot
    committed: Committed
    try_slot: Slot | None
    attempts_left: int | None
    max_attempts: int
    pending: PendingUpdate | None
    last_failure: UpdateFailure | None
    a: SlotManifest | None
    b: SlotManifest | None

    @property
    def committed_release(self) -> int:
        """The anti-rollback floor: the committed image's release counter."""
        return self.committed.image.release_counter

    def manifest(self, slot: Slot) -> SlotManifest | None:
        """What *slot* holds, or ``None``."""
        return self.a if slot == "a" else self.b

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary in the state file's vocabulary (for campaign reports)."""
        return {
            "active": self.active,
            "try_slot": self.try_slot,
            "attempts_left": self.attempts_left,
            "max_attempts": self.max_attempts,
            "committed": _committed_json(self.committed),
            "pending": None if self.pending is None else _pending_json(self.pending),
            "last_failure": None if self.last_failure is None else _failure_json(self.last_failure),
            "slots": {
                slot: None if m is None else _manifest_json(m)
                for slot, m in (("a", self.a), ("b", self.b))
            },
        }


# --- decisions ---------------------------------------------------------------------------------


def image_problem(image: ImageInfo) -> str | None:
    """What is wrong with *image*'s fields, in words, or ``None``."""
    if type(image.release_counter) is not int or not 0 <= image.release_counter <= _MAX_COUNTER:
        return f"release counter {image.release_counter!r} is not an integer from 0 to 2^63-1"
    if not isinstance(image.sha256, str) or not _SHA256.fullmatch(image.sha256):
        return f"sha256 {image.sha256!r} is not 64 lowercase hex digits"
    if type(image.length) is not int or image.length < 0:
        return f"length {image.length!r} is not a non-negative integer"
    if not isinstance(image.version, str) or len(image.version) > _MAX_VERSION_LENGTH:
        return f"version {image.version!r} is not a string of at most {_MAX_VERSION_LENGTH}"
    return None


def fresh_state(slot: Slot, image: ImageInfo, *, max_attempts: int) -> SlotState:
    """The state of a T-box whose only software is *image* in *slot* (provisioning, recovery)."""
    return SlotState(Committed(slot, image), max_attempts)


def begin_install(state: SlotState, image: ImageInfo, *, max_attempts: int, now: str) -> SlotState:
    """Start installing *image* into the non-committed slot (phase ``WRITING``).

    Raises :class:`UpdatePendingError` while another update is pending and
    :class:`DowngradeError` for a release counter below the committed one, or equal to it for a
    different image.
    """
    pending = state.pending
    if pending is not None:
        if pending.phase is Phase.WRITING:
            raise UpdatePendingError(
                f"an install of {pending.image.describe()} into slot {pending.slot} was "
                "interrupted; call boot() first (it records that install as failed)"
            )
        raise UpdatePendingError(
            f"{pending.image.describe()} in slot {pending.slot} is still pending "
            f"(phase {pending.phase}): commit or roll it back before installing another update"
        )
    floor = state.committed.image
    if image.release_counter < floor.release_counter:
        raise DowngradeError(
            f"refusing a downgrade: release counter {image.release_counter} is lower than the "
            f"committed {floor.describe()} in slot {state.committed.slot} (anti-rollback)"
        )
    if image.release_counter == floor.release_counter and image.sha256 != floor.sha256:
        raise DowngradeError(
            f"refusing a different image under the committed release counter "
            f"{floor.release_counter}: its sha256 is {image.sha256[:12]}…, the committed one's "
            f"{floor.sha256[:12]}…; publish it with a higher release counter"
        )
    target = other_slot(state.committed.slot)
    update = PendingUpdate(target, image, Phase.WRITING, 0, now)
    return replace(state, max_attempts=max_attempts, pending=update)


def finish_install(state: SlotState) -> SlotState:
    """The switch: the written and verified slot is to be tried, with ``max_attempts`` boots."""
    pending = _pending_in(state, {Phase.WRITING}, "finish an install")
    return replace(
        state, pending=replace(pending, phase=Phase.INSTALLED, attempts_left=state.max_attempts)
    )


def fail_install(state: SlotState, reason: str, *, now: str) -> SlotState:
    """The update being written will not become bootable: record *reason*, keep the committed."""
    pending = _pending_in(state, {Phase.WRITING}, "fail an install")
    failure = UpdateFailure(FailureKind.INSTALL_FAILED, pending.slot, pending.image, reason, now)
    return replace(state, pending=None, last_failure=failure)


def trial_slot(state: SlotState) -> Slot | None:
    """The slot the next boot will try, if an attempt is left (its image must then verify)."""
    pending = state.pending
    if pending is not None and pending.phase in _SWITCHED and pending.attempts_left > 0:
        return pending.slot
    return None


def boot(state: SlotState, *, trial_problem: str | None, now: str) -> SlotState:
    """What the bootloader does at power-on.

    *trial_problem* says why the image in :func:`trial_slot` does not verify (``None``: it
    verifies, or there is no trial). An interrupted install is recorded as failed; an update to
    try uses one attempt, or is rolled back when none is left or its image does not verify.
    """
    pending = state.pending
    if pending is None:
        return state
    if pending.phase is Phase.WRITING:
        return fail_install(
            state,
            f"the install into slot {pending.slot} was interrupted (power cut or crash) "
            f"before its image was verified; slot {state.committed.slot} was booted",
            now=now,
        )
    if pending.attempts_left <= 0:
        return rollback(
            state,
            f"slot {pending.slot} was booted {state.max_attempts} "
            f"time{'s' if state.max_attempts > 1 else ''} without being committed "
            "(boot attempts exhausted)",
            now=now,
        )
    if trial_problem is not None:
        return rollback(state, f"slot {pending.slot} does not verify: {trial_problem}", now=now)
    return replace(
        state,
        pending=replace(pending, phase=Phase.TRYING, attempts_left=pending.attempts_left - 1),
    )


def require_booted_update(state: SlotState) -> PendingUpdate:
    """The update running now on trial; :class:`SlotSequenceError` when there is none."""
    return _pending_in(state, _BOOTED, "run a health check")


def record_health(state: SlotState, *, passed: bool, reason: str, now: str) -> SlotState:
    """The booted update's health check result: ``HEALTHY``, or rolled back with *reason*."""
    pending = require_booted_update(state)
    if not passed:
        return rollback(state, f"health check failed: {reason}", now=now)
    return replace(state, pending=replace(pending, phase=Phase.HEALTHY))


def commit(state: SlotState) -> SlotState:
    """Make the healthy booted update the committed software.

    With nothing pending it returns *state* unchanged, so that a commit repeated after a crash
    (or by a second caller) is harmless.
    """
    if state.pending is None:
        return state
    pending = _pending_in(state, {Phase.HEALTHY}, "commit")
    return replace(state, committed=Committed(pending.slot, pending.image), pending=None)


def rollback(state: SlotState, reason: str, *, now: str) -> SlotState:
    """Abandon the pending update for the committed slot, recording *reason*."""
    pending = state.pending
    if pending is None:
        raise SlotSequenceError(
            f"nothing to roll back: no update is pending ({state.committed.image.describe()} "
            f"in slot {state.committed.slot} is committed)"
        )
    if pending.phase is Phase.WRITING:
        return fail_install(state, reason, now=now)
    failure = UpdateFailure(FailureKind.ROLLED_BACK, pending.slot, pending.image, reason, now)
    return replace(state, pending=None, last_failure=failure)


def snapshot(state: SlotState, manifests: Mapping[Slot, SlotManifest | None]) -> SlotStatus:
    """The :class:`SlotStatus` of *state* with what each slot's manifest says.

    A slot being written is reported as holding nothing, whatever its manifest said before.
    """
    pending = state.pending
    writing = pending.slot if pending is not None and pending.phase is Phase.WRITING else None
    shown = {s: None if s == writing else manifests.get(s) for s in SLOTS}
    return SlotStatus(
        active=state.active,
        committed=state.committed,
        try_slot=state.try_slot,
        attempts_left=None if state.try_slot is None or pending is None else pending.attempts_left,
        max_attempts=state.max_attempts,
        pending=pending,
        last_failure=state.last_failure,
        a=shown["a"],
        b=shown["b"],
    )


def _pending_in(
    state: SlotState, phases: set[Phase] | frozenset[Phase], doing: str
) -> PendingUpdate:
    pending = state.pending
    if pending is not None and pending.phase in phases:
        return pending
    if pending is None:
        raise SlotSequenceError(
            f"cannot {doing}: no update is pending ({state.committed.image.describe()} in slot "
            f"{state.committed.slot} is committed)"
        )
    what = f"{pending.image.describe()} in slot {pending.slot}"
    advice = {
        Phase.WRITING: "its install was interrupted; call boot() first",
        Phase.INSTALLED: "it is installed but not booted yet; call boot() first",
        Phase.TRYING: "its health check has not passed in this boot; run it first",
        Phase.HEALTHY: "its health check has already passed; commit it",
    }[pending.phase]
    raise SlotSequenceError(f"cannot {doing}: {what} is {pending.phase}: {advice}")


# --- the files ---------------------------------------------------------------------------------


def encode_state(state: SlotState) -> bytes:
    """The state file's bytes (indented JSON, for people who read it on a bench)."""
    document = {
        "format": FORMAT,
        "active": state.active,
        "try_slot": state.try_slot,
        "max_attempts": state.max_attempts,
        "committed": _committed_json(state.committed),
        "pending": None if state.pending is None else _pending_json(state.pending),
        "last_failure": None if state.last_failure is None else _failure_json(state.last_failure),
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def encode_manifest(manifest: SlotManifest) -> bytes:
    """A slot's ``manifest.json`` bytes."""
    document = {"format": FORMAT, **_manifest_json(manifest)}
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def parse_state(data: bytes, *, source: str) -> SlotState:
    """The state in *data* (read from *source*); :class:`SlotStateError` naming what is wrong."""
    doc = _document(data, source)
    reader = _Reader(source)
    max_attempts = reader.get(doc, "max_attempts", int, "")
    if max_attempts < 1:
        reader.fail("max_attempts", f"{max_attempts} is below 1")
    committed_doc = reader.get(doc, "committed", dict, "")
    committed = Committed(
        reader.slot(committed_doc, "committed"),
        reader.image(committed_doc, "committed"),
    )
    pending: PendingUpdate | None = None
    pending_doc = reader.get(doc, "pending", dict | None, "")
    if pending_doc is not None:
        phase_name = reader.get(pending_doc, "phase", str, "pending")
        if phase_name not in Phase.__members__.values():
            reader.fail("pending.phase", f"{phase_name!r} is none of {', '.join(Phase)}")
        attempts = reader.get(pending_doc, "attempts_left", int, "pending")
        if not 0 <= attempts <= max_attempts:
            reader.fail("pending.attempts_left", f"{attempts} is not from 0 to max_attempts")
        pending = PendingUpdate(
            reader.slot(pending_doc, "pending"),
            reader.image(pending_doc, "pending"),
            Phase(phase_name),
            attempts,
            reader.get(pending_doc, "started_at", str, "pending"),
        )
        if pending.slot == committed.slot:
            reader.fail("pending.slot", f"the update is in the committed slot {committed.slot}")
    failure: UpdateFailure | None = None
    failure_doc = reader.get(doc, "last_failure", dict | None, "")
    if failure_doc is not None:
        kind = reader.get(failure_doc, "kind", str, "last_failure")
        if kind not in FailureKind.__members__.values():
            reader.fail("last_failure.kind", f"{kind!r} is none of {', '.join(FailureKind)}")
        failure = UpdateFailure(
            FailureKind(kind),
            reader.slot(failure_doc, "last_failure"),
            reader.image(failure_doc, "last_failure"),
            reader.get(failure_doc, "reason", str, "last_failure"),
            reader.get(failure_doc, "at", str, "last_failure"),
        )
    state = SlotState(committed, max_attempts, pending, failure)
    # active and try_slot are written for people; a file where they disagree with the rest was
    # not written by us whole, and must not be half-believed.
    for key, derived in (("active", state.active), ("try_slot", state.try_slot)):
        if doc.get(key) != derived:
            reader.fail(key, f"{doc.get(key)!r} contradicts the rest of the file ({derived!r})")
    return state


def parse_manifest(data: bytes, *, source: str) -> SlotManifest:
    """The manifest in *data* (read from *source*); :class:`SlotStateError` if malformed."""
    doc = _document(data, source)
    reader = _Reader(source)
    return SlotManifest(reader.image(doc, ""), reader.get(doc, "installed_at", str, ""))


def _document(data: bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SlotStateError(source, None, f"is not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise SlotStateError(source, None, "is not a JSON object")
    if doc.get("format") != FORMAT:
        raise SlotStateError(
            source,
            "format",
            f"{doc.get('format')!r} is not {FORMAT}: written by a different tbox version",
        )
    return doc


def _image_json(image: ImageInfo) -> dict[str, Any]:
    return {
        "release_counter": image.release_counter,
        "version": image.version,
        "sha256": image.sha256,
        "length": image.length,
    }


def _committed_json(committed: Committed) -> dict[str, Any]:
    return {"slot": committed.slot, "image": _image_json(committed.image)}


def _pending_json(pending: PendingUpdate) -> dict[str, Any]:
    return {
        "slot": pending.slot,
        "image": _image_json(pending.image),
        "phase": str(pending.phase),
        "attempts_left": pending.attempts_left,
        "started_at": pending.started_at,
    }


def _failure_json(failure: UpdateFailure) -> dict[str, Any]:
    return {
        "kind": str(failure.kind),
        "slot": failure.slot,
        "image": _image_json(failure.image),
        "reason": failure.reason,
        "at": failure.at,
    }


def _manifest_json(manifest: SlotManifest) -> dict[str, Any]:
    return {"image": _image_json(manifest.image), "installed_at": manifest.installed_at}


class _Reader:
    """Reads typed fields out of a JSON object, failing with the dotted key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise SlotStateError(self.source, key, problem)

    def get(self, doc: Mapping[str, Any], key: str, kind: Any, where: str) -> Any:
        path = f"{where}.{key}" if where else key
        if key not in doc:
            self.fail(path, "is missing")
        value = doc[key]
        # bool is an int to Python, never to this file
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            self.fail(path, f"{value!r} has the wrong type")
        return value

    def slot(self, doc: Mapping[str, Any], where: str) -> Slot:
        value = self.get(doc, "slot", str, where)
        if value not in SLOTS:
            self.fail(f"{where}.slot", f"{value!r} is neither 'a' nor 'b'")
        slot: Slot = "a" if value == "a" else "b"
        return slot

    def image(self, doc: Mapping[str, Any], where: str) -> ImageInfo:
        path = f"{where}.image" if where else "image"
        image_doc = self.get(doc, "image", dict, where)
        image = ImageInfo(
            self.get(image_doc, "release_counter", int, path),
            self.get(image_doc, "sha256", str, path),
            self.get(image_doc, "length", int, path),
            self.get(image_doc, "version", str, path),
        )
        problem = image_problem(image)
        if problem is not None:
            self.fail(path, problem)
        return image

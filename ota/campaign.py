"""Update campaigns: the persisted state machine, its status events and its files, without I/O.

A campaign installs what the director assigns to this vehicle, one step after another::

    RECEIVED ─▶ DOWNLOADING ─▶ VERIFYING ─▶ INSTALLING ─▶ ACTIVATING ─▶ COMMITTED
       │             │             │        │   ▲   │          │
       │             │             │        └───┘   │          └──▶ ROLLED_BACK
       └─────────────┴─────────────┴────────────────┴──▶ FAILED
                                   (VERIFYING or INSTALLING ─▶ COMMITTED when the image is
                                    already the committed software: nothing to install)

* **FAILED** — the campaign stopped before activation; the previous software runs, nothing of
  the update is pending in the installer.
* **ROLLED_BACK** — the update was activated (booted or about to be) and then abandoned; the
  previous software runs again.
* **COMMITTED** — the installer's committed slot holds the campaign's image.

Every function here takes the persisted :class:`Campaign` and an event and returns the new
campaign, or raises :class:`~ota.errors.CampaignSequenceError` when the event does not fit; the
driver (:class:`ota.campaign_runner.CampaignRunner`) does the I/O. Decisions that depend on the
A/B installer (:func:`install_decision`, :func:`activation_decision`, :func:`verify_decision`)
read its :class:`~ota.slot_state.SlotStatus`, so what a campaign reports is derived from what
the installer says, never assumed: a campaign reaches COMMITTED only from a status whose
committed image is the campaign's.

**Status events.** Each transition appends the :class:`StatusEvent` s it produces to the
campaign's *outbox*; the driver persists the campaign with its outbox, puts the events into the
durable upload queue, then persists the campaign with an empty outbox (:func:`sent`). After a
crash, an outbox that is still full is queued again — at least once, and with the same sequence
numbers (:func:`stamp` numbers them before the first save), so a backend drops a repeat as a
duplicate. Events carry a *lane* (``target``): ``"host"`` for the T-box's own image, the ECU's id
for ECU firmware.

**ECU lanes: all or nothing.** A campaign also updates the ECUs behind the T-box (ADR 0012). Each
ECU image of the plan is an :class:`EcuLane` with its own :class:`LanePhase`, advanced inside the
campaign's steps::

    PLANNED ─▶ DOWNLOADED ─▶ STAGING ─▶ STAGED ─▶ ACTIVATED ─▶ COMMITTED
                     │          │          │           │
                     │          └──────────┴───────────┴──▶ ROLLED_BACK | ROLLBACK_FAILED
                     └──▶ UNCHANGED (the ECU ran it)        (FAILED first, for the ECU at fault)

* **downloading**: every ECU image is downloaded (:class:`EcuDownloaded`), then the T-box's;
* **verifying**: each download is hashed again; one that is not its target fails the campaign;
* **installing**: each ECU *stages* its image (:class:`EcuStaging` is persisted first, then
  :class:`EcuStaged`: flashed into its inactive bank and checked by the ECU, not booted), then the
  T-box image is installed into its free slot. An ECU found running the image before
  :class:`EcuStaging` is UNCHANGED; after it, the image is the campaign's (a power cut may have
  booted it early) and is rolled back like any staged one;
* **activating**: each ECU is reset into its new image (:class:`EcuActivated`), then the T-box
  boots its slot and runs its health check; the T-box commit is the campaign's commit.

The first failure of an ECU (:class:`EcuFailed`) or of the T-box (:class:`Abandon`) records the
campaign's :attr:`Campaign.abort`; from then on :func:`lane_action` only returns rollbacks, last
lane first: every staged or activated ECU returns to its previous image
(:class:`EcuRolledBack`), and only then does the campaign end FAILED (before activation) or
ROLLED_BACK (during it) with the abort's code and reason. :func:`transition` refuses to end a
campaign while a lane is staged, activated or failed and not rolled back, so no ended campaign
leaves an ECU with a pending image: a crash anywhere resumes the sweep. An ECU that cannot be
rolled back (it no longer answers) ends ROLLBACK_FAILED, reported in its lane with the reason.
ECU images for an ECU without a flashing address in ``[ota.ecus]`` fail the campaign before
anything is downloaded (:attr:`ErrorCode.UNSUPPORTED_IMAGE_KIND`).

**The campaign command** (``cmd/ota``) body is a JSON object (:func:`parse_request`)::

    {"campaign_id": "rollout-2026-12",          # required: 1–64 of [A-Za-z0-9._-]
     "correlation_id": "req-4711",              # optional: 1–128 printable characters
     "targets": ["tbox/rootfs-12.img"] | "all", # optional, default "all" (all assigned)
     "deadline": "2026-12-31T23:00:00Z"}        # optional: RFC 3339 with a UTC offset

Unknown or repeated keys, other types, ``NaN``, non-UTF-8 and bodies above
:data:`MAX_BODY_BYTES` are refused with :class:`~ota.errors.CampaignRequestError` naming the
field. The correlation id defaults to the command's id.

**The state file** is JSON (``format`` 1), one campaign — the running one, or the last one::

    {"format": 2, "campaign_id": "rollout-2026-12", "correlation_id": "req-4711",
     "step": "downloading",
     "requested": null | ["tbox/rootfs-12.img"],
     "deadline": null | "2026-12-31T23:00:00+00:00",
     "target": null | TARGET,              # the T-box image being installed
     "ecus": [{"target": TARGET, "phase": "staged", "download": null | "/…/bms-8.img"}, …],
     "abort": null | {"code": "ecu_refused", "reason": "…"},   # rolling back every lane
     "download": null | "/var/lib/…/rootfs-12.img",  # the verified download (verifying…activating)
     "install_attempts": 1,                # counted before each install call (crash loops end)
     "error_code": "" | "stalled" | …, "detail": "campaign …: …",
     "outbox": [EVENT, …]}                 # events not yet known to be queued

where ``TARGET`` is ``{"name", "sha256", "length", "release_counter", "image_kind", "ecu_id"}``
and ``EVENT`` is ``{"sequence", "state", "time_us", "target", "detail", "error_code",
"bytes_done", "bytes_total"}``. :func:`parse_campaign` also reads format 1 (before ECU lanes:
its ``skipped`` ECU images were reported failed already and are dropped); it accepts any bytes
and returns a campaign
that satisfies every invariant of :func:`campaign_problem`, or raises
:class:`~ota.errors.CampaignStateError` naming the file and the key.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Final, NoReturn, Protocol

from agent.proto.tbox.v1 import SCHEMA_VERSION, OtaStatus
from ota.errors import (
    CampaignRequestError,
    CampaignSequenceError,
    CampaignStateError,
    DowngradeError,
    ImageMismatchError,
    NoBootableSlotError,
    OtaVerificationError,
    SlotIOError,
    SlotStateError,
    UpdatePendingError,
)
from ota.slot_state import ImageInfo, Phase, SlotStatus
from ota.target_info import (
    MAX_RELEASE_COUNTER,
    ImageKind,
    identifier_problem,
    target_name_problem,
)

__all__ = [
    "FINAL_STEPS",
    "FORMAT",
    "HOST",
    "MAX_BODY_BYTES",
    "MAX_INSTALL_ATTEMPTS",
    "Abort",
    "ActivateEcu",
    "AlreadyInstalled",
    "Boot",
    "Campaign",
    "CampaignRequest",
    "CheckHealth",
    "Commit",
    "CommitDone",
    "DownloadDone",
    "EcuActivated",
    "EcuDownloaded",
    "EcuFailed",
    "EcuLane",
    "EcuRolledBack",
    "EcuStaged",
    "EcuStaging",
    "ErrorCode",
    "Event",
    "Failed",
    "Install",
    "InstallDone",
    "InstallRetried",
    "LanePhase",
    "PlanChosen",
    "PlannedTarget",
    "RollBackEcu",
    "RolledBack",
    "StageEcu",
    "StatusEvent",
    "Step",
    "TargetRef",
    "VerifyPassed",
    "accept",
    "activation_decision",
    "campaign_problem",
    "choose_targets",
    "encode_campaign",
    "error_code_for",
    "find_target",
    "format_deadline",
    "install_decision",
    "lane_action",
    "leftover_rollback",
    "own_reason",
    "parse_campaign",
    "parse_request",
    "progress_event",
    "rollback_code",
    "sent",
    "stamp",
    "status_message",
    "transition",
    "verify_decision",
]

FORMAT: Final = 2
_FORMATS: Final = (1, 2)  # format 1: before ECU lanes (a campaign may span an agent update)
#: The lane of the T-box's own software in :attr:`StatusEvent.target` (ota.proto's "host").
HOST: Final = "host"
#: Largest ``cmd/ota`` body accepted (the command's own size limit applies first).
MAX_BODY_BYTES: Final = 16 * 1024
#: Most target names a campaign may list.
MAX_TARGETS: Final = 64
#: Install attempts per campaign: an install cut by a power failure is tried again, but a T-box
#: that loses power during every install must end the campaign rather than loop.
MAX_INSTALL_ATTEMPTS: Final = 3

_MAX_CORRELATION: Final = 128
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_DEADLINE_TEXT: Final = 64
_MAX_VERSION: Final = 128  # ota.slot_state's limit for the version label of an image


class Step(StrEnum):
    """Where a campaign is; the values are the state file's and, upper-cased, ota.proto's."""

    RECEIVED = "received"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    INSTALLING = "installing"
    ACTIVATING = "activating"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


FINAL_STEPS: Final = frozenset({Step.COMMITTED, Step.ROLLED_BACK, Step.FAILED})
_ORDER: Final = {step: index for index, step in enumerate(Step)}
_WITH_DOWNLOAD: Final = frozenset({Step.VERIFYING, Step.INSTALLING, Step.ACTIVATING})
_PROTO_STATE: Final = {
    Step.RECEIVED: OtaStatus.STATE_RECEIVED,
    Step.DOWNLOADING: OtaStatus.STATE_DOWNLOADING,
    Step.VERIFYING: OtaStatus.STATE_VERIFYING,
    Step.INSTALLING: OtaStatus.STATE_INSTALLING,
    Step.ACTIVATING: OtaStatus.STATE_ACTIVATING,
    Step.COMMITTED: OtaStatus.STATE_COMMITTED,
    Step.ROLLED_BACK: OtaStatus.STATE_ROLLED_BACK,
    Step.FAILED: OtaStatus.STATE_FAILED,
}


class ErrorCode(StrEnum):
    """Machine-readable reasons of FAILED and ROLLED_BACK events (``OtaStatus.error_code``)."""

    CHECK_FAILED = "check_failed"  # no plan: the update client could not refresh its metadata
    VERIFICATION_FAILED = "verification_failed"  # metadata or an image did not verify
    NOTHING_ASSIGNED = "nothing_assigned"  # the director assigns nothing to this vehicle
    NOT_ASSIGNED = "not_assigned"  # a target the campaign names is not assigned
    UNSUPPORTED_IMAGE_KIND = "unsupported_image_kind"  # ECU firmware for an ECU not in [ota.ecus]
    AMBIGUOUS_PLAN = "ambiguous_plan"  # more than one T-box image to install
    PLAN_CHANGED = "plan_changed"  # on resuming, the assignment is no longer the same image
    DOWNLOAD_FAILED = "download_failed"  # network, server, byte limit, throughput floor
    HASH_MISMATCH = "hash_mismatch"  # the downloaded file is not the image the target names
    DOWNGRADE = "downgrade"  # release counter below (or equal to, for another image) the installed
    UPDATE_PENDING = "update_pending"  # the installer holds another update, not committed
    INSTALL_FAILED = "install_failed"  # the installer could not write or verify the slot
    INSTALL_INTERRUPTED = "install_interrupted"  # every install attempt was cut short
    HEALTH_CHECK_FAILED = "health_check_failed"  # the new software failed its health check
    BOOT_FAILED = "boot_failed"  # the new slot did not verify at boot, or used all its attempts
    ROLLED_BACK = "rolled_back"  # rolled back for a reason the campaign did not give
    LOST_UPDATE = "lost_update"  # the installer no longer holds the update (changed behind us)
    STALLED = "stalled"  # a step overran its time budget (the watchdog)
    DEADLINE_PASSED = "deadline_passed"  # the campaign's deadline came before its activation
    INSTALLER_UNAVAILABLE = "installer_unavailable"  # the slot state is unreadable or unbootable
    INTERNAL_ERROR = "internal_error"  # a fault of the agent itself
    ECU_REFUSED = "ecu_refused"  # an ECU refused its image (check, hardware id, version, key)
    ECU_UNREACHABLE = "ecu_unreachable"  # an ECU stopped answering (after every retry)
    ECU_ACTIVATION_FAILED = "ecu_activation_failed"  # after its reset, an ECU ran another image
    ROLLBACK_FAILED = "rollback_failed"  # an ECU could not be returned to its previous image


# --- the campaign command ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CampaignRequest:
    """A parsed ``cmd/ota`` body; ``targets`` ``None`` means every assigned target;
    ``deadline`` is in seconds since the epoch."""

    campaign_id: str
    correlation_id: str | None = None
    targets: tuple[str, ...] | None = None
    deadline: int | None = None


class _DuplicateKeyError(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        repeated = sorted({k for k in keys if keys.count(k) > 1})
        raise _DuplicateKeyError(f"repeats the key {', '.join(map(repr, repeated))}")
    return dict(pairs)


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _load_json(text: str) -> Any:
    """``json.loads`` refusing repeated keys and NaN/Infinity (ValueError, RecursionError)."""
    return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)


def parse_request(body: bytes) -> CampaignRequest:
    """The campaign in a ``cmd/ota`` *body* (see the module's docstring), parsed strictly.

    Accepts any bytes: returns a valid :class:`CampaignRequest` or raises
    :class:`~ota.errors.CampaignRequestError` saying which field is wrong and why.
    """

    def fail(problem: str) -> NoReturn:
        raise CampaignRequestError(f"cmd/ota body: {problem}")

    if len(body) > MAX_BODY_BYTES:
        fail(f"is {len(body)} bytes; at most {MAX_BODY_BYTES} are accepted")
    try:
        doc = _load_json(body.decode("utf-8"))
    except UnicodeDecodeError as e:
        fail(f"is not UTF-8 ({e.reason} at byte {e.start})")
    except RecursionError:
        fail("is nested too deeply")
    except ValueError as e:  # JSONDecodeError, a repeated key, NaN
        fail(f"is not a valid JSON object: {e}")
    if not isinstance(doc, dict):
        fail(f"must be a JSON object, not {_json_kind(doc)}")
    unknown = sorted(set(doc) - {"campaign_id", "correlation_id", "targets", "deadline"})
    if unknown:
        fail(
            f"unknown key {', '.join(map(repr, unknown))} (known: campaign_id, correlation_id, "
            "targets, deadline)"
        )
    if "campaign_id" not in doc:
        fail("campaign_id is missing")
    problem = identifier_problem(doc["campaign_id"])
    if problem is not None:
        fail(f"campaign_id {problem}")
    correlation = doc.get("correlation_id")
    if "correlation_id" in doc and not _valid_correlation(correlation):
        fail(f"correlation_id {_short(correlation)} must be a string of 1–128 printable characters")
    targets: tuple[str, ...] | None = None
    if "targets" in doc and doc["targets"] != "all":
        raw = doc["targets"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_TARGETS:
            fail(f'targets must be "all" or a list of 1–{MAX_TARGETS} target names')
        for name in raw:
            problem = target_name_problem(name)
            if problem is not None:
                fail(f"targets: name {problem}")
        if len(set(raw)) != len(raw):
            fail("targets names a target twice")
        targets = tuple(raw)
    deadline = None
    if "deadline" in doc:
        try:
            deadline = _parse_deadline(doc["deadline"])
        except ValueError as e:
            fail(f"deadline {e}")
    return CampaignRequest(doc["campaign_id"], correlation, targets, deadline)


def _valid_correlation(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_CORRELATION and value.isprintable()


def _parse_deadline(value: object) -> int:
    if not isinstance(value, str) or len(value) > _MAX_DEADLINE_TEXT:
        raise ValueError(f"{_short(value)} must be an RFC 3339 time, e.g. 2026-12-31T23:00:00Z")
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{_short(value)} is not an RFC 3339 time, e.g. 2026-12-31T23:00:00Z"
        ) from None
    if when.tzinfo is None:
        raise ValueError(f"{_short(value)} has no UTC offset (add Z or +01:00)")
    try:
        return int(when.timestamp())
    except (OverflowError, ValueError) as e:  # an offset pushing year 1 or 9999 out of range
        raise ValueError(f"{_short(value)} is out of range ({e})") from None


def format_deadline(deadline: int) -> str:
    """*deadline* (seconds since the epoch) as the state file writes it: ISO 8601 in UTC."""
    return dt.datetime.fromtimestamp(deadline, dt.UTC).isoformat()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _json_kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


# --- targets -----------------------------------------------------------------------------------


class PlannedTarget(Protocol):
    """What the update client's plan says about one verified target (read-only attributes).

    ``image_kind`` is ``"tbox"`` or ``"ecu"`` (:class:`~ota.target_info.ImageKind`);
    ``ecu_id`` names the ECU of ECU firmware; ``sha256`` is the hex digest (``None``: the
    target lists no sha256, which a campaign refuses).
    """

    @property
    def name(self) -> str: ...
    @property
    def length(self) -> int: ...
    @property
    def sha256(self) -> str | None: ...
    @property
    def release_counter(self) -> int: ...
    @property
    def image_kind(self) -> str: ...
    @property
    def ecu_id(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class TargetRef:
    """An image a campaign handles, as the state file keeps it."""

    name: str
    sha256: str
    length: int
    release_counter: int
    image_kind: ImageKind
    ecu_id: str | None = None

    @classmethod
    def of(cls, planned: PlannedTarget) -> TargetRef:
        """*planned* (from the update client) checked field by field.

        Raises :class:`~ota.errors.OtaVerificationError`: a plan is verified metadata, so a
        target that does not even have well-formed fields did not verify.
        """
        try:
            kind = ImageKind(planned.image_kind)
            ref = cls(
                planned.name,
                planned.sha256 or "",
                planned.length,
                planned.release_counter,
                kind,
                planned.ecu_id,
            )
        except (ValueError, TypeError, AttributeError) as e:
            raise OtaVerificationError(f"update plan: a target is malformed: {e}") from e
        problem = _target_problem(ref)
        if problem is not None:
            raise OtaVerificationError(f"update plan: target {_short(ref.name)}: {problem}")
        return ref

    @property
    def lane(self) -> str:
        """The ``target`` of its status events: ``"host"``, or the ECU's id."""
        if self.image_kind is ImageKind.TBOX:
            return HOST
        return self.ecu_id or self.name

    def describe(self) -> str:
        """``tbox/rootfs-12.img (release 12, 1048576 bytes)`` — for details."""
        return f"{self.name} (release {self.release_counter}, {self.length} bytes)"

    def image(self) -> ImageInfo:
        """The image as the A/B installer names it."""
        return ImageInfo(self.release_counter, self.sha256, self.length, self.name[:_MAX_VERSION])

    def holds(self, image: ImageInfo) -> bool:
        """Whether *image* is this target (its version label does not matter)."""
        return (image.sha256, image.length, image.release_counter) == (
            self.sha256,
            self.length,
            self.release_counter,
        )


def _target_problem(t: TargetRef) -> str | None:
    problem = target_name_problem(t.name)
    if problem is not None:
        return f"name {problem}"
    if not isinstance(t.sha256, str) or not _SHA256.fullmatch(t.sha256):
        return f"sha256 {_short(t.sha256)} is not 64 lowercase hex digits"
    if type(t.length) is not int or t.length < 0:
        return f"length {_short(t.length)} is not a non-negative integer"
    counter = t.release_counter
    if type(counter) is not int or not 0 <= counter <= MAX_RELEASE_COUNTER:
        return f"release counter {_short(counter)} is not an integer from 0 to 2^63-1"
    if t.ecu_id is not None:
        problem = identifier_problem(t.ecu_id)
        if problem is not None:
            return f"ecu_id {problem}"
    return None


# --- the campaign ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One ``OtaStatus`` to send; ``sequence`` is 0 until :func:`stamp` numbers it."""

    state: Step
    time_us: int
    detail: str
    error_code: str = ""
    target: str = HOST
    bytes_done: int = 0
    bytes_total: int = 0
    sequence: int = 0


class LanePhase(StrEnum):
    """Where one ECU's image is (see the module's docstring)."""

    PLANNED = "planned"
    DOWNLOADED = "downloaded"
    STAGING = "staging"  # being flashed: the ECU may hold it (and boot it after a power cut)
    STAGED = "staged"  # in the ECU's inactive bank, checked by the ECU, not booted
    UNCHANGED = "unchanged"  # the ECU ran this image before the campaign: nothing to do or undo
    ACTIVATED = "activated"  # the ECU runs it
    COMMITTED = "committed"
    FAILED = "failed"  # the ECU where the campaign failed; rolled back like the others next
    ROLLED_BACK = "rolled_back"  # the ECU runs its previous image; the campaign's is invalidated
    ROLLBACK_FAILED = "rollback_failed"  # the ECU could not be returned (reported, not retried)


#: Lanes whose ECU may hold (or run) the campaign's image: rolled back before a campaign ends.
PENDING_PHASES: Final = frozenset(
    {LanePhase.STAGING, LanePhase.STAGED, LanePhase.ACTIVATED, LanePhase.FAILED}
)
_SETTLED_FOR_ACTIVATION: Final = frozenset({LanePhase.STAGED, LanePhase.UNCHANGED})
_SETTLED_FOR_COMMIT: Final = frozenset({LanePhase.ACTIVATED, LanePhase.UNCHANGED})
_SETTLED_AFTER_COMMIT: Final = frozenset({LanePhase.COMMITTED, LanePhase.UNCHANGED})


@dataclass(frozen=True, slots=True)
class EcuLane:
    """One ECU image of a campaign: its target, its phase and its verified download."""

    target: TargetRef
    phase: LanePhase = LanePhase.PLANNED
    download: str | None = None

    @property
    def ecu_id(self) -> str:
        """The ECU's id (its lane in status events)."""
        return self.target.lane


@dataclass(frozen=True, slots=True)
class Abort:
    """Why a campaign is rolling every lane back; its final error code and reason."""

    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class Campaign:
    """Everything the state file holds (see the module's docstring for the fields)."""

    campaign_id: str
    correlation_id: str
    step: Step
    requested: tuple[str, ...] | None = None
    deadline: int | None = None
    target: TargetRef | None = None
    ecus: tuple[EcuLane, ...] = ()
    download: str | None = None
    install_attempts: int = 0
    error_code: str = ""
    detail: str = ""
    outbox: tuple[StatusEvent, ...] = ()
    abort: Abort | None = None

    @property
    def final(self) -> bool:
        """Whether the campaign has ended (committed, rolled back or failed)."""
        return self.step in FINAL_STEPS

    def describe(self) -> str:
        """``campaign rollout-7 (installing)`` — for messages."""
        return f"campaign {self.campaign_id} ({self.step})"

    def lane(self, ecu_id: str) -> EcuLane:
        """The lane of *ecu_id*; :class:`~ota.errors.CampaignSequenceError` if there is none."""
        for lane in self.ecus:
            if lane.ecu_id == ecu_id:
                return lane
        raise CampaignSequenceError(f"{self.describe()} updates no ECU {ecu_id!r}")

    def report(self) -> str:
        """What happened on each ECU, for the final detail: ``bms rolled_back, vcu failed``."""
        return ", ".join(f"{lane.ecu_id} {lane.phase}" for lane in self.ecus)


# Events: what happened. The driver learns them from the update client and the installer.


@dataclass(frozen=True, slots=True)
class PlanChosen:
    """The plan's T-box image to install (``None``: only ECU images) and the ECU images."""

    target: TargetRef | None
    ecus: tuple[TargetRef, ...] = ()


@dataclass(frozen=True, slots=True)
class EcuDownloaded:
    """The update client returned the verified download of *ecu_id*'s image at *path*."""

    ecu_id: str
    path: str


@dataclass(frozen=True, slots=True)
class EcuStaging:
    """*ecu_id* is about to be flashed: from now on it may hold the campaign's image."""

    ecu_id: str


@dataclass(frozen=True, slots=True)
class EcuStaged:
    """*ecu_id* holds its image in its inactive bank, checked (after :class:`EcuStaging`), or
    ran it before the campaign touched it: *unchanged* (instead of :class:`EcuStaging`)."""

    ecu_id: str
    unchanged: bool = False


@dataclass(frozen=True, slots=True)
class EcuActivated:
    """*ecu_id* was reset and runs its image."""

    ecu_id: str


@dataclass(frozen=True, slots=True)
class EcuFailed:
    """Staging or activating *ecu_id* failed; every lane is rolled back next."""

    ecu_id: str
    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class EcuRolledBack:
    """*ecu_id* runs its previous image again (*ok*), or could not be returned (*detail* why)."""

    ecu_id: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DownloadDone:
    """The update client returned the verified download at *path* (``None``: the campaign has
    no T-box image; its ECU images are downloaded)."""

    path: str | None


@dataclass(frozen=True, slots=True)
class VerifyPassed:
    """The download re-hashed as its target, and the installer accepts its release counter."""


@dataclass(frozen=True, slots=True)
class AlreadyInstalled:
    """The target is the installer's committed software already."""


@dataclass(frozen=True, slots=True)
class InstallRetried:
    """An install attempt was interrupted (the installer holds no trace of it); try again."""


@dataclass(frozen=True, slots=True)
class InstallDone:
    """The installer holds the target as its pending update, written and verified."""


@dataclass(frozen=True, slots=True)
class CommitDone:
    """The installer committed the target."""


@dataclass(frozen=True, slots=True)
class RolledBack:
    """The activated update was abandoned; *reason* says why."""

    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The campaign stops before activation; *reason* says why."""

    code: ErrorCode
    reason: str


Event = (
    PlanChosen
    | EcuDownloaded
    | EcuStaging
    | EcuStaged
    | EcuActivated
    | EcuFailed
    | EcuRolledBack
    | DownloadDone
    | VerifyPassed
    | AlreadyInstalled
    | InstallRetried
    | InstallDone
    | CommitDone
    | RolledBack
    | Failed
)


# Actions: what the driver must do next with the installer.


@dataclass(frozen=True, slots=True)
class Install:
    """Write the target into the inactive slot (``AbInstaller.install``)."""


@dataclass(frozen=True, slots=True)
class Boot:
    """Boot the installed slot (``AbInstaller.boot``: the simulated reboot)."""


@dataclass(frozen=True, slots=True)
class CheckHealth:
    """Run the health check on the booted update and record its result."""


@dataclass(frozen=True, slots=True)
class Commit:
    """Commit the healthy update (``AbInstaller.commit``)."""


@dataclass(frozen=True, slots=True)
class StageEcu:
    """Flash the lane's image into its ECU's inactive bank and have it checked; no reset."""

    lane: EcuLane


@dataclass(frozen=True, slots=True)
class ActivateEcu:
    """Reset the lane's ECU into its staged image and verify it runs it."""

    lane: EcuLane


@dataclass(frozen=True, slots=True)
class RollBackEcu:
    """Invalidate the lane's image in its ECU and reset it into its previous image."""

    lane: EcuLane


def accept(request: CampaignRequest, *, command_id: str, now_us: int) -> Campaign:
    """The campaign *request* asks for, RECEIVED; its correlation id defaults to *command_id*."""
    correlation = request.correlation_id or command_id
    if not _valid_correlation(correlation):
        # a command id may hold what no status should carry; keep what still identifies it
        printable = "".join(ch if ch.isprintable() else "_" for ch in correlation)
        correlation = printable[:_MAX_CORRELATION] or request.campaign_id
    what = "every assigned target" if request.targets is None else ", ".join(request.targets)
    deadline = "" if request.deadline is None else f", deadline {format_deadline(request.deadline)}"
    detail = f"campaign {request.campaign_id}: received ({what}{deadline})"
    campaign = Campaign(
        request.campaign_id,
        correlation,
        Step.RECEIVED,
        requested=request.targets,
        deadline=request.deadline,
        detail=detail,
    )
    return _emit(campaign, StatusEvent(Step.RECEIVED, now_us, detail))


def transition(campaign: Campaign, event: Event, *, now_us: int) -> Campaign:
    """The campaign after *event*, with the status events it produces appended to its outbox.

    Raises :class:`~ota.errors.CampaignSequenceError` (and changes nothing) when *event* does
    not fit the campaign's step: a final campaign takes no event; FAILED is for steps before
    activation and ROLLED_BACK for activation only. While an ECU lane may hold the campaign's
    image, FAILED and ROLLED_BACK only record the campaign's :class:`Abort` (the lanes are rolled
    back first, see :func:`lane_action`); applied again once none does, they end it.
    """
    c = campaign
    if c.final:
        _refuse(c, event, "it has ended")
    match event:
        case Failed(code, reason):
            if c.step is Step.ACTIVATING:
                _refuse(c, event, "an activated update is rolled back, not failed")
            return _end(c, Step.FAILED, code, reason, now_us)
        case RolledBack(code, reason):
            if c.step is not Step.ACTIVATING:
                _refuse(c, event, "it is for step activating")
            return _end(c, Step.ROLLED_BACK, code, reason, now_us)
        case PlanChosen(target, ecus):
            if c.step is not Step.RECEIVED:
                _refuse(c, event, "it is for step received")
            if target is not None and target.image_kind is not ImageKind.TBOX:
                _refuse(c, event, f"{target.name} is not a T-box image")
            if any(t.image_kind is not ImageKind.ECU for t in ecus):
                _refuse(c, event, "ECU lanes hold ECU images only")
            if len({t.lane for t in ecus}) != len(ecus):
                _refuse(c, event, "two images for one ECU")
            if target is None and not ecus:
                _refuse(c, event, "the plan holds nothing to install")
            lanes = tuple(EcuLane(t) for t in ecus)
            what = ", ".join(t.describe() for t in (*ecus, *([target] if target else [])))
            detail = f"campaign {c.campaign_id}: downloading {what}"
            c = replace(c, step=Step.DOWNLOADING, target=target, ecus=lanes, detail=detail)
            started = [
                StatusEvent(
                    Step.DOWNLOADING,
                    now_us,
                    f"campaign {c.campaign_id}: downloading {t.describe()} for ECU {t.lane}",
                    target=t.lane,
                    bytes_total=t.length,
                )
                for t in ecus
            ]
            # the step in the host lane last, as every step (its bytes: the T-box image's)
            host_bytes = 0 if target is None else target.length
            started.append(StatusEvent(Step.DOWNLOADING, now_us, detail, bytes_total=host_bytes))
            return _emit(c, *started)
        case EcuDownloaded(ecu_id, path):
            lane = _lane(c, event, ecu_id, Step.DOWNLOADING, LanePhase.PLANNED)
            if not path:
                _refuse(c, event, "the download has no path")
            t = lane.target
            detail = f"campaign {c.campaign_id}: downloaded {t.describe()} for ECU {ecu_id}"
            new = replace(lane, phase=LanePhase.DOWNLOADED, download=path)
            done = StatusEvent(
                Step.DOWNLOADING,
                now_us,
                detail,
                target=ecu_id,
                bytes_done=t.length,
                bytes_total=t.length,
            )
            return _emit(_with_lane(c, new), done)
        case DownloadDone(path):
            if c.step is not Step.DOWNLOADING:
                _refuse(c, event, "it is for step downloading")
            if any(lane.phase is not LanePhase.DOWNLOADED for lane in c.ecus):
                _refuse(c, event, "an ECU image is not downloaded yet")
            if (c.target is None) != (path is None) or path == "":
                _refuse(c, event, "a T-box image has a download path, and only a T-box image")
            what = ", ".join(_names(c)) or "nothing"
            detail = f"campaign {c.campaign_id}: verifying {what}: length and sha256"
            return _step(c, Step.VERIFYING, detail, now_us, download=path)
        case VerifyPassed():
            _require_step(c, event, Step.VERIFYING)
            parts: list[str] = []
            if c.ecus:
                parts.append(f"staging {', '.join(lane.ecu_id for lane in c.ecus)}")
            if c.target is not None:
                parts.append(f"installing {c.target.describe()} into the free slot")
            detail = f"campaign {c.campaign_id}: {' and '.join(parts)}"
            return _step(c, Step.INSTALLING, detail, now_us, install_attempts=1)
        case AlreadyInstalled():
            target = _require(c, event, Step.VERIFYING, Step.INSTALLING)
            detail = (
                f"campaign {c.campaign_id}: {target.describe()} is already the committed "
                "software; nothing to install"
            )
            if not c.ecus:
                return _step(c, Step.COMMITTED, detail, now_us, download=None)
            # The ECUs still have their images to take: the T-box leaves the campaign, so that
            # rolling the ECUs back never touches the software it already ran.
            host = StatusEvent(Step.COMMITTED, now_us, detail)
            c = _emit(replace(c, target=None, download=None, detail=detail), host)
            if c.step is Step.VERIFYING:
                return transition(c, VerifyPassed(), now_us=now_us)
            return c
        case InstallRetried():
            target = _require(c, event, Step.INSTALLING)
            if c.install_attempts >= MAX_INSTALL_ATTEMPTS:
                reason = (
                    f"all {MAX_INSTALL_ATTEMPTS} attempts to install {target.name} were "
                    "interrupted (power cut or crash)"
                )
                return _end(c, Step.FAILED, ErrorCode.INSTALL_INTERRUPTED, reason, now_us)
            attempt = c.install_attempts + 1
            detail = (
                f"campaign {c.campaign_id}: installing {target.describe()} again (attempt "
                f"{attempt} of {MAX_INSTALL_ATTEMPTS}): the previous attempt was interrupted"
            )
            return _step(c, Step.INSTALLING, detail, now_us, install_attempts=attempt)
        case EcuStaging(ecu_id):
            lane = _lane(c, event, ecu_id, Step.INSTALLING, LanePhase.DOWNLOADED)
            detail = (
                f"campaign {c.campaign_id}: flashing {lane.target.describe()} into the inactive "
                f"bank of ECU {ecu_id}"
            )
            staging = StatusEvent(Step.INSTALLING, now_us, detail, target=ecu_id)
            return _emit(_with_lane(c, replace(lane, phase=LanePhase.STAGING)), staging)
        case EcuStaged(ecu_id, unchanged):
            # Only an ECU the campaign has not flashed can have run the image before it: after
            # a power cut while staging, the ECU may boot the staged image, which is then ours.
            before = LanePhase.DOWNLOADED if unchanged else LanePhase.STAGING
            lane = _lane(c, event, ecu_id, Step.INSTALLING, before)
            t = lane.target
            if unchanged:
                phase = LanePhase.UNCHANGED
                detail = f"campaign {c.campaign_id}: ECU {ecu_id} already runs {t.describe()}"
            else:
                phase = LanePhase.STAGED
                detail = (
                    f"campaign {c.campaign_id}: ECU {ecu_id} holds {t.describe()} in its "
                    "inactive bank, checked by the ECU; it boots it at activation"
                )
            done = StatusEvent(Step.INSTALLING, now_us, detail, target=ecu_id)
            return _emit(_with_lane(c, replace(lane, phase=phase)), done)
        case InstallDone():
            _require_step(c, event, Step.INSTALLING)
            if any(lane.phase not in _SETTLED_FOR_ACTIVATION for lane in c.ecus):
                _refuse(c, event, "an ECU has not staged its image")
            detail = f"campaign {c.campaign_id}: activating {', '.join(_names(c))}"
            if c.target is not None:
                detail += f"; booting {c.target.name} and running its health check"
            return _step(c, Step.ACTIVATING, detail, now_us)
        case EcuActivated(ecu_id):
            lane = _lane(c, event, ecu_id, Step.ACTIVATING, LanePhase.STAGED)
            detail = (
                f"campaign {c.campaign_id}: ECU {ecu_id} was reset and runs "
                f"{lane.target.describe()}"
            )
            done = StatusEvent(Step.ACTIVATING, now_us, detail, target=ecu_id)
            return _emit(_with_lane(c, replace(lane, phase=LanePhase.ACTIVATED)), done)
        case EcuFailed(ecu_id, code, reason):
            lane = _lane(
                c, event, ecu_id, None, LanePhase.DOWNLOADED, LanePhase.STAGING, LanePhase.STAGED
            )
            if c.step not in {Step.INSTALLING, Step.ACTIVATING}:
                _refuse(c, event, "it is for step installing or activating")
            text = f"ECU {ecu_id}: {reason}"
            detail = f"campaign {c.campaign_id}: {text}; every ECU of the campaign is rolled back"
            failed = StatusEvent(Step.FAILED, now_us, detail, str(code), ecu_id)
            c = _with_lane(c, replace(lane, phase=LanePhase.FAILED))
            if c.abort is None:
                c = replace(c, abort=Abort(code, text))
            return _emit(replace(c, detail=detail), failed)
        case EcuRolledBack(ecu_id, ok, why):
            lane = _lane(c, event, ecu_id, None, *PENDING_PHASES)
            if c.abort is None:
                _refuse(c, event, "nothing asked for a rollback")
            t = lane.target
            if ok:
                phase = LanePhase.ROLLED_BACK
                detail = (
                    f"campaign {c.campaign_id}: ECU {ecu_id} runs its previous image again; "
                    f"{t.name} is invalidated"
                )
                lane_code = str(c.abort.code)
            else:
                phase = LanePhase.ROLLBACK_FAILED
                detail = (
                    f"campaign {c.campaign_id}: ECU {ecu_id} could not be returned to its "
                    f"previous image: {why}"
                )
                lane_code = str(ErrorCode.ROLLBACK_FAILED)
            back = StatusEvent(Step.ROLLED_BACK, now_us, detail, lane_code, ecu_id)
            return _emit(_with_lane(c, replace(lane, phase=phase)), back)
        case CommitDone():
            _require_step(c, event, Step.ACTIVATING)
            if c.abort is not None:
                _refuse(c, event, f"the campaign is rolling back ({c.abort.reason})")
            if any(lane.phase not in _SETTLED_FOR_COMMIT for lane in c.ecus):
                _refuse(c, event, "an ECU does not run its image")
            events = [
                StatusEvent(
                    Step.COMMITTED,
                    now_us,
                    f"campaign {c.campaign_id}: ECU {lane.ecu_id} runs "
                    f"{lane.target.describe()}, committed",
                    target=lane.ecu_id,
                )
                for lane in c.ecus
                if lane.phase is LanePhase.ACTIVATED
            ]
            lanes = tuple(
                replace(lane, phase=LanePhase.COMMITTED)
                if lane.phase is LanePhase.ACTIVATED
                else lane
                for lane in c.ecus
            )
            installed = [lane.target for lane in c.ecus] + ([c.target] if c.target else [])
            what = ", ".join(t.describe() for t in installed)
            verb = "is" if len(installed) == 1 else "are"
            detail = f"campaign {c.campaign_id}: {what} {verb} committed"
            c = _emit(replace(c, ecus=lanes), *events)
            return _step(c, Step.COMMITTED, detail, now_us, download=None)
    raise CampaignSequenceError(f"{c.describe()}: unknown event {event!r}")  # pragma: no cover


def _names(c: Campaign) -> list[str]:
    names = [lane.target.name for lane in c.ecus]
    if c.target is not None:
        names.append(c.target.name)
    return names


def _lane(c: Campaign, event: Event, ecu_id: str, step: Step | None, *phases: LanePhase) -> EcuLane:
    """The lane of *ecu_id*, if *event* fits the campaign's *step* and the lane's phase."""
    if step is not None and c.step is not step:
        _refuse(c, event, f"it is for step {step}")
    try:
        lane = c.lane(ecu_id)
    except CampaignSequenceError:
        _refuse(c, event, f"the campaign updates no ECU {ecu_id!r}")
    if lane.phase not in phases:
        _refuse(c, event, f"ECU {ecu_id} is {lane.phase}, not {' or '.join(phases)}")
    return lane


def _with_lane(c: Campaign, new: EcuLane) -> Campaign:
    lanes = tuple(new if lane.ecu_id == new.ecu_id else lane for lane in c.ecus)
    return replace(c, ecus=lanes)


def lane_action(c: Campaign) -> StageEcu | ActivateEcu | RollBackEcu | None:
    """The next ECU action of *c*, or ``None`` when its lanes wait for nothing.

    A campaign with an :attr:`~Campaign.abort` rolls its lanes back, last first; otherwise it
    stages every lane while installing and activates every lane while activating, in order.
    """
    if c.final:
        return None
    if c.abort is not None:
        for lane in reversed(c.ecus):
            if lane.phase in PENDING_PHASES:
                return RollBackEcu(lane)
        return None
    for lane in c.ecus:
        if c.step is Step.INSTALLING and lane.phase in {LanePhase.DOWNLOADED, LanePhase.STAGING}:
            return StageEcu(lane)
        if c.step is Step.ACTIVATING and lane.phase is LanePhase.STAGED:
            return ActivateEcu(lane)
    return None


def _require_step(c: Campaign, event: Event, step: Step) -> None:
    if c.step is not step:
        _refuse(c, event, f"it is for step {step}")


def _require(c: Campaign, event: Event, *steps: Step) -> TargetRef:
    """The campaign's target, if *event* fits its step (every step after RECEIVED has one)."""
    if c.step not in steps:
        _refuse(c, event, f"it is for step {' or '.join(steps)}")
    if c.target is None:
        _refuse(c, event, "the campaign has no target")
    return c.target


def _refuse(c: Campaign, event: Event, why: str) -> NoReturn:
    raise CampaignSequenceError(f"{c.describe()}: {type(event).__name__} does not apply: {why}")


def _step(c: Campaign, step: Step, detail: str, now_us: int, **changes: Any) -> Campaign:
    c = replace(c, step=step, detail=detail, **changes)
    return _emit(c, StatusEvent(step, now_us, detail))


def _end(c: Campaign, step: Step, code: ErrorCode, reason: str, now_us: int) -> Campaign:
    if any(lane.phase in PENDING_PHASES for lane in c.ecus):
        # Not yet: the lanes are rolled back first, then the campaign ends with its abort.
        if c.abort is not None:
            return c
        reason = reason or str(code)
        detail = f"campaign {c.campaign_id}: rolling back every ECU: {reason}"
        return replace(c, abort=Abort(code, reason), detail=detail)
    if c.abort is not None:
        code, reason = c.abort.code, c.abort.reason
    detail = f"campaign {c.campaign_id}: {step.replace('_', ' ')} in step {c.step}: {reason}"
    if c.ecus:
        detail += f" (ECUs: {c.report()})"
    c = replace(c, step=step, error_code=str(code), detail=detail, download=None)
    return _emit(c, StatusEvent(step, now_us, detail, str(code)))


def _emit(c: Campaign, *events: StatusEvent) -> Campaign:
    return replace(c, outbox=c.outbox + events)


def stamp(campaign: Campaign, next_sequence: Callable[[], int]) -> Campaign:
    """Number the outbox's events that have no sequence number yet, in order."""
    if all(e.sequence for e in campaign.outbox):
        return campaign
    numbered = tuple(
        e if e.sequence else replace(e, sequence=next_sequence()) for e in campaign.outbox
    )
    return replace(campaign, outbox=numbered)


def sent(campaign: Campaign) -> Campaign:
    """The campaign once its outbox's events are durably queued."""
    return replace(campaign, outbox=())


def progress_event(
    campaign: Campaign, done: int, total: int, *, now_us: int, target: TargetRef | None = None
) -> StatusEvent:
    """A DOWNLOADING event with the bytes of *target* (default: the T-box image) received so
    far, in its lane (not a transition: not persisted)."""
    target = target or campaign.target
    if campaign.step is not Step.DOWNLOADING or target is None:
        raise CampaignSequenceError(f"{campaign.describe()}: download progress outside downloading")
    total = max(0, total) or target.length
    done = min(max(0, done), total)
    percent = 100 * done // total if total else 100
    detail = (
        f"campaign {campaign.campaign_id}: downloading {target.name}: {percent}% "
        f"({done} of {total} bytes)"
    )
    return StatusEvent(
        Step.DOWNLOADING, now_us, detail, target=target.lane, bytes_done=done, bytes_total=total
    )


def status_message(campaign: Campaign, event: StatusEvent, *, vehicle_id: str) -> OtaStatus:
    """The ``tbox.v1.OtaStatus`` of *event* (the payload published on ``ota/status``)."""
    return OtaStatus(
        vehicle_id=vehicle_id,
        sequence=event.sequence,
        schema_version=SCHEMA_VERSION,
        time_us=event.time_us,
        campaign_id=campaign.campaign_id,
        correlation_id=campaign.correlation_id,
        state=_PROTO_STATE[event.state],
        detail=event.detail,
        error_code=event.error_code,
        target=event.target,
        bytes_done=event.bytes_done,
        bytes_total=event.bytes_total,
    )


# --- decisions ---------------------------------------------------------------------------------


def choose_targets(
    campaign: Campaign, plan: Sequence[TargetRef], flashable: Collection[str] = ()
) -> PlanChosen | Failed:
    """What the campaign installs out of the update client's verified *plan*; *flashable* are
    the ECUs this agent can flash (all or nothing: an image for another ECU fails the plan)."""
    names = [t.name for t in plan]
    assigned = ", ".join(names) or "nothing"
    if campaign.requested is None:
        wanted = list(plan)
    else:
        missing = [n for n in campaign.requested if n not in names]
        if missing:
            return Failed(
                ErrorCode.NOT_ASSIGNED,
                f"{', '.join(missing)} not assigned to this vehicle (assigned: {assigned})",
            )
        wanted = [t for t in plan if t.name in campaign.requested]
    if not wanted:
        return Failed(ErrorCode.NOTHING_ASSIGNED, "the director assigns no update to this vehicle")
    hosts = [t for t in wanted if t.image_kind is ImageKind.TBOX]
    if len(hosts) > 1:
        return Failed(
            ErrorCode.AMBIGUOUS_PLAN,
            f"{len(hosts)} T-box images are assigned ({', '.join(t.name for t in hosts)}); "
            "a campaign installs one: name it in targets",
        )
    ecus = tuple(t for t in wanted if t.image_kind is ImageKind.ECU)
    unknown = [t for t in ecus if t.lane not in flashable]
    if unknown:
        which = ", ".join(f"{t.name} (ECU {t.lane})" for t in unknown)
        known = ", ".join(sorted(flashable)) or "none"
        return Failed(
            ErrorCode.UNSUPPORTED_IMAGE_KIND,
            f"{which}: no flashing address for this ECU in [ota.ecus] (ECUs this agent flashes: "
            f"{known}); name the other targets in the campaign's targets to leave it out",
        )
    lanes = [t.lane for t in ecus]
    twice = sorted({lane for lane in lanes if lanes.count(lane) > 1})
    if twice:
        return Failed(
            ErrorCode.AMBIGUOUS_PLAN,
            f"more than one image is assigned to ECU {', '.join(twice)}; name one in targets",
        )
    return PlanChosen(hosts[0] if hosts else None, ecus)


def find_target(
    campaign: Campaign, plan: Sequence[TargetRef], target: TargetRef | None = None
) -> int | Failed:
    """The index in a fresh *plan* of *target* (default: the campaign's T-box image; a resumed
    download), or why not."""
    target = target or campaign.target
    if target is None:
        raise CampaignSequenceError(f"{campaign.describe()} has no target to look for")
    for index, planned in enumerate(plan):
        if planned == target:
            return index
    same_name = [t for t in plan if t.name == target.name]
    now = "is no longer assigned" if not same_name else f"is now {same_name[0].describe()}"
    return Failed(ErrorCode.PLAN_CHANGED, f"{target.describe()} {now}")


def verify_decision(
    campaign: Campaign, sha256: str, length: int, status: SlotStatus
) -> VerifyPassed | AlreadyInstalled | Failed:
    """Judge the download (its *sha256* and *length*, read back) against the installer."""
    target = campaign.target
    if target is None:
        raise CampaignSequenceError(f"{campaign.describe()} has no target to verify")
    if (sha256, length) != (target.sha256, target.length):
        return Failed(
            ErrorCode.HASH_MISMATCH,
            f"the download {campaign.download} is {length} bytes with sha256 {sha256[:12]}…; "
            f"{target.name} is {target.length} bytes with sha256 {target.sha256[:12]}…",
        )
    committed = status.committed.image
    if target.holds(committed):
        return AlreadyInstalled()
    if target.release_counter <= committed.release_counter:  # equal: another image, same counter
        return Failed(
            ErrorCode.DOWNGRADE,
            f"release counter {target.release_counter} of {target.name} is not above the "
            f"committed {committed.describe()} (anti-rollback)",
        )
    return VerifyPassed()


def install_decision(
    campaign: Campaign, status: SlotStatus
) -> Install | InstallDone | AlreadyInstalled | Failed:
    """What the INSTALLING step does, given what the installer holds (also after a crash)."""
    target = campaign.target
    if target is None:
        raise CampaignSequenceError(f"{campaign.describe()} has no target to install")
    pending = status.pending
    if pending is None:
        if target.holds(status.committed.image):
            return AlreadyInstalled()
        return Install()
    if not target.holds(pending.image):
        return Failed(
            ErrorCode.UPDATE_PENDING,
            f"another update, {pending.image.describe()} in slot {pending.slot}, is pending "
            f"({pending.phase}); it must be committed or rolled back first",
        )
    if pending.phase is Phase.WRITING:
        return Install()  # being written by an earlier call; the installer explains
    return InstallDone()


def activation_decision(
    campaign: Campaign, status: SlotStatus
) -> Boot | CheckHealth | Commit | CommitDone | RolledBack:
    """The next activation action, or how activation ended, from the installer's *status*."""
    target = campaign.target
    if target is None:
        raise CampaignSequenceError(f"{campaign.describe()} has no target to activate")
    pending = status.pending
    if pending is not None and target.holds(pending.image):
        if pending.phase is Phase.TRYING:
            return CheckHealth()
        if pending.phase is Phase.HEALTHY:
            return Commit()
        return Boot()  # INSTALLED: boot it; WRITING: the bootloader records it failed
    if pending is None and target.holds(status.committed.image):
        return CommitDone()
    failure = status.last_failure
    if failure is not None and target.holds(failure.image):
        return RolledBack(rollback_code(failure.reason), failure.reason)
    holding = f"{status.committed.image.describe()} in slot {status.committed.slot} is committed"
    if pending is not None:
        holding += f", {pending.image.describe()} in slot {pending.slot} is pending"
    return RolledBack(
        ErrorCode.LOST_UPDATE, f"the installer no longer holds {target.describe()}: {holding}"
    )


def leftover_rollback(campaign: Campaign, status: SlotStatus) -> str | None:
    """Why an ended campaign's update must be rolled back (still pending), or ``None``.

    Happens when an install the watchdog gave up on finished after all, or a crash came
    between ending the campaign and rolling its update back.
    """
    target, pending = campaign.target, status.pending
    if campaign.step is Step.COMMITTED or not campaign.final or target is None or pending is None:
        return None
    if not target.holds(pending.image):
        return None
    return own_reason(
        ErrorCode(campaign.error_code),
        f"campaign {campaign.campaign_id} ended {campaign.step}; its update must not stay pending",
    )


def own_reason(code: ErrorCode, text: str) -> str:
    """A rollback reason the campaign gives the installer; :func:`rollback_code` reads it back."""
    return f"{code}: {text}"


def rollback_code(reason: str) -> ErrorCode:
    """The error code of an installer's rollback *reason* (its own words, or ours)."""
    head, sep, _ = reason.partition(": ")
    if sep and head in ErrorCode.__members__.values():
        return ErrorCode(head)
    if reason.startswith("health check failed"):
        return ErrorCode.HEALTH_CHECK_FAILED
    if "boot attempts exhausted" in reason or "does not verify" in reason:
        return ErrorCode.BOOT_FAILED
    if "interrupted" in reason:
        return ErrorCode.INSTALL_INTERRUPTED
    return ErrorCode.ROLLED_BACK


def error_code_for(error: BaseException, step: Step) -> ErrorCode:
    """The error code of *error*, raised by the update client or the installer in *step*."""
    if isinstance(error, DowngradeError):
        return ErrorCode.DOWNGRADE
    if isinstance(error, UpdatePendingError):
        return ErrorCode.UPDATE_PENDING
    if isinstance(error, SlotStateError | NoBootableSlotError):
        return ErrorCode.INSTALLER_UNAVAILABLE
    if isinstance(error, ImageMismatchError):
        return ErrorCode.HASH_MISMATCH
    if step is Step.INSTALLING:
        return ErrorCode.INSTALL_FAILED
    if isinstance(error, SlotIOError):  # the slots' files, outside an install
        return ErrorCode.INSTALLER_UNAVAILABLE
    if isinstance(error, OtaVerificationError):
        return ErrorCode.VERIFICATION_FAILED
    if step is Step.RECEIVED:
        return ErrorCode.CHECK_FAILED
    if step is Step.DOWNLOADING:
        return ErrorCode.DOWNLOAD_FAILED
    return ErrorCode.INTERNAL_ERROR


# --- invariants and the state file -------------------------------------------------------------


def campaign_problem(c: Campaign) -> str | None:
    """What is inconsistent in *c*, in words, or ``None``: the rules every transition keeps."""
    problem = identifier_problem(c.campaign_id)
    if problem is not None:
        return f"campaign_id {problem}"
    if not _valid_correlation(c.correlation_id):
        return f"correlation_id {_short(c.correlation_id)} is not 1–128 printable characters"
    if c.requested is not None:
        if not 1 <= len(c.requested) <= MAX_TARGETS or len(set(c.requested)) != len(c.requested):
            return f"requested must hold 1–{MAX_TARGETS} distinct names"
        for name in c.requested:
            problem = target_name_problem(name)
            if problem is not None:
                return f"requested name {problem}"
    for ref in (c.target, *(lane.target for lane in c.ecus)):
        problem = None if ref is None else _target_problem(ref)
        if problem is not None:
            return f"target {problem}"
    if c.target is not None and c.target.image_kind is not ImageKind.TBOX:
        return f"target {c.target.name} is not a T-box image"
    problem = _lanes_problem(c)
    if problem is not None:
        return problem
    needs_target = c.step not in {Step.RECEIVED, Step.FAILED, Step.COMMITTED}
    if needs_target and c.target is None and not c.ecus:
        return f"step {c.step} needs a target"
    if c.step is Step.RECEIVED and (c.target is not None or c.ecus):
        return "step received has no plan yet"
    if (c.download is not None) != (c.step in _WITH_DOWNLOAD and c.target is not None):
        return f"download {_short(c.download)} does not fit step {c.step}"
    if c.download is not None and not c.download:
        return "download is empty"
    attempts = c.install_attempts
    if type(attempts) is not int or not 0 <= attempts <= MAX_INSTALL_ATTEMPTS:
        return f"install_attempts {_short(attempts)} is not from 0 to {MAX_INSTALL_ATTEMPTS}"
    if c.step in {Step.INSTALLING, Step.ACTIVATING} and attempts == 0:
        return f"step {c.step} needs an install attempt"
    if _ORDER[c.step] < _ORDER[Step.INSTALLING] and attempts != 0:
        return f"step {c.step} comes before any install attempt"
    failed = c.step in {Step.FAILED, Step.ROLLED_BACK}
    if failed != bool(c.error_code):
        return f"error_code {c.error_code!r} does not fit step {c.step}"
    if c.error_code and c.error_code not in ErrorCode.__members__.values():
        return f"error_code {c.error_code!r} is unknown"
    for event in c.outbox:
        if (
            event.time_us < 0
            or event.sequence < 0
            or not 0 <= event.bytes_done <= max(event.bytes_total, 0)
        ):
            return "outbox holds an event with a negative time, sequence or byte count"
    return None


_LANE_PHASES_BY_STEP: Final = {
    Step.RECEIVED: frozenset[LanePhase](),
    Step.DOWNLOADING: frozenset({LanePhase.PLANNED, LanePhase.DOWNLOADED}),
    Step.VERIFYING: frozenset({LanePhase.DOWNLOADED}),
    Step.INSTALLING: frozenset(LanePhase)
    - {LanePhase.PLANNED, LanePhase.ACTIVATED}
    - {LanePhase.COMMITTED},
    Step.ACTIVATING: frozenset(LanePhase)
    - {LanePhase.PLANNED, LanePhase.STAGING, LanePhase.COMMITTED},
    Step.COMMITTED: _SETTLED_AFTER_COMMIT,
    Step.FAILED: frozenset(LanePhase) - PENDING_PHASES - {LanePhase.COMMITTED},
    Step.ROLLED_BACK: frozenset(LanePhase) - PENDING_PHASES - {LanePhase.COMMITTED},
}
_ABORTED_PHASES: Final = frozenset(
    {LanePhase.FAILED, LanePhase.ROLLED_BACK, LanePhase.ROLLBACK_FAILED}
)


def _lanes_problem(c: Campaign) -> str | None:
    if len({lane.ecu_id for lane in c.ecus}) != len(c.ecus):
        return "ecus holds two lanes for one ECU"
    allowed = _LANE_PHASES_BY_STEP[c.step]
    for lane in c.ecus:
        if lane.target.image_kind is not ImageKind.ECU:
            return f"ECU lane {lane.target.name} is not an ECU image"
        if lane.phase not in allowed:
            return f"ECU {lane.ecu_id} is {lane.phase}, which does not fit step {c.step}"
        if (lane.phase is LanePhase.PLANNED) != (lane.download is None) or lane.download == "":
            return f"ECU {lane.ecu_id}: download {_short(lane.download)} does not fit {lane.phase}"
        if lane.phase in _ABORTED_PHASES and c.abort is None:
            return f"ECU {lane.ecu_id} is {lane.phase} but the campaign is not rolling back"
    if c.abort is not None:
        if c.step not in {Step.INSTALLING, Step.ACTIVATING, Step.FAILED, Step.ROLLED_BACK}:
            return f"step {c.step} cannot be rolling back"
        if not c.abort.reason or c.abort.code not in ErrorCode.__members__.values():
            return "abort has no reason or an unknown code"
    return None


def encode_campaign(c: Campaign) -> bytes:
    """The state file's bytes (indented JSON, for people who read it on a bench)."""
    document = {
        "format": FORMAT,
        "campaign_id": c.campaign_id,
        "correlation_id": c.correlation_id,
        "step": str(c.step),
        "requested": None if c.requested is None else list(c.requested),
        "deadline": None if c.deadline is None else format_deadline(c.deadline),
        "target": None if c.target is None else _target_json(c.target),
        "ecus": [
            {
                "target": _target_json(lane.target),
                "phase": str(lane.phase),
                "download": lane.download,
            }
            for lane in c.ecus
        ],
        "abort": None if c.abort is None else {"code": str(c.abort.code), "reason": c.abort.reason},
        "download": c.download,
        "install_attempts": c.install_attempts,
        "error_code": c.error_code,
        "detail": c.detail,
        "outbox": [_event_json(e) for e in c.outbox],
    }
    return (json.dumps(document, indent=2, ensure_ascii=False) + "\n").encode()


def parse_campaign(data: bytes, *, source: str) -> Campaign:
    """The campaign in *data* (read from *source*); :class:`CampaignStateError` naming the key.

    Accepts any bytes; what it returns satisfies :func:`campaign_problem`.
    """
    try:
        doc = _load_json(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CampaignStateError(source, None, f"is not UTF-8 ({e.reason})") from None
    except RecursionError:
        raise CampaignStateError(source, None, "is nested too deeply") from None
    except ValueError as e:
        raise CampaignStateError(source, None, f"is not valid JSON ({e})") from None
    r = _Reader(source)
    if not isinstance(doc, dict):
        r.fail(None, "is not a JSON object")
    version = doc.get("format")
    if version not in _FORMATS or isinstance(version, bool):
        r.fail("format", f"{_short(version)} is not {FORMAT}: another tbox version")
    step_name = r.get(doc, "step", str)
    if step_name not in Step.__members__.values():
        r.fail("step", f"{_short(step_name)} is none of {', '.join(Step)}")
    requested = r.get(doc, "requested", list | None)
    if requested is not None and not all(isinstance(n, str) for n in requested):
        r.fail("requested", "is not a list of names")
    deadline_text = r.get(doc, "deadline", str | None)
    deadline = None
    if deadline_text is not None:
        try:
            deadline = _parse_deadline(deadline_text)
        except ValueError as e:
            r.fail("deadline", str(e))
    target_doc = r.get(doc, "target", dict | None)
    if version == 1:
        r.get(doc, "skipped", list)  # ECU images reported unsupported then: nothing to carry on
        lanes: tuple[EcuLane, ...] = ()
        abort = None
    else:
        lanes = tuple(r.lane(d, f"ecus[{i}]") for i, d in enumerate(r.get(doc, "ecus", list)))
        abort = r.abort(r.get(doc, "abort", dict | None))
    outbox_doc = r.get(doc, "outbox", list)
    campaign = Campaign(
        campaign_id=r.get(doc, "campaign_id", str),
        correlation_id=r.get(doc, "correlation_id", str),
        step=Step(step_name),
        requested=None if requested is None else tuple(requested),
        deadline=deadline,
        target=None if target_doc is None else r.target(target_doc, "target"),
        ecus=lanes,
        download=r.get(doc, "download", str | None),
        install_attempts=r.get(doc, "install_attempts", int),
        error_code=r.get(doc, "error_code", str),
        detail=r.get(doc, "detail", str),
        outbox=tuple(r.event(e, f"outbox[{i}]") for i, e in enumerate(outbox_doc)),
        abort=abort,
    )
    problem = campaign_problem(campaign)
    if problem is not None:
        r.fail(None, f"is inconsistent: {problem}")
    return campaign


def _target_json(t: TargetRef) -> dict[str, Any]:
    return {
        "name": t.name,
        "sha256": t.sha256,
        "length": t.length,
        "release_counter": t.release_counter,
        "image_kind": str(t.image_kind),
        "ecu_id": t.ecu_id,
    }


def _event_json(e: StatusEvent) -> dict[str, Any]:
    return {
        "sequence": e.sequence,
        "state": str(e.state),
        "time_us": e.time_us,
        "target": e.target,
        "detail": e.detail,
        "error_code": e.error_code,
        "bytes_done": e.bytes_done,
        "bytes_total": e.bytes_total,
    }


class _Reader:
    """Reads typed fields out of the state file's objects, failing with the dotted key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str | None, problem: str) -> NoReturn:
        raise CampaignStateError(self.source, key, problem)

    def get(self, doc: Mapping[str, Any], key: str, kind: Any, where: str = "") -> Any:
        path = f"{where}.{key}" if where else key
        if key not in doc:
            self.fail(path, "is missing")
        value = doc[key]
        # bool is an int to Python, never to this file
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            self.fail(path, f"{_short(value)} has the wrong type")
        return value

    def target(self, doc: object, where: str) -> TargetRef:
        if not isinstance(doc, dict):
            self.fail(where, "is not an object")
        kind = self.get(doc, "image_kind", str, where)
        if kind not in ImageKind.__members__.values():
            self.fail(f"{where}.image_kind", f"{_short(kind)} is not 'tbox' or 'ecu'")
        ref = TargetRef(
            self.get(doc, "name", str, where),
            self.get(doc, "sha256", str, where),
            self.get(doc, "length", int, where),
            self.get(doc, "release_counter", int, where),
            ImageKind(kind),
            self.get(doc, "ecu_id", str | None, where),
        )
        problem = _target_problem(ref)
        if problem is not None:
            self.fail(where, problem)
        return ref

    def lane(self, doc: object, where: str) -> EcuLane:
        if not isinstance(doc, dict):
            self.fail(where, "is not an object")
        phase = self.get(doc, "phase", str, where)
        if phase not in LanePhase.__members__.values():
            self.fail(f"{where}.phase", f"{_short(phase)} is none of {', '.join(LanePhase)}")
        return EcuLane(
            self.target(self.get(doc, "target", dict, where), f"{where}.target"),
            LanePhase(phase),
            self.get(doc, "download", str | None, where),
        )

    def abort(self, doc: dict[str, Any] | None) -> Abort | None:
        if doc is None:
            return None
        code = self.get(doc, "code", str, "abort")
        if code not in ErrorCode.__members__.values():
            self.fail("abort.code", f"{_short(code)} is not an error code")
        return Abort(ErrorCode(code), self.get(doc, "reason", str, "abort"))

    def event(self, doc: object, where: str) -> StatusEvent:
        if not isinstance(doc, dict):
            self.fail(where, "is not an object")
        state = self.get(doc, "state", str, where)
        if state not in Step.__members__.values():
            self.fail(f"{where}.state", f"{_short(state)} is none of {', '.join(Step)}")
        event = StatusEvent(
            Step(state),
            self.get(doc, "time_us", int, where),
            self.get(doc, "detail", str, where),
            self.get(doc, "error_code", str, where),
            self.get(doc, "target", str, where),
            self.get(doc, "bytes_done", int, where),
            self.get(doc, "bytes_total", int, where),
            self.get(doc, "sequence", int, where),
        )
        fields = (event.time_us, event.bytes_done, event.bytes_total, event.sequence)
        # protobuf's int64/uint64 must hold them; a sequence of 0 was never numbered
        if not all(0 <= n < 2**63 for n in fields) or event.sequence == 0:
            self.fail(where, "holds a number out of range (or an unnumbered event)")
        return event

"""The simulated ECU's UDS server, as pure decisions: state + request bytes → response + state.

:meth:`UdsServer.handle` takes the volatile :class:`ServerState` (session, security, download in
progress, timers), the request payload, the time and the persisted flash metadata, and returns a
:class:`Decision`: the new state, the response bytes, and at most one persistence
:class:`Effect` (erase, write a block, check, invalidate a bank, write the fingerprint, clear
DTCs) that the driver (:mod:`firmware_stub.ecu`) performs *before* sending the response, so that
an acknowledgement always means "persisted". Nothing here touches a file, a bus or a clock;
requests and responses are built with udsoncan's ``Request``/``Response`` classes and its NRC
constants.

Negative responses follow the order of ISO 14229-1:2013 figure 5: service supported (0x11), in
the active session (0x7F), service-level security (0x33, for RequestDownload, TransferData and
RequestTransferExit), sub-function present (0x13), supported (0x12), supported in the active
session (0x7E), then each service's own checks (length 0x13, range 0x31, security 0x33, sequence
0x24, conditions 0x22, block counter 0x73). Services and sessions:

=====================================  ===========================  =============================
service                                sessions                     notes
=====================================  ===========================  =============================
0x10 DiagnosticSessionControl          all                          01 default, 02 programming
                                                                    (from extended or itself),
                                                                    03 extended (not from
                                                                    programming: 0x7E)
0x11 ECUReset                          all                          01 hard, 02 key off/on, 03 soft
0x14 ClearDiagnosticInformation        default, extended            group FFFFFF or one DTC
0x19 ReadDTCInformation                default, extended            01, 02 (status mask), 0A
0x22 ReadDataByIdentifier              all                          DIDs of ota.ecu_flash.Did
0x27 SecurityAccess                    extended, programming        level L (seed) / L+1 (key)
0x28 CommunicationControl              extended, programming        00–03; type 1–3
0x2E WriteDataByIdentifier             extended, programming        F184 fingerprint (security)
0x31 RoutineControl                    extended, programming        start FF00 / FF01 / FF02
                                                                    in programming (security)
0x34 RequestDownload                   programming (security)       address = offset in image
0x36 TransferData                      programming (security)       counter 1…FF, 00, 01…
0x37 RequestTransferExit               programming (security)
0x3E TesterPresent                     all                          00
0x85 ControlDTCSetting                 extended, programming        01 on, 02 off
=====================================  ===========================  =============================

S3: a non-default session falls back to default after ``s3_s`` seconds without a request
(checked when the next request arrives, which is when anyone can observe it). Entering another
session relocks security and drops a download in progress; re-entering the same one drops the
download and keeps security. Failed key attempts and the lockout survive ECUReset (a reset is no
way around the delay); a power cut loses them.

Routines (profile: :class:`ota.ecu_flash.Routine`): FF00 erases the inactive bank, FF01 checks
the complete download and answers its :class:`~ota.ecu_flash.CheckStatus`, FF02 (invalidate
image, a rollback) takes the SHA-256 of an image (32 bytes, else 0x13) and answers an
:class:`~ota.ecu_flash.InvalidateStatus`: the bank holding it valid becomes invalid (the effect
re-verifies the other bank first and :meth:`UdsServer.complete` answers conditionsNotCorrect
0x22 if it fails), already invalid or not held at all answers at once, and no valid image of
another SHA-256 in the other bank is 0x22 at once: the ECU would have nothing to boot. While the
running bank is invalidated (until the next reset) FF00 answers 0x22: the other bank is the only
valid one. A download in progress makes FF00 and FF02 answer 0x22, FF01 0x24.

A repeated TransferData with the counter of the last acknowledged block is acknowledged again
without writing (its first response was lost); a RequestDownload repeated before any block keeps
the same download. A RequestDownload at an address other than 0 resumes an interrupted download
where the bank's persisted progress says it stopped (see :mod:`ota.ecu_flash`, "Resume").
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from udsoncan.BaseService import BaseService
from udsoncan.Request import Request
from udsoncan.Response import Response
from udsoncan.ResponseCode import ResponseCode as Nrc
from udsoncan.services.ClearDiagnosticInformation import ClearDiagnosticInformation
from udsoncan.services.CommunicationControl import CommunicationControl
from udsoncan.services.ControlDTCSetting import ControlDTCSetting
from udsoncan.services.DiagnosticSessionControl import DiagnosticSessionControl
from udsoncan.services.ECUReset import ECUReset
from udsoncan.services.ReadDataByIdentifier import ReadDataByIdentifier
from udsoncan.services.ReadDTCInformation import ReadDTCInformation
from udsoncan.services.RequestDownload import RequestDownload
from udsoncan.services.RequestTransferExit import RequestTransferExit
from udsoncan.services.RoutineControl import RoutineControl
from udsoncan.services.SecurityAccess import SecurityAccess
from udsoncan.services.TesterPresent import TesterPresent
from udsoncan.services.TransferData import TransferData
from udsoncan.services.WriteDataByIdentifier import WriteDataByIdentifier

from firmware_stub.flash import (
    DTC_BOOT_VERIFICATION,
    DTC_CHECK_FAILED,
    DTC_START_FAILED,
    FlashMeta,
)
from ota.ecu_flash import (
    DEFAULT_SECRET,
    DEFAULT_SECURITY_LEVEL,
    FINGERPRINT_LENGTH,
    HARDWARE_ID_LENGTH,
    INVALIDATE_RECORD_LENGTH,
    KEY_LENGTH,
    SEED_LENGTH,
    VIN_LENGTH,
    ActiveImage,
    BankState,
    BankSummary,
    CheckStatus,
    Did,
    DownloadStatus,
    InvalidateStatus,
    Routine,
    SeedKeyAlgorithm,
    compute_key,
)

__all__ = [
    "DTC_STATUS",
    "SUPPORTED_DTCS",
    "CheckBank",
    "ClearDtcs",
    "Decision",
    "Download",
    "Effect",
    "EraseBank",
    "InvalidateBank",
    "ServerConfig",
    "ServerState",
    "Session",
    "UdsServer",
    "WriteBlock",
    "WriteFingerprint",
]

#: Status of a stored DTC: testFailed | confirmedDTC; also the availability mask.
DTC_STATUS: Final = 0x09
SUPPORTED_DTCS: Final = (DTC_CHECK_FAILED, DTC_BOOT_VERIFICATION, DTC_START_FAILED)
_ALL_GROUPS: Final = 0xFFFFFF
_DTC_FORMAT_ISO14229: Final = 0x01
_SPRMIB: Final = 0x80
_PENDING: Final = Nrc.RequestCorrectlyReceived_ResponsePending


class Session(IntEnum):
    """Diagnostic sessions (DiagnosticSessionControl sub-functions)."""

    DEFAULT = 0x01
    PROGRAMMING = 0x02
    EXTENDED = 0x03


_ALL = frozenset(Session)
_NON_DEFAULT = frozenset({Session.EXTENDED, Session.PROGRAMMING})
_PROGRAMMING = frozenset({Session.PROGRAMMING})
_DIAGNOSTIC = frozenset({Session.DEFAULT, Session.EXTENDED})
_ROUTINES = frozenset(Routine)
#: Bank states that hold (or held) a checked image with a version and a SHA-256.
_HOLDING = frozenset({BankState.VALID, BankState.INVALID})


@dataclass(frozen=True, slots=True)
class Download:
    """A download in progress: into *bank*, image *length* bytes, next byte *offset*, next block
    counter *counter*; *last_counter* is the counter of the last block acknowledged."""

    bank: int
    address: int
    length: int
    offset: int
    counter: int
    max_block: int
    last_counter: int | None = None


@dataclass(frozen=True, slots=True)
class ServerState:
    """The volatile state of one ECU's UDS server (lost on a power cut)."""

    session: Session = Session.DEFAULT
    unlocked: bool = False
    seed: bytes | None = None
    failed_attempts: int = 0
    locked_until: float = 0.0
    last_request: float = 0.0
    download: Download | None = None
    communication: int = 0x00  # CommunicationControl sub-function in force
    dtc_setting_on: bool = True


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """How one simulated ECU behaves (identity, security, timing, limits)."""

    hardware_id: str
    vin: str = "TBOXSIM0000000001"
    secret: bytes = DEFAULT_SECRET
    algorithm: SeedKeyAlgorithm = SeedKeyAlgorithm.HMAC_SHA256
    security_level: int = DEFAULT_SECURITY_LEVEL
    max_attempts: int = 3
    lockout_s: float = 10.0
    s3_s: float = 5.0
    max_block_length: int = 4095
    p2_ms: int = 50
    p2_star_ms: int = 5000
    max_response: int = 4095
    entropy: Callable[[int], bytes] = field(default=os.urandom, compare=False)


# --- effects -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EraseBank:
    """Erase *bank* (slow: the driver answers response pending first)."""

    bank: int


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """Store a TransferData block and record the bank's progress."""

    bank: int
    offset: int
    data: bytes
    length: int


@dataclass(frozen=True, slots=True)
class CheckBank:
    """Check the complete download in *bank* (slow); the response carries the verdict."""

    bank: int
    record_dtc: bool


@dataclass(frozen=True, slots=True)
class InvalidateBank:
    """Mark valid *bank* invalid (a rollback) if the other bank still verifies (slow: it is read
    back); the response is :meth:`UdsServer.complete`'s."""

    bank: int


@dataclass(frozen=True, slots=True)
class WriteFingerprint:
    """Persist a new fingerprint."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ClearDtcs:
    """Clear one stored DTC (or all: ``None``)."""

    code: int | None


Effect = EraseBank | WriteBlock | CheckBank | InvalidateBank | WriteFingerprint | ClearDtcs


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one request.

    Perform *effect* (if any; after answering NRC 0x78 first when *pending*), then send
    *response* (``None``: nothing, e.g. a suppressed positive response), then reset the ECU if
    *reset*. For :class:`CheckBank` and :class:`InvalidateBank` the response is
    :meth:`UdsServer.complete`'s.
    """

    state: ServerState
    response: bytes | None
    sid: int = 0
    effect: Effect | None = None
    pending: bool = False
    reset: bool = False
    suppressed: bool = False


def _negative(service: type[BaseService] | None, sid: int, code: int) -> bytes:
    if service is None:
        return bytes((0x7F, sid, code))
    return Response(service, code=code).get_payload()


def _positive(service: type[BaseService], data: bytes = b"") -> bytes:
    return Response(service, code=Nrc.PositiveResponse, data=data).get_payload()


class _Refused(Exception):  # noqa: N818 - control flow inside the server, never escapes
    def __init__(self, code: int) -> None:
        self.code = code


@dataclass(frozen=True, slots=True)
class _Service:
    handler: Callable[[UdsServer, ServerState, Request, bytes, float, FlashMeta], Decision]
    sessions: frozenset[Session]
    secured: bool = False  # service-level security (ISO figure 5, step 3)
    # Sub-function → sessions it is supported in (None: the service has no sub-function).
    subfunctions: Mapping[int, frozenset[Session]] | None = None


class UdsServer:
    """The decisions of one ECU's UDS server (see the module docstring)."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        level = config.security_level
        if level % 2 != 1 or not 0 < level < 0x7F:
            raise ValueError(f"security level {level} must be odd, 1 … 0x7D")
        self._services: dict[int, _Service] = {
            0x10: _Service(
                UdsServer._session_control,
                _ALL,
                subfunctions={
                    Session.DEFAULT: _ALL,
                    Session.PROGRAMMING: _NON_DEFAULT,
                    Session.EXTENDED: frozenset({Session.DEFAULT, Session.EXTENDED}),
                },
            ),
            0x11: _Service(UdsServer._ecu_reset, _ALL, subfunctions=dict.fromkeys((1, 2, 3), _ALL)),
            0x14: _Service(UdsServer._clear_dtcs, _DIAGNOSTIC),
            0x19: _Service(
                UdsServer._read_dtcs, _DIAGNOSTIC, subfunctions=dict.fromkeys((1, 2, 0x0A), _ALL)
            ),
            0x22: _Service(UdsServer._read_dids, _ALL),
            0x27: _Service(
                UdsServer._security_access,
                _NON_DEFAULT,
                subfunctions=dict.fromkeys((level, level + 1), _ALL),
            ),
            0x28: _Service(
                UdsServer._communication_control,
                _NON_DEFAULT,
                subfunctions=dict.fromkeys(range(4), _ALL),
            ),
            0x2E: _Service(UdsServer._write_did, _NON_DEFAULT),
            0x31: _Service(UdsServer._routine_control, _NON_DEFAULT, subfunctions={1: _ALL}),
            0x34: _Service(UdsServer._request_download, _PROGRAMMING, secured=True),
            0x36: _Service(UdsServer._transfer_data, _PROGRAMMING, secured=True),
            0x37: _Service(UdsServer._transfer_exit, _PROGRAMMING, secured=True),
            0x3E: _Service(UdsServer._tester_present, _ALL, subfunctions={0: _ALL}),
            0x85: _Service(
                UdsServer._dtc_setting, _NON_DEFAULT, subfunctions=dict.fromkeys((1, 2), _ALL)
            ),
        }

    @property
    def supported_services(self) -> frozenset[int]:
        """The service ids this server implements."""
        return frozenset(self._services)

    # --- entry points --------------------------------------------------------------------------

    def initial_state(self, now: float, previous: ServerState | None = None) -> ServerState:
        """The state after power-on (*previous* None) or after an ECUReset (keeps the security
        attempt counter and lockout of *previous*)."""
        if previous is None:
            return ServerState(last_request=now)
        return ServerState(
            last_request=now,
            failed_attempts=previous.failed_attempts,
            locked_until=previous.locked_until,
        )

    def handle(self, state: ServerState, payload: bytes, now: float, flash: FlashMeta) -> Decision:
        """Decide about one request (never raises for any *payload*)."""
        state = self.expire(state, now)
        if not payload:
            return Decision(state, None)
        sid = payload[0]
        request = Request.from_payload(payload)
        entry = self._services.get(sid)
        if entry is None or request.service is None:
            return self._done(
                state, now, _negative(request.service, sid, Nrc.ServiceNotSupported), sid
            )
        service = request.service
        if state.session not in entry.sessions:
            code = Nrc.ServiceNotSupportedInActiveSession
            return self._done(state, now, _negative(service, sid, code), sid)
        if entry.secured and not state.unlocked:
            return self._done(state, now, _negative(service, sid, Nrc.SecurityAccessDenied), sid)
        suppress = False
        if entry.subfunctions is not None:
            if len(payload) < 2:
                code = Nrc.IncorrectMessageLengthOrInvalidFormat
                return self._done(state, now, _negative(service, sid, code), sid)
            sub = payload[1] & 0x7F
            suppress = bool(payload[1] & _SPRMIB)
            if service is ReadDTCInformation and suppress:
                sub = payload[1]  # this service has no suppress bit: 0x82 is not 0x02
            sessions = entry.subfunctions.get(sub)
            if sessions is None:
                code = Nrc.SubFunctionNotSupported
                return self._done(state, now, _negative(service, sid, code), sid)
            if state.session not in sessions:
                code = Nrc.SubFunctionNotSupportedInActiveSession
                return self._done(state, now, _negative(service, sid, code), sid)
        try:
            decision = entry.handler(self, state, request, payload, now, flash)
        except _Refused as refused:
            return self._done(state, now, _negative(service, sid, refused.code), sid)
        decision = replace(decision, sid=sid)
        positive = decision.response is not None and decision.response[0] != 0x7F
        if suppress and positive and not decision.pending:
            # Once response pending goes out the final response must follow (ISO 14229-1), so a
            # slow step is always answered.
            decision = replace(decision, response=None, suppressed=True)
        if decision.effect is None:
            decision = replace(decision, state=replace(decision.state, last_request=now))
        return decision

    def complete(
        self, decision: Decision, result: CheckStatus | bool | None, now: float
    ) -> Decision:
        """The decision once its effect succeeded (*result*: the check's verdict, or whether the
        invalidation was done); restarts S3."""
        state = replace(decision.state, last_request=now)
        if isinstance(decision.effect, CheckBank):
            assert isinstance(result, CheckStatus)
            data = bytes((0x01, *Routine.CHECK_PROGRAMMING_DEPENDENCIES.to_bytes(2), result))
            return replace(decision, state=state, response=_positive(RoutineControl, data))
        if isinstance(decision.effect, InvalidateBank):
            if not result:  # the other bank does not verify: nothing would boot
                response = _negative(RoutineControl, 0x31, Nrc.ConditionsNotCorrect)
            else:
                status = InvalidateStatus.INVALIDATED
                data = bytes((0x01, *Routine.INVALIDATE_IMAGE.to_bytes(2), status))
                response = _positive(RoutineControl, data)
            return replace(decision, state=state, response=response)
        return replace(decision, state=state)

    def failed(self, decision: Decision, now: float) -> Decision:
        """The decision when its effect failed (the file system): NRC 0x72, download aborted."""
        service = Request.from_payload(bytes((decision.sid,))).service
        state = replace(decision.state, download=None, last_request=now)
        code = Nrc.GeneralProgrammingFailure
        return replace(decision, state=state, response=_negative(service, decision.sid, code))

    def expire(self, state: ServerState, now: float) -> ServerState:
        """*state* after the S3 timer: back to the default session when it ran out."""
        if state.session is not Session.DEFAULT and now - state.last_request > self.config.s3_s:
            return self._enter(state, Session.DEFAULT)
        return state

    @staticmethod
    def pending_response(sid: int) -> bytes:
        """NRC 0x78 (request correctly received, response pending) for service *sid*."""
        return bytes((0x7F, sid, _PENDING))

    # --- helpers -------------------------------------------------------------------------------

    def _done(self, state: ServerState, now: float, response: bytes, sid: int) -> Decision:
        return Decision(replace(state, last_request=now), response, sid=sid)

    def _enter(self, state: ServerState, session: Session) -> ServerState:
        same = session is state.session
        default = session is Session.DEFAULT
        return replace(
            state,
            session=session,
            unlocked=state.unlocked and same,
            seed=None if not same else state.seed,
            download=None,
            communication=0x00 if default else state.communication,
            dtc_setting_on=True if default else state.dtc_setting_on,
        )

    @staticmethod
    def _require(condition: bool, code: int) -> None:
        if not condition:
            raise _Refused(code)

    # --- services ------------------------------------------------------------------------------

    def _session_control(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) == 2, Nrc.IncorrectMessageLengthOrInvalidFormat)
        session = Session(payload[1] & 0x7F)
        config = self.config
        timing = config.p2_ms.to_bytes(2) + (config.p2_star_ms // 10).to_bytes(2)
        data = bytes((session,)) + timing
        return Decision(self._enter(state, session), _positive(DiagnosticSessionControl, data))

    def _ecu_reset(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) == 2, Nrc.IncorrectMessageLengthOrInvalidFormat)
        data = bytes((payload[1] & 0x7F,))
        return Decision(state, _positive(ECUReset, data), reset=True)

    def _tester_present(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) == 2, Nrc.IncorrectMessageLengthOrInvalidFormat)
        return Decision(state, _positive(TesterPresent, b"\x00"))

    def _communication_control(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) == 3, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(payload[2] & 0x03 != 0, Nrc.RequestOutOfRange)
        sub = payload[1] & 0x7F
        return Decision(
            replace(state, communication=sub),
            _positive(CommunicationControl, bytes((sub,))),
        )

    def _dtc_setting(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) in (2, 5), Nrc.IncorrectMessageLengthOrInvalidFormat)
        sub = payload[1] & 0x7F
        new = replace(state, dtc_setting_on=sub == 0x01)
        return Decision(new, _positive(ControlDTCSetting, bytes((sub,))))

    def _security_access(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        config = self.config
        sub = payload[1] & 0x7F
        if sub == config.security_level:  # requestSeed
            self._require(len(payload) == 2, Nrc.IncorrectMessageLengthOrInvalidFormat)
            self._require(now >= state.locked_until, Nrc.RequiredTimeDelayNotExpired)
            if state.unlocked:
                seed = bytes(SEED_LENGTH)  # ISO 14229-1: already unlocked → a zero seed
                new = replace(state, seed=None)
            else:
                seed = bytes(config.entropy(SEED_LENGTH))
                new = replace(state, seed=seed)
            return Decision(new, _positive(SecurityAccess, bytes((sub,)) + seed))
        # sendKey
        self._require(len(payload) == 2 + KEY_LENGTH, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(state.seed is not None, Nrc.RequestSequenceError)
        assert state.seed is not None
        expected = compute_key(config.algorithm, config.secret, state.seed)
        if hmac.compare_digest(expected, payload[2:]):
            new = replace(state, unlocked=True, seed=None, failed_attempts=0)
            return Decision(new, _positive(SecurityAccess, bytes((sub,))))
        attempts = state.failed_attempts + 1
        if attempts >= config.max_attempts:
            new = replace(state, seed=None, failed_attempts=0, locked_until=now + config.lockout_s)
            code = Nrc.ExceedNumberOfAttempts
        else:
            new = replace(state, seed=None, failed_attempts=attempts)
            code = Nrc.InvalidKey
        return Decision(new, _negative(SecurityAccess, 0x27, code))

    def _read_dids(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(
            len(payload) >= 3 and len(payload) % 2 == 1, Nrc.IncorrectMessageLengthOrInvalidFormat
        )
        out = bytearray()
        for i in range(1, len(payload), 2):
            did = int.from_bytes(payload[i : i + 2])
            value = self._did_value(did, state, flash)
            if value is not None:
                out += payload[i : i + 2] + value
        self._require(bool(out), Nrc.RequestOutOfRange)
        self._require(len(out) + 1 <= self.config.max_response, Nrc.ResponseTooLong)
        return Decision(state, _positive(ReadDataByIdentifier, bytes(out)))

    def _did_value(self, did: int, state: ServerState, flash: FlashMeta) -> bytes | None:
        active = flash.active_record
        if did == Did.ACTIVE_SESSION:
            return bytes((state.session,))
        if did == Did.SOFTWARE_VERSION:
            return (0 if active is None else active.version).to_bytes(8)
        if did == Did.FINGERPRINT:
            return flash.fingerprint
        if did == Did.VIN:
            return self.config.vin.encode("ascii", "replace")[:VIN_LENGTH].ljust(VIN_LENGTH)
        if did == Did.HARDWARE_ID:
            hardware = self.config.hardware_id.encode("ascii", "replace")
            return hardware[:HARDWARE_ID_LENGTH].ljust(HARDWARE_ID_LENGTH, b"\x00")
        if did == Did.ACTIVE_IMAGE:
            if active is None:
                return ActiveImage(None, 0, bytes(32)).encode()
            return ActiveImage(flash.active, active.version, active.sha256).encode()
        if did == Did.DOWNLOAD_STATUS:
            target = flash.target
            record = flash.banks[target]
            valid = record.state is BankState.VALID
            return DownloadStatus(
                bank=target,
                state=record.state,
                length=record.length,
                written=record.written,
                crc32=record.crc32,
                version=record.version if valid else 0,
                sha256=record.sha256 if valid else bytes(32),
            ).encode()
        if did == Did.BANKS:
            pair = tuple(
                BankSummary(b.state, b.version if b.state in _HOLDING else 0) for b in flash.banks
            )
            return BankSummary.encode_pair((pair[0], pair[1]))
        return None

    def _write_did(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) >= 4, Nrc.IncorrectMessageLengthOrInvalidFormat)
        did = int.from_bytes(payload[1:3])
        self._require(did == Did.FINGERPRINT, Nrc.RequestOutOfRange)
        value = payload[3:]
        self._require(len(value) == FINGERPRINT_LENGTH, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(state.unlocked, Nrc.SecurityAccessDenied)
        self._require(state.download is None, Nrc.ConditionsNotCorrect)
        return Decision(
            state,
            _positive(WriteDataByIdentifier, payload[1:3]),
            effect=WriteFingerprint(value),
        )

    def _routine_control(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) >= 4, Nrc.IncorrectMessageLengthOrInvalidFormat)
        rid = int.from_bytes(payload[2:4])
        self._require(
            rid in _ROUTINES and state.session is Session.PROGRAMMING, Nrc.RequestOutOfRange
        )
        self._require(state.unlocked, Nrc.SecurityAccessDenied)
        record = payload[4:]
        target = flash.target
        if rid == Routine.INVALIDATE_IMAGE:
            return self._invalidate(state, record, flash)
        if rid == Routine.ERASE_MEMORY:
            if record:
                self._check_erase_record(record, flash)
            self._require(state.download is None, Nrc.ConditionsNotCorrect)
            running = flash.active_record
            # A running bank invalidated by a rollback: the target is the only valid bank.
            self._require(
                running is None or running.state is BankState.VALID, Nrc.ConditionsNotCorrect
            )
            data = bytes((0x01, *payload[2:4], CheckStatus.OK))
            return Decision(
                state,
                _positive(RoutineControl, data),
                effect=EraseBank(target),
                pending=True,
            )
        self._require(not record, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(state.download is None, Nrc.RequestSequenceError)
        bank = flash.banks[target]
        if bank.state is BankState.VALID:
            # Checked already (the tester lost our answer): the verdict stands.
            data = bytes((0x01, *payload[2:4], CheckStatus.OK))
            return Decision(state, _positive(RoutineControl, data))
        complete = bank.state is BankState.WRITING and bank.written == bank.length
        self._require(complete, Nrc.RequestSequenceError)
        return Decision(
            state,
            None,
            effect=CheckBank(target, record_dtc=state.dtc_setting_on),
            pending=True,
        )

    def _invalidate(self, state: ServerState, record: bytes, flash: FlashMeta) -> Decision:
        """RoutineControl start FF02: give up the image whose SHA-256 is *record* (a rollback)."""
        self._require(
            len(record) == INVALIDATE_RECORD_LENGTH, Nrc.IncorrectMessageLengthOrInvalidFormat
        )
        self._require(state.download is None, Nrc.ConditionsNotCorrect)
        holding = [
            i for i, b in enumerate(flash.banks) if b.state in _HOLDING and b.sha256 == record
        ]
        valid = [i for i in holding if flash.banks[i].state is BankState.VALID]
        if not valid:
            status = InvalidateStatus.INVALIDATED if holding else InvalidateStatus.NOT_HELD
            data = bytes((0x01, *Routine.INVALIDATE_IMAGE.to_bytes(2), status))
            return Decision(state, _positive(RoutineControl, data))
        bank = valid[0]
        fallback = flash.banks[1 - bank]
        self._require(
            fallback.state is BankState.VALID and fallback.sha256 != record,
            Nrc.ConditionsNotCorrect,
        )
        return Decision(state, None, effect=InvalidateBank(bank), pending=True)

    def _check_erase_record(self, record: bytes, flash: FlashMeta) -> None:
        # addressAndLengthFormatIdentifier, memoryAddress, memorySize (ISO 14229-1 Annex F):
        # only the whole application area (address 0) can be erased.
        size_len, addr_len = record[0] >> 4, record[0] & 0x0F
        self._require(1 <= size_len <= 4 and 1 <= addr_len <= 4, Nrc.RequestOutOfRange)
        self._require(
            len(record) == 1 + size_len + addr_len, Nrc.IncorrectMessageLengthOrInvalidFormat
        )
        address = int.from_bytes(record[1 : 1 + addr_len])
        size = int.from_bytes(record[1 + addr_len :])
        self._require(address == 0 and 0 < size <= flash.bank_size, Nrc.RequestOutOfRange)

    def _request_download(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) >= 3, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(payload[1] == 0x00, Nrc.RequestOutOfRange)  # no compression/encryption
        size_len, addr_len = payload[2] >> 4, payload[2] & 0x0F
        self._require(1 <= size_len <= 4 and 1 <= addr_len <= 4, Nrc.RequestOutOfRange)
        self._require(
            len(payload) == 3 + addr_len + size_len, Nrc.IncorrectMessageLengthOrInvalidFormat
        )
        address = int.from_bytes(payload[3 : 3 + addr_len])
        size = int.from_bytes(payload[3 + addr_len :])
        current = state.download
        if current is not None:
            same = (current.address, current.length - current.address) == (address, size)
            self._require(same and current.last_counter is None, Nrc.ConditionsNotCorrect)
            return Decision(state, self._download_response())
        end = address + size
        self._require(size > 0 and end <= flash.bank_size, Nrc.RequestOutOfRange)
        target = flash.target
        bank = flash.banks[target]
        if address == 0:
            self._require(bank.state is BankState.ERASED, Nrc.ConditionsNotCorrect)
        else:
            resumable = (
                bank.state is BankState.WRITING and bank.length == end and bank.written == address
            )
            self._require(resumable, Nrc.RequestOutOfRange)
        download = Download(
            bank=target,
            address=address,
            length=end,
            offset=address,
            counter=1,
            max_block=self.config.max_block_length,
        )
        return Decision(replace(state, download=download), self._download_response())

    def _download_response(self) -> bytes:
        length = self.config.max_block_length
        width = max(1, (length.bit_length() + 7) // 8)
        return _positive(RequestDownload, bytes((width << 4,)) + length.to_bytes(width))

    def _transfer_data(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) >= 3, Nrc.IncorrectMessageLengthOrInvalidFormat)
        download = state.download
        self._require(download is not None, Nrc.RequestSequenceError)
        assert download is not None
        counter = payload[1]
        echo = _positive(TransferData, bytes((counter,)))
        if counter == download.last_counter and counter != download.counter:
            return Decision(state, echo)  # a repeat of the last block: already stored
        self._require(counter == download.counter, Nrc.WrongBlockSequenceCounter)
        data = payload[2:]
        self._require(len(payload) <= download.max_block, Nrc.IncorrectMessageLengthOrInvalidFormat)
        self._require(download.offset + len(data) <= download.length, Nrc.RequestOutOfRange)
        advanced = replace(
            download,
            offset=download.offset + len(data),
            counter=(counter + 1) & 0xFF,
            last_counter=counter,
        )
        effect = WriteBlock(download.bank, download.offset, bytes(data), download.length)
        return Decision(replace(state, download=advanced), echo, effect=effect)

    def _transfer_exit(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        download = state.download
        self._require(download is not None, Nrc.RequestSequenceError)
        assert download is not None
        self._require(download.offset == download.length, Nrc.RequestSequenceError)
        return Decision(replace(state, download=None), _positive(RequestTransferExit))

    def _read_dtcs(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        sub = payload[1]
        stored = set(flash.dtcs)
        if sub == 0x0A:
            self._require(len(payload) == 2, Nrc.IncorrectMessageLengthOrInvalidFormat)
            records = b"".join(
                code.to_bytes(3) + bytes((DTC_STATUS if code in stored else 0,))
                for code in SUPPORTED_DTCS
            )
            data = bytes((sub, DTC_STATUS)) + records
            return Decision(state, _positive(ReadDTCInformation, data))
        self._require(len(payload) == 3, Nrc.IncorrectMessageLengthOrInvalidFormat)
        mask = payload[2]
        matching = [code for code in flash.dtcs if DTC_STATUS & mask]
        if sub == 0x01:
            data = bytes((sub, DTC_STATUS, _DTC_FORMAT_ISO14229)) + len(matching).to_bytes(2)
        else:
            records = b"".join(code.to_bytes(3) + bytes((DTC_STATUS,)) for code in matching)
            data = bytes((sub, DTC_STATUS)) + records
        return Decision(state, _positive(ReadDTCInformation, data))

    def _clear_dtcs(
        self, state: ServerState, request: Request, payload: bytes, now: float, flash: FlashMeta
    ) -> Decision:
        self._require(len(payload) == 4, Nrc.IncorrectMessageLengthOrInvalidFormat)
        group = int.from_bytes(payload[1:4])
        self._require(group == _ALL_GROUPS or group in SUPPORTED_DTCS, Nrc.RequestOutOfRange)
        effect = ClearDtcs(None if group == _ALL_GROUPS else group)
        return Decision(state, _positive(ClearDiagnosticInformation), effect=effect)

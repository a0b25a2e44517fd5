"""Flashing ECUs over UDS (ISO 14229) on ISO-TP (ISO 15765-2): the tester side.

:class:`EcuFlasher` drives udsoncan's ``Client`` over can-isotp's pure-Python stack on any
python-can bus (a bus URL, contract C7, or an open bus). ``tbox flash`` and the agent's campaigns
use it; ``firmware_stub`` is the ECU it is tested against. Usage::

    flasher = EcuFlasher("socketcand://127.0.0.1:29536/can0", EcuAddress("bms", 0x7E0, 0x7E8),
                         secret=b"…")
    image = EcuImage.load(Path("bms-7.img"))
    result = await flasher.flash(image, progress=print)   # FlashResult
    info = await flasher.read_info()                       # EcuInfo
    await flasher.flash(image, activate=False)              # staged: checked, not booted
    await flasher.activate(image)                           # reset into it, verified
    info = await flasher.roll_back(image)                   # back to the previous image

The programming sequence (one *attempt*)::

    DiagnosticSessionControl default           a clean slate whatever the ECU was doing
    ReadDataByIdentifier FD00, FD02            the active image (done if installed; a reset
                                               first if its bank was invalidated)
    ReadDataByIdentifier F191                  hardware id: refuse a wrong or lower image
                                               before sending it
    ReadDataByIdentifier FD01                  the inactive bank's download status (resume?);
                                               already checked (staged) → straight to the reset
    DiagnosticSessionControl extended
    ControlDTCSetting off, CommunicationControl enableRxAndDisableTx (normal + NM messages)
    DiagnosticSessionControl programming
    SecurityAccess requestSeed / sendKey       key = the configured algorithm over the seed
    WriteDataByIdentifier F184                 fingerprint (fresh downloads only)
    RoutineControl start FF00                  erase the inactive bank (response pending 0x78)
    RequestDownload address=offset size=rest   the ECU answers its maximum block length
    TransferData 1, 2, … 0xFF, 0x00, 1 …       block sequence counter from 1, wrapping to 0
    RequestTransferExit
    RoutineControl start FF01                  check programming dependencies: hash, signature,
                                               hardware id, no downgrade (pending 0x78)
    ECUReset hardReset                         the ECU boots the new bank …
    ReadDataByIdentifier FD00                  … which must now be the active image

Without activation (``flash(image, activate=False)``, *staging*) the attempt ends after the check
with DiagnosticSessionControl default instead of the reset; :meth:`EcuFlasher.activate` later
(any flasher, any process: it keeps no state) resets the ECU and verifies it runs the image —
nothing to do if it does already, :class:`EcuActivationError` without a reset if the inactive
bank holds no checked copy of it. Staging an image the inactive bank holds checked already sends
nothing (``FlashResult.already_staged``).

**Rollback** (:meth:`EcuFlasher.roll_back`, one attempt)::

    DiagnosticSessionControl default
    ReadDataByIdentifier FD00, FD02, FD01      runs the image (a reset first if its bank is
                                               invalidated)? holds it valid in the inactive
                                               bank? neither → nothing to do
    DiagnosticSessionControl extended, programming; SecurityAccess
    RoutineControl start FF02 <SHA-256>        invalidate the bank holding the image (pending
                                               0x78); NRC 0x22: no valid fallback → refused
    ECUReset hardReset                         the ECU boots the other bank …
    ReadDataByIdentifier FD00                  … which must not be the image

**Resume.** The ECU persists, for the bank being written, the declared image length, the bytes
written and acknowledged so far and their CRC-32, and reports them in DID 0xFD01. A new attempt
compares them with the image: same length and the CRC-32 of the image's first *written* bytes →
``RequestDownload`` at address *written* for the rest (the ECU accepts an address other than 0
only where its progress says the bank left off); complete → straight to the check; already
checked (valid, same SHA-256) → straight to the reset; anything else → erase and start over. A
link loss, a power cut or an ECU reset during erase or transfer therefore costs at most the block
in flight. The CRC only detects accidents; what ends up in the bank is verified by the ECU's check
(SHA-256 and Ed25519) before it can ever boot.

**Retries.** A TransferData without response is repeated with the same block counter (the ECU
acknowledges a repeated last block without writing it again) up to ``block_retries`` times; any
other loss of the link or of the ECU's session state (no response, bus errors, NRCs such as
serviceNotSupportedInActiveSession after the ECU rebooted) ends the attempt, and the next one
(up to ``attempts``) waits until the ECU answers again and resumes as above. Refusals (a wrong
key, a failed check, an image that does not fit, a refused rollback) are never retried.
:meth:`EcuFlasher.activate` and :meth:`EcuFlasher.roll_back` retry the same way, each attempt
deciding again from what the ECU reports, so they too finish after a power cut anywhere.

Threads: udsoncan and can-isotp are synchronous and can-isotp runs its own threads; each attempt
runs in one worker thread (``asyncio.to_thread``) and the event loop only awaits it. Cancelling
:meth:`EcuFlasher.flash` stops the worker before its next request (bounded by one request
timeout) and re-raises; the ECU keeps what it acknowledged, so the next call resumes.

This module also holds the **protocol profile** the simulated ECU (``firmware_stub``) implements:
data identifiers, routines (:class:`Routine`: erase 0xFF00, check 0xFF01, invalidate image
0xFF02), the records' layouts, the seed/key algorithms and the ``NAME[:REQID:RESPID]`` ECU
notation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import hmac
import logging
import struct
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Any, Final, TypeVar

import udsoncan
from udsoncan import MemoryLocation
from udsoncan.common.CommunicationType import CommunicationType
from udsoncan.exceptions import (
    InvalidResponseException,
    NegativeResponseException,
    TimeoutException,
    UnexpectedResponseException,
)
from udsoncan.ResponseCode import ResponseCode

from agent.busurl import BusSpec, open_bus, parse_bus_url
from agent.errors import BusError
from ota.ecu_image import EcuImage
from ota.errors import OtaError, OtaUsageError, OtaVerificationError

__all__ = [
    "DEFAULT_SECRET",
    "DEFAULT_SECURITY_LEVEL",
    "DID_LENGTHS",
    "FINGERPRINT_LENGTH",
    "INVALIDATE_RECORD_LENGTH",
    "KEY_LENGTH",
    "NO_BANK",
    "SEED_LENGTH",
    "ActiveImage",
    "BankState",
    "BankSummary",
    "CheckStatus",
    "Did",
    "DownloadPlan",
    "DownloadStatus",
    "EcuActivationError",
    "EcuAddress",
    "EcuCheckFailedError",
    "EcuFlashError",
    "EcuFlasher",
    "EcuInfo",
    "EcuNegativeResponseError",
    "EcuNoResponseError",
    "EcuProtocolError",
    "EcuRollbackError",
    "EcuSecurityError",
    "EcuUsageError",
    "FlashProgress",
    "FlashResult",
    "FlashTiming",
    "InvalidateStatus",
    "Routine",
    "SeedKeyAlgorithm",
    "compute_key",
    "default_fingerprint",
    "nrc_name",
    "parse_ecu_spec",
    "parse_secret",
    "plan_download",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# --- the protocol profile ----------------------------------------------------------------------


class Did(IntEnum):
    """Data identifiers of the profile (ISO 14229-1 Annex C where one fits, 0xFDxx ours)."""

    FINGERPRINT = 0xF184  # applicationSoftwareFingerprintDataIdentifier: 16 bytes, writable
    ACTIVE_SESSION = 0xF186  # ActiveDiagnosticSessionDataIdentifier: 1 byte
    SOFTWARE_VERSION = 0xF189  # the active image's version: 8 bytes, big-endian
    VIN = 0xF190  # 17 ASCII characters
    HARDWARE_ID = 0xF191  # the ECU's hardware id: 32 bytes, ASCII NUL-padded
    ACTIVE_IMAGE = 0xFD00  # ActiveImage record
    DOWNLOAD_STATUS = 0xFD01  # DownloadStatus record of the inactive bank
    BANKS = 0xFD02  # BankSummary of bank 0 and bank 1


FINGERPRINT_LENGTH: Final = 16
VIN_LENGTH: Final = 17
HARDWARE_ID_LENGTH: Final = 32

#: Length of each data identifier's record (every one is fixed-length).
DID_LENGTHS: Final[Mapping[int, int]] = {
    Did.FINGERPRINT: FINGERPRINT_LENGTH,
    Did.ACTIVE_SESSION: 1,
    Did.SOFTWARE_VERSION: 8,
    Did.VIN: VIN_LENGTH,
    Did.HARDWARE_ID: HARDWARE_ID_LENGTH,
    Did.ACTIVE_IMAGE: 41,
    Did.DOWNLOAD_STATUS: 54,
    Did.BANKS: 18,
}


class Routine(IntEnum):
    """Routine identifiers (ISO 14229-1 Annex F: 0xFF00 eraseMemory, 0xFF01
    checkProgrammingDependencies; 0xFF02 is ours).

    All three are started (sub-function 0x01) in the programming session with security access
    unlocked; in the extended session they answer requestOutOfRange (0x31), in the default
    session serviceNotSupportedInActiveSession (0x7F), locked securityAccessDenied (0x33).

    * ``ERASE_MEMORY`` (0xFF00): option record empty, or the whole application area as
      addressAndLengthFormatIdentifier + address 0 + size ≤ bank size; erases the inactive bank
      (response pending 0x78). conditionsNotCorrect (0x22) while a download is in progress, or
      while the running bank is invalidated (the inactive bank is then the only valid one:
      reset first).
    * ``CHECK_PROGRAMMING_DEPENDENCIES`` (0xFF01): no option record; checks the complete
      download (response pending) and answers a :class:`CheckStatus` byte.
    * ``INVALIDATE_IMAGE`` (0xFF02, a rollback): option record = the SHA-256 (32 bytes) of the
      image to give up; answers an :class:`InvalidateStatus` byte. The ECU marks the bank holding
      that image valid as ``invalid`` (validity flag written last; response pending while it
      re-verifies the other bank) — only if the other bank holds a valid image of another
      SHA-256 that still verifies (hash, signature), else conditionsNotCorrect (0x22): the ECU
      would be left with nothing to boot. The running bank may be invalidated: the ECU runs it
      until the next reset, which boots the other bank. A record of another length is
      incorrectMessageLengthOrInvalidFormat (0x13); a download in progress conditionsNotCorrect.
    """

    ERASE_MEMORY = 0xFF00
    CHECK_PROGRAMMING_DEPENDENCIES = 0xFF01
    INVALIDATE_IMAGE = 0xFF02


#: Length of the option record of :attr:`Routine.INVALIDATE_IMAGE` (a SHA-256).
INVALIDATE_RECORD_LENGTH: Final = 32


class CheckStatus(IntEnum):
    """The routine status record (one byte) of check programming dependencies (0xFF01)."""

    OK = 0x00
    MALFORMED = 0x01
    HASH_MISMATCH = 0x02
    BAD_SIGNATURE = 0x03
    WRONG_HARDWARE = 0x04
    DOWNGRADE = 0x05
    NO_TRUSTED_KEY = 0x06

    @property
    def description(self) -> str:
        """What the status means, in words."""
        return _CHECK_WORDS[self]


_CHECK_WORDS: Final[Mapping[CheckStatus, str]] = {
    CheckStatus.OK: "the image checks out",
    CheckStatus.MALFORMED: "the downloaded data is not a well-formed image",
    CheckStatus.HASH_MISMATCH: "the payload's SHA-256 does not match the image header",
    CheckStatus.BAD_SIGNATURE: "the Ed25519 signature does not verify with the ECU's trusted key",
    CheckStatus.WRONG_HARDWARE: "the image is built for other hardware",
    CheckStatus.DOWNGRADE: "the image's version is lower than the installed one",
    CheckStatus.NO_TRUSTED_KEY: "the ECU has no trusted key to verify images with",
}


class InvalidateStatus(IntEnum):
    """The routine status record (one byte) of invalidate image (0xFF02)."""

    #: The bank that held the image is invalid: this request wrote it, or an earlier one did
    #: (or the bootloader, when the image failed at boot). The next reset boots the other bank.
    INVALIDATED = 0x00
    #: No bank holds that image (valid or invalidated): nothing to do.
    NOT_HELD = 0x01

    @property
    def description(self) -> str:
        """What the status means, in words."""
        if self is InvalidateStatus.INVALIDATED:
            return "the bank holding the image is invalid; the next reset boots the other bank"
        return "no bank holds the image"


class BankState(IntEnum):
    """What a flash bank holds, as the ECU's metadata records it."""

    EMPTY = 0  # never written (or content unknown)
    ERASING = 1  # an erase began and did not complete
    ERASED = 2  # erased; a download may start at address 0
    WRITING = 3  # a download is (or was) in progress: length, written, crc32 say how far
    VALID = 4  # checked (hash, signature, hardware, version): bootable
    INVALID = 5  # a check failed, the boot verification did, or the image was rolled back


NO_BANK: Final = 0xFF

_ACTIVE = struct.Struct(">BQ32s")
_DOWNLOAD = struct.Struct(">BBIIIQ32s")
_BANK = struct.Struct(">BQ")
assert _ACTIVE.size == DID_LENGTHS[Did.ACTIVE_IMAGE]
assert _DOWNLOAD.size == DID_LENGTHS[Did.DOWNLOAD_STATUS]
assert 2 * _BANK.size == DID_LENGTHS[Did.BANKS]


@dataclass(frozen=True, slots=True)
class ActiveImage:
    """DID 0xFD00: the bank the ECU runs (``None``: no valid bank), its version and SHA-256."""

    bank: int | None
    version: int
    sha256: bytes

    def encode(self) -> bytes:
        """The record's 41 bytes."""
        return _ACTIVE.pack(NO_BANK if self.bank is None else self.bank, self.version, self.sha256)

    @classmethod
    def decode(cls, data: bytes) -> ActiveImage:
        """Parse the record (:class:`struct.error` if its length is wrong)."""
        bank, version, digest = _ACTIVE.unpack(data)
        return cls(None if bank == NO_BANK else bank, version, digest)


@dataclass(frozen=True, slots=True)
class DownloadStatus:
    """DID 0xFD01: the inactive bank, where a download goes, and how far it got.

    ``length`` is the image length declared when the download began, ``written`` the bytes
    written and acknowledged (contiguous from the start), ``crc32`` their CRC-32 (zlib);
    ``version`` and ``sha256`` describe a valid (checked) image and are zero otherwise.
    """

    bank: int
    state: BankState
    length: int
    written: int
    crc32: int
    version: int
    sha256: bytes

    def encode(self) -> bytes:
        """The record's 54 bytes."""
        return _DOWNLOAD.pack(
            self.bank,
            self.state,
            self.length,
            self.written,
            self.crc32,
            self.version,
            self.sha256,
        )

    @classmethod
    def decode(cls, data: bytes) -> DownloadStatus:
        """Parse the record (:class:`ValueError` for an unknown state)."""
        bank, state, length, written, crc, version, digest = _DOWNLOAD.unpack(data)
        return cls(bank, BankState(state), length, written, crc, version, digest)


@dataclass(frozen=True, slots=True)
class BankSummary:
    """One bank in DID 0xFD02: its state and, when valid or invalid, the version of the image it
    holds or held (0 when unknown: an image that failed its check, an empty bank)."""

    state: BankState
    version: int

    @staticmethod
    def encode_pair(banks: tuple[BankSummary, BankSummary]) -> bytes:
        """Both banks' 18 bytes."""
        return b"".join(_BANK.pack(b.state, b.version) for b in banks)

    @classmethod
    def decode_pair(cls, data: bytes) -> tuple[BankSummary, BankSummary]:
        """Parse both banks."""
        a = _BANK.unpack(data[: _BANK.size])
        b = _BANK.unpack(data[_BANK.size :])
        return cls(BankState(a[0]), a[1]), cls(BankState(b[0]), b[1])


class SeedKeyAlgorithm(StrEnum):
    """How a SecurityAccess key is computed from the ECU's seed and the shared secret."""

    #: HMAC-SHA256(secret, seed), truncated to 16 bytes.
    HMAC_SHA256 = "hmac-sha256"
    #: The seed XOR the secret repeated: the classic weak scheme, for testers of old ECUs.
    XOR = "xor"


SEED_LENGTH: Final = 16
KEY_LENGTH: Final = 16
DEFAULT_SECURITY_LEVEL: Final = 0x01
#: The simulated ECUs' default secret: for the bench only; real ECUs need their own (--key).
DEFAULT_SECRET: Final = b"tbox-bench-secret"


def compute_key(algorithm: SeedKeyAlgorithm, secret: bytes, seed: bytes) -> bytes:
    """The key for *seed* (what tester and ECU both compute)."""
    if algorithm is SeedKeyAlgorithm.HMAC_SHA256:
        return hmac.new(secret, seed, hashlib.sha256).digest()[:KEY_LENGTH]
    if not secret:
        raise OtaUsageError("the xor seed/key algorithm needs a non-empty secret")
    return bytes(b ^ secret[i % len(secret)] for i, b in enumerate(seed))


def parse_secret(text: str) -> bytes:
    """A secret from the command line: ``hex:0011…`` or text (UTF-8)."""
    if text.startswith("hex:"):
        try:
            value = bytes.fromhex(text[4:])
        except ValueError:
            raise OtaUsageError(f"secret {text!r}: hex: must be followed by hex digits") from None
    else:
        value = text.encode()
    if not value:
        raise OtaUsageError("the security secret must not be empty")
    return value


def default_fingerprint(tester_id: str, when: time.struct_time | None = None) -> bytes:
    """The 16-byte fingerprint a tester writes: its id (10 characters, space-padded) and the
    date as YYMMDD, in ASCII."""
    stamp = time.strftime("%y%m%d", when or time.gmtime())
    name = tester_id.encode("ascii", "replace")[:10].ljust(10)
    return name + stamp.encode("ascii")


# --- ECU addresses -----------------------------------------------------------------------------

_FIRST_REQUEST_ID: Final = 0x7E0
_RESPONSE_OFFSET: Final = 0x08
_MAX_STANDARD_ID: Final = 0x7FF
_MAX_EXTENDED_ID: Final = 0x1FFFFFFF


@dataclass(frozen=True, slots=True)
class EcuAddress:
    """An ECU on a bus: its name and ISO-TP ids (physical addressing, normal addressing)."""

    name: str
    request_id: int
    response_id: int

    @property
    def extended(self) -> bool:
        """True when either id needs 29 bits."""
        return max(self.request_id, self.response_id) > _MAX_STANDARD_ID

    def describe(self) -> str:
        """``bms (0x7E0/0x7E8)``."""
        return f"{self.name} (0x{self.request_id:X}/0x{self.response_id:X})"


def parse_ecu_spec(text: str, index: int = 0) -> EcuAddress:
    """``NAME[:REQID:RESPID]`` → :class:`EcuAddress`; without ids the *index*-th ECU of a command
    line gets 0x7E0+index / 0x7E8+index (the OBD convention for the first eight ECUs)."""
    from ota.target_info import identifier_problem

    parts = text.split(":")
    name = parts[0]
    problem = identifier_problem(name)
    if problem is not None:
        raise EcuUsageError(f"--ecu {text!r}: the ECU name {problem}")
    if len(parts) == 1:
        if index > 7:
            raise EcuUsageError(
                f"--ecu {text!r}: give the ids (NAME:REQID:RESPID) for more than eight ECUs"
            )
        return EcuAddress(name, _FIRST_REQUEST_ID + index, _FIRST_REQUEST_ID + index + 8)
    if len(parts) != 3:
        raise EcuUsageError(
            f"--ecu {text!r}: write NAME or NAME:REQID:RESPID, e.g. bms:0x7E0:0x7E8"
        )
    ids = []
    for part in parts[1:]:
        try:
            value = int(part, 0) if part.lower().startswith("0x") else int(part, 16)
        except ValueError:
            raise EcuUsageError(f"--ecu {text!r}: {part!r} is not a CAN id (hex)") from None
        if not 0 <= value <= _MAX_EXTENDED_ID:
            raise EcuUsageError(f"--ecu {text!r}: CAN id {part} is out of range")
        ids.append(value)
    if ids[0] == ids[1]:
        raise EcuUsageError(f"--ecu {text!r}: request and response ids must differ")
    return EcuAddress(name, ids[0], ids[1])


# --- errors ------------------------------------------------------------------------------------


class EcuFlashError(OtaError):
    """Base class of what :class:`EcuFlasher` raises on purpose; ``ecu`` names the ECU."""

    ecu: str = ""


class EcuUsageError(EcuFlashError, OtaUsageError):
    """The operator asked for something malformed (an ECU spec, an option)."""


class EcuNegativeResponseError(EcuFlashError):
    """The ECU refused a request: ``service`` (its name), ``sid``, ``nrc`` (the response code)."""

    def __init__(self, ecu: str, service: str, sid: int, nrc: int, hint: str = "") -> None:
        self.ecu, self.service, self.sid, self.nrc = ecu, service, sid, nrc
        text = f"ECU {ecu}: {service} (0x{sid:02X}) refused: NRC 0x{nrc:02X} {nrc_name(nrc)}"
        super().__init__(text + (f" ({hint})" if hint else ""))


class EcuSecurityError(EcuNegativeResponseError):
    """SecurityAccess failed: a wrong key or secret, too many attempts, or the lockout delay."""


class EcuCheckFailedError(EcuFlashError, OtaVerificationError):
    """The ECU's check programming dependencies (or our check before sending) refused the image;
    ``status`` is the :class:`CheckStatus`."""

    def __init__(self, ecu: str, status: CheckStatus, detail: str = "", *, before: bool = False):
        self.ecu, self.status = ecu, status
        where = (
            "refused before transfer"
            if before
            else "RoutineControl 0xFF01 (check programming dependencies) refused the image"
        )
        text = f"ECU {ecu}: {where}: status 0x{status:02X}: {status.description}"
        super().__init__(text + (f" ({detail})" if detail else ""))


class EcuNoResponseError(EcuFlashError):
    """No (complete) response in time: the link is down or the ECU is off or hung."""

    def __init__(self, ecu: str, service: str, detail: str) -> None:
        self.ecu, self.service = ecu, service
        super().__init__(f"ECU {ecu}: no response to {service}: {detail}")


class EcuProtocolError(EcuFlashError):
    """The ECU answered something malformed or unexpected (the ECU's fault)."""

    def __init__(self, ecu: str, service: str, detail: str) -> None:
        self.ecu, self.service = ecu, service
        super().__init__(f"ECU {ecu}: invalid response to {service}: {detail}")


class EcuActivationError(EcuFlashError):
    """After the reset the ECU does not run the image that was flashed (it fell back), or it
    holds no checked copy of the image to activate."""

    def __init__(self, message: str, *, ecu: str = "") -> None:
        self.ecu = ecu
        super().__init__(message)


class EcuRollbackError(EcuFlashError):
    """The ECU refused to give up an image (no other bank holds a valid image to boot:
    RoutineControl 0xFF02 answered conditionsNotCorrect), or still runs it after the reset."""

    def __init__(self, message: str, *, ecu: str = "") -> None:
        self.ecu = ecu
        super().__init__(message)


class FlashInterruptedError(EcuFlashError):
    """The flash was stopped (cancelled) before it completed; the ECU keeps what it acknowledged."""


__all__ += ["FlashInterruptedError"]

_NRC_NAMES: Final = {
    value: name
    for name, value in vars(ResponseCode).items()
    if isinstance(value, int) and not name.startswith("_")
}

#: NRCs after which a new attempt may succeed: lost session or security state (the ECU rebooted
#: or timed out to the default session), transfer faults, a busy ECU.
_RETRYABLE_NRCS: Final = frozenset({0x21, 0x22, 0x24, 0x33, 0x71, 0x72, 0x73, 0x7E, 0x7F})
_SECURITY_NRCS: Final = frozenset({0x35, 0x36, 0x37})


def nrc_name(code: int) -> str:
    """udsoncan's name of a negative response code (``conditionsNotCorrect`` style)."""
    name = _NRC_NAMES.get(code)
    if name is None:
        return "unknown"
    return name[0].lower() + name[1:]


# --- results and settings ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlashTiming:
    """Tester timeouts, in seconds.

    ``p2``: wait for a response; ``p2_star``: wait after a response pending (0x78);
    ``slow_step``: at most this long for one request however often the ECU says pending;
    ``reconnect``: how long to wait for the ECU to answer again (after a reset, a power cut,
    a link loss) before an attempt counts as failed; ``retry_pause``: pause between attempts.
    """

    p2: float = 1.0
    p2_star: float = 6.0
    slow_step: float = 120.0
    reconnect: float = 15.0
    retry_pause: float = 0.2


@dataclass(frozen=True, slots=True)
class FlashProgress:
    """Where a flash stands: ``phase`` is connect, erase, transfer, check, reset or done;
    ``done``/``total`` count image bytes acknowledged by the ECU."""

    ecu: str
    phase: str
    done: int
    total: int
    attempt: int


@dataclass(frozen=True, slots=True)
class FlashResult:
    """How a flash went.

    ``already_installed``: the ECU ran this image already, nothing was sent.
    ``already_staged``: the ECU's inactive bank held this image checked (valid) already, nothing
    was sent (and, with ``activated``, the ECU was reset into it). ``resumed_from``: the byte
    offset the last resumed transfer started at (``None`` if none resumed). ``bytes_sent``: image
    bytes sent over all attempts; ``transfer_s``: time spent in RequestDownload …
    RequestTransferExit.
    """

    ecu: str
    version: int
    sha256: str
    length: int
    attempts: int
    bytes_sent: int
    resumed_from: int | None
    elapsed_s: float
    transfer_s: float
    already_installed: bool = False
    activated: bool = True
    already_staged: bool = False


@dataclass(frozen=True, slots=True)
class EcuInfo:
    """What an ECU reports about itself (:meth:`EcuFlasher.read_info`)."""

    ecu: EcuAddress
    session: int
    hardware_id: str
    vin: str
    fingerprint: bytes
    active: ActiveImage
    banks: tuple[BankSummary, BankSummary]
    download: DownloadStatus

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description (for ``tbox ecu info --json``)."""
        return {
            "ecu": self.ecu.name,
            "request_id": self.ecu.request_id,
            "response_id": self.ecu.response_id,
            "session": self.session,
            "hardware_id": self.hardware_id,
            "vin": self.vin,
            "fingerprint": self.fingerprint.decode("ascii", "replace"),
            "active_bank": self.active.bank,
            "version": self.active.version if self.active.bank is not None else None,
            "sha256": self.active.sha256.hex() if self.active.bank is not None else None,
            "banks": [
                {"state": b.state.name.lower(), "version": b.version if b.state else None}
                for b in self.banks
            ],
            "download": {
                "bank": self.download.bank,
                "state": self.download.state.name.lower(),
                "length": self.download.length,
                "written": self.download.written,
            },
        }


@dataclass(frozen=True, slots=True)
class DownloadPlan:
    """What an attempt does given the ECU's download status (:func:`plan_download`).

    ``step``: ``erase`` (start over), ``resume`` (RequestDownload at ``offset``), ``check``
    (all bytes are there) or ``activate`` (already checked: reset only).
    """

    step: str
    offset: int


def plan_download(status: DownloadStatus, image: EcuImage) -> DownloadPlan:
    """Decide from the ECU's download status where this image's download starts (pure)."""
    n = len(image.data)
    if status.state is BankState.VALID and status.sha256 == image.sha256:
        return DownloadPlan("activate", n)
    if (
        status.state is BankState.WRITING
        and status.length == n
        and 0 < status.written <= n
        and zlib.crc32(image.data[: status.written]) == status.crc32
    ):
        return DownloadPlan("check" if status.written == n else "resume", status.written)
    return DownloadPlan("erase", 0)


# --- the flasher -------------------------------------------------------------------------------

_HANDSHAKE_GAP_S: Final = 0.1  # sim/socketcand.py: frames reach a client ~50 ms after its rawmode
_SESSION_DEFAULT, _SESSION_PROGRAMMING, _SESSION_EXTENDED = 0x01, 0x02, 0x03
_HARD_RESET: Final = 0x01
_DTC_OFF: Final = 0x02
_ENABLE_RX_DISABLE_TX: Final = 0x01


class _RawCodec(udsoncan.DidCodec):
    """A fixed-length DID read and written as raw bytes; the records are parsed above."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self.length = length

    def encode(self, *did_value: Any) -> bytes:
        (value,) = did_value
        data = bytes(value)
        if len(data) != self.length:
            raise ValueError(f"DID value must be {self.length} bytes, not {len(data)}")
        return data

    def decode(self, did_payload: bytes) -> bytes:
        return bytes(did_payload)

    def __len__(self) -> int:
        return self.length


class _Aborted(Exception):  # noqa: N818 - control flow, never escapes
    """The worker saw the abort flag (the flash was cancelled)."""


@dataclass
class _Run:
    """State shared by the attempts of one flash (touched by one worker thread at a time)."""

    image: EcuImage
    abort: threading.Event
    report: Callable[[str, int], None]
    attempt: int = 0
    bytes_sent: int = 0
    acknowledged: int = 0
    resumed_from: int | None = None
    transfer_s: float = 0.0
    already_installed: bool = False
    already_staged: bool = False


class EcuFlasher:
    """Flashes one ECU over UDS (see the module docstring for the sequence, resume and retries).

    *bus*: a bus URL (C7), a :class:`~agent.busurl.BusSpec` (opened per attempt, with a receive
    filter for the ECU's response id) or an open python-can bus the flasher may read exclusively
    (it stays the caller's). *max_block*: an upper bound for TransferData requests (the ECU's
    maximum block length applies anyway). *isotp_params*: can-isotp parameters (defaults: block
    size 0, STmin 0, no padding).
    """

    def __init__(
        self,
        bus: str | BusSpec | Any,
        ecu: EcuAddress,
        *,
        secret: bytes = DEFAULT_SECRET,
        algorithm: SeedKeyAlgorithm = SeedKeyAlgorithm.HMAC_SHA256,
        security_level: int = DEFAULT_SECURITY_LEVEL,
        timing: FlashTiming | None = None,
        attempts: int = 3,
        block_retries: int = 2,
        max_block: int | None = None,
        tester_id: str = "tbox",
        isotp_params: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(bus, str):
            bus = parse_bus_url(bus)
        if (
            isinstance(bus, BusSpec)
            and bus.interface == "socketcand"
            and "tcp_tune" not in bus.extra
        ):
            # Without TCP_NODELAY every request/response pair waits for Nagle's algorithm.
            bus = dataclasses.replace(bus, extra={**bus.extra, "tcp_tune": True})
        if security_level % 2 != 1 or not 0 < security_level < 0x7F:
            raise EcuUsageError(f"security level {security_level} must be odd, 1 … 0x7D")
        if attempts < 1 or block_retries < 0:
            raise EcuUsageError("attempts must be ≥ 1 and block retries ≥ 0")
        if max_block is not None and max_block < 3:
            raise EcuUsageError(f"max block length {max_block} must be at least 3")
        self.bus = bus
        self.ecu = ecu
        self.secret = secret
        self.algorithm = algorithm
        self.security_level = security_level
        self.timing = timing or FlashTiming()
        self.attempts = attempts
        self.block_retries = block_retries
        self.max_block = max_block
        self.tester_id = tester_id
        self.isotp_params: dict[str, Any] = {"blocksize": 0, "stmin": 0, "max_frame_size": 65535}
        self.isotp_params.update(isotp_params or {})
        self.pending_responses = 0  # NRC 0x78 seen (for tests and the benchmark)
        self._link_lock = threading.Lock()

    # --- public API ----------------------------------------------------------------------------

    async def read_info(self) -> EcuInfo:
        """Read what the ECU reports (session, ids, versions, banks, fingerprint, download)."""
        info: EcuInfo = await self._in_worker(self._read_info)
        return info

    async def flash(
        self,
        image: EcuImage,
        *,
        progress: Callable[[FlashProgress], None] | None = None,
        activate: bool = True,
        precheck: bool = True,
        force: bool = False,
    ) -> FlashResult:
        """Flash *image*, resuming where the ECU left off; return how it went.

        *activate*: reset the ECU afterwards and verify it runs the image (else stop once the
        ECU's check accepted it: staged). *precheck*: refuse a wrong hardware id or a downgrade
        before sending anything (the ECU refuses them anyway, after the transfer). *force*:
        flash even if the ECU already runs this image. *progress* is called in the event loop.
        """
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        total = len(image.data)

        def report(phase: str, done: int) -> None:
            if progress is not None:
                event = FlashProgress(self.ecu.name, phase, done, total, run.attempt)
                loop.call_soon_threadsafe(progress, event)

        run = _Run(image=image, abort=threading.Event(), report=report)

        def job(attempt: int) -> None:
            run.attempt = attempt
            self._attempt(run, activate=activate, precheck=precheck, force=force)

        _, attempts = await self._retrying(job, run.abort)
        report("done", total)
        return FlashResult(
            ecu=self.ecu.name,
            version=image.version,
            sha256=image.sha256.hex(),
            length=total,
            attempts=attempts,
            bytes_sent=run.bytes_sent,
            resumed_from=run.resumed_from,
            elapsed_s=time.monotonic() - started,
            transfer_s=run.transfer_s,
            already_installed=run.already_installed,
            activated=activate,
            already_staged=run.already_staged,
        )

    async def activate(self, image: EcuImage) -> None:
        """Make the ECU run *image*, staged by ``flash(…, activate=False)`` (by this flasher or
        another, in this process or an earlier one): reset it and verify it runs the image.

        Nothing to do if the ECU runs *image* already (no reset). :class:`EcuActivationError`
        if the ECU holds no checked copy of *image* in its inactive bank (never staged, or
        invalidated since: it failed to boot, or was rolled back) — nothing is reset then — or
        if after the reset it runs something else (the image did not boot and the ECU fell
        back). Retried like :meth:`flash`; calling it again after any interruption finishes.
        """
        abort = threading.Event()

        def job(attempt: int) -> None:
            with self._link() as client:
                if attempt > 1:
                    self._wait_until_ready(client, abort)
                self._activate(client, image, abort)

        await self._retrying(job, abort)

    async def roll_back(self, image: EcuImage) -> EcuInfo:
        """Return the ECU from *image* to the image it held before (a campaign's rollback); return
        what the ECU reports afterwards.

        Reads what the ECU runs and holds (resetting it first if its running bank was
        invalidated by an earlier, interrupted rollback); if it neither runs *image* nor holds it
        valid in its inactive bank there is nothing more to do. Otherwise:
        programming session, SecurityAccess, RoutineControl 0xFF02 (invalidate image) with
        *image*'s SHA-256, ECUReset, and a check that the ECU now runs another image (the
        fallback). Idempotent: the ECU keeps the invalidation, so calling it again after a power
        cut or a lost link at any point finishes the job; within one call, lost links and
        transient negative responses are retried like :meth:`flash`.

        :class:`EcuRollbackError` if the ECU refuses (no other bank holds a valid image of
        another SHA-256 that verifies: it would be left with nothing to boot) or still runs
        *image*, or runs no valid image at all, after the reset.
        """
        abort = threading.Event()

        def job(attempt: int) -> EcuInfo:
            with self._link() as client:
                if attempt > 1:
                    self._wait_until_ready(client, abort)
                return self._roll_back(client, image, abort)

        info, _ = await self._retrying(job, abort)
        return info

    # --- workers -------------------------------------------------------------------------------

    async def _in_worker(self, work: Callable[[Any], Any]) -> Any:
        abort = threading.Event()

        def job() -> Any:
            with self._link() as client:
                return work(client)

        return await self._run_worker(job, abort)

    async def _retrying(self, job: Callable[[int], _T], abort: threading.Event) -> tuple[_T, int]:
        """Run ``job(attempt)`` in a worker thread until it succeeds, at most ``attempts`` times;
        return its result and the attempt that succeeded.

        A lost link or ECU (no response, a malformed response, a bus error, a negative response
        after which a new attempt may succeed) costs an attempt; anything else (a refusal, a
        wrong key) is raised at once. After the last attempt its error is raised, its message
        saying how many attempts were made.
        """
        last_error: EcuFlashError | BusError | None = None
        for attempt in range(1, self.attempts + 1):
            if attempt > 1:
                await asyncio.sleep(self.timing.retry_pause)
            try:
                result: _T = await self._run_worker(functools.partial(job, attempt), abort)
            except (EcuNoResponseError, EcuProtocolError, BusError) as e:
                last_error = e
            except EcuNegativeResponseError as e:
                if e.nrc not in _RETRYABLE_NRCS or isinstance(e, EcuSecurityError):
                    raise
                last_error = e
            else:
                return result, attempt
            log.info("ECU %s: attempt %d failed: %s", self.ecu.name, attempt, last_error)
        assert last_error is not None
        if self.attempts > 1:
            # Same class and attributes (callers dispatch on them); the message says how hard we
            # tried.
            last_error.args = (f"{last_error} (after {self.attempts} attempts)",)
        raise last_error

    async def _run_worker(self, job: Callable[[], Any], abort: threading.Event) -> Any:
        task = asyncio.ensure_future(asyncio.to_thread(job))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            # The thread cannot be cancelled: ask it to stop before its next request and wait
            # for it (one request timeout at most), so that the bus is closed when we return.
            abort.set()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task
            raise

    @contextlib.contextmanager
    def _link(self) -> Any:
        """Open the bus (if ours), the ISO-TP stack and a udsoncan client; close them after."""
        import isotp
        from udsoncan.client import Client
        from udsoncan.connections import PythonIsoTpConnection

        ecu = self.ecu
        # One link at a time: a second can-isotp stack reading the same bus would steal frames.
        with self._link_lock:
            owned = isinstance(self.bus, BusSpec)
            if owned:
                mask = _MAX_EXTENDED_ID if ecu.extended else _MAX_STANDARD_ID
                bus = open_bus(
                    self.bus,
                    can_filters=[
                        {"can_id": ecu.response_id, "can_mask": mask, "extended": ecu.extended}
                    ],
                )
            else:
                bus = self.bus
            try:
                mode = (
                    isotp.AddressingMode.Normal_29bits
                    if ecu.extended
                    else isotp.AddressingMode.Normal_11bits
                )
                address = isotp.Address(mode, txid=ecu.request_id, rxid=ecu.response_id)
                stack = isotp.CanStack(
                    bus, address=address, params=dict(self.isotp_params), error_handler=_isotp_error
                )
                connection = PythonIsoTpConnection(stack, name=f"tbox.{self.ecu.name}")
                client = Client(connection, config=self._client_config())
                client.open()
                try:
                    if owned and self.bus.interface == "socketcand":
                        time.sleep(_HANDSHAKE_GAP_S)
                    yield client
                finally:
                    client.close()
            finally:
                if owned:
                    bus.shutdown()

    def _client_config(self) -> Any:
        algorithm, secret = self.algorithm, self.secret

        def security_algo(level: int, seed: bytes, params: Any) -> bytes:
            return compute_key(algorithm, secret, seed)

        def pending() -> None:
            self.pending_responses += 1

        config = dict(udsoncan.configs.default_client_config)
        config.update(
            {
                "logger_name": _quiet_logger(self.ecu.name),
                "security_algo": security_algo,
                "data_identifiers": {did: _RawCodec(n) for did, n in DID_LENGTHS.items()},
                "request_timeout": self.timing.slow_step,
                "p2_timeout": self.timing.p2,
                "p2_star_timeout": self.timing.p2_star,
                "use_server_timing": False,
                "server_address_format": 32,
                "server_memorysize_format": 32,
                "nrc78_callback": pending,
            }
        )
        return config

    def _call(
        self, abort: threading.Event, service: str, fn: Callable[..., Any], *args: Any
    ) -> Any:
        """Call a udsoncan client method; translate its exceptions into ours."""
        if abort.is_set():
            raise _Aborted
        ecu = self.ecu.name
        try:
            return fn(*args)
        except NegativeResponseException as e:
            response = e.response
            sid = response.service.request_id() if response.service is not None else 0
            code = int(response.code or 0)
            if sid == 0x27 and code in _SECURITY_NRCS:
                hint = {
                    0x35: "is the secret (--key) right?",
                    0x36: "too many wrong keys: the ECU is locked for a while",
                    0x37: "the ECU's lockout delay has not expired yet",
                }[code]
                raise EcuSecurityError(ecu, service, sid, code, hint) from None
            raise EcuNegativeResponseError(ecu, service, sid, code) from None
        except TimeoutException as e:
            raise EcuNoResponseError(ecu, service, str(e)) from None
        except (InvalidResponseException, UnexpectedResponseException) as e:
            raise EcuProtocolError(ecu, service, str(e)) from None
        except BusError:
            raise
        except Exception as e:  # python-can and can-isotp raise what their backends raise
            if type(e).__module__.split(".")[0] in {"can", "isotp"}:
                raise BusError(f"ECU {ecu}: {service}: bus failed: {e}") from e
            raise

    # --- the sequence (worker thread) ----------------------------------------------------------

    def _attempt(self, run: _Run, *, activate: bool, precheck: bool, force: bool) -> None:
        try:
            with self._link() as client:
                self._sequence(client, run, activate=activate, precheck=precheck, force=force)
        except _Aborted:
            raise FlashInterruptedError(
                f"ECU {self.ecu.name}: flash interrupted after {run.acknowledged} of "
                f"{len(run.image.data)} bytes; the ECU keeps them: run it again to resume"
            ) from None

    def _sequence(
        self, client: Any, run: _Run, *, activate: bool, precheck: bool, force: bool
    ) -> None:
        image, abort, ecu = run.image, run.abort, self.ecu.name
        call = self._call
        run.report("connect", run.acknowledged)
        if run.attempt > 1:
            self._wait_until_ready(client, abort)
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_DEFAULT)
        active = self._running(client, abort)
        if active.bank is not None and active.sha256 == image.sha256 and not force:
            run.already_installed = run.attempt == 1 and run.bytes_sent == 0
            run.acknowledged = len(image.data)
            return
        if precheck:
            self._precheck(client, abort, image, active)
        status = DownloadStatus.decode(self._read(client, abort, Did.DOWNLOAD_STATUS))
        plan = plan_download(status, image)
        log.info("ECU %s: download status %s → %s", ecu, status, plan)
        run.acknowledged = plan.offset
        if plan.step == "activate":
            # Checked by the ECU already (staged): no session change, nothing to send.
            run.already_staged = run.attempt == 1 and run.bytes_sent == 0
            if activate:
                run.report("reset", len(image.data))
                self._reset_and_verify(client, image, abort)
            return
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_EXTENDED)
        call(abort, "ControlDTCSetting", client.control_dtc_setting, _DTC_OFF)
        call(
            abort,
            "CommunicationControl",
            client.communication_control,
            _ENABLE_RX_DISABLE_TX,
            CommunicationType(subnet=0, normal_msg=True, network_management_msg=True),
        )
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_PROGRAMMING)
        call(abort, "SecurityAccess", client.unlock_security_access, self.security_level)
        if plan.step == "erase":
            fingerprint = default_fingerprint(self.tester_id)
            call(
                abort,
                "WriteDataByIdentifier",
                client.write_data_by_identifier,
                Did.FINGERPRINT,
                fingerprint,
            )
            run.report("erase", 0)
            call(
                abort,
                "RoutineControl 0xFF00 (erase memory)",
                client.start_routine,
                Routine.ERASE_MEMORY,
            )
        if plan.step in {"erase", "resume"}:
            if plan.step == "resume":
                run.resumed_from = plan.offset
            self._transfer(client, run, plan.offset)
        run.report("check", len(image.data))
        response = call(
            abort,
            "RoutineControl 0xFF01 (check programming dependencies)",
            client.start_routine,
            Routine.CHECK_PROGRAMMING_DEPENDENCIES,
        )
        verdict = CheckStatus(self._routine_status(response, "0xFF01", CheckStatus))
        if verdict is not CheckStatus.OK:
            raise EcuCheckFailedError(ecu, verdict)
        if activate:
            run.report("reset", len(image.data))
            self._reset_and_verify(client, image, abort)
        else:
            # Staged: back to the default session (normal communication and DTC setting on).
            call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_DEFAULT)

    def _routine_status(self, response: Any, routine: str, statuses: type[IntEnum]) -> int:
        """The first byte of a RoutineControl response's status record, one of *statuses*."""
        record = bytes(response.service_data.routine_status_record or b"")
        if not record:
            raise EcuProtocolError(self.ecu.name, f"RoutineControl {routine}", "no status record")
        if record[0] not in {int(s) for s in statuses}:
            raise EcuProtocolError(
                self.ecu.name, f"RoutineControl {routine}", f"unknown status 0x{record[0]:02X}"
            )
        return record[0]

    def _running(self, client: Any, abort: threading.Event) -> ActiveImage:
        """The image the ECU runs (DID 0xFD00) — after a reset first if its bank was invalidated
        (a rollback interrupted before its reset): the next reset would boot the other bank
        anyway, and until then the ECU refuses to erase that bank, its only valid one."""
        active = ActiveImage.decode(self._read(client, abort, Did.ACTIVE_IMAGE))
        if active.bank is None:
            return active
        try:
            banks = BankSummary.decode_pair(self._read(client, abort, Did.BANKS))
        except ValueError as e:
            raise EcuProtocolError(self.ecu.name, "ReadDataByIdentifier 0xFD02", str(e)) from None
        if banks[active.bank].state is not BankState.INVALID:
            return active
        log.info(
            "ECU %s: its running bank %d is invalidated: reset first", self.ecu.name, active.bank
        )
        self._call(abort, "ECUReset", client.ecu_reset, _HARD_RESET)
        self._wait_until_ready(client, abort)
        return ActiveImage.decode(self._read(client, abort, Did.ACTIVE_IMAGE))

    def _activate(self, client: Any, image: EcuImage, abort: threading.Event) -> None:
        """One attempt of :meth:`activate`."""
        call, ecu = self._call, self.ecu.name
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_DEFAULT)
        active = self._running(client, abort)
        if active.bank is not None and active.sha256 == image.sha256:
            log.info("ECU %s: runs version %d already", ecu, image.version)
            return
        status = DownloadStatus.decode(self._read(client, abort, Did.DOWNLOAD_STATUS))
        if status.state is not BankState.VALID or status.sha256 != image.sha256:
            raise EcuActivationError(
                f"ECU {ecu} runs {_describe_active(active)} and holds no checked copy of version "
                f"{image.version} to activate (never staged, or invalidated since: it failed to "
                "boot or was rolled back)",
                ecu=ecu,
            )
        self._reset_and_verify(client, image, abort)

    def _roll_back(self, client: Any, image: EcuImage, abort: threading.Event) -> EcuInfo:
        """One attempt of :meth:`roll_back`."""
        call, ecu = self._call, self.ecu.name
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_DEFAULT)
        active = self._running(client, abort)
        runs = active.bank is not None and active.sha256 == image.sha256
        status = DownloadStatus.decode(self._read(client, abort, Did.DOWNLOAD_STATUS))
        staged = status.state is BankState.VALID and status.sha256 == image.sha256
        if not runs and not staged:
            log.info(
                "ECU %s: no valid copy of version %d: nothing to roll back", ecu, image.version
            )
            return self._read_info(client)
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_EXTENDED)
        call(abort, "DiagnosticSessionControl", client.change_session, _SESSION_PROGRAMMING)
        call(abort, "SecurityAccess", client.unlock_security_access, self.security_level)
        service = "RoutineControl 0xFF02 (invalidate image)"
        try:
            response = call(
                abort, service, client.start_routine, Routine.INVALIDATE_IMAGE, image.sha256
            )
        except EcuNegativeResponseError as e:
            if e.nrc != ResponseCode.ConditionsNotCorrect:
                raise
            raise EcuRollbackError(
                f"ECU {ecu}: {service} refused to give up version {image.version}: no other "
                f"bank holds a valid image to boot (NRC 0x22 {nrc_name(e.nrc)})",
                ecu=ecu,
            ) from None
        outcome = InvalidateStatus(self._routine_status(response, "0xFF02", InvalidateStatus))
        log.info("ECU %s: invalidate version %d: %s", ecu, image.version, outcome.description)
        self._call(abort, "ECUReset", client.ecu_reset, _HARD_RESET)
        self._wait_until_ready(client, abort)
        after = ActiveImage.decode(self._read(client, abort, Did.ACTIVE_IMAGE))
        if after.bank is None or after.sha256 == image.sha256:
            raise EcuRollbackError(
                f"ECU {ecu} runs {_describe_active(after)} after the rollback's reset, not the "
                f"image before version {image.version}",
                ecu=ecu,
            )
        return self._read_info(client)

    def _precheck(
        self, client: Any, abort: threading.Event, image: EcuImage, active: ActiveImage
    ) -> None:
        raw = self._read(client, abort, Did.HARDWARE_ID)
        hardware = raw.rstrip(b"\x00").decode("ascii", "replace")
        if hardware != image.hardware_id:
            raise EcuCheckFailedError(
                self.ecu.name,
                CheckStatus.WRONG_HARDWARE,
                f"image for {image.hardware_id!r}, ECU is {hardware!r}",
                before=True,
            )
        if active.bank is not None and image.version < active.version:
            raise EcuCheckFailedError(
                self.ecu.name,
                CheckStatus.DOWNGRADE,
                f"image version {image.version}, ECU runs {active.version}",
                before=True,
            )

    def _transfer(self, client: Any, run: _Run, offset: int) -> None:
        abort, data = run.abort, run.image.data
        total = len(data)
        started = time.monotonic()
        try:
            response = self._call(
                abort,
                "RequestDownload",
                client.request_download,
                MemoryLocation(offset, total - offset, address_format=32, memorysize_format=32),
            )
            max_length = int(response.service_data.max_length)
            if self.max_block is not None:
                max_length = min(max_length, self.max_block)
            if max_length < 3:
                raise EcuProtocolError(
                    self.ecu.name, "RequestDownload", f"maximum block length {max_length} < 3"
                )
            chunk = max_length - 2  # the request's SID and block sequence counter count too
            counter = 1
            position = offset
            run.report("transfer", position)
            while position < total:
                block = data[position : position + chunk]
                for retry in range(self.block_retries + 1):
                    try:
                        self._call(abort, "TransferData", client.transfer_data, counter, block)
                        break
                    except EcuNoResponseError:
                        if retry == self.block_retries:
                            raise
                        log.info("ECU %s: block %d: no response, repeating", self.ecu.name, counter)
                    finally:
                        run.bytes_sent += len(block)
                position += len(block)
                run.acknowledged = position
                counter = (counter + 1) & 0xFF
                run.report("transfer", position)
            self._call(abort, "RequestTransferExit", client.request_transfer_exit)
        finally:
            run.transfer_s += time.monotonic() - started

    def _reset_and_verify(self, client: Any, image: EcuImage, abort: threading.Event) -> None:
        self._call(abort, "ECUReset", client.ecu_reset, _HARD_RESET)
        self._wait_until_ready(client, abort)
        active = ActiveImage.decode(self._read(client, abort, Did.ACTIVE_IMAGE))
        if active.sha256 != image.sha256 or active.bank is None:
            raise EcuActivationError(
                f"ECU {self.ecu.name} runs {_describe_active(active)} after the reset, not "
                f"version {image.version} (the image flashed): it did not boot and the ECU fell "
                "back",
                ecu=self.ecu.name,
            )

    def _wait_until_ready(self, client: Any, abort: threading.Event) -> None:
        """Poll with TesterPresent until the ECU answers or ``timing.reconnect`` passes."""
        deadline = time.monotonic() + self.timing.reconnect
        while True:
            try:
                self._call(abort, "TesterPresent", client.tester_present)
                return
            except (EcuNoResponseError, EcuProtocolError):
                if time.monotonic() >= deadline:
                    raise
            except EcuNegativeResponseError as e:
                if e.nrc != 0x21 or time.monotonic() >= deadline:  # busyRepeatRequest: booting
                    raise
            time.sleep(min(0.05, self.timing.p2))

    def _read(self, client: Any, abort: threading.Event, did: int) -> bytes:
        name = f"ReadDataByIdentifier 0x{did:04X}"
        response = self._call(abort, name, client.read_data_by_identifier, [did])
        values = response.service_data.values
        value = values.get(did)
        if not isinstance(value, bytes) or len(value) != DID_LENGTHS[did]:
            raise EcuProtocolError(self.ecu.name, name, "the record is missing or malformed")
        return value

    def _read_info(self, client: Any) -> EcuInfo:
        abort = threading.Event()
        read = self._read
        try:
            banks = BankSummary.decode_pair(read(client, abort, Did.BANKS))
            download = DownloadStatus.decode(read(client, abort, Did.DOWNLOAD_STATUS))
        except ValueError as e:
            raise EcuProtocolError(self.ecu.name, "ReadDataByIdentifier", str(e)) from None
        return EcuInfo(
            ecu=self.ecu,
            session=read(client, abort, Did.ACTIVE_SESSION)[0],
            hardware_id=_ascii(read(client, abort, Did.HARDWARE_ID)),
            vin=_ascii(read(client, abort, Did.VIN)),
            fingerprint=read(client, abort, Did.FINGERPRINT),
            active=ActiveImage.decode(read(client, abort, Did.ACTIVE_IMAGE)),
            banks=banks,
            download=download,
        )


def _describe_active(active: ActiveImage) -> str:
    """``version 7 (bank 0)``, or ``no valid image``."""
    if active.bank is None:
        return "no valid image"
    return f"version {active.version} (bank {active.bank})"


def _ascii(data: bytes) -> str:
    return data.rstrip(b"\x00").decode("ascii", "replace")


class _DropReported(logging.Filter):
    """udsoncan logs every exception it raises as a warning or error; we raise our own, with
    the ECU's name, so those records would say everything twice (and alarm on every retry)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


def _quiet_logger(ecu: str) -> str:
    """The udsoncan logger name for *ecu* (``UdsClient[tbox.<ecu>]``), warnings filtered.

    udsoncan logs every request and response at INFO; in an agent that logs at INFO this would
    be a dozen lines per flashed block, so its client and connection loggers start at WARNING
    (set them to DEBUG to trace a session)."""
    name = f"tbox.{ecu}"
    logger = logging.getLogger(f"UdsClient[{name}]")
    if not any(isinstance(f, _DropReported) for f in logger.filters):
        logger.addFilter(_DropReported())
    for quiet in (logger, logging.getLogger(f"Connection[{name}]")):
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.WARNING)
    return name


def _isotp_error(error: Exception) -> None:
    # can-isotp reports lost frames and timeouts here (from its thread); the UDS layer sees the
    # consequence (a timeout) and reports it, so this is only for debugging.
    log.debug("ISO-TP: %s", error)

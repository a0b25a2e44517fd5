"""An ECU's flash memory, simulated with files: two banks and a metadata record.

One directory per ECU::

    DIR/flash.bin      bank 0 at offset 0, bank 1 at offset bank_size (2 × bank_size bytes)
    DIR/meta.json      the metadata record: which bank is active, what each bank holds
    DIR/.lock          held (flock) while a process runs this ECU

The metadata record (JSON, replaced atomically: temporary file, fsync, rename, fsync of the
directory)::

    {"format": 1, "bank_size": 4194304, "active": 0, "sequence": 3,
     "fingerprint": "<hex, 16 bytes>", "dtcs": ["F00010"],
     "banks": [{"state": "valid", "length": 1234, "written": 1234, "crc32": 0,
                "version": 7, "sha256": "<hex>", "hardware_id": "bms", "sequence": 3},
               {"state": "writing", "length": 5000, "written": 2040, "crc32": 305419896, …}]}

A bank's ``state`` (:class:`ota.ecu_flash.BankState`) is its validity flag, and it is always
written last: a bank's bytes are fsynced before any metadata that vouches for them. The rules:

* **The active bank is never written.** Erase and download go to the other bank (bank 0 while
  no bank is valid).
* **Erase** writes ``erasing`` first (the bank's old content, maybe the fallback image, is no
  longer vouched for), then fills the bank with 0xFF and fsyncs it, then writes ``erased``.
* **Each TransferData block** is written at its offset and fsynced, then the metadata records
  ``writing`` with the declared length, the bytes written so far and their CRC-32: the progress a
  resumed download starts from. A block is acknowledged only after that.
* **The check** (RoutineControl 0xFF01) reads the bank back, verifies it (SHA-256, Ed25519
  against the trusted key, hardware id, no downgrade) and writes ``valid`` (with version, SHA-256
  and a programming sequence number) or ``invalid``.
* **Boot** picks the valid bank with the highest (version, sequence), verifies it again (hash and
  signature, as secure boot would; a bank that fails is marked invalid with DTC F00020 and the
  next is tried) and records it as active. An image that verifies but crashes at start (fault
  ``boot-fails``) is marked invalid too, with DTC F00030. The previous image stays valid in the
  other bank as the fallback until that bank is erased for the next update.
* **Invalidate** (RoutineControl 0xFF02, a rollback) marks a valid bank ``invalid`` — only after
  re-verifying that the other bank holds a valid image (hash and signature): it never leaves the
  flash without a valid bank. It may be the active bank: the ECU runs it until the next boot,
  which picks the other one; meanwhile the metadata names an invalid active bank, and erasing
  the other (its only valid bank) is refused.

So at every instant some valid bank stays bootable once one was: a power cut during erase,
transfer or check only loses the bank being written, one during an invalidation leaves either
the image or its fallback to boot.

Every persistence step hits a crash point (contract C6) and, with fault injection, may cut the
power in-process (:class:`~firmware_stub.faults.FaultState`, raising
:class:`~firmware_stub.errors.PowerCut`):

=================================  ==============================================================
``ecu.before_X`` / ``ecu.after_X``  the metadata of step X is fsynced as a temporary file / has
                                    replaced the old one (directory not yet fsynced), for X in
                                    ``provision``, ``erase_begin``, ``bank_erased``,
                                    ``progress``, ``validity_flag``, ``check_failed``,
                                    ``active_switch``, ``fingerprint``, ``dtcs_cleared``,
                                    ``invalidate`` (a bank marked invalid by a rollback)
``ecu.bank_data_erased``            the bank is filled with 0xFF and fsynced (metadata: erasing)
``ecu.block_written``               a block's bytes are fsynced (progress not yet recorded)
=================================  ==============================================================

Counts are per process: with several ECUs in one process, ``TBOX_CRASHPOINT=ecu.block_written:5``
fires at the fifth block any of them writes.

Threads: the API is synchronous; an ECU calls it from one worker thread at a time
(``asyncio.to_thread``). :attr:`FlashMemory.meta` is an immutable snapshot safe to read anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent import crashpoints
from agent.crashpoints import CrashPoint
from agent.durable_file import fsync_dir
from firmware_stub.errors import FlashIOError, FlashStateError, PowerCut
from firmware_stub.faults import FaultState
from ota.ecu_flash import FINGERPRINT_LENGTH, BankState, CheckStatus
from ota.ecu_image import (
    EcuImage,
    EcuImageFormatError,
    EcuImageVerificationError,
)

__all__ = [
    "DEFAULT_BANK_SIZE",
    "DTC_BOOT_VERIFICATION",
    "DTC_CHECK_FAILED",
    "DTC_START_FAILED",
    "BankRecord",
    "BootReport",
    "FlashMemory",
    "FlashMeta",
]

DEFAULT_BANK_SIZE: Final = 4 << 20
FLASH_FILE: Final = "flash.bin"
META_FILE: Final = "meta.json"
LOCK_FILE: Final = ".lock"
FORMAT: Final = 1
ERASED: Final = 0xFF
_ERASE_CHUNK: Final = 1 << 20

#: Stored DTCs (3-byte codes, reported with status testFailed | confirmedDTC).
DTC_CHECK_FAILED: Final = 0xF00010  # an image failed check programming dependencies
DTC_BOOT_VERIFICATION: Final = 0xF00020  # a valid bank failed verification at boot
DTC_START_FAILED: Final = 0xF00030  # a verified image crashed at start (fault boot-fails)


def _pair(step: str, what: str) -> tuple[CrashPoint, CrashPoint]:
    before = crashpoints.declare(
        f"ecu.before_{step}",
        f"simulated ECU: the metadata {what} is fsynced as a temporary file, not yet renamed",
    )
    after = crashpoints.declare(
        f"ecu.after_{step}",
        f"simulated ECU: the metadata {what} has replaced the old one; directory not yet fsynced",
    )
    return before, after


CP_PROVISION = _pair("provision", "of a new flash (or one with a factory image)")
CP_ERASE_BEGIN = _pair("erase_begin", "saying that a bank is being erased")
CP_BANK_ERASED = _pair("bank_erased", "saying that a bank is erased")
CP_PROGRESS = _pair("progress", "recording one more acknowledged TransferData block")
CP_VALIDITY = _pair("validity_flag", "with a checked bank's validity flag")
CP_CHECK_FAILED = _pair("check_failed", "marking a bank invalid after a failed check")
CP_ACTIVE_SWITCH = _pair("active_switch", "switching the active bank at boot")
CP_FINGERPRINT = _pair("fingerprint", "with a new fingerprint")
CP_DTCS = _pair("dtcs_cleared", "with cleared DTCs")
CP_INVALIDATE = _pair("invalidate", "marking a bank invalid for a rollback (RoutineControl 0xFF02)")
CP_BANK_DATA_ERASED = crashpoints.declare(
    "ecu.bank_data_erased",
    "simulated ECU: a bank is filled with 0xFF and fsynced; its metadata still says erasing",
)
CP_BLOCK_WRITTEN = crashpoints.declare(
    "ecu.block_written",
    "simulated ECU: a TransferData block is written into its bank and fsynced; "
    "its progress is not yet recorded",
)


@dataclass(frozen=True, slots=True)
class BankRecord:
    """What the metadata says about one bank (see the module docstring)."""

    state: BankState = BankState.EMPTY
    length: int = 0
    written: int = 0
    crc32: int = 0
    version: int = 0
    sha256: bytes = b""
    hardware_id: str = ""
    sequence: int = 0

    def to_json(self) -> dict[str, Any]:
        """The bank's JSON object."""
        return {
            "state": self.state.name.lower(),
            "length": self.length,
            "written": self.written,
            "crc32": self.crc32,
            "version": self.version,
            "sha256": self.sha256.hex(),
            "hardware_id": self.hardware_id,
            "sequence": self.sequence,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> BankRecord:
        """Parse a bank's JSON object; :class:`ValueError` naming *where* if malformed."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} is not an object")
        try:
            state = BankState[str(data["state"]).upper()]
            record = cls(
                state=state,
                length=_uint(data["length"], f"{where}.length"),
                written=_uint(data["written"], f"{where}.written"),
                crc32=_uint(data["crc32"], f"{where}.crc32"),
                version=_uint(data["version"], f"{where}.version"),
                sha256=bytes.fromhex(str(data["sha256"])),
                hardware_id=str(data["hardware_id"]),
                sequence=_uint(data["sequence"], f"{where}.sequence"),
            )
        except KeyError as e:
            raise ValueError(f"{where} lacks {e.args[0]!r} or has an unknown state") from None
        if record.written > record.length:
            raise ValueError(f"{where}: written {record.written} > length {record.length}")
        if record.state is BankState.VALID and len(record.sha256) != 32:
            raise ValueError(f"{where}: a valid bank needs a 32-byte sha256")
        return record


#: What the active bank's state may be: valid, or invalidated while it runs (a rollback).
_RUNNABLE: Final = frozenset({BankState.VALID, BankState.INVALID})


def _uint(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number ≥ 0")
    return value


@dataclass(frozen=True, slots=True)
class FlashMeta:
    """The metadata record (immutable; every change is a new record)."""

    bank_size: int
    active: int | None = None
    sequence: int = 0
    banks: tuple[BankRecord, BankRecord] = (BankRecord(), BankRecord())
    fingerprint: bytes = bytes(FINGERPRINT_LENGTH)
    dtcs: tuple[int, ...] = ()

    @property
    def target(self) -> int:
        """The bank a download goes to: the inactive one (bank 0 while none is active)."""
        return 0 if self.active is None else 1 - self.active

    @property
    def active_record(self) -> BankRecord | None:
        """The active bank's record, if a bank is active."""
        return None if self.active is None else self.banks[self.active]

    @property
    def active_version(self) -> int | None:
        """The active image's version, if a bank is active."""
        record = self.active_record
        return None if record is None else record.version

    def with_bank(self, index: int, record: BankRecord) -> FlashMeta:
        """This record with bank *index* replaced."""
        banks = (record, self.banks[1]) if index == 0 else (self.banks[0], record)
        return replace(self, banks=banks)

    def with_dtc(self, code: int) -> FlashMeta:
        """This record with DTC *code* stored (once)."""
        return self if code in self.dtcs else replace(self, dtcs=(*self.dtcs, code))

    def to_json(self) -> dict[str, Any]:
        """The record's JSON object."""
        return {
            "format": FORMAT,
            "bank_size": self.bank_size,
            "active": self.active,
            "sequence": self.sequence,
            "fingerprint": self.fingerprint.hex(),
            "dtcs": [f"{code:06X}" for code in self.dtcs],
            "banks": [b.to_json() for b in self.banks],
        }

    @classmethod
    def from_json(cls, data: Any) -> FlashMeta:
        """Parse the record; :class:`ValueError` saying what is wrong."""
        if not isinstance(data, Mapping):
            raise ValueError("the record is not a JSON object")
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not {FORMAT}")
        banks = data.get("banks")
        if not isinstance(banks, list) or len(banks) != 2:
            raise ValueError("banks must be a list of two objects")
        active = data.get("active")
        if active not in (None, 0, 1):
            raise ValueError(f"active {active!r} must be 0, 1 or null")
        fingerprint = bytes.fromhex(str(data.get("fingerprint", "")))
        if len(fingerprint) != FINGERPRINT_LENGTH:
            raise ValueError("fingerprint must be 16 bytes of hex")
        dtcs = data.get("dtcs", [])
        if not isinstance(dtcs, list):
            raise ValueError("dtcs must be a list")
        meta = cls(
            bank_size=_uint(data.get("bank_size"), "bank_size"),
            active=active,
            sequence=_uint(data.get("sequence"), "sequence"),
            banks=(
                BankRecord.from_json(banks[0], "banks[0]"),
                BankRecord.from_json(banks[1], "banks[1]"),
            ),
            fingerprint=fingerprint,
            dtcs=tuple(int(str(code), 16) for code in dtcs),
        )
        if active is not None and meta.banks[active].state not in _RUNNABLE:
            raise ValueError(f"active bank {active} is neither valid nor invalidated")
        return meta


@dataclass(frozen=True, slots=True)
class BootReport:
    """What a boot found: the bank it runs (``None``: bootloader only), banks it rejected
    (failed verification) and banks whose image crashed at start (fault ``boot-fails``)."""

    active: int | None
    version: int | None
    rejected: tuple[int, ...] = ()
    switched: bool = False
    crashed: tuple[int, ...] = ()


@dataclass
class FlashMemory:
    """Two banks and a metadata record under *directory* (see the module docstring).

    *trusted_key*: the Ed25519 public key images must be signed with (``None``: every check
    answers :attr:`~ota.ecu_flash.CheckStatus.NO_TRUSTED_KEY`; boot then checks hashes only).
    *erase_time_s* / *check_time_s*: simulated duration of those slow steps. *faults*: in-process
    power cuts and corrupted blocks.
    """

    directory: Path
    hardware_id: str
    bank_size: int = DEFAULT_BANK_SIZE
    trusted_key: Ed25519PublicKey | None = None
    erase_time_s: float = 0.0
    check_time_s: float = 0.0
    faults: FaultState | None = None
    sleep: Callable[[float], None] = time.sleep
    _meta: FlashMeta | None = field(default=None, init=False, repr=False)
    _fd: int | None = field(default=None, init=False, repr=False)
    _lock_fd: int | None = field(default=None, init=False, repr=False)

    # --- opening -------------------------------------------------------------------------------

    def open(self, *, factory_image: bytes | None = None) -> bool:
        """Lock the directory, open the flash file, load (or create) the metadata.

        A new flash gets *factory_image* (verified like a downloaded one) in bank 0 as its valid
        image, or no valid image at all. Returns True if the flash was new.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise FlashIOError(f"cannot open ECU state {self.directory}: {e.strerror or e}") from e
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise FlashStateError(
                f"ECU state {self.directory} is in use by another process"
            ) from None
        self._lock_fd = lock_fd
        try:
            self._fd = os.open(self.directory / FLASH_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            if os.fstat(self._fd).st_size < 2 * self.bank_size:
                os.ftruncate(self._fd, 2 * self.bank_size)
            meta = self._load()
            fresh = meta is None
            if meta is None:
                meta = FlashMeta(bank_size=self.bank_size)
                if factory_image is not None:
                    meta = self._write_factory_image(meta, factory_image)
                self._persist(meta, CP_PROVISION)
            elif meta.bank_size != self.bank_size:
                raise FlashStateError(
                    f"{self.directory / META_FILE}: made with bank size {meta.bank_size}, "
                    f"not {self.bank_size} (use the same --bank-size or a new state directory)"
                )
            self._meta = meta
            return fresh
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the files and release the lock."""
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)

    def reload(self) -> FlashMeta:
        """Forget the in-memory metadata and read what is persisted (after a power cut)."""
        meta = self._load()
        self._meta = meta if meta is not None else FlashMeta(bank_size=self.bank_size)
        return self._meta

    @property
    def meta(self) -> FlashMeta:
        """The current metadata record (immutable)."""
        if self._meta is None:
            raise RuntimeError("FlashMemory is not open")
        return self._meta

    # --- steps ---------------------------------------------------------------------------------

    def boot(self) -> BootReport:
        """Pick, verify and record the bank to run (see the module docstring)."""
        meta = self.meta
        candidates = sorted(
            (i for i in (0, 1) if meta.banks[i].state is BankState.VALID),
            key=lambda i: (meta.banks[i].version, meta.banks[i].sequence),
            reverse=True,
        )
        rejected: list[int] = []
        crashed: list[int] = []
        chosen: int | None = None
        new = meta
        for index in candidates:
            record = meta.banks[index]
            if not self._verifies(index, record):
                rejected.append(index)
                dtc = DTC_BOOT_VERIFICATION
            elif self.faults is not None and self.faults.boot_fails(record.version):
                # Started, crashed, watchdog reset: the bootloader gives up on that image.
                crashed.append(index)
                dtc = DTC_START_FAILED
            else:
                chosen = index
                break
            new = new.with_bank(index, replace(new.banks[index], state=BankState.INVALID))
            new = new.with_dtc(dtc)
        new = replace(new, active=chosen)
        if new != meta:
            self._persist(new, CP_ACTIVE_SWITCH)
        version = None if chosen is None else new.banks[chosen].version
        return BootReport(
            chosen,
            version,
            tuple(rejected),
            switched=chosen != meta.active,
            crashed=tuple(crashed),
        )

    def erase(self, bank: int) -> None:
        """Erase *bank* (never the active one, nor the only valid one while the active bank is
        invalidated): erasing, 0xFF + fsync, erased."""
        self._not_active(bank)
        meta = self.meta
        running = meta.active_record
        if running is not None and running.state is not BankState.VALID:
            raise ValueError(
                f"bank {meta.active} runs invalidated: bank {bank} is the one to boot next"
            )
        self._persist(meta.with_bank(bank, BankRecord(state=BankState.ERASING)), CP_ERASE_BEGIN)
        if self.erase_time_s > 0:
            self.sleep(self.erase_time_s)
        fd = self._flash_fd()
        base = bank * self.bank_size
        chunk = bytes([ERASED]) * min(_ERASE_CHUNK, self.bank_size)
        try:
            for offset in range(0, self.bank_size, len(chunk)):
                os.pwrite(fd, chunk[: self.bank_size - offset], base + offset)
            os.fdatasync(fd)
        except OSError as e:
            raise FlashIOError(f"cannot erase bank {bank}: {e.strerror or e}") from e
        self._hit(CP_BANK_DATA_ERASED)
        self._persist(self.meta.with_bank(bank, BankRecord(state=BankState.ERASED)), CP_BANK_ERASED)

    def write_block(self, bank: int, offset: int, data: bytes, length: int) -> BankRecord:
        """Store *data* at *offset* of the image (declared *length* bytes) in *bank*, then
        record the progress; return the bank's new record."""
        self._not_active(bank)
        record = self.meta.banks[bank]
        resumable = record.state is BankState.WRITING and record.length == length
        if not (
            (record.state is BankState.ERASED and offset == 0)
            or (resumable and record.written == offset)
        ):
            raise ValueError(f"bank {bank} ({record}) cannot take {len(data)} bytes at {offset}")
        if offset + len(data) > length or length > self.bank_size:
            raise ValueError(f"block at {offset}+{len(data)} exceeds {length} or the bank")
        stored, cut = self.faults.block(data) if self.faults is not None else (data, False)
        fd = self._flash_fd()
        position = bank * self.bank_size + offset
        try:
            if cut:
                # Half the block reaches the bank before the power goes: a torn write.
                os.pwrite(fd, stored[: len(stored) // 2], position)
                os.fdatasync(fd)
                raise PowerCut("a TransferData block being written")
            os.pwrite(fd, stored, position)
            os.fdatasync(fd)
        except OSError as e:
            raise FlashIOError(f"cannot write bank {bank}: {e.strerror or e}") from e
        self._hit(CP_BLOCK_WRITTEN)
        # The CRC covers the bytes as received: what the ECU believes it wrote. A corrupted
        # store is the check's to find, as on a real ECU.
        crc = zlib.crc32(data, record.crc32 if offset else 0)
        new = BankRecord(
            state=BankState.WRITING, length=length, written=offset + len(data), crc32=crc
        )
        self._persist(self.meta.with_bank(bank, new), CP_PROGRESS)
        return new

    def check(self, bank: int, *, record_dtc: bool = True) -> CheckStatus:
        """Verify the complete download in *bank* and persist the verdict (valid or invalid)."""
        self._not_active(bank)
        meta = self.meta
        record = meta.banks[bank]
        if record.state is not BankState.WRITING or record.written != record.length:
            raise ValueError(f"bank {bank} holds no complete download ({record})")
        if self.check_time_s > 0:
            self.sleep(self.check_time_s)
        data = self.read(bank, record.length)
        status, image = self._verdict(data, meta.active_version)
        if status is CheckStatus.OK:
            assert image is not None
            sequence = meta.sequence + 1
            valid = replace(
                record,
                state=BankState.VALID,
                version=image.version,
                sha256=image.sha256,
                hardware_id=image.hardware_id,
                sequence=sequence,
            )
            self._persist(replace(meta.with_bank(bank, valid), sequence=sequence), CP_VALIDITY)
        else:
            new = meta.with_bank(bank, replace(record, state=BankState.INVALID))
            if record_dtc:
                new = new.with_dtc(DTC_CHECK_FAILED)
            self._persist(new, CP_CHECK_FAILED)
        return status

    def invalidate(self, bank: int) -> bool:
        """Mark valid *bank* invalid (a rollback) if the other bank holds a valid image of
        another SHA-256 that verifies (hash and signature, as boot will check it); return
        whether it did (False: nothing written, the flash would be left without a bootable
        bank). *bank* may be the active one: the next boot picks the other. Already invalid:
        True, nothing written."""
        meta = self.meta
        record = meta.banks[bank]
        if record.state is BankState.INVALID:
            return True
        if record.state is not BankState.VALID:
            raise ValueError(f"bank {bank} holds no valid image ({record})")
        other = 1 - bank
        fallback = meta.banks[other]
        if (
            fallback.state is not BankState.VALID
            or fallback.sha256 == record.sha256
            or not self._verifies(other, fallback)
        ):
            return False
        self._persist(meta.with_bank(bank, replace(record, state=BankState.INVALID)), CP_INVALIDATE)
        return True

    def write_fingerprint(self, fingerprint: bytes) -> None:
        """Persist a new fingerprint (16 bytes)."""
        if len(fingerprint) != FINGERPRINT_LENGTH:
            raise ValueError("a fingerprint is 16 bytes")
        self._persist(replace(self.meta, fingerprint=fingerprint), CP_FINGERPRINT)

    def clear_dtcs(self, code: int | None = None) -> None:
        """Clear stored DTC *code* (``None``: all of them)."""
        meta = self.meta
        kept = () if code is None else tuple(c for c in meta.dtcs if c != code)
        # Written even when nothing changes, as an ECU clears its DTC memory on every request.
        self._persist(replace(meta, dtcs=kept), CP_DTCS)

    def read(self, bank: int, length: int) -> bytes:
        """The first *length* bytes of *bank*."""
        fd = self._flash_fd()
        try:
            return os.pread(fd, length, bank * self.bank_size)
        except OSError as e:
            raise FlashIOError(f"cannot read bank {bank}: {e.strerror or e}") from e

    # --- helpers -------------------------------------------------------------------------------

    def _verdict(
        self, data: bytes, active_version: int | None
    ) -> tuple[CheckStatus, EcuImage | None]:
        try:
            image = EcuImage.from_bytes(data, source=f"bank of {self.hardware_id}")
        except EcuImageFormatError:
            return CheckStatus.MALFORMED, None
        if self.trusted_key is None:
            return CheckStatus.NO_TRUSTED_KEY, None
        try:
            image.verify(self.trusted_key)
        except EcuImageVerificationError as e:
            if e.defect == "hash_mismatch":
                return CheckStatus.HASH_MISMATCH, None
            return CheckStatus.BAD_SIGNATURE, None
        if image.hardware_id != self.hardware_id:
            return CheckStatus.WRONG_HARDWARE, None
        if active_version is not None and image.version < active_version:
            return CheckStatus.DOWNGRADE, None
        return CheckStatus.OK, image

    def _verifies(self, bank: int, record: BankRecord) -> bool:
        data = self.read(bank, record.length)
        if hashlib.sha256(data).digest() != record.sha256:
            return False
        if self.trusted_key is None:
            return True
        try:
            EcuImage.from_bytes(data).verify(self.trusted_key)
        except (EcuImageFormatError, EcuImageVerificationError):
            return False
        return True

    def _write_factory_image(self, meta: FlashMeta, data: bytes) -> FlashMeta:
        status, image = self._verdict(data, None)
        if self.trusted_key is None and status is CheckStatus.NO_TRUSTED_KEY:
            image = EcuImage.from_bytes(data, source="factory image")
            if image.hardware_id != self.hardware_id:
                status = CheckStatus.WRONG_HARDWARE
            else:
                status = CheckStatus.OK
        if status is not CheckStatus.OK or image is None:
            raise FlashStateError(f"factory image for {self.hardware_id}: {status.description}")
        if len(data) > self.bank_size:
            raise FlashStateError(
                f"factory image of {len(data)} bytes does not fit a bank of {self.bank_size}"
            )
        fd = self._flash_fd()
        try:
            os.pwrite(fd, data, 0)
            os.fdatasync(fd)
        except OSError as e:
            raise FlashIOError(f"cannot write the factory image: {e.strerror or e}") from e
        record = BankRecord(
            state=BankState.VALID,
            length=len(data),
            written=len(data),
            crc32=zlib.crc32(data),
            version=image.version,
            sha256=image.sha256,
            hardware_id=image.hardware_id,
            sequence=1,
        )
        return replace(meta.with_bank(0, record), active=0, sequence=1)

    def _not_active(self, bank: int) -> None:
        if bank == self.meta.active:
            raise ValueError(f"bank {bank} is the active bank: it is never written")

    def _flash_fd(self) -> int:
        if self._fd is None:
            raise RuntimeError("FlashMemory is not open")
        return self._fd

    def _hit(self, point: CrashPoint) -> None:
        point.hit()  # C6: the whole process ends here when armed
        if self.faults is not None:
            self.faults.step(point.name)  # in-process power cut of this ECU only

    def _load(self) -> FlashMeta | None:
        path = self.directory / META_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise FlashIOError(f"cannot read {path}: {e.strerror or e}") from e
        try:
            return FlashMeta.from_json(json.loads(text))
        except (ValueError, UnicodeDecodeError) as e:
            raise FlashStateError(f"{path}: {e}") from e

    def _persist(self, meta: FlashMeta, points: tuple[CrashPoint, CrashPoint]) -> None:
        """Replace the metadata file durably (write, fsync, rename, fsync the directory)."""
        before, after = points
        path = self.directory / META_FILE
        tmp = path.with_name(f".{META_FILE}.tmp")
        data = json.dumps(meta.to_json(), sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise FlashIOError(f"cannot write {tmp}: {e.strerror or e}") from e
        self._hit(before)
        try:
            tmp.replace(path)
        except OSError as e:
            raise FlashIOError(f"cannot replace {path}: {e.strerror or e}") from e
        self._hit(after)
        try:
            fsync_dir(self.directory)
        except OSError as e:
            raise FlashIOError(f"cannot sync {self.directory}: {e.strerror or e}") from e
        self._meta = meta

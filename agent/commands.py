"""Signed commands (contract C5): verification, results, signing for tools, and key files.

A command arrives on ``vehicles/<vehicle id>/cmd/<kind>`` as a serialized ``tbox.v1.SignedCommand``
(``agent/proto/tbox/v1/command.proto``): the serialized ``Command`` bytes, an Ed25519 signature
over :data:`SIGNING_CONTEXT` followed by those bytes, and the id of the key that signed them.
:class:`CommandVerifier` decides, without I/O, whether to execute it: it either returns a
:class:`VerifiedCommand` or raises :class:`CommandRejected` with a stable machine-readable code
(:class:`RejectionCode`) for the ``CommandResult``, and a message for the log. Nothing a sender
puts in a payload makes it raise anything else.

The checks run cheapest and least trusting first: the topic, the size, the envelope, the key, the
signature — only then is the signed ``Command`` parsed and believed — its fields, the target
vehicle, the kind against the topic, the validity window against the clock (with a tolerance for
skew), and replay. A command id is remembered only once the command passed every other check, so
forged or stale commands cannot fill the memory.

**Replay protection.** The verifier remembers the ids of accepted commands until they expire (past
expiry, the expiry check refuses a replay anyway), at most ``remember`` of them. When that many
unexpired commands are remembered, the one issued first is forgotten and its issue time becomes a
floor: any command issued at or before the floor is refused as a possible replay. The memory is
in-process; commands replayed after a restart are caught by expiry, so keep lifetimes short and
handlers idempotent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from agent.errors import InputError, UsageError
from agent.proto.tbox.v1 import SCHEMA_VERSION, Command, CommandResult, SignedCommand

__all__ = [
    "DEFAULT_MAX_BYTES",
    "SIGNING_CONTEXT",
    "CommandRejected",
    "CommandVerifier",
    "RejectionCode",
    "VerifiedCommand",
    "command_topic",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
    "make_command",
    "result_payload",
    "result_topic",
    "sign_command",
]

#: Default size limit of a command payload (the serialized SignedCommand).
DEFAULT_MAX_BYTES = 16 * 1024
#: What the signature covers before the Command bytes, so that a signature made with the same key
#: for anything else (update metadata, another protocol) is never a valid command signature.
SIGNING_CONTEXT = b"tbox.v1.Command\x00"

_MICROS = 1_000_000
_KIND = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_ID_CHARS = 128
_MAX_MESSAGE_CHARS = 1000
_SIGNATURE_BYTES = 64
_KEY_BYTES = 32
_PARSE_ERRORS = (DecodeError, ValueError, RuntimeError)


class RejectionCode(StrEnum):
    """Why a command was refused: the ``error_code`` of its ``CommandResult``."""

    #: The topic is not ``vehicles/<this vehicle>/cmd/<kind>`` with a valid kind.
    BAD_TOPIC = "bad_topic"
    #: The payload exceeds the size limit.
    TOO_LARGE = "too_large"
    #: The payload is not a ``SignedCommand`` with a command and a signature.
    NOT_SIGNED_COMMAND = "not_signed_command"
    #: ``key_id`` names no trusted key.
    UNKNOWN_KEY = "unknown_key"
    #: The signature does not verify with the named key.
    BAD_SIGNATURE = "bad_signature"
    #: The signed bytes are not a well-formed ``Command`` (missing or invalid fields).
    MALFORMED_COMMAND = "malformed_command"
    #: The command names another vehicle.
    WRONG_VEHICLE = "wrong_vehicle"
    #: The command's kind differs from the topic's.
    KIND_MISMATCH = "kind_mismatch"
    #: Issued further in the future than the allowed clock skew.
    NOT_YET_VALID = "not_yet_valid"
    #: Its expiry time has passed (beyond the allowed clock skew).
    EXPIRED = "expired"
    #: Its validity window is longer than the vehicle accepts.
    LIFETIME_TOO_LONG = "lifetime_too_long"
    #: Its id was seen before, or it was issued before the oldest remembered command.
    REPLAYED = "replayed"


class CommandRejected(InputError):  # noqa: N818 - a verdict, named for what the caller reports
    """A command the vehicle must not execute.

    ``code`` goes into the result's ``error_code``; ``message`` explains it to a human.
    ``command_id`` is the id the command claimed (trusted only if the signature verified; empty if
    unreadable) and ``kind`` the topic's kind (empty if the topic is not a command topic), both for
    the result.
    """

    def __init__(
        self, code: RejectionCode, message: str, *, command_id: str = "", kind: str = ""
    ) -> None:
        super().__init__(f"command rejected ({code}): {message}")
        self.code = code
        self.message = message
        self.command_id = command_id
        self.kind = kind


@dataclass(frozen=True, slots=True)
class VerifiedCommand:
    """A command that passed every check; times are seconds since the Unix epoch."""

    kind: str
    command_id: str
    vehicle_id: str
    issued_time: float
    expiry_time: float
    body: bytes
    key_id: str


def command_topic(vehicle_id: str, kind: str) -> str:
    """``vehicles/<vehicle_id>/cmd/<kind>``."""
    return f"vehicles/{vehicle_id}/cmd/{kind}"


def result_topic(vehicle_id: str, kind: str) -> str:
    """``vehicles/<vehicle_id>/cmd/<kind>/result``: where the result of a command goes."""
    return f"{command_topic(vehicle_id, kind)}/result"


def _short(text: str, limit: int = 80) -> str:
    """*text* made safe to quote in a log line or result (sender-controlled, so bounded)."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text)


class CommandVerifier:
    """Verifies signed commands for one vehicle.

    ``trusted_keys`` maps key ids to Ed25519 public keys. ``clock`` returns seconds since the Unix
    epoch. A command is valid from ``issued_time_us - max_skew`` to ``expiry_time_us + max_skew``
    and its validity window may span at most ``max_lifetime`` seconds. ``remember`` bounds the
    ids kept for replay protection (see the module's documentation). Not thread-safe: verify from
    one task.
    """

    def __init__(
        self,
        trusted_keys: Mapping[str, Ed25519PublicKey],
        vehicle_id: str,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
        max_skew: float = 300.0,
        max_lifetime: float = 7 * 86400.0,
        remember: int = 4096,
    ) -> None:
        if not vehicle_id or "/" in vehicle_id or "+" in vehicle_id or "#" in vehicle_id:
            raise ValueError(f"vehicle id {vehicle_id!r} cannot be a topic level")
        if remember < 1:
            raise ValueError("remember must be at least 1")
        self.trusted_keys = dict(trusted_keys)
        self.vehicle_id = vehicle_id
        self.max_bytes = max_bytes
        self.clock = clock
        self._skew_us = round(max_skew * _MICROS)
        self._max_lifetime_us = round(max_lifetime * _MICROS)
        self._remember = remember
        # command id -> (issued_time_us, expiry_time_us) of accepted commands
        self._seen: dict[str, tuple[int, int]] = {}
        # Commands issued at or before this time are refused (see the module's documentation).
        self._floor_us: int | None = None
        self._prefix = f"vehicles/{vehicle_id}/cmd/"

    def kind_of(self, topic: str) -> str | None:
        """The command kind of *topic*, or None if it is not a command topic of this vehicle.

        A subscription to ``vehicles/<id>/cmd/#`` also delivers the vehicle's own results
        (``cmd/<kind>/result``): they are not command topics, so a channel that ignores topics
        for which this is None does not answer its own results.
        """
        if not topic.startswith(self._prefix):
            return None
        kind = topic[len(self._prefix) :]
        return kind if _KIND.fullmatch(kind) else None

    def verify(self, topic: str, payload: bytes | bytearray) -> VerifiedCommand:
        """Check a command received on *topic*; :class:`CommandRejected` if it must not run."""
        kind = self.kind_of(topic)
        if kind is None:
            raise CommandRejected(
                RejectionCode.BAD_TOPIC,
                f"topic {_short(topic)} is not {self._prefix}<kind> with a kind of letters, "
                "digits, '_', '-' or '.'",
            )
        if len(payload) > self.max_bytes:
            raise CommandRejected(
                RejectionCode.TOO_LARGE,
                f"payload of {len(payload)} bytes exceeds the limit of {self.max_bytes}",
                kind=kind,
            )
        signed = SignedCommand()
        try:
            signed.ParseFromString(bytes(payload))
        except _PARSE_ERRORS:
            raise CommandRejected(
                RejectionCode.NOT_SIGNED_COMMAND,
                "payload is not a tbox.v1.SignedCommand",
                kind=kind,
            ) from None
        if not signed.command or not signed.signature:
            raise CommandRejected(
                RejectionCode.NOT_SIGNED_COMMAND,
                "SignedCommand lacks its command or its signature",
                kind=kind,
            )
        claimed_id = _claimed_id(signed.command)
        key = self.trusted_keys.get(signed.key_id)
        if key is None:
            raise CommandRejected(
                RejectionCode.UNKNOWN_KEY,
                f"key id {_short(signed.key_id)} is not a trusted key",
                command_id=claimed_id,
                kind=kind,
            )
        if len(signed.signature) != _SIGNATURE_BYTES:
            raise CommandRejected(
                RejectionCode.BAD_SIGNATURE,
                f"signature has {len(signed.signature)} bytes, not {_SIGNATURE_BYTES}",
                command_id=claimed_id,
                kind=kind,
            )
        try:
            key.verify(signed.signature, SIGNING_CONTEXT + signed.command)
        except InvalidSignature:
            raise CommandRejected(
                RejectionCode.BAD_SIGNATURE,
                f"signature does not verify with key {_short(signed.key_id)}",
                command_id=claimed_id,
                kind=kind,
            ) from None
        # From here on the command bytes are the signer's: fields can be quoted and believed.
        command = Command()
        try:
            command.ParseFromString(signed.command)
        except _PARSE_ERRORS:
            raise CommandRejected(
                RejectionCode.MALFORMED_COMMAND, "signed bytes are not a tbox.v1.Command", kind=kind
            ) from None
        self._check_fields(command, kind)
        command_id = command.command_id
        if command.vehicle_id != self.vehicle_id:
            raise CommandRejected(
                RejectionCode.WRONG_VEHICLE,
                f"command is for vehicle {_short(command.vehicle_id)}, this is "
                f"{_short(self.vehicle_id)}",
                command_id=command_id,
                kind=kind,
            )
        if command.kind != kind:
            raise CommandRejected(
                RejectionCode.KIND_MISMATCH,
                f"command of kind {_short(command.kind)} arrived on the topic of kind {kind!r}",
                command_id=command_id,
                kind=kind,
            )
        self._check_time_and_replay(command, kind)
        self._remember_id(command)
        return VerifiedCommand(
            kind=kind,
            command_id=command_id,
            vehicle_id=command.vehicle_id,
            issued_time=command.issued_time_us / _MICROS,
            expiry_time=command.expiry_time_us / _MICROS,
            body=command.body,
            key_id=signed.key_id,
        )

    def _check_fields(self, command: Command, kind: str) -> None:
        problem = ""
        if not command.command_id:
            problem = "command_id is empty"
        elif len(command.command_id) > _MAX_ID_CHARS:
            problem = f"command_id is longer than {_MAX_ID_CHARS} characters"
        elif not _KIND.fullmatch(command.kind):
            problem = f"kind {_short(command.kind)} is not 1-64 letters, digits, '_', '-' or '.'"
        elif not command.vehicle_id:
            problem = "vehicle_id is empty"
        elif command.issued_time_us <= 0:
            problem = "issued_time_us is not set"
        elif command.expiry_time_us <= command.issued_time_us:
            problem = "expiry_time_us is not after issued_time_us"
        if problem:
            raise CommandRejected(
                RejectionCode.MALFORMED_COMMAND,
                problem,
                command_id=command.command_id[:_MAX_ID_CHARS],
                kind=kind,
            )

    def _check_time_and_replay(self, command: Command, kind: str) -> None:
        now_us = round(self.clock() * _MICROS)
        issued, expiry = command.issued_time_us, command.expiry_time_us
        code, problem = None, ""
        if issued > now_us + self._skew_us:
            code = RejectionCode.NOT_YET_VALID
            problem = f"issued {(issued - now_us) / _MICROS:.0f} s in the future"
        elif expiry + self._skew_us < now_us:
            code = RejectionCode.EXPIRED
            problem = f"expired {(now_us - expiry) / _MICROS:.0f} s ago"
        elif expiry - issued > self._max_lifetime_us:
            code = RejectionCode.LIFETIME_TOO_LONG
            problem = (
                f"valid for {(expiry - issued) / _MICROS:.0f} s, more than the maximum of "
                f"{self._max_lifetime_us / _MICROS:.0f} s"
            )
        elif command.command_id in self._seen:
            code = RejectionCode.REPLAYED
            problem = f"command id {_short(command.command_id)} was already received"
        elif self._floor_us is not None and issued <= self._floor_us:
            code = RejectionCode.REPLAYED
            problem = "issued before the oldest command still remembered (possible replay)"
        if code is not None:
            raise CommandRejected(code, problem, command_id=command.command_id, kind=kind)

    def _remember_id(self, command: Command) -> None:
        if len(self._seen) >= self._remember:
            # Forget what has expired: the expiry check refuses those ids without help.
            now_us = round(self.clock() * _MICROS)
            self._seen = {
                cid: times
                for cid, times in self._seen.items()
                if times[1] + self._skew_us >= now_us
            }
        if len(self._seen) >= self._remember:
            oldest = min(self._seen, key=lambda cid: self._seen[cid][0])
            issued, _ = self._seen.pop(oldest)
            self._floor_us = issued if self._floor_us is None else max(self._floor_us, issued)
        self._seen[command.command_id] = (command.issued_time_us, command.expiry_time_us)


def _claimed_id(command_bytes: bytes) -> str:
    """The command id an unverified Command claims (for correlating the result), or ""."""
    command = Command()
    try:
        command.ParseFromString(command_bytes)
    except _PARSE_ERRORS:
        return ""
    return command.command_id[:_MAX_ID_CHARS]


def result_payload(
    *,
    vehicle_id: str,
    sequence: int,
    command_id: str,
    kind: str,
    status: Literal["ok", "rejected", "failed"],
    error_code: str = "",
    message: str = "",
    created_time: float,
) -> bytes:
    """A serialized ``tbox.v1.CommandResult`` for ``cmd/<kind>/result``.

    For a rejection: ``status="rejected", error_code=e.code, message=e.message,
    command_id=e.command_id, kind=e.kind``. *created_time* is seconds since the Unix epoch;
    *sequence* comes from the vehicle's sequence counter. Long messages are truncated.
    """
    statuses = {
        "ok": CommandResult.STATUS_OK,
        "rejected": CommandResult.STATUS_REJECTED,
        "failed": CommandResult.STATUS_FAILED,
    }
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[: _MAX_MESSAGE_CHARS - 1] + "…"
    return CommandResult(
        vehicle_id=vehicle_id,
        sequence=sequence,
        schema_version=SCHEMA_VERSION,
        time_us=round(created_time * _MICROS),
        command_id=command_id,
        kind=kind,
        status=statuses[status],
        error_code=str(error_code),
        message=message,
    ).SerializeToString()


# --------------------------------------------------------------------------------------------
# Tools: making and signing commands


def make_command(
    kind: str,
    body: bytes,
    *,
    vehicle_id: str,
    command_id: str | None = None,
    issued_time: float | None = None,
    lifetime: float = 300.0,
) -> Command:
    """A ``Command`` issued now (or at *issued_time*), valid for *lifetime* seconds.

    *command_id* defaults to a random UUID.
    """
    issued = time.time() if issued_time is None else issued_time
    if not math.isfinite(issued) or not math.isfinite(lifetime) or lifetime <= 0:
        raise ValueError("issued_time and lifetime must be finite, lifetime positive")
    return Command(
        kind=kind,
        command_id=command_id if command_id is not None else str(uuid.uuid4()),
        issued_time_us=round(issued * _MICROS),
        expiry_time_us=round((issued + lifetime) * _MICROS),
        vehicle_id=vehicle_id,
        body=body,
    )


def sign_command(private_key: Ed25519PrivateKey, key_id: str, command: Command) -> bytes:
    """The payload for ``cmd/<kind>``: *command* serialized and signed with *private_key*."""
    command_bytes = command.SerializeToString(deterministic=True)
    return SignedCommand(
        command=command_bytes,
        signature=private_key.sign(SIGNING_CONTEXT + command_bytes),
        key_id=key_id,
    ).SerializeToString()


# --------------------------------------------------------------------------------------------
# Key files


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """A default key id: the first 16 hex digits of the SHA-256 of the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _read_key_file(path: str | Path, what: str) -> bytes:
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} file {path} does not exist")
    try:
        return p.read_bytes()
    except OSError as e:
        raise InputError(f"{what} file {path}: cannot read it ({e.strerror or e})") from None


def _raw_from_text(data: bytes) -> bytes | None:
    """32 key bytes written as hex or base64 text, or None."""
    try:
        text = data.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    if re.fullmatch(r"[0-9a-fA-F]{64}", text):
        return bytes.fromhex(text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == _KEY_BYTES else None


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the file at *path*.

    Accepted: PEM (``-----BEGIN PUBLIC KEY-----``), DER SubjectPublicKeyInfo, an OpenSSH
    ``ssh-ed25519 …`` line, the raw 32 bytes, or those 32 bytes as hex or base64 text. Raises
    :class:`UsageError` if the file does not exist and :class:`InputError`, naming the file, if it
    holds anything else.
    """
    data = _read_key_file(path, "public key")
    what = f"public key file {path}"
    key: object
    try:
        if b"-----BEGIN" in data:
            if b"PRIVATE KEY" in data:
                raise InputError(f"{what} holds a private key; give the public key")
            key = serialization.load_pem_public_key(data)
        elif data.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(data.strip())
        elif len(data) == _KEY_BYTES:
            key = Ed25519PublicKey.from_public_bytes(data)
        elif (raw := _raw_from_text(data)) is not None:
            key = Ed25519PublicKey.from_public_bytes(raw)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise InputError(
            f"{what}: not an Ed25519 public key in PEM, DER, OpenSSH, raw, hex or base64 form ({e})"
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{what}: holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the file at *path* (for tools that sign commands).

    Accepted: unencrypted PEM (PKCS#8 or OpenSSH), DER PKCS#8, the raw 32-byte seed, or the seed as
    hex or base64 text. Errors as for :func:`load_public_key`.
    """
    data = _read_key_file(path, "private key")
    what = f"private key file {path}"
    key: object
    try:
        if b"-----BEGIN OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        elif b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        elif len(data) == _KEY_BYTES:
            key = Ed25519PrivateKey.from_private_bytes(data)
        elif (raw := _raw_from_text(data)) is not None:
            key = Ed25519PrivateKey.from_private_bytes(raw)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise InputError(
            f"{what}: not an unencrypted Ed25519 private key in PEM, DER, OpenSSH, raw, hex or "
            f"base64 form ({e})"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{what}: holds a {type(key).__name__}, not an Ed25519 private key")
    return key


def load_trusted_keys(files: Mapping[str, str | Path]) -> dict[str, Ed25519PublicKey]:
    """Key id → public key, loading each file with :func:`load_public_key`."""
    return {key_id: load_public_key(path) for key_id, path in files.items()}

"""ECU firmware images: a signed header, the payload, and an Ed25519 signature as a trailer.

An image is one file that an ECU receives as it is (over UDS ``TransferData``) and checks by
itself (``RoutineControl`` 0xFF01, check programming dependencies), so everything the check needs
travels inside it: no detached manifest to lose on the way to the ECU. Layout, big-endian::

    offset  size  field
         0     8  magic            b"TBOXECU\\0"
         8     2  format           1
        10     2  header length    128
        12     4  payload length   N bytes
        16     8  version          the firmware version (0 … 2^63-1); an ECU refuses a lower one
        24     8  key id           first 8 bytes of SHA-256 of the signing key's raw public key
        32    32  hardware id      ASCII, NUL-padded: the ECU hardware the image is built for
        64    32  payload SHA-256
        96    32  reserved         zero
       128     N  payload
     128+N    64  signature        Ed25519 over b"tbox ecu image v1\\n" + the 128 header bytes

The signature covers the header only; the header carries the payload's length and SHA-256, so the
payload is covered through the hash, and an ECU can verify while streaming (hash the payload as
it arrives, check 192 bytes at the end). The context prefix keeps a signature over an image
header from being valid for anything else the same key signs. The key id only tells which key
signed (a clearer message than "bad signature" when an ECU trusts another key); it is not trusted
by itself.

Usage::

    private_pem, public_pem = generate_key_pair()
    data = build_image(payload, version=7, hardware_id="bms", private_key=load_private_key(p))
    image = EcuImage.from_bytes(data, source="bms-7.img")  # structure only
    image.verify(load_public_key(pub))                      # hash and signature, or raises

Errors: :class:`EcuImageFormatError` (not an image of this format: the file's fault),
:class:`EcuImageVerificationError` with a :class:`ImageDefect` (hash, signature),
:class:`~ota.errors.SigningKeyError` and :class:`EcuKeyError` for key files.
"""

from __future__ import annotations

import hashlib
import stat
import struct
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from agent.durable_file import write_durably
from ota.errors import (
    OtaInputError,
    OtaIOError,
    OtaUsageError,
    OtaVerificationError,
    SigningKeyError,
)

__all__ = [
    "HEADER_LENGTH",
    "MAGIC",
    "MAX_HARDWARE_ID",
    "MAX_VERSION",
    "SIGNATURE_LENGTH",
    "EcuImage",
    "EcuImageFormatError",
    "EcuImageHeader",
    "EcuImageVerificationError",
    "EcuKeyError",
    "ImageDefect",
    "build_image",
    "generate_key_pair",
    "hardware_id_problem",
    "key_id",
    "load_private_key",
    "load_public_key",
    "public_key_from_pem",
    "write_image",
]

MAGIC: Final = b"TBOXECU\x00"
FORMAT: Final = 1
HEADER_LENGTH: Final = 128
SIGNATURE_LENGTH: Final = 64
KEY_ID_LENGTH: Final = 8
MAX_HARDWARE_ID: Final = 32
#: Versions are release counters (:data:`ota.target_info.MAX_RELEASE_COUNTER`).
MAX_VERSION: Final = 2**63 - 1
MAX_PAYLOAD: Final = 2**32 - 1
SIGNING_CONTEXT: Final = b"tbox ecu image v1\n"

_HEADER = struct.Struct(">8sHHIQ8s32s32s32s")
assert _HEADER.size == HEADER_LENGTH


class EcuImageFormatError(OtaInputError):
    """The bytes are not an ECU image of this format (bad magic, lengths, reserved bytes)."""


class EcuKeyError(OtaInputError):
    """A public key file is missing, unreadable or not an Ed25519 public key."""


class ImageDefect(StrEnum):
    """Why a well-formed image does not verify."""

    HASH_MISMATCH = "hash_mismatch"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"


class EcuImageVerificationError(OtaVerificationError):
    """The image's payload hash or signature does not verify; ``defect`` says which."""

    def __init__(self, defect: ImageDefect, message: str) -> None:
        self.defect = defect
        super().__init__(message)


def hardware_id_problem(value: str) -> str | None:
    """Why *value* cannot be an image's hardware id, or ``None`` if it can (1–32 characters of
    letters, digits, ``._-``, starting with a letter or digit)."""
    from ota.target_info import identifier_problem

    problem = identifier_problem(value)
    if problem is not None:
        return problem
    if len(value) > MAX_HARDWARE_ID:
        return f"{value!r} is {len(value)} characters long; an ECU image holds at most 32"
    return None


@dataclass(frozen=True, slots=True)
class EcuImageHeader:
    """The 128-byte header of an image (see the module docstring)."""

    version: int
    payload_length: int
    hardware_id: str
    key_id: bytes
    payload_sha256: bytes

    def pack(self) -> bytes:
        """The header's 128 bytes."""
        return _HEADER.pack(
            MAGIC,
            FORMAT,
            HEADER_LENGTH,
            self.payload_length,
            self.version,
            self.key_id,
            self.hardware_id.encode("ascii"),
            self.payload_sha256,
            bytes(32),
        )

    @classmethod
    def unpack(cls, data: bytes, *, source: str = "image") -> EcuImageHeader:
        """Parse the first 128 bytes of *data*; :class:`EcuImageFormatError` naming *source*."""
        if len(data) < HEADER_LENGTH:
            raise EcuImageFormatError(
                f"{source}: {len(data)} bytes is too short for an ECU image header "
                f"({HEADER_LENGTH} bytes)"
            )
        magic, fmt, header_length, length, version, kid, hw, digest, reserved = _HEADER.unpack(
            data[:HEADER_LENGTH]
        )
        if magic != MAGIC:
            raise EcuImageFormatError(f"{source}: not a tbox ECU image (magic {magic!r})")
        if fmt != FORMAT:
            raise EcuImageFormatError(
                f"{source}: ECU image format {fmt} is not supported (this build reads {FORMAT})"
            )
        if header_length != HEADER_LENGTH:
            raise EcuImageFormatError(
                f"{source}: header length {header_length} is not {HEADER_LENGTH}"
            )
        if reserved != bytes(32):
            raise EcuImageFormatError(f"{source}: the header's reserved bytes are not zero")
        if version > MAX_VERSION:
            raise EcuImageFormatError(f"{source}: version {version} is above 2^63-1")
        name = hw.rstrip(b"\x00")
        try:
            hardware_id = name.decode("ascii")
        except UnicodeDecodeError:
            raise EcuImageFormatError(f"{source}: the hardware id is not ASCII") from None
        if b"\x00" in name or hardware_id_problem(hardware_id) is not None:
            raise EcuImageFormatError(f"{source}: hardware id {name!r} is malformed")
        return cls(
            version=version,
            payload_length=length,
            hardware_id=hardware_id,
            key_id=kid,
            payload_sha256=digest,
        )

    @property
    def image_length(self) -> int:
        """Length of the whole image file: header, payload and signature."""
        return HEADER_LENGTH + self.payload_length + SIGNATURE_LENGTH


@dataclass(frozen=True, slots=True)
class EcuImage:
    """A structurally valid image held in memory (signature not yet checked: :meth:`verify`)."""

    header: EcuImageHeader
    data: bytes
    sha256: bytes  # of the whole image file, as update metadata lists it

    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "image") -> EcuImage:
        """Parse *data*; :class:`EcuImageFormatError` naming *source* unless it is well formed."""
        header = EcuImageHeader.unpack(data, source=source)
        if len(data) != header.image_length:
            raise EcuImageFormatError(
                f"{source}: {len(data)} bytes, but the header says {header.payload_length} "
                f"bytes of payload ({header.image_length} bytes in all)"
            )
        return cls(header=header, data=bytes(data), sha256=hashlib.sha256(data).digest())

    @classmethod
    def load(cls, path: Path) -> EcuImage:
        """Read and parse the image file *path*."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise OtaIOError(f"cannot read ECU image {path}: {e.strerror or e}") from e
        return cls.from_bytes(data, source=str(path))

    @property
    def version(self) -> int:
        """The firmware version the header declares."""
        return self.header.version

    @property
    def hardware_id(self) -> str:
        """The ECU hardware the image is built for."""
        return self.header.hardware_id

    @property
    def payload(self) -> bytes:
        """The firmware itself, without header and signature."""
        return self.data[HEADER_LENGTH : HEADER_LENGTH + self.header.payload_length]

    @property
    def signature(self) -> bytes:
        """The trailer: Ed25519 over the signing context and the header."""
        return self.data[-SIGNATURE_LENGTH:]

    def verify(self, public_key: Ed25519PublicKey, *, source: str = "image") -> None:
        """Check the payload hash and the signature with *public_key*, or raise
        :class:`EcuImageVerificationError` naming the defect."""
        digest = hashlib.sha256(self.payload).digest()
        if digest != self.header.payload_sha256:
            raise EcuImageVerificationError(
                ImageDefect.HASH_MISMATCH,
                f"{source}: the payload's SHA-256 {digest.hex()[:16]}… does not match the "
                f"header's {self.header.payload_sha256.hex()[:16]}…",
            )
        expected = key_id(public_key)
        if self.header.key_id != expected:
            raise EcuImageVerificationError(
                ImageDefect.UNKNOWN_KEY,
                f"{source}: signed by key {self.header.key_id.hex()}, not by the trusted key "
                f"{expected.hex()}",
            )
        try:
            public_key.verify(self.signature, SIGNING_CONTEXT + self.data[:HEADER_LENGTH])
        except InvalidSignature:
            raise EcuImageVerificationError(
                ImageDefect.BAD_SIGNATURE,
                f"{source}: the Ed25519 signature does not verify with key {expected.hex()}",
            ) from None


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """The 8-byte id of *public_key* stored in image headers."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KEY_ID_LENGTH]


def build_image(
    payload: bytes, *, version: int, hardware_id: str, private_key: Ed25519PrivateKey
) -> bytes:
    """A signed image of *payload*; :class:`~ota.errors.OtaUsageError` for a bad version or id."""
    if isinstance(version, bool) or not isinstance(version, int) or not 0 <= version <= MAX_VERSION:
        raise OtaUsageError(f"ECU image version {version!r} must be a whole number 0 … 2^63-1")
    problem = hardware_id_problem(hardware_id)
    if problem is not None:
        raise OtaUsageError(f"ECU image hardware id {problem}")
    if len(payload) > MAX_PAYLOAD:
        raise OtaUsageError(f"ECU image payload of {len(payload)} bytes exceeds 4 GiB")
    header = EcuImageHeader(
        version=version,
        payload_length=len(payload),
        hardware_id=hardware_id,
        key_id=key_id(private_key.public_key()),
        payload_sha256=hashlib.sha256(payload).digest(),
    ).pack()
    signature = private_key.sign(SIGNING_CONTEXT + header)
    return header + payload + signature


def write_image(path: Path, data: bytes) -> None:
    """Write an image (or key) file atomically and durably; :class:`OtaIOError` on failure."""
    try:
        write_durably(path, data)
    except OSError as e:
        raise OtaIOError(f"cannot write {path}: {e.strerror or e}") from e


def generate_key_pair() -> tuple[bytes, bytes]:
    """A new Ed25519 key pair as ``(private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)``."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in PEM file *path*; refused when others may read it (as ssh does).

    :class:`~ota.errors.SigningKeyError` names the file and the problem.
    """
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as e:
        raise SigningKeyError(f"cannot read key file {path}: {e.strerror or e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SigningKeyError(
            f"key file {path} is accessible by others (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(f"key file {path} is not an unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_from_pem(data: bytes, *, source: str) -> Ed25519PublicKey:
    """Parse an Ed25519 public key (SubjectPublicKeyInfo PEM); :class:`EcuKeyError` naming
    *source* otherwise."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise EcuKeyError(f"{source} is not a PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise EcuKeyError(f"{source} holds a {type(key).__name__}, not an Ed25519 public key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """The Ed25519 public key in PEM file *path* (:class:`EcuKeyError` naming it otherwise)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise EcuKeyError(f"cannot read public key {path}: {e.strerror or e}") from e
    return public_key_from_pem(data, source=f"public key {path}")

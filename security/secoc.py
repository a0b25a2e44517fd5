"""SecOC: AUTOSAR-style authenticated CAN frames — build them, and verify them on reception.

AUTOSAR's Secure Onboard Communication appends to an *authentic* PDU (the plain payload) the
least significant bits of a *freshness value* (FV, a per-message counter both ends keep) and a
truncated MAC, so a receiver can tell a forged or replayed frame from a real one. This module
implements the common profile with AES-CMAC (NIST SP 800-38B, ``cryptography``'s ``CMAC``):

    DataToAuthenticator = DataId (16 bits, big endian) ‖ AuthenticPDU ‖ FV (full length)
    Authenticator       = the most significant ``mac_bits`` of AES-CMAC(key, DataToAuthenticator)
    SecuredPDU          = AuthenticPDU ‖ FV's ``freshness_tx_bits`` LSBs ‖ Authenticator

The full FV is ``freshness_bits`` long (at most 64) and enters the MAC as ``ceil(bits / 8)``
bytes, big endian. Truncated FV and authenticator are packed bit by bit, most significant bit
first, right after the authentic PDU; the last byte is padded with zero bits.

**Reception** (:class:`SecOcVerifier`). With ``freshness_tx_bits < freshness_bits`` the receiver
rebuilds the full FV from the latest FV it accepted: the received LSBs above the latest's LSBs
keep its upper part, otherwise the upper part is incremented (the LSBs wrapped). The frame is
accepted when its MAC over that FV verifies and the FV is newer than the latest; the latest then
moves to it. A frame that fails is explained:

* :attr:`SecOcVerdict.STALE_FRESHNESS` — the MAC verifies with an FV that is *not* newer than
  the latest accepted one: a recorded frame played back (replay);
* :attr:`SecOcVerdict.FRESHNESS_JUMP` — the MAC verifies, but the FV is more than
  ``freshness_window`` ahead of the latest (only with a window configured);
* :attr:`SecOcVerdict.BAD_MAC` — no FV the receiver would consider makes the MAC verify: forged
  or corrupted;
* :attr:`SecOcVerdict.TOO_SHORT` — the frame is shorter than a secured PDU.

A verifier starts from ``initial_freshness``. Left at ``None`` with the full FV transmitted
(``freshness_tx_bits == freshness_bits``), the first frame whose MAC verifies sets the baseline
(a receiver joining a running bus); with a truncated FV the baseline must be known (default 0, an
FV manager synchronised at start-up), since the upper bits cannot be guessed.

:class:`SecOcSender` builds the frames a real sender would (for tests and the simulator).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.cmac import CMAC

__all__ = [
    "MAX_FRESHNESS_BITS",
    "SecOcProfile",
    "SecOcSender",
    "SecOcVerdict",
    "SecOcVerifier",
    "authenticator",
    "secure",
]

#: Longest freshness value (bits).
MAX_FRESHNESS_BITS: Final = 64
#: AES-CMAC gives 128 bits; AUTOSAR profiles transmit 24–64 of them.
MAX_MAC_BITS: Final = 128
_AES_KEY_LENGTHS: Final = (16, 24, 32)


@dataclass(frozen=True, slots=True)
class SecOcProfile:
    """How one message is secured.

    ``data_id`` (16 bits) names the message in the MAC; ``payload_bytes`` is the authentic PDU's
    length; ``freshness_bits`` the full FV's length (1–64) of which ``freshness_tx_bits`` (0 …
    ``freshness_bits``) are sent; ``mac_bits`` (1–128) of the CMAC are sent.
    ``freshness_window`` (0: none) is the furthest an accepted FV may be ahead of the latest.
    Raises ``ValueError`` for values out of range.
    """

    data_id: int
    payload_bytes: int
    freshness_bits: int = 64
    freshness_tx_bits: int = 8
    mac_bits: int = 24
    freshness_window: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.data_id <= 0xFFFF:
            raise ValueError(f"data_id {self.data_id} is not a 16-bit number")
        if not 0 <= self.payload_bytes <= 64:
            raise ValueError(f"payload_bytes {self.payload_bytes} is not in [0, 64]")
        if not 1 <= self.freshness_bits <= MAX_FRESHNESS_BITS:
            raise ValueError(f"freshness_bits {self.freshness_bits} is not in [1, 64]")
        if not 0 <= self.freshness_tx_bits <= self.freshness_bits:
            raise ValueError(
                f"freshness_tx_bits {self.freshness_tx_bits} is not in "
                f"[0, freshness_bits = {self.freshness_bits}]"
            )
        if not 1 <= self.mac_bits <= MAX_MAC_BITS:
            raise ValueError(f"mac_bits {self.mac_bits} is not in [1, 128]")
        if self.freshness_window < 0:
            raise ValueError(f"freshness_window {self.freshness_window} is negative")
        if self.secured_bytes > 64:
            raise ValueError(f"the secured PDU would be {self.secured_bytes} bytes (at most 64)")

    @property
    def trailer_bits(self) -> int:
        """Bits after the authentic PDU: truncated FV and authenticator."""
        return self.freshness_tx_bits + self.mac_bits

    @property
    def secured_bytes(self) -> int:
        """Length of the secured PDU in bytes."""
        return self.payload_bytes + (self.trailer_bits + 7) // 8

    @property
    def freshness_modulus(self) -> int:
        """``2**freshness_bits``: the FV wraps (a sender must re-key before that)."""
        return 1 << self.freshness_bits


def _check_key(key: bytes) -> None:
    if len(key) not in _AES_KEY_LENGTHS:
        raise ValueError(f"an AES key has 16, 24 or 32 bytes, not {len(key)}")


def _mac(profile: SecOcProfile, cipher: algorithms.AES, payload: bytes, freshness: int) -> int:
    """The truncated authenticator of *payload* with full FV *freshness*."""
    cmac = CMAC(cipher)
    cmac.update(profile.data_id.to_bytes(2, "big"))
    cmac.update(payload)
    cmac.update(freshness.to_bytes((profile.freshness_bits + 7) // 8, "big"))
    full = int.from_bytes(cmac.finalize(), "big")
    return full >> (MAX_MAC_BITS - profile.mac_bits)


def authenticator(profile: SecOcProfile, key: bytes, payload: bytes, freshness: int) -> int:
    """The truncated MAC (``mac_bits`` wide) of *payload* under FV *freshness*."""
    _check_key(key)
    if len(payload) != profile.payload_bytes:
        raise ValueError(f"payload has {len(payload)} bytes, the profile {profile.payload_bytes}")
    if not 0 <= freshness < profile.freshness_modulus:
        raise ValueError(f"freshness {freshness} does not fit in {profile.freshness_bits} bits")
    return _mac(profile, algorithms.AES(key), bytes(payload), freshness)


def secure(profile: SecOcProfile, key: bytes, payload: bytes, freshness: int) -> bytes:
    """The secured PDU carrying *payload* with FV *freshness* (what a sender puts on the bus)."""
    mac = authenticator(profile, key, payload, freshness)
    tx_mask = (1 << profile.freshness_tx_bits) - 1
    trailer = ((freshness & tx_mask) << profile.mac_bits) | mac
    nbits = profile.trailer_bits
    nbytes = (nbits + 7) // 8
    trailer <<= 8 * nbytes - nbits  # left-align: MSB first, zero padding at the end
    return bytes(payload) + trailer.to_bytes(nbytes, "big")


class SecOcVerdict(enum.Enum):
    """What :meth:`SecOcVerifier.verify` found."""

    OK = "ok"
    BAD_MAC = "bad MAC"
    STALE_FRESHNESS = "stale freshness"
    FRESHNESS_JUMP = "freshness jump"
    TOO_SHORT = "too short"


class SecOcSender:
    """Builds a sender's secured frames: FV starts at *freshness* and grows by one per frame."""

    def __init__(self, profile: SecOcProfile, key: bytes, *, freshness: int = 1) -> None:
        _check_key(key)
        self.profile = profile
        self.key = bytes(key)
        self.freshness = freshness

    def next_frame(self, payload: bytes) -> bytes:
        """The secured PDU for *payload* with the current FV; the FV then advances."""
        data = secure(self.profile, self.key, payload, self.freshness)
        self.freshness = (self.freshness + 1) % self.profile.freshness_modulus
        return data


class SecOcVerifier:
    """Verifies received secured PDUs of one message and tracks its freshness (see module doc).

    ``latest`` is the FV of the last accepted frame (``None`` until a baseline exists). Frames
    longer than the secured PDU are verified on their first ``secured_bytes`` (CAN FD padding).
    """

    __slots__ = ("_cipher", "_tx_mask", "latest", "profile")

    def __init__(
        self, profile: SecOcProfile, key: bytes, *, initial_freshness: int | None = None
    ) -> None:
        _check_key(key)
        self.profile = profile
        self._cipher = algorithms.AES(bytes(key))
        self._tx_mask = (1 << profile.freshness_tx_bits) - 1
        if initial_freshness is None and profile.freshness_tx_bits < profile.freshness_bits:
            initial_freshness = 0
        if initial_freshness is not None and not (
            0 <= initial_freshness < profile.freshness_modulus
        ):
            raise ValueError(f"initial_freshness {initial_freshness} does not fit the profile")
        self.latest: int | None = initial_freshness

    def split(self, data: bytes | bytearray) -> tuple[bytes, int, int] | None:
        """``(authentic PDU, truncated FV, authenticator)`` of *data*, or None if too short."""
        p = self.profile
        if len(data) < p.secured_bytes:
            return None
        payload = bytes(data[: p.payload_bytes])
        nbytes = p.secured_bytes - p.payload_bytes
        trailer = int.from_bytes(data[p.payload_bytes : p.secured_bytes], "big")
        trailer >>= 8 * nbytes - p.trailer_bits
        mac = trailer & ((1 << p.mac_bits) - 1)
        return payload, (trailer >> p.mac_bits) & self._tx_mask, mac

    def candidate(self, received: int) -> int:
        """The full FV a frame carrying FV bits *received* claims, given :attr:`latest`."""
        p = self.profile
        if p.freshness_tx_bits == p.freshness_bits or self.latest is None:
            return received
        latest = self.latest
        upper = latest & ~self._tx_mask
        if received <= latest & self._tx_mask:
            upper += 1 << p.freshness_tx_bits  # the transmitted LSBs wrapped
        return (upper | received) % p.freshness_modulus

    def verify(self, data: bytes | bytearray) -> SecOcVerdict:
        """Check one received frame; on success :attr:`latest` moves to its FV."""
        parts = self.split(data)
        if parts is None:
            return SecOcVerdict.TOO_SHORT
        payload, received, mac = parts
        p = self.profile
        latest = self.latest
        fv = self.candidate(received)
        if _mac(p, self._cipher, payload, fv) == mac:
            if latest is not None and fv <= latest:
                return SecOcVerdict.STALE_FRESHNESS  # full FV sent: an old one, replayed
            if latest is not None and p.freshness_window and fv - latest > p.freshness_window:
                return SecOcVerdict.FRESHNESS_JUMP
            self.latest = fv
            return SecOcVerdict.OK
        # Explain the failure: does the MAC verify with an FV the receiver has already passed?
        if latest is not None and p.freshness_tx_bits < p.freshness_bits:
            stale = (latest & ~self._tx_mask) | received
            if stale <= latest and _mac(p, self._cipher, payload, stale) == mac:
                return SecOcVerdict.STALE_FRESHNESS
            older = stale - (1 << p.freshness_tx_bits)
            if older >= 0 and _mac(p, self._cipher, payload, older) == mac:
                return SecOcVerdict.STALE_FRESHNESS
        return SecOcVerdict.BAD_MAC

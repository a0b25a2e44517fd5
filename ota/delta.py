"""Delta updates: bsdiff4 patches that turn an installed image into a signed target (pure).

A target's ``custom["delta"]`` (:class:`~ota.target_info.DeltaDescriptor`) names a patch — itself
a target of the image repository, so TUF verifies its bytes like any image's — and the sha256 of
the image it applies to. The vehicle applies it to the image it already has and keeps the result
only if it has exactly the length and sha256 the signed target lists; anything else is a
:class:`DeltaError` and the caller downloads the full image instead
(:class:`~ota.update_source.UpdateClientSource`).

bsdiff4's own reader trusts the patch: it allocates whatever the header and the compressed
blocks claim and hands the control block to its C core unchecked. :func:`apply_delta` reads the
format itself first (:func:`read_patch`): the exact magic, the header's output size equal to the
signed length *before* anything is decompressed, each block decompressed with a bound derived
from that length, and the control triples checked to describe exactly that many bytes. Only then
does bsdiff4's core build the image. Every problem with the patch raises
:class:`MalformedPatchError`, whatever bsdiff4 or bz2 would have raised.

Usage::

    patch = make_delta(old_image, new_image)                     # the repository tool
    image = apply_delta(installed, patch, target_sha256=sha, target_length=n,
                        base_sha256=descriptor.from_sha256)      # the vehicle; DeltaError

Both take and return bytes in memory (bsdiff4 has no streaming form): callers bound the sizes
they accept and run these in a worker thread when they are called from async code.
"""

from __future__ import annotations

import bz2
import hashlib
import struct
from dataclasses import dataclass
from typing import Final

import bsdiff4
import bsdiff4.core

from ota.errors import OtaVerificationError

__all__ = [
    "HEADER_BYTES",
    "MAGIC",
    "DeltaBaseMismatchError",
    "DeltaError",
    "DeltaResultMismatchError",
    "MalformedPatchError",
    "ParsedPatch",
    "apply_delta",
    "make_delta",
    "patch_output_length",
    "read_patch",
]

#: The first eight bytes of every bsdiff4 patch.
MAGIC: Final = b"BSDIFF40"
#: Magic plus three 8-byte sizes: compressed control, compressed diff, output length.
HEADER_BYTES: Final = 32

_TRIPLE: Final = 24
_INT64: Final = struct.Struct("<Q")
_SIGN: Final = 1 << 63


class DeltaError(OtaVerificationError):
    """A delta could not be used: the patch is malformed, or the base or the result is not the
    image it must be. Nothing was produced; download the full image instead."""


class MalformedPatchError(DeltaError):
    """The patch is not a well-formed bsdiff4 patch for the signed target (bad magic, sizes,
    compressed blocks or control triples)."""


class DeltaBaseMismatchError(DeltaError):
    """The image the patch would be applied to is not the one the delta descriptor names."""


class DeltaResultMismatchError(DeltaError):
    """The patched image does not have the signed target's length or sha256."""


@dataclass(frozen=True, slots=True)
class ParsedPatch:
    """A bsdiff4 patch read and checked: its output length and its three decompressed blocks."""

    output_length: int
    control: bytes
    diff: bytes
    extra: bytes


def _offtin(raw: bytes) -> int:
    """bsdiff's 8-byte integer: little-endian magnitude, sign in the top bit."""
    value: int = _INT64.unpack(raw)[0]
    return -(value & ~_SIGN) if value & _SIGN else value


def patch_output_length(patch: bytes) -> int:
    """The output length a bsdiff4 *patch*'s header claims (:class:`MalformedPatchError` if it
    has no valid header). Reads 32 bytes; allocates nothing."""
    if len(patch) < HEADER_BYTES:
        raise MalformedPatchError(
            f"the patch is {len(patch)} bytes, shorter than a bsdiff4 header ({HEADER_BYTES})"
        )
    if patch[:8] != MAGIC:
        raise MalformedPatchError(f"the patch does not start with {MAGIC.decode()}")
    length = _offtin(patch[24:32])
    if length < 0:
        raise MalformedPatchError(f"the patch header claims a negative output length ({length})")
    return length


def _decompress(data: bytes, limit: int, what: str) -> bytes:
    """One complete bz2 stream that is *data* exactly, at most *limit* bytes once decompressed."""
    decompressor = bz2.BZ2Decompressor()
    try:
        out = decompressor.decompress(data, max_length=limit + 1)
    except (OSError, EOFError, ValueError) as e:
        raise MalformedPatchError(f"the patch's {what} is not valid bz2 data: {e}") from e
    if len(out) > limit:
        raise MalformedPatchError(
            f"the patch's {what} decompresses to more than the {limit:,} bytes it may hold"
        )
    if not decompressor.eof:
        raise MalformedPatchError(f"the patch's {what} is a truncated bz2 stream")
    if decompressor.unused_data:
        raise MalformedPatchError(
            f"the patch's {what} has {len(decompressor.unused_data)} bytes after its bz2 stream"
        )
    return out


def _check_control(control: bytes, *, output_length: int, diff: int, extra: int) -> None:
    """The control triples (add *x* diff bytes, copy *y* extra bytes, seek *z* in the base) must
    consume the diff and extra blocks exactly and produce exactly *output_length* bytes."""
    if len(control) % _TRIPLE:
        raise MalformedPatchError(
            f"the patch's control block is {len(control)} bytes, not a multiple of {_TRIPLE}"
        )
    produced = added = copied = 0
    for offset in range(0, len(control), _TRIPLE):
        x = _offtin(control[offset : offset + 8])
        y = _offtin(control[offset + 8 : offset + 16])
        if x < 0 or y < 0:
            raise MalformedPatchError(
                f"control triple {offset // _TRIPLE} has a negative length ({x}, {y})"
            )
        produced += x + y
        added += x
        copied += y
        if produced > output_length or added > diff or copied > extra:
            raise MalformedPatchError(
                f"control triple {offset // _TRIPLE} goes past the output ({output_length:,} "
                f"bytes), the diff block ({diff:,}) or the extra block ({extra:,})"
            )
    if (produced, added, copied) != (output_length, diff, extra):
        raise MalformedPatchError(
            f"the control triples produce {produced:,} of {output_length:,} bytes and use "
            f"{added:,} of {diff:,} diff and {copied:,} of {extra:,} extra bytes"
        )


def read_patch(patch: bytes, *, expected_length: int) -> ParsedPatch:
    """Parse and check a bsdiff4 *patch* that must produce *expected_length* bytes.

    The header's output length is compared with *expected_length* before any block is
    decompressed; every block is decompressed with a bound that follows from it (the diff and
    extra blocks hold at most *expected_length* bytes, the control block one triple per output
    byte and one more). :class:`MalformedPatchError` for anything else.
    """
    if expected_length < 0:
        raise ValueError(f"expected_length {expected_length} is negative")
    output_length = patch_output_length(patch)
    if output_length != expected_length:
        raise MalformedPatchError(
            f"the patch makes {output_length:,} bytes; the signed target has {expected_length:,}"
        )
    control_bytes = _offtin(patch[8:16])
    diff_bytes = _offtin(patch[16:24])
    if control_bytes < 0 or diff_bytes < 0:
        raise MalformedPatchError(
            f"the patch header claims negative block sizes ({control_bytes}, {diff_bytes})"
        )
    if HEADER_BYTES + control_bytes + diff_bytes > len(patch):
        raise MalformedPatchError(
            f"the patch header claims {control_bytes:,} + {diff_bytes:,} bytes of blocks; the "
            f"patch has {len(patch) - HEADER_BYTES:,} after its header"
        )
    view = memoryview(patch)
    diff_at = HEADER_BYTES + control_bytes
    extra_at = diff_at + diff_bytes
    control = _decompress(
        bytes(view[HEADER_BYTES:diff_at]), _TRIPLE * (expected_length + 1), "control block"
    )
    diff = _decompress(bytes(view[diff_at:extra_at]), expected_length, "diff block")
    extra = _decompress(bytes(view[extra_at:]), expected_length, "extra block")
    _check_control(control, output_length=output_length, diff=len(diff), extra=len(extra))
    return ParsedPatch(output_length, control, diff, extra)


def apply_delta(
    base: bytes,
    patch: bytes,
    *,
    target_sha256: str,
    target_length: int,
    base_sha256: str | None = None,
) -> bytes:
    """The image bsdiff4 *patch* makes of *base*, checked against the signed target.

    *target_sha256* and *target_length* are the signed target's; *base_sha256*, if given, is
    the descriptor's ``from_sha256`` and *base* must hash to it. Raises
    :class:`DeltaBaseMismatchError`, :class:`MalformedPatchError` (refused before allocating
    the output when the header claims another length) or :class:`DeltaResultMismatchError`;
    nothing else, whatever the patch holds.
    """
    if base_sha256 is not None:
        actual = hashlib.sha256(base).hexdigest()
        if actual != base_sha256:
            raise DeltaBaseMismatchError(
                f"the base image has sha256 {actual[:12]}…, the delta is from {base_sha256[:12]}…"
            )
    parsed = read_patch(patch, expected_length=target_length)
    try:
        image = bsdiff4.core.patch(
            base, parsed.output_length, parsed.control, parsed.diff, parsed.extra
        )
    except (ValueError, TypeError, OverflowError, IndexError) as e:
        raise MalformedPatchError(f"bsdiff4 cannot apply the patch: {e}") from e
    if not isinstance(image, bytes) or len(image) != target_length:
        size = len(image) if isinstance(image, bytes) else type(image).__name__
        raise DeltaResultMismatchError(
            f"the patched image is {size} bytes; the signed target has {target_length:,}"
        )
    actual = hashlib.sha256(image).hexdigest()
    if actual != target_sha256:
        raise DeltaResultMismatchError(
            f"the patched image has sha256 {actual[:12]}…; the signed target has "
            f"{target_sha256[:12]}…"
        )
    return image


def make_delta(old: bytes, new: bytes) -> bytes:
    """A bsdiff4 patch that turns *old* into *new* (slow: suffix sorting of *old*)."""
    patch: bytes = bsdiff4.diff(old, new)
    return patch

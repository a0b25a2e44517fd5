"""bsdiff4 deltas (ota.delta): round trips, every way a patch can be wrong, and random patches
that never raise anything but our DeltaError (hypothesis)."""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import os
import random

import bsdiff4.core
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ota.delta import (
    HEADER_BYTES,
    MAGIC,
    DeltaBaseMismatchError,
    DeltaError,
    DeltaResultMismatchError,
    MalformedPatchError,
    apply_delta,
    make_delta,
    patch_output_length,
    read_patch,
)
from ota.errors import OtaVerificationError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _edited(old: bytes, seed: int) -> bytes:
    """*old* with a few bytes flipped, a block replaced and a tail appended."""
    rng = random.Random(seed)
    new = bytearray(old)
    for _ in range(20):
        new[rng.randrange(len(new))] ^= 0xFF
    at = rng.randrange(len(new) - 500)
    new[at : at + 500] = rng.randbytes(300)
    return bytes(new) + rng.randbytes(1000)


def _header(control: int, diff: int, length: int) -> bytes:
    return MAGIC + b"".join(bsdiff4.core.encode_int64(n) for n in (control, diff, length))


def _raw_patch(
    length: int, triples: list[tuple[int, int, int]], diff: bytes, extra: bytes
) -> bytes:
    control = b"".join(bsdiff4.core.encode_int64(n) for t in triples for n in t)
    blocks = [bz2.compress(b) for b in (control, diff, extra)]
    return _header(len(blocks[0]), len(blocks[1]), length) + b"".join(blocks)


OLD = random.Random(1).randbytes(50_000)
NEW = _edited(OLD, 2)
PATCH = make_delta(OLD, NEW)


def _apply(base: bytes, patch: bytes, new: bytes = NEW) -> bytes:
    return apply_delta(base, patch, target_sha256=_sha(new), target_length=len(new))


def test_a_delta_rebuilds_the_new_image_and_is_much_smaller() -> None:
    assert len(PATCH) < len(NEW) // 10
    assert patch_output_length(PATCH) == len(NEW)
    assert _apply(OLD, PATCH) == NEW
    image = apply_delta(
        OLD, PATCH, target_sha256=_sha(NEW), target_length=len(NEW), base_sha256=_sha(OLD)
    )
    assert image == NEW


@pytest.mark.parametrize(("old", "new"), [(b"", b""), (b"abc", b""), (b"", b"xyz"), (OLD, OLD)])
def test_edge_cases_round_trip(old: bytes, new: bytes) -> None:
    assert _apply(old, make_delta(old, new), new) == new


def test_errors_are_verification_errors() -> None:
    assert issubclass(DeltaError, OtaVerificationError)
    for cls in (MalformedPatchError, DeltaBaseMismatchError, DeltaResultMismatchError):
        assert issubclass(cls, DeltaError)


def test_another_base_is_refused_before_patching() -> None:
    with pytest.raises(DeltaBaseMismatchError, match="the delta is from"):
        apply_delta(
            NEW, PATCH, target_sha256=_sha(NEW), target_length=len(NEW), base_sha256=_sha(OLD)
        )


def test_a_valid_patch_applied_to_another_base_fails_the_hash_check() -> None:
    other = bytearray(OLD)
    other[100] ^= 1
    with pytest.raises(DeltaResultMismatchError, match="the signed target has"):
        _apply(bytes(other), PATCH)


def test_a_result_that_is_not_the_signed_target_is_refused() -> None:
    with pytest.raises(DeltaResultMismatchError, match="sha256"):
        apply_delta(OLD, PATCH, target_sha256=_sha(OLD), target_length=len(NEW))


def test_a_patch_claiming_another_length_is_refused_before_anything_is_allocated() -> None:
    huge = _header(10, 10, 2**62) + bytes(20)
    with pytest.raises(MalformedPatchError, match="makes 4,611,686,018,427,387,904 bytes"):
        apply_delta(OLD, huge, target_sha256=_sha(NEW), target_length=len(NEW))
    with pytest.raises(MalformedPatchError, match="the signed target has 51,000"):
        apply_delta(OLD, PATCH, target_sha256=_sha(NEW), target_length=51_000)


def test_a_decompression_bomb_stops_at_the_bound() -> None:
    bomb = bz2.compress(bytes(50_000_000))  # ~40 bytes on the wire
    patch = _header(len(bomb), 0, 10) + bomb
    with pytest.raises(
        MalformedPatchError, match="control block decompresses to more than the 264"
    ):
        apply_delta(b"", patch, target_sha256=_sha(b"0" * 10), target_length=10)


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        (b"", "shorter than a bsdiff4 header"),
        (b"BSDIFF4X" + PATCH[8:], "does not start with BSDIFF40"),
        (PATCH[: HEADER_BYTES + 10], "blocks"),
        (PATCH[:-5], "truncated bz2 stream"),
        (PATCH + b"junk", "after its bz2 stream"),
        (_header(-1, 0, len(NEW)) + bytes(10), "negative block sizes"),
        (_header(0, 0, -5), "negative output length"),
        (_header(5, 5, len(NEW)) + bytes(20), "not valid bz2"),
    ],
    ids=["empty", "magic", "short", "truncated", "trailing", "negative", "negative-len", "bz2"],
)
def test_malformed_patches(patch: bytes, message: str) -> None:
    with pytest.raises(MalformedPatchError, match=message):
        _apply(OLD, patch)


@pytest.mark.parametrize(
    ("triples", "diff", "extra", "message"),
    [
        ([(-1, 0, 0)], b"", b"", "negative length"),
        ([(4, 0, 0)], b"abc", b"", "goes past"),
        ([(2, 0, 0)], b"abc", b"", "use 2 of 3 diff"),
        ([(3, 0, 0)], b"abc", b"xyz", "use 3 of 3 diff and 0 of 3 extra"),
        ([(0, 0, 0), (1, 3, 0)], b"a", b"xyz", "goes past"),
    ],
)
def test_control_triples_must_account_for_every_byte(
    triples: list[tuple[int, int, int]], diff: bytes, extra: bytes, message: str
) -> None:
    patch = _raw_patch(3, triples, diff, extra)
    with pytest.raises(MalformedPatchError, match=message):
        apply_delta(b"base", patch, target_sha256=_sha(b"abc"), target_length=3)


def test_a_hand_made_patch_with_seeks_applies() -> None:
    # add 3 diff bytes to base[0:3], copy 2 extra bytes, seek back to 0, add 2 to base[0:2]
    patch = _raw_patch(7, [(3, 2, -3), (2, 0, 0)], bytes([1, 1, 1, 0, 0]), b"XY")
    assert read_patch(patch, expected_length=7).output_length == 7
    out = b"bcd" + b"XY" + b"ab"
    assert apply_delta(b"abcd", patch, target_sha256=_sha(out), target_length=7) == out


def test_make_delta_of_large_images_is_quick_enough_for_the_tool() -> None:
    old = os.urandom(1_000_000)
    new = old[:400_000] + os.urandom(5_000) + old[400_000:]
    patch = make_delta(old, new)
    assert len(patch) < 20_000
    assert _apply(old, patch, new) == new


# --- random patches (hypothesis) ------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _must_fail_cleanly(base: bytes, patch: bytes, length: int) -> None:
    target = _sha(b"\x00" * length)  # never what a random patch makes (except by design)
    try:
        apply_delta(base, patch, target_sha256=target, target_length=length)
    except DeltaError:
        return


@FAST
@given(st.binary(max_size=300), st.binary(max_size=200), st.integers(0, 1000))
def test_random_bytes_as_a_patch_raise_only_delta_errors(
    patch: bytes, base: bytes, length: int
) -> None:
    _must_fail_cleanly(base, patch, length)
    _must_fail_cleanly(base, MAGIC + patch, length)


@FAST
@given(
    st.lists(
        st.tuples(st.integers(-5, 300), st.integers(-5, 300), st.integers(-(2**40), 2**40)),
        max_size=6,
    ),
    st.binary(max_size=300),
    st.binary(max_size=300),
    st.binary(max_size=200),
    st.integers(0, 600),
)
def test_random_well_framed_patches_raise_only_delta_errors(
    triples: list[tuple[int, int, int]], diff: bytes, extra: bytes, base: bytes, length: int
) -> None:
    _must_fail_cleanly(base, _raw_patch(length, triples, diff, extra), length)


@FAST
@given(st.integers(0, len(PATCH) - 1), st.integers(1, 255), st.binary(max_size=8))
def test_damaged_real_patches_either_rebuild_the_image_or_raise_delta_errors(
    at: int, flip: int, inserted: bytes
) -> None:
    for damaged in (
        PATCH[:at] + bytes([PATCH[at] ^ flip]) + PATCH[at + 1 :],
        PATCH[:at] + inserted + PATCH[at:],
    ):
        with contextlib.suppress(DeltaError):
            assert _apply(OLD, damaged) == NEW

"""SecOC: building authenticated frames and verifying them (good MAC, bad MAC, stale freshness)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.secoc import (
    SecOcProfile,
    SecOcSender,
    SecOcVerdict,
    SecOcVerifier,
    authenticator,
    secure,
)

KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")  # the key of RFC 4493's examples
OTHER_KEY = bytes(range(16))
PROFILE = SecOcProfile(data_id=0x0123, payload_bytes=4, freshness_bits=32, freshness_tx_bits=8)


def test_the_mac_is_aes_cmac_of_data_id_payload_and_freshness() -> None:
    # RFC 4493 example 2: AES-CMAC(KEY, 6bc1bee2 2e409f96 e93d7e11 7393172a) = 070a16b4 6b4d4144
    # f79bdd9d d04a287c. Split as data id ‖ 13-byte payload ‖ 8-bit freshness value.
    message = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    profile = SecOcProfile(
        data_id=0x6BC1, payload_bytes=13, freshness_bits=8, freshness_tx_bits=8, mac_bits=128
    )
    mac = authenticator(profile, KEY, message[2:15], message[15])
    assert mac == 0x070A16B46B4D4144F79BDD9DD04A287C
    truncated = SecOcProfile(data_id=0x6BC1, payload_bytes=13, freshness_bits=8, mac_bits=24)
    assert authenticator(truncated, KEY, message[2:15], message[15]) == 0x070A16


def test_secured_pdu_layout_is_payload_then_truncated_freshness_then_mac() -> None:
    payload = bytes.fromhex("11223344")
    data = secure(PROFILE, KEY, payload, 0x00000105)
    assert len(data) == PROFILE.secured_bytes == 4 + 1 + 3
    assert data[:4] == payload
    assert data[4] == 0x05  # the freshness value's 8 least significant bits
    assert int.from_bytes(data[5:], "big") == authenticator(PROFILE, KEY, payload, 0x105)


def test_bit_packed_trailer_of_odd_widths() -> None:
    profile = SecOcProfile(
        data_id=7, payload_bytes=2, freshness_bits=12, freshness_tx_bits=4, mac_bits=28
    )
    assert profile.secured_bytes == 2 + 4  # 4 + 28 bits
    sender = SecOcSender(profile, KEY, freshness=1)
    verifier = SecOcVerifier(profile, KEY)
    for n in range(40):  # the 4 transmitted bits wrap twice
        assert verifier.verify(sender.next_frame(bytes((n, 0xAA)))) is SecOcVerdict.OK
    assert verifier.latest == 40


def test_a_stream_of_good_frames_verifies_and_tracks_freshness() -> None:
    sender = SecOcSender(PROFILE, KEY, freshness=1)
    verifier = SecOcVerifier(PROFILE, KEY)
    for n in range(600):  # across several wraps of the transmitted byte
        assert verifier.verify(sender.next_frame(n.to_bytes(4, "big"))) is SecOcVerdict.OK
    assert verifier.latest == 600


def test_a_forged_or_corrupted_frame_has_a_bad_mac() -> None:
    good = secure(PROFILE, KEY, b"\x01\x02\x03\x04", 1)
    forged = bytearray(good)
    forged[0] ^= 0x80  # the payload changed, the MAC did not
    assert SecOcVerifier(PROFILE, KEY).verify(forged) is SecOcVerdict.BAD_MAC
    wrong_key = secure(PROFILE, OTHER_KEY, b"\x01\x02\x03\x04", 1)
    assert SecOcVerifier(PROFILE, KEY).verify(wrong_key) is SecOcVerdict.BAD_MAC
    mac_flip = bytearray(good)
    mac_flip[-1] ^= 1
    assert SecOcVerifier(PROFILE, KEY).verify(mac_flip) is SecOcVerdict.BAD_MAC


def test_a_replayed_frame_has_stale_freshness_and_does_not_move_the_receiver() -> None:
    sender = SecOcSender(PROFILE, KEY, freshness=1)
    verifier = SecOcVerifier(PROFILE, KEY)
    recorded = [sender.next_frame(bytes(4)) for _ in range(5)]
    for data in recorded:
        assert verifier.verify(data) is SecOcVerdict.OK
    assert verifier.verify(recorded[-1]) is SecOcVerdict.STALE_FRESHNESS  # the same frame again
    assert verifier.verify(recorded[0]) is SecOcVerdict.STALE_FRESHNESS  # an older one
    assert verifier.latest == 5
    assert verifier.verify(sender.next_frame(bytes(4))) is SecOcVerdict.OK


def test_full_freshness_sets_its_baseline_from_the_first_good_frame() -> None:
    profile = SecOcProfile(
        data_id=1, payload_bytes=2, freshness_bits=16, freshness_tx_bits=16, mac_bits=32
    )
    sender = SecOcSender(profile, KEY, freshness=5000)  # joined a running bus
    verifier = SecOcVerifier(profile, KEY)
    baseline: int | None = verifier.latest
    assert baseline is None
    first = sender.next_frame(b"ab")
    assert verifier.verify(first) is SecOcVerdict.OK
    assert verifier.latest == 5000
    assert verifier.verify(first) is SecOcVerdict.STALE_FRESHNESS
    assert verifier.verify(sender.next_frame(b"ab")) is SecOcVerdict.OK


def test_freshness_window_rejects_a_far_jump() -> None:
    profile = SecOcProfile(
        data_id=1, payload_bytes=2, freshness_bits=16, freshness_tx_bits=16, freshness_window=10
    )
    verifier = SecOcVerifier(profile, KEY, initial_freshness=100)
    assert verifier.verify(secure(profile, KEY, b"ok", 105)) is SecOcVerdict.OK
    assert verifier.verify(secure(profile, KEY, b"ok", 200)) is SecOcVerdict.FRESHNESS_JUMP
    assert verifier.latest == 105


def test_short_frames_and_padding() -> None:
    verifier = SecOcVerifier(PROFILE, KEY)
    assert verifier.verify(b"\x01\x02") is SecOcVerdict.TOO_SHORT
    padded = secure(PROFILE, KEY, b"\x01\x02\x03\x04", 1) + b"\xcc" * 4  # CAN FD padding
    assert verifier.verify(padded) is SecOcVerdict.OK


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"data_id": 0x10000, "payload_bytes": 4}, "data_id"),
        ({"data_id": 1, "payload_bytes": 65}, "payload_bytes"),
        ({"data_id": 1, "payload_bytes": 4, "freshness_bits": 65}, "freshness_bits"),
        ({"data_id": 1, "payload_bytes": 4, "freshness_bits": 8, "freshness_tx_bits": 9}, "tx"),
        ({"data_id": 1, "payload_bytes": 4, "mac_bits": 0}, "mac_bits"),
        ({"data_id": 1, "payload_bytes": 60, "mac_bits": 64}, "64"),
    ],
)
def test_profiles_out_of_range_are_refused(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SecOcProfile(**kwargs)


def test_keys_must_be_aes_keys() -> None:
    with pytest.raises(ValueError, match="16, 24 or 32"):
        SecOcVerifier(PROFILE, b"short")


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=16),
    start=st.integers(0, 2**32 - 2),
    tx_bits=st.integers(0, 32),
    mac_bits=st.integers(1, 64),
)
def test_any_frame_a_verifier_gets_has_a_verdict(
    data: bytes, start: int, tx_bits: int, mac_bits: int
) -> None:
    profile = SecOcProfile(
        data_id=9, payload_bytes=4, freshness_bits=32, freshness_tx_bits=tx_bits, mac_bits=mac_bits
    )
    verifier = SecOcVerifier(profile, KEY, initial_freshness=start)
    assert isinstance(verifier.verify(data), SecOcVerdict)
    # and the next genuine frame still verifies unless the garbage happened to be accepted
    latest = verifier.latest
    assert latest is not None
    if latest + 1 < profile.freshness_modulus:
        genuine = secure(profile, KEY, b"\x00\x01\x02\x03", latest + 1)
        assert verifier.verify(genuine) is SecOcVerdict.OK

"""ECU firmware images: the header/payload/signature format, verification and key files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from ota.ecu_image import (
    HEADER_LENGTH,
    MAGIC,
    SIGNATURE_LENGTH,
    EcuImage,
    EcuImageFormatError,
    EcuImageHeader,
    EcuImageVerificationError,
    EcuKeyError,
    ImageDefect,
    build_image,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)
from ota.errors import OtaUsageError, SigningKeyError
from tests.firmware_stub.support import KEY, OTHER_KEY, PUBLIC, private_pem, public_pem


def test_layout_header_payload_signature() -> None:
    payload = b"firmware" * 100
    data = build_image(payload, version=42, hardware_id="bms", private_key=KEY)
    assert len(data) == HEADER_LENGTH + len(payload) + SIGNATURE_LENGTH
    assert data[:8] == MAGIC
    assert int.from_bytes(data[8:10]) == 1 and int.from_bytes(data[10:12]) == 128
    assert int.from_bytes(data[12:16]) == len(payload)
    assert int.from_bytes(data[16:24]) == 42
    assert data[24:32] == key_id(PUBLIC)
    assert data[32:64].rstrip(b"\0") == b"bms"
    assert data[64:96] == hashlib.sha256(payload).digest()
    assert data[96:128] == bytes(32)
    assert data[128:-64] == payload
    PUBLIC.verify(data[-64:], b"tbox ecu image v1\n" + data[:128])
    image = EcuImage.from_bytes(data)
    assert (image.version, image.hardware_id, image.payload) == (42, "bms", payload)
    assert image.sha256 == hashlib.sha256(data).digest()
    image.verify(PUBLIC)


def test_an_empty_payload_and_the_largest_version_are_fine() -> None:
    data = build_image(b"", version=2**63 - 1, hardware_id="a", private_key=KEY)
    EcuImage.from_bytes(data).verify(PUBLIC)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"version": -1}, "version"),
        ({"version": 2**63}, "version"),
        ({"hardware_id": ""}, "hardware id"),
        ({"hardware_id": "x" * 33}, "at most 32"),
        ({"hardware_id": "bad id"}, "hardware id"),
    ],
)
def test_bad_build_arguments_are_usage_errors(kwargs: dict[str, object], message: str) -> None:
    options: dict[str, object] = {"version": 1, "hardware_id": "bms", "private_key": KEY}
    options.update(kwargs)
    with pytest.raises(OtaUsageError, match=message):
        build_image(b"x", **options)  # type: ignore[arg-type]


def test_a_tampered_payload_or_header_or_another_key_does_not_verify() -> None:
    data = bytearray(build_image(b"payload!" * 64, version=3, hardware_id="bms", private_key=KEY))
    data[200] ^= 1
    with pytest.raises(EcuImageVerificationError) as info:
        EcuImage.from_bytes(bytes(data)).verify(PUBLIC, source="fw.img")
    assert info.value.defect is ImageDefect.HASH_MISMATCH and "fw.img" in str(info.value)
    data = bytearray(build_image(b"payload!", version=3, hardware_id="bms", private_key=KEY))
    data[16:24] = (4).to_bytes(8)  # a "newer" version, same signature
    with pytest.raises(EcuImageVerificationError) as info:
        EcuImage.from_bytes(bytes(data)).verify(PUBLIC)
    assert info.value.defect is ImageDefect.BAD_SIGNATURE
    other = build_image(b"payload!", version=3, hardware_id="bms", private_key=OTHER_KEY)
    with pytest.raises(EcuImageVerificationError) as info:
        EcuImage.from_bytes(other).verify(PUBLIC)
    assert info.value.defect is ImageDefect.UNKNOWN_KEY


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:100], "too short"),
        (lambda d: b"NOTANIMG" + d[8:], "not a tbox ECU image"),
        (lambda d: d[:8] + (2).to_bytes(2) + d[10:], "format 2"),
        (lambda d: d[:10] + (64).to_bytes(2) + d[12:], "header length"),
        (lambda d: d[:96] + b"\x01" + d[97:], "reserved"),
        (lambda d: d + b"x", "bytes in all"),
        (lambda d: d[:32] + b"\xff" * 32 + d[64:], "hardware id"),
        (lambda d: d[:16] + (2**63).to_bytes(8) + d[24:], r"above 2\^63-1"),
    ],
)
def test_malformed_images_are_input_errors(mutate: object, message: str) -> None:
    data = build_image(b"x" * 10, version=1, hardware_id="bms", private_key=KEY)
    with pytest.raises(EcuImageFormatError, match=message):
        EcuImage.from_bytes(mutate(data), source="x.img")  # type: ignore[operator]


def test_header_round_trip() -> None:
    header = EcuImageHeader(7, 10, "vcu", b"\1" * 8, b"\2" * 32)
    assert EcuImageHeader.unpack(header.pack()) == header
    assert header.image_length == 128 + 10 + 64


def test_key_files(tmp_path: Path) -> None:
    private, public = generate_key_pair()
    key_path, pub_path = tmp_path / "k.pem", tmp_path / "k.pub"
    key_path.write_bytes(private)
    pub_path.write_bytes(public)
    key_path.chmod(0o600)
    key = load_private_key(key_path)
    assert key_id(key.public_key()) == key_id(load_public_key(pub_path))
    key_path.chmod(0o644)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_private_key(key_path)
    with pytest.raises(SigningKeyError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    garbage.chmod(0o600)
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM"):
        load_private_key(garbage)
    with pytest.raises(EcuKeyError, match="not a PEM public key"):
        load_public_key(garbage)
    with pytest.raises(EcuKeyError, match="cannot read"):
        load_public_key(tmp_path / "missing.pub")
    assert load_public_key(_write(tmp_path / "t.pub", public_pem())).public_bytes_raw() == (
        PUBLIC.public_bytes_raw()
    )
    assert load_private_key(
        _write(tmp_path / "t.pem", private_pem(), 0o600)
    ).private_bytes_raw() == (KEY.private_bytes_raw())


def _write(path: Path, data: bytes, mode: int = 0o644) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_an_image_file_that_cannot_be_read_is_an_io_error(tmp_path: Path) -> None:
    from ota.errors import OtaIOError

    with pytest.raises(OtaIOError, match="cannot read ECU image"):
        EcuImage.load(tmp_path / "missing.img")

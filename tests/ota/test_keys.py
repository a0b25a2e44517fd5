"""Key files: generated 0600 under online/ or offline/, found by key id, refused when unsafe."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from ota.errors import SigningKeyError
from ota.keys import KeyStore, new_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generated_keys_are_private_files_that_load_back(tmp_path: Path) -> None:
    store = KeyStore([tmp_path / "keys"])
    offline = store.generate("root", online=False)
    online = store.generate("timestamp", online=True)
    root_file = store.path_of(offline.public_key.keyid)
    assert root_file is not None
    assert root_file.parent == tmp_path / "keys" / "offline"
    assert root_file.name == f"root-{offline.public_key.keyid[:12]}.pem"
    assert root_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert _mode(root_file) == 0o600
    assert _mode(tmp_path / "keys") == 0o700
    assert store.path_of(online.public_key.keyid) == (
        tmp_path / "keys" / "online" / f"timestamp-{online.public_key.keyid[:12]}.pem"
    )

    reloaded = KeyStore([tmp_path / "keys"]).signers()
    assert set(reloaded) == {offline.public_key.keyid, online.public_key.keyid}
    signature = reloaded[offline.public_key.keyid].sign(b"payload")
    offline.public_key.verify_signature(signature, b"payload")
    assert reloaded[offline.public_key.keyid].public_key.scheme == "ed25519"


def test_keys_are_found_by_id_whatever_the_file_is_called(tmp_path: Path) -> None:
    store = KeyStore([tmp_path / "a"])
    signer = store.generate("targets", online=False)
    path = store.path_of(signer.public_key.keyid)
    assert path is not None
    usb = tmp_path / "usb"
    (usb / "deep").mkdir(parents=True)
    path.replace(usb / "deep" / "whatever.pem")
    both = KeyStore([usb, tmp_path / "a", tmp_path / "not-plugged-in"])
    assert list(both.signers()) == [signer.public_key.keyid]
    assert both.path_of(signer.public_key.keyid) == usb / "deep" / "whatever.pem"


def test_new_keys_are_kept_only_when_stored(tmp_path: Path) -> None:
    store = KeyStore([tmp_path])
    signer = new_key()
    assert store.signers() == {}
    path = store.store(signer, "snapshot", online=True)
    assert path.parent.name == "online"
    assert list(KeyStore([tmp_path]).signers()) == [signer.public_key.keyid]


def test_retired_keys_move_to_revoked_and_are_not_loaded(tmp_path: Path) -> None:
    store = KeyStore([tmp_path])
    signer = store.generate("timestamp", online=True)
    moved = store.retire(signer.public_key.keyid)
    assert moved == tmp_path / "revoked" / f"timestamp-{signer.public_key.keyid[:12]}.pem"
    assert moved.exists()
    assert store.signers() == {}
    assert KeyStore([tmp_path]).signers() == {}
    assert store.retire(signer.public_key.keyid) is None


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    store = KeyStore([tmp_path])
    signer = store.generate("root", online=False)
    path = store.path_of(signer.public_key.keyid)
    assert path is not None
    path.chmod(0o644)
    with pytest.raises(SigningKeyError, match=r"accessible by others \(mode 0644\); chmod 600"):
        KeyStore([tmp_path]).signers()


@pytest.mark.parametrize(
    "content",
    [b"not a key", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_garbage_key_files_are_named(tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_bytes(content)
    bad.chmod(0o600)
    with pytest.raises(SigningKeyError, match=r"bad\.pem is not an unencrypted PEM private key"):
        KeyStore([tmp_path]).signers()


def test_an_encrypted_key_is_refused_with_a_reason(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        BestAvailableEncryption,
        Encoding,
        PrivateFormat,
    )

    pem = Ed25519PrivateKey.generate().private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(b"secret")
    )
    path = tmp_path / "enc.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match=r"enc\.pem is not an unencrypted PEM"):
        KeyStore([tmp_path]).signers()

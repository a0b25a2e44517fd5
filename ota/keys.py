"""Private signing keys as PEM files: generated here, loaded back as securesystemslib signers.

A keys directory holds one unencrypted PKCS#8 PEM file per key, mode 0600, sorted by where the
key is meant to live::

    image.keys/
      offline/root-3f2a9c1d4e5f.pem      root, targets, snapshot of an image repository
      offline/targets-…pem                (move these to offline storage; pass --keys to sign)
      online/timestamp-…pem              keys automation signs with
      revoked/…pem                        keys rotated out (never loaded again)

File names are for people only: a key is found by its key id (computed from the public key), so
files may be renamed or moved between directories, and keys may be spread over several
directories (``KeyStore([usb_stick, server_dir])``). A key file readable by group or others is
refused, as ssh refuses one.

Usage::

    store = KeyStore([Path("image.keys")])
    signer = store.generate("targets", online=False)   # a CryptoSigner; writes the PEM file
    signers = store.signers()                          # {keyid: Signer} of every usable key
    fresh = new_key()                                  # in memory only, until…
    store.store(fresh, "timestamp", online=True)       # …what it signed is sure to be published
    store.retire(old_keyid)                            # moves its file to revoked/

Keys are not encrypted at rest: protect the offline ones by where they are kept.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from securesystemslib.signer import CryptoSigner, Signer

from agent.durable_file import write_durably
from ota.errors import OtaIOError, SigningKeyError

__all__ = ["OFFLINE_DIR", "ONLINE_DIR", "REVOKED_DIR", "KeyStore", "new_key"]

ONLINE_DIR: Final = "online"
OFFLINE_DIR: Final = "offline"
REVOKED_DIR: Final = "revoked"


def new_key() -> CryptoSigner:
    """A new Ed25519 key pair, in memory only (see :meth:`KeyStore.store`)."""
    return CryptoSigner.generate_ed25519()


class KeyStore:
    """The private keys in *dirs*; new keys are written to the first one.

    Directories that do not exist are skipped when loading (an offline medium not plugged in).
    """

    def __init__(self, dirs: Sequence[Path]) -> None:
        if not dirs:
            raise ValueError("KeyStore needs at least one directory")
        self.dirs = tuple(dirs)
        self._signers: dict[str, Signer] | None = None
        self._paths: dict[str, Path] = {}

    def describe(self) -> str:
        """Where keys are looked for, for messages."""
        return ", ".join(str(d) for d in self.dirs)

    def generate(self, role: str, *, online: bool) -> CryptoSigner:
        """A new Ed25519 key for *role*, written (0600) under ``online/`` or ``offline/``."""
        signer = new_key()
        self.store(signer, role, online=online)
        return signer

    def store(self, signer: CryptoSigner, role: str, *, online: bool) -> Path:
        """Write *signer*'s private key (0600) for *role* under ``online/`` or ``offline/``.

        Used to keep a key made with :func:`new_key` once what it signed is sure to be published.
        """
        keyid = signer.public_key.keyid
        directory = self.dirs[0] / (ONLINE_DIR if online else OFFLINE_DIR)
        path = directory / f"{role}-{keyid[:12]}.pem"
        try:
            for d in (self.dirs[0], directory):
                d.mkdir(mode=0o700, exist_ok=True)
            write_durably(path, signer.private_bytes, mode=0o600)
        except OSError as e:
            raise OtaIOError(f"cannot write key file {path}: {e.strerror or e}") from e
        if self._signers is not None:
            self._signers[keyid] = signer
        self._paths[keyid] = path
        return path

    def signers(self) -> dict[str, Signer]:
        """Every loadable key, by key id (loaded once, then cached)."""
        if self._signers is None:
            self._signers = {}
            for path in self._key_files():
                signer = _load_signer(path)
                self._signers.setdefault(signer.public_key.keyid, signer)
                self._paths.setdefault(signer.public_key.keyid, path)
        return dict(self._signers)

    def path_of(self, keyid: str) -> Path | None:
        """The file holding *keyid*'s private key, if this store has it."""
        self.signers()
        return self._paths.get(keyid)

    def retire(self, keyid: str) -> Path | None:
        """Move *keyid*'s file into ``revoked/`` next to it; its new path, or None if absent."""
        path = self.path_of(keyid)
        if path is None:
            return None
        root = next(d for d in self.dirs if path.is_relative_to(d))
        target = root / REVOKED_DIR / path.name
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            path.replace(target)
        except OSError as e:
            raise OtaIOError(f"cannot move key file {path} to {target}: {e.strerror or e}") from e
        assert self._signers is not None
        del self._signers[keyid]
        del self._paths[keyid]
        return target

    def _key_files(self) -> list[Path]:
        files: list[Path] = []
        for directory in self.dirs:
            if not directory.is_dir():
                continue
            try:
                found = sorted(directory.rglob("*.pem"))
            except OSError as e:
                raise OtaIOError(f"cannot list keys in {directory}: {e.strerror or e}") from e
            files.extend(p for p in found if REVOKED_DIR not in p.relative_to(directory).parts[:-1])
        return files


def _load_signer(path: Path) -> Signer:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

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
        private_key = load_pem_private_key(data, password=None)
        return CryptoSigner(private_key)
    except (ValueError, TypeError) as e:
        # cryptography: ValueError for garbage, TypeError for an encrypted key without password.
        raise SigningKeyError(f"key file {path} is not an unencrypted PEM private key: {e}") from e
    except Exception as e:  # UnsupportedAlgorithm and securesystemslib's key-type errors
        raise SigningKeyError(f"key file {path} holds an unsupported key: {e}") from e

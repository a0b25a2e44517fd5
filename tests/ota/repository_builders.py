"""Shared builders for the repository tests: in-memory keys and repositories, ngclient runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner, Signer
from tuf.ngclient.updater import Updater

from ota.keys import new_key
from ota.repository import ROLES, RepositoryMetadata, create_repository, new_root, sign_root
from ota.repository_config import DEFAULT_EXPIRY_DAYS

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PERIODS: Mapping[str, timedelta] = {r: timedelta(days=d) for r, d in DEFAULT_EXPIRY_DAYS.items()}


@dataclass
class Built:
    """A repository made in memory with the keys that made it."""

    repo: RepositoryMetadata
    keys: dict[str, list[CryptoSigner]]

    @property
    def signers(self) -> dict[str, Signer]:
        return {s.public_key.keyid: s for ks in self.keys.values() for s in ks}

    def without(self, role: str) -> dict[str, Signer]:
        """Every signer but *role*'s."""
        gone = {s.public_key.keyid for s in self.keys[role]}
        return {k: s for k, s in self.signers.items() if k not in gone}


def build(thresholds: Mapping[str, int] | None = None, now: datetime = NOW) -> Built:
    """A fresh repository: each role with as many keys as its threshold (default 1)."""
    thresholds = dict(thresholds or {})
    keys = {r: [new_key() for _ in range(thresholds.get(r, 1))] for r in ROLES}
    signers = {s.public_key.keyid: s for ks in keys.values() for s in ks}
    root = sign_root(
        new_root(
            {r: [s.public_key for s in ks] for r, ks in keys.items()},
            thresholds,
            expires=now + PERIODS["root"],
        ),
        signers,
    )
    return Built(create_repository(root, signers, PERIODS, now), keys)


def refreshed_updater(
    client_dir: Path, metadata_url: str, *, bootstrap: bytes | None, target_url: str | None = None
) -> Updater:
    """An ngclient Updater over *client_dir* that has run refresh() (it raises if rejected)."""
    (client_dir / "metadata").mkdir(parents=True, exist_ok=True)
    (client_dir / "targets").mkdir(parents=True, exist_ok=True)
    updater = Updater(
        str(client_dir / "metadata"),
        metadata_url,
        str(client_dir / "targets"),
        target_url,
        bootstrap=bootstrap,
    )
    updater.refresh()
    return updater

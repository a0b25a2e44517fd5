"""Attacks on the update client (issue 4, item 6), each with real crypto over real HTTP: the
served repository files are tampered with or re-signed as an attacker holding some keys would.

Every attack is refused with its rejection code and a reason naming the repository and role,
and nothing is downloaded (no request for an image) or written where the agent installs from.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, Targets, Timestamp

from ota.errors import RejectionCode, UpdateRejectedError
from ota.keys import new_key
from ota.repository import metadata_bytes, new_root
from ota.repository_tool import RepositoryDirectory
from ota.target_info import ImageKind, TargetCustom
from ota.update_client import UpdateClient
from tests.ota.test_update_client import ROOTFS, TBOX, Bench, make_bench


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = make_bench(tmp_path)
    with made.server:
        yield made


# --- helpers -------------------------------------------------------------------------------------


def _image_md(bench: Bench) -> Path:
    return bench.srv / "image" / "metadata"


def _vehicle_md(bench: Bench, vehicle_id: str = "VIN1") -> Path:
    return bench.srv / "director" / "vehicles" / vehicle_id / "metadata"


def _keys(repo: RepositoryDirectory, role: str) -> list[Signer]:
    """The private keys of *role* (an attacker who stole them)."""
    root = repo._metadata().latest_root().signed
    signers = repo.keys.signers()
    return [signers[k] for k in root.roles[role].keyids]


def _publish(
    directory: Path, signed: Timestamp | Snapshot | Targets, signers: list[Signer]
) -> MetaFile:
    """Sign *signed* with *signers* and serve it (as the attacker's server would)."""
    md: Metadata[Any] = Metadata(signed)
    for signer in signers:
        md.sign(signer, append=True)
    data = metadata_bytes(md)
    name = (
        "timestamp.json" if signed.type == "timestamp" else f"{signed.version}.{signed.type}.json"
    )
    (directory / name).write_bytes(data)
    return MetaFile.from_data(signed.version, data, ["sha256"])


def _read(directory: Path, name: str) -> Metadata[Any]:
    return Metadata.from_bytes((directory / name).read_bytes())


def _update(bench: Bench, client: UpdateClient, **options: Any) -> None:
    """What the agent does: check, then download every target of the plan."""
    plan = client.check(**options)
    for target in plan.targets:
        client.download(target, bench.tmp / "install" / target.file_name)


def _refused(
    bench: Bench, client: UpdateClient, code: RejectionCode, reason: str, **options: Any
) -> UpdateRejectedError:
    requested = bench.target_requests()
    with pytest.raises(UpdateRejectedError, match=reason) as excinfo:
        _update(bench, client, **options)
    assert excinfo.value.code is code
    assert str(excinfo.value).startswith(f"{code.value}: ")
    assert bench.target_requests() == requested, "an image was requested"
    assert not (bench.tmp / "install").exists() or not any((bench.tmp / "install").iterdir())
    return excinfo.value


def _trusting_client(bench: Bench, **overrides: Any) -> UpdateClient:
    """A client that has verified the current state (so it has versions to roll back from)."""
    client = bench.client(**overrides)
    client.check()
    return client


# --- rollback ------------------------------------------------------------------------------------


def test_rollback_of_root(bench: Bench) -> None:
    bench.image.resign(["root"])
    client = _trusting_client(bench)  # trusts image root v2
    md = _image_md(bench)
    shutil.copyfile(md / "1.root.json", md / "3.root.json")  # v1 served as the next version
    error = _refused(
        bench,
        client,
        RejectionCode.ROLLBACK,
        r"image repository, root: older than already trusted: Expected root version 3 instead "
        r"got version 1",
    )
    assert (error.repository, error.role) == ("image", "root")


def test_rollback_of_timestamp(bench: Bench) -> None:
    old = (_image_md(bench) / "timestamp.json").read_bytes()
    bench.image.refresh(timestamp_only=True)
    client = _trusting_client(bench)
    (_image_md(bench) / "timestamp.json").write_bytes(old)  # replayed
    _refused(
        bench,
        client,
        RejectionCode.ROLLBACK,
        r"image repository, timestamp: older than already trusted: New timestamp version 3 "
        r"must be >= 4",
    )


def test_rollback_of_snapshot(bench: Bench) -> None:
    # The image repository's online timestamp key is stolen: a new timestamp lists an old
    # snapshot version.
    bench.image.refresh()
    client = _trusting_client(bench)  # trusts snapshot v4
    md = _image_md(bench)
    timestamp = copy.deepcopy(_read(md, "timestamp.json").signed)
    timestamp.version += 1
    timestamp.snapshot_meta = MetaFile.from_data(
        3, (md / "3.snapshot.json").read_bytes(), ["sha256"]
    )
    _publish(md, timestamp, _keys(bench.image, "timestamp"))
    _refused(
        bench,
        client,
        RejectionCode.ROLLBACK,
        r"image repository, timestamp: older than already trusted: New snapshot version must "
        r"be >= 4, got version 3",
    )


def test_rollback_of_targets(bench: Bench) -> None:
    # The director's online snapshot and timestamp keys are stolen: a new snapshot lists an
    # old targets version (the vehicle's assignment before the last one).
    client = _trusting_client(bench)  # trusts VIN1's targets v3
    md = _vehicle_md(bench)
    snapshot = copy.deepcopy(_read(md, "3.snapshot.json").signed)
    snapshot.version = 4
    snapshot.meta["targets.json"] = MetaFile.from_data(
        2, (md / "2.targets.json").read_bytes(), ["sha256"]
    )
    snapshot_meta = _publish(md, snapshot, _keys(bench.director, "snapshot"))
    timestamp = copy.deepcopy(_read(md, "timestamp.json").signed)
    timestamp.version += 1
    timestamp.snapshot_meta = snapshot_meta
    _publish(md, timestamp, _keys(bench.director, "timestamp"))
    _refused(
        bench,
        client,
        RejectionCode.ROLLBACK,
        r"director repository, snapshot: older than already trusted: Expected targets.json",
    )


# --- freeze --------------------------------------------------------------------------------------


def test_freeze_expired_timestamp(bench: Bench) -> None:
    client = _trusting_client(bench)
    bench.now += timedelta(days=2)  # nothing new was signed: the timestamp (1 day) expired
    _refused(
        bench,
        client,
        RejectionCode.FREEZE,
        r"director repository, timestamp: timestamp.json is expired \(a frozen or stale",
    )


def test_freeze_with_the_clock_set_back(bench: Bench) -> None:
    bench.now += timedelta(hours=12)
    client = _trusting_client(bench)
    bench.now += timedelta(days=2)
    _refused(bench, client, RejectionCode.FREEZE, "expired")
    bench.now -= timedelta(days=2, hours=1)  # back to when the frozen state was still valid
    _refused(bench, client, RejectionCode.CLOCK_ROLLBACK, r"the clock reads .* earlier than")


# --- mix and match -------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["snapshot", "targets"])
def test_mix_and_match(bench: Bench, role: str) -> None:
    client = _trusting_client(bench)  # image snapshot v3, targets v3
    bench.publish("tbox/rootfs-13.img", os.urandom(1000), TBOX)  # snapshot v4, targets v4
    md = _image_md(bench)
    shutil.copyfile(md / f"3.{role}.json", md / f"4.{role}.json")  # an older state's file
    _refused(
        bench,
        client,
        RejectionCode.MIX_AND_MATCH,
        rf"image repository, {role}: not the file the role above lists \(length or hash",
    )


# --- arbitrary software --------------------------------------------------------------------------


def _malicious_targets(bench: Bench, signers: list[Signer]) -> None:
    """New image targets listing a malicious rootfs, signed by *signers*, and the snapshot and
    timestamp listing it signed with the real (stolen) online keys."""
    md = _image_md(bench)
    evil = os.urandom(300_000)
    current = bench.image.load()
    targets = copy.deepcopy(current.targets.signed)
    targets.version += 1
    entry = targets.targets[ROOTFS]
    entry.hashes = {"sha256": hashlib.sha256(evil).hexdigest()}
    (
        bench.srv / "image" / "targets" / "tbox" / f"{entry.hashes['sha256']}.rootfs-12.img"
    ).write_bytes(evil)
    targets_meta = _publish(md, targets, signers)
    snapshot = copy.deepcopy(current.snapshot.signed)
    snapshot.version += 1
    snapshot.meta["targets.json"] = targets_meta
    snapshot_meta = _publish(md, snapshot, _keys(bench.image, "snapshot"))
    timestamp = copy.deepcopy(current.timestamp.signed)
    timestamp.version += 1
    timestamp.snapshot_meta = snapshot_meta
    _publish(md, timestamp, _keys(bench.image, "timestamp"))


def test_arbitrary_software_with_a_bad_signature(bench: Bench) -> None:
    client = _trusting_client(bench)
    _malicious_targets(bench, [new_key()])  # the offline targets key is out of reach
    _refused(
        bench,
        client,
        RejectionCode.BAD_SIGNATURE,
        r"image repository, targets: no valid signature: targets was signed by 0/1 keys",
    )


def test_arbitrary_software_below_the_threshold(bench: Bench) -> None:
    bench.image.set_threshold("targets", 2, add_keys=1)
    client = _trusting_client(bench)
    one_of_two = _keys(bench.image, "targets")[:1]
    _malicious_targets(bench, one_of_two)
    _refused(
        bench,
        client,
        RejectionCode.THRESHOLD,
        r"image repository, targets: too few valid signatures: targets was signed by 1/2 keys",
    )


def test_arbitrary_software_replacing_the_image_file(bench: Bench) -> None:
    client = bench.client()
    plan = client.check()
    rootfs = plan.targets[1]
    served = bench.srv / "image" / "targets" / "tbox" / f"{rootfs.sha256}.rootfs-12.img"
    served.write_bytes(os.urandom(rootfs.length))  # same length, other bytes
    dest = bench.tmp / "install" / "rootfs.img"
    with pytest.raises(UpdateRejectedError, match=r"bad_hash: image repository, target: the bytes"):
        client.download(rootfs, dest)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert list(bench.config().partial_dir.iterdir()) == []  # not kept to resume either


# --- endless data --------------------------------------------------------------------------------


def test_endless_data_in_metadata(bench: Bench) -> None:
    client = _trusting_client(bench)
    stamp = _image_md(bench) / "timestamp.json"
    stamp.write_bytes(stamp.read_bytes() + b" " * 20_000)  # more than the 16,384 bytes allowed
    _refused(
        bench,
        client,
        RejectionCode.ENDLESS_DATA,
        r"image repository, timestamp: .*timestamp.json: 20,558 bytes is more than the 16,384 ",
    )


def test_endless_data_in_a_target(bench: Bench) -> None:
    client = bench.client()
    plan = client.check()
    rootfs = plan.targets[1]
    served = bench.srv / "image" / "targets" / "tbox" / f"{rootfs.sha256}.rootfs-12.img"
    served.write_bytes(served.read_bytes() + os.urandom(50_000_000))
    dest = bench.tmp / "install" / "rootfs.img"
    with pytest.raises(UpdateRejectedError) as excinfo:
        client.download(rootfs, dest)
    assert excinfo.value.code is RejectionCode.ENDLESS_DATA
    assert "more than the 300,000 allowed" in str(excinfo.value)
    assert client.fetcher.stats.received < 100_000  # refused on its length, not read
    assert not dest.exists() and list(bench.config().partial_dir.iterdir()) == []


def test_endless_data_listed_by_the_director(bench: Bench) -> None:
    client = bench.client(max_target_bytes=100_000)
    _refused(
        bench,
        client,
        RejectionCode.ENDLESS_DATA,
        r"director target tbox/rootfs-12.img: 300,000 bytes is more than the 100,000 allowed",
    )


# --- Uptane: vehicle, hardware, director and image -----------------------------------------------


def test_wrong_hardware(bench: Bench) -> None:
    other = TargetCustom(hardware_id="tbox-hw3", release_counter=13, image_kind=ImageKind.TBOX)
    bench.publish("tbox/rootfs-13-hw3.img", os.urandom(1000), other)
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-13-hw3.img")
    _refused(
        bench,
        bench.client(),
        RejectionCode.WRONG_HARDWARE,
        r"director target tbox/rootfs-13-hw3.img: built for hardware 'tbox-hw3', this T-box is "
        r"'tbox-hw2'",
    )


def test_wrong_vehicle(bench: Bench) -> None:
    # The director's online keys are shared by the fleet: VIN2's metadata verifies for VIN1.
    shutil.rmtree(_vehicle_md(bench))
    shutil.copytree(_vehicle_md(bench, "VIN2"), _vehicle_md(bench))
    _refused(
        bench,
        bench.client(),
        RejectionCode.WRONG_VEHICLE,
        r"director target tbox/rootfs-12.img: assigned to vehicle 'VIN2', this is 'VIN1'",
    )


def test_director_image_mismatch(bench: Bench) -> None:
    # A compromised director (online keys) assigns a hash the image repository never signed.
    from ota.repository import replace_targets
    from ota.repository_files import MetadataDir

    files = MetadataDir(_vehicle_md(bench))
    current = bench.director.load("VIN1")
    targets = copy.deepcopy(current.targets.signed)
    targets.targets[ROOTFS].hashes = {"sha256": hashlib.sha256(b"evil").hexdigest()}
    forged = replace_targets(
        current, targets, bench.director.keys.signers(), bench.director.config.periods(), bench.now
    )
    files.save(forged, current)
    _refused(
        bench,
        bench.client(),
        RejectionCode.DIRECTOR_IMAGE_MISMATCH,
        r"director target tbox/rootfs-12.img: not what the image repository vouches for "
        r"\(tbox/rootfs-12.img: director and image repository disagree on hashes",
    )


def test_malicious_key_rotation(bench: Bench) -> None:
    client = _trusting_client(bench)
    attacker = new_key()
    root = new_root(
        {role: [attacker.public_key] for role in ("root", "targets", "snapshot", "timestamp")},
        {},
        expires=bench.now + timedelta(days=365),
    )
    root.version = 2
    md = Metadata(root)
    md.sign(attacker)  # not by the trusted root key
    (_image_md(bench) / "2.root.json").write_bytes(metadata_bytes(md))
    _refused(
        bench,
        client,
        RejectionCode.KEY_ROTATION,
        r"image repository, root: a new root version is not signed by a threshold of the "
        r"trusted root's keys and of its own \(root was signed by 0/1 keys\)",
    )


def test_a_rotation_signed_by_the_old_root_only_is_refused_too(bench: Bench) -> None:
    client = _trusting_client(bench)
    current: Root = bench.image._metadata().latest_root().signed
    root = copy.deepcopy(current)
    root.version = 2
    attacker = new_key()
    for keyid in list(root.roles["root"].keyids):
        root.revoke_key(keyid, "root")
    root.add_key(attacker.public_key, "root")
    md = Metadata(root)
    md.sign(_keys(bench.image, "root")[0])  # the old root's signature, not the new key's
    (_image_md(bench) / "2.root.json").write_bytes(metadata_bytes(md))
    _refused(bench, client, RejectionCode.KEY_ROTATION, r"root was signed by 0/1 keys")


def test_downgrade(bench: Bench) -> None:
    _refused(
        bench,
        bench.client(),
        RejectionCode.DOWNGRADE,
        r"director target tbox/rootfs-12.img: release counter 12 is lower than the 13 installed "
        r"on the T-box",
        installed={(ImageKind.TBOX, None): 13},
    )


# --- slow retrieval ------------------------------------------------------------------------------


def test_slow_retrieval_of_metadata(tmp_path: Path) -> None:
    made = make_bench(tmp_path, throttle=2_000)
    with made.server:
        client = made.client(min_bytes_per_s=50_000, grace_s=0.1)
        _refused(
            made,
            client,
            RejectionCode.SLOW_RETRIEVAL,
            r"director repository, (root|timestamp): average .* is below the floor of 50,000 B/s",
        )


def test_slow_retrieval_of_a_target(tmp_path: Path) -> None:
    made = make_bench(tmp_path, throttle=40_000)
    with made.server:
        client = made.client(min_bytes_per_s=200_000, grace_s=0.5)
        plan = client.check()  # metadata arrives in one chunk each: within the grace period
        dest = made.tmp / "install" / "rootfs.img"
        with pytest.raises(UpdateRejectedError) as excinfo:
            client.download(plan.targets[1], dest)
        assert excinfo.value.code is RejectionCode.SLOW_RETRIEVAL
        assert str(excinfo.value).startswith("slow_retrieval: image repository, target: average")
        assert not dest.exists()

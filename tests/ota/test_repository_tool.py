"""The repository tool end to end: repositories built with it, served, and read by python-tuf's
ngclient, also after key rotations, threshold changes, expiry and a crash mid-rotation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tuf.api.exceptions import ExpiredMetadataError
from tuf.ngclient.updater import Updater

from ota.errors import (
    OtaInputError,
    OtaIOError,
    OtaUsageError,
    OtaVerificationError,
    SigningKeyError,
)
from ota.http_server import RepositoryServer
from ota.repository_config import RepositoryKind
from ota.repository_files import MetadataDir
from ota.repository_tool import RepositoryDirectory, default_keys_dir
from ota.target_info import DeltaDescriptor, ImageKind, TargetCustom, check_matches_image
from tests.ota.repository_builders import refreshed_updater

TBOX = TargetCustom(hardware_id="tbox-hw2", release_counter=12, image_kind=ImageKind.TBOX)
BMS = TargetCustom(hardware_id="bms-hw1", release_counter=3, image_kind=ImageKind.ECU)


@dataclass
class Bench:
    root: Path
    image: RepositoryDirectory
    director: RepositoryDirectory
    server: RepositoryServer
    firmware: dict[str, bytes]

    def image_client(self, name: str = "image-client", *, first: bool = False) -> Updater:
        bootstrap = (self.root / "srv" / "image" / "metadata" / "1.root.json").read_bytes()
        return refreshed_updater(
            self.root / name,
            self.server.url + "image/metadata/",
            bootstrap=bootstrap if first else None,
            target_url=self.server.url + "image/targets/",
        )

    def vehicle_client(self, vehicle_id: str, *, first: bool = False) -> Updater:
        bootstrap = (self.root / "srv" / "director" / "metadata" / "1.root.json").read_bytes()
        return refreshed_updater(
            self.root / f"director-client-{vehicle_id}",
            self.server.url + f"director/vehicles/{vehicle_id}/metadata/",
            bootstrap=bootstrap if first else None,
        )


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    srv = tmp_path / "srv"
    image = RepositoryDirectory.init(srv / "image", RepositoryKind.IMAGE)
    director = RepositoryDirectory.init(srv / "director", RepositoryKind.DIRECTOR)
    firmware = {"tbox/rootfs-12.img": os.urandom(150_000), "bms/fw-3.bin": os.urandom(20_000)}
    for name, data in firmware.items():
        (tmp_path / name.replace("/", "_")).write_bytes(data)
    with RepositoryServer(srv) as server:
        yield Bench(tmp_path, image, director, server, firmware)


def _add(bench: Bench, name: str, custom: TargetCustom = TBOX, **kwargs: bool) -> list[str]:
    _, written = bench.image.add_target(
        bench.root / name.replace("/", "_"), name=name, custom=custom, **kwargs
    )
    return written


def _download(updater: Updater, name: str) -> bytes:
    info = updater.get_targetinfo(name)
    assert info is not None, f"{name} not listed"
    return Path(updater.download_target(info)).read_bytes()


def test_a_client_fetches_consistent_snapshots_and_downloads_a_target(bench: Bench) -> None:
    written = _add(bench, "tbox/rootfs-12.img", sha512=True)
    assert written == [
        "metadata/2.targets.json",
        "metadata/2.snapshot.json",
        "metadata/timestamp.json",
    ]
    client = bench.image_client(first=True)
    assert _download(client, "tbox/rootfs-12.img") == bench.firmware["tbox/rootfs-12.img"]
    target = bench.image.load().targets.signed.targets["tbox/rootfs-12.img"]
    sha256 = target.hashes["sha256"]
    paths = [r.path for r in bench.server.requests if r.status == 200]
    assert paths == [
        "image/metadata/timestamp.json",
        "image/metadata/2.snapshot.json",
        "image/metadata/2.targets.json",
        f"image/targets/tbox/{sha256}.rootfs-12.img",
    ]
    assert [r.path for r in bench.server.requests if r.status == 404] == [
        "image/metadata/2.root.json"  # the client's probe for a newer root
    ]


def test_new_targets_reach_a_client_that_refreshed_before(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    bench.image_client(first=True)
    _add(bench, "bms/fw-3.bin", BMS)
    assert _download(bench.image_client(), "bms/fw-3.bin") == bench.firmware["bms/fw-3.bin"]


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotating_any_role_key_is_accepted_by_a_client_on_the_old_root(
    bench: Bench, role: str
) -> None:
    _add(bench, "tbox/rootfs-12.img")
    bench.image_client(first=True)
    old = bench.image.load().root.signed.roles[role].keyids
    new, _ = bench.image.rotate_key(role)
    root = bench.image.load().root.signed
    assert root.version == 2
    assert root.roles[role].keyids == new and set(new).isdisjoint(old)
    assert all(bench.image.keys.path_of(k) is None for k in old)  # moved to revoked/
    assert len(list((default_keys_dir(bench.root / "srv" / "image") / "revoked").iterdir())) == 1
    client = bench.image_client()
    assert _download(client, "tbox/rootfs-12.img") == bench.firmware["tbox/rootfs-12.img"]


def test_a_client_walks_several_root_versions_including_threshold_changes(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    bench.image_client(first=True)
    bench.image.rotate_key("root")
    new, _ = bench.image.set_threshold("root", 2, add_keys=1)
    assert len(new) == 1
    bench.image.rotate_key("root", revoke=[new[0][:10]])
    bench.image.set_threshold("targets", 2, add_keys=1)
    repo = bench.image.load()
    assert repo.root.signed.version == 5
    assert repo.root.signed.roles["root"].threshold == 2
    assert len(repo.targets.signatures) == 2
    assert bench.image_client().get_targetinfo("tbox/rootfs-12.img") is not None
    # and a client provisioned with root v1 only walks the whole chain
    assert _download(bench.image_client("fresh", first=True), "tbox/rootfs-12.img")


def test_lowering_a_threshold(bench: Bench) -> None:
    bench.image.set_threshold("snapshot", 2, add_keys=1)
    bench.image_client(first=True)
    bench.image.set_threshold("snapshot", 1)
    assert bench.image.load().root.signed.roles["snapshot"].threshold == 1
    bench.image_client()
    with pytest.raises(OtaUsageError, match="threshold is 1 already"):
        bench.image.set_threshold("snapshot", 1)
    with pytest.raises(OtaUsageError, match="exceeds"):
        bench.image.set_threshold("snapshot", 5)


def test_rotating_a_lost_key(bench: Bench) -> None:
    bench.image_client(first=True)
    old = bench.image.load().root.signed.roles["timestamp"].keyids[0]
    path = bench.image.keys.path_of(old)
    assert path is not None
    path.unlink()
    lost = RepositoryDirectory(bench.image.path)
    with pytest.raises(SigningKeyError, match="timestamp"):
        lost.refresh()
    _, written = lost.rotate_key("timestamp")
    assert written == ["metadata/2.root.json", "metadata/root.json", "metadata/timestamp.json"]
    bench.image_client()


def test_signing_without_a_needed_key_writes_nothing(bench: Bench) -> None:
    metadata = bench.root / "srv" / "image" / "metadata"
    keys = default_keys_dir(bench.root / "srv" / "image")
    root_key = next((keys / "offline").glob("root-*.pem"))
    root_key.rename(bench.root / "elsewhere.pem")
    before = {p.name: p.read_bytes() for p in metadata.iterdir()}
    key_files = sorted(keys.rglob("*.pem"))
    image = RepositoryDirectory(bench.image.path)
    with pytest.raises(
        SigningKeyError,
        match=r"root v2: 0 of the 1 signatures .*; no private key for \w+ \(keys looked for in ",
    ):
        image.rotate_key("timestamp")
    assert {p.name: p.read_bytes() for p in metadata.iterdir()} == before
    assert sorted(keys.rglob("*.pem")) == key_files  # no new key kept
    # the offline key on another medium, named with --keys
    usb = bench.root / "usb"
    usb.mkdir()
    (bench.root / "elsewhere.pem").rename(usb / "root.pem")
    RepositoryDirectory(bench.image.path, keys=[usb]).rotate_key("timestamp")
    bench.image_client(first=True)


def test_expired_metadata_is_refused_until_resigned(bench: Bench, tmp_path: Path) -> None:
    past = datetime.now(UTC) - timedelta(days=10)
    RepositoryDirectory.init(tmp_path / "srv" / "old", RepositoryKind.IMAGE, clock=lambda: past)
    old = RepositoryDirectory(tmp_path / "srv" / "old")  # today's clock
    bootstrap = (tmp_path / "srv" / "old" / "metadata" / "1.root.json").read_bytes()
    url = bench.server.url + "old/metadata/"
    with pytest.raises(ExpiredMetadataError):
        refreshed_updater(tmp_path / "c1", url, bootstrap=bootstrap)
    written = old.resign()
    assert written == [
        "metadata/2.snapshot.json",
        "metadata/timestamp.json",
    ]  # targets (90 days) and root (365) were not due
    # the one-day timestamp is always due within a day; nothing else is
    assert old.resign() == ["metadata/timestamp.json"]
    assert old.resign(within=timedelta(hours=1)) == []
    refreshed_updater(tmp_path / "c2", url, bootstrap=bootstrap)
    assert old.resign(["root", "targets"]) == [
        "metadata/2.root.json",
        "metadata/root.json",
        "metadata/2.targets.json",
        "metadata/3.snapshot.json",
        "metadata/timestamp.json",
    ]
    refreshed_updater(tmp_path / "c2", url, bootstrap=None)


def test_refresh(bench: Bench) -> None:
    assert bench.image.refresh() == ["metadata/2.snapshot.json", "metadata/timestamp.json"]
    assert bench.image.refresh(timestamp_only=True) == ["metadata/timestamp.json"]
    assert bench.image.load().timestamp.signed.version == 3
    bench.image_client(first=True)


def test_director_assignments_match_the_image_repository(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    _add(bench, "bms/fw-3.bin", BMS)
    entry, _ = bench.director.assign(
        bench.image, vehicle_id="VIN1", target_name="bms/fw-3.bin", ecu_id="bms"
    )
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    bench.director.assign(bench.image, vehicle_id="VIN2", target_name="tbox/rootfs-12.img")
    assert bench.director.vehicle_ids() == ["VIN1", "VIN2"]
    assert entry.custom == {**BMS.to_json(), "vehicle_id": "VIN1", "ecu_id": "bms"}

    director = bench.vehicle_client("VIN1", first=True)
    image = bench.image_client(first=True)
    for name in ("bms/fw-3.bin", "tbox/rootfs-12.img"):
        assigned = director.get_targetinfo(name)
        vouched = image.get_targetinfo(name)
        assert assigned is not None and vouched is not None
        check_matches_image(assigned, vouched)
        assert assigned.custom["vehicle_id"] == "VIN1"
        assert _download(image, name) == bench.firmware[name]
    assert bench.vehicle_client("VIN2", first=True).get_targetinfo("bms/fw-3.bin") is None


def test_director_online_key_rotation_reaches_every_vehicle(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    for vehicle_id in ("VIN1", "VIN2"):
        bench.director.assign(bench.image, vehicle_id=vehicle_id, target_name="tbox/rootfs-12.img")
        bench.vehicle_client(vehicle_id, first=True)
    _, written = bench.director.rotate_key("targets")
    assert written[:2] == ["metadata/2.root.json", "metadata/root.json"]  # the fleet root first
    assert "vehicles/VIN2/metadata/3.targets.json" in written
    bench.director.rotate_key("root")
    for vehicle_id in ("VIN1", "VIN2"):
        client = bench.vehicle_client(vehicle_id)
        assert client.get_targetinfo("tbox/rootfs-12.img") is not None
    fleet = MetadataDir(bench.root / "srv" / "director" / "metadata")
    vehicle = MetadataDir(bench.root / "srv" / "director" / "vehicles" / "VIN2" / "metadata")
    assert fleet.root_versions() == vehicle.root_versions() == [1, 2, 3]


def test_a_vehicle_left_behind_by_a_crash_catches_up(
    bench: Bench, monkeypatch: pytest.MonkeyPatch
) -> None:
    _add(bench, "tbox/rootfs-12.img")
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    bench.vehicle_client("VIN1", first=True)
    real_save = MetadataDir.save

    def power_cut(self: MetadataDir, *args: object, **kwargs: object) -> list[str]:
        if "vehicles" in self.path.parts:
            raise OtaIOError("power cut")
        return real_save(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MetadataDir, "save", power_cut)
    with pytest.raises(OtaIOError):
        bench.director.rotate_key("timestamp")
    monkeypatch.undo()
    # The fleet root moved on; the vehicle's repository did not. Its timestamp is signed by the
    # revoked key only, and the next command brings it up.
    written = bench.director.refresh()
    assert "vehicles/VIN1/metadata/2.root.json" in written
    assert bench.vehicle_client("VIN1").get_targetinfo("tbox/rootfs-12.img") is not None


def test_reassigning_a_slot_and_unassigning(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    _add(bench, "bms/fw-3.bin", BMS)
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    _, written = bench.director.assign(
        bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img"
    )
    assert written == []
    bench.director.unassign(vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    assert bench.director.load("VIN1").targets.signed.targets == {}
    with pytest.raises(OtaUsageError, match="no vehicle 'VIN9'"):
        bench.director.unassign(vehicle_id="VIN9", target_name="x")


def test_assigning_refuses_what_the_image_repository_does_not_vouch_for(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    with pytest.raises(OtaUsageError, match="has no target 'nope'"):
        bench.director.assign(bench.image, vehicle_id="VIN1", target_name="nope")
    target = bench.image.load().targets.signed.targets["tbox/rootfs-12.img"]
    published = bench.root / "srv" / "image" / "targets" / target.get_prefixed_paths()[0]
    published.unlink()
    with pytest.raises(OtaInputError, match="missing or of the wrong length"):
        bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    targets_file = bench.root / "srv" / "image" / "metadata" / "2.targets.json"
    targets_file.write_bytes(
        targets_file.read_bytes().replace(b'"release_counter": 12', b'"release_counter": 99')
    )
    with pytest.raises(OtaVerificationError, match="targets v2 does not verify"):
        bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")


def test_operations_check_the_kind_of_repository(bench: Bench) -> None:
    with pytest.raises(OtaUsageError, match="is a image repository, not director"):
        bench.image.assign(bench.image, vehicle_id="VIN1", target_name="x")
    with pytest.raises(OtaUsageError, match="is a director repository, not image"):
        bench.director.add_target(bench.root / "x", name="x", custom=TBOX)
    with pytest.raises(OtaUsageError, match="applies to a director"):
        bench.image.refresh(vehicle_ids=["VIN1"])


def test_delta_descriptors_must_name_a_patch_in_the_repository(bench: Bench) -> None:
    sha = "ab" * 32
    with_delta = TargetCustom(
        hardware_id="bms-hw1",
        release_counter=4,
        image_kind=ImageKind.ECU,
        delta=DeltaDescriptor(from_sha256=sha, patch="bms/fw-3.bin"),
    )
    with pytest.raises(OtaUsageError, match="add the patch first"):
        _add(bench, "tbox/rootfs-12.img", with_delta)
    _add(bench, "bms/fw-3.bin", BMS)
    _add(bench, "tbox/rootfs-12.img", with_delta)
    listed = bench.image_client(first=True).get_targetinfo("tbox/rootfs-12.img")
    assert listed is not None
    assert listed.custom["delta"]["patch"] == "bms/fw-3.bin"


def test_describe(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    data = bench.image.describe()
    assert data["kind"] == "image"
    assert data["problems"] == []
    assert data["roles"]["targets"]["version"] == 2
    assert data["roles"]["timestamp"]["keys"][0]["private_key"].endswith(".pem")
    assert data["targets"]["tbox/rootfs-12.img"]["custom"] == TBOX.to_json()
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    director = bench.director.describe()
    assert director["root"]["version"] == 1
    assert list(director["vehicles"]) == ["VIN1"]
    assert director["vehicles"]["VIN1"]["problems"] == []
    # an expired role is a problem
    later = RepositoryDirectory(
        bench.image.path, clock=lambda: datetime.now(UTC) + timedelta(days=2)
    )
    assert later.describe()["problems"] == [later.describe()["problems"][0]]
    assert "timestamp expired" in later.describe()["problems"][0]


def test_init_checks_its_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OtaUsageError, match="not an empty directory"):
        RepositoryDirectory.init(tmp_path / "full", RepositoryKind.IMAGE)
    with pytest.raises(OtaUsageError, match="inside the repository"):
        RepositoryDirectory.init(tmp_path / "r", RepositoryKind.IMAGE, keys=tmp_path / "r" / "k")
    with pytest.raises(OtaUsageError, match="director repository only"):
        RepositoryDirectory.init(tmp_path / "r", RepositoryKind.IMAGE, vehicle_ids=["V"])
    with pytest.raises(OtaUsageError, match="--expires root"):
        RepositoryDirectory.init(tmp_path / "r", RepositoryKind.IMAGE, expires_days={"root": 0})
    with pytest.raises(OtaUsageError, match="--threshold targets"):
        RepositoryDirectory.init(tmp_path / "r", RepositoryKind.IMAGE, thresholds={"targets": 99})
    with pytest.raises(OtaUsageError, match="not an update repository"):
        RepositoryDirectory(tmp_path)
    assert not (tmp_path / "r").exists()


def test_init_with_thresholds_periods_and_vehicles(tmp_path: Path) -> None:
    director = RepositoryDirectory.init(
        tmp_path / "d",
        RepositoryKind.DIRECTOR,
        keys=tmp_path / "keys",
        thresholds={"root": 3},
        expires_days={"timestamp": 2},
        vehicle_ids=["VIN1"],
    )
    assert (tmp_path / "d" / "repository.toml").read_text().count('keys = "../keys"') == 1
    root = director.load("VIN1").root.signed
    assert root.roles["root"].threshold == 3 and len(root.roles["root"].keyids) == 3
    assert len(list((tmp_path / "keys" / "offline").iterdir())) == 3
    assert len(list((tmp_path / "keys" / "online").iterdir())) == 3
    timestamp = director.load("VIN1").timestamp.signed
    assert timedelta(days=1, hours=23) < timestamp.expires - datetime.now(UTC) <= timedelta(days=2)


def test_director_resign_moves_the_fleet_root_and_every_vehicle(bench: Bench) -> None:
    _add(bench, "tbox/rootfs-12.img")
    bench.director.assign(bench.image, vehicle_id="VIN1", target_name="tbox/rootfs-12.img")
    bench.vehicle_client("VIN1", first=True)
    written = bench.director.resign(["root", "timestamp"])
    assert written == [
        "metadata/2.root.json",
        "metadata/root.json",
        "vehicles/VIN1/metadata/2.root.json",
        "vehicles/VIN1/metadata/root.json",
        "vehicles/VIN1/metadata/timestamp.json",
    ]
    assert bench.vehicle_client("VIN1").get_targetinfo("tbox/rootfs-12.img") is not None
    bench.director.add_vehicle("VIN2")
    assert bench.vehicle_client("VIN2", first=True).get_targetinfo("tbox/rootfs-12.img") is None
    with pytest.raises(OtaUsageError, match="exists already"):
        bench.director.add_vehicle("VIN2")

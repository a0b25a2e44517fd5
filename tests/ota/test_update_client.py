"""The vehicle's update client end to end: repositories made with the repository tool, served
over HTTP, checked and downloaded with real crypto; resuming after a restart and a power cut;
the pure decisions and the mapping of python-tuf's errors to rejection codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tuf.api import exceptions
from tuf.api.metadata import TargetFile
from tuf.api.serialization import DeserializationError
from tuf.ngclient.config import UpdaterConfig
from tuf.ngclient.updater import Updater

from agent import crashpoints
from ota.errors import (
    OtaInputError,
    OtaIOError,
    OtaUsageError,
    RejectionCode,
    UpdateRejectedError,
    UpdateUnavailableError,
)
from ota.fetcher import DownloadJournal
from ota.http_server import RepositoryServer
from ota.repository_config import RepositoryKind
from ota.repository_tool import RepositoryDirectory
from ota.target_info import ImageKind, TargetCustom
from ota.update_client import (
    METADATA_WRITTEN,
    DurableUpdater,
    PlannedTarget,
    RecordingFetcher,
    Repository,
    Slot,
    UpdateClient,
    UpdateClientConfig,
    classify_tuf_error,
    role_of_url,
    verify_assignments,
)
from tests.firmware_stub.support import make_image

REPO = Path(__file__).resolve().parents[2]
ECU_IMAGE_OVERHEAD = 192  # ota.ecu_image: the header and the signature trailer
TBOX = TargetCustom(hardware_id="tbox-hw2", release_counter=12, image_kind=ImageKind.TBOX)
BMS = TargetCustom(hardware_id="bms-hw1", release_counter=3, image_kind=ImageKind.ECU)
ROOTFS = "tbox/rootfs-12.img"
BMS_FW = "bms/fw-3.bin"
CHECKPOINT = 32 * 1024


@dataclass
class Bench:
    """An image repository and a director on disk, served over HTTP, and a vehicle's clock."""

    tmp: Path
    srv: Path
    image: RepositoryDirectory
    director: RepositoryDirectory
    server: RepositoryServer
    firmware: dict[str, bytes]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def config(self, vehicle_id: str = "VIN1", **overrides: Any) -> UpdateClientConfig:
        options: dict[str, Any] = {
            "vehicle_id": vehicle_id,
            "hardware_id": "tbox-hw2",
            "ecus": {"bms": "bms-hw1"},
            "director_url": self.server.url + "director/",
            "image_url": self.server.url + "image",
            "state_dir": self.tmp / f"vehicle-{vehicle_id}",
            "director_root": self.srv / "director" / "metadata" / "1.root.json",
            "image_root": self.srv / "image" / "metadata" / "1.root.json",
            "checkpoint_bytes": CHECKPOINT,
            "resume_min_bytes": 16 * 1024,
            "min_bytes_per_s": 0,
        }
        options.update(overrides)
        return UpdateClientConfig(**options)

    def client(self, vehicle_id: str = "VIN1", **overrides: Any) -> UpdateClient:
        """A client whose clock is the bench's (settable) clock."""
        return UpdateClient(self.config(vehicle_id, **overrides), clock=lambda: self.now)

    def publish(self, name: str, data: bytes, custom: TargetCustom) -> None:
        source = self.tmp / name.replace("/", "_")
        source.write_bytes(data)
        self.firmware[name] = data
        self.image.add_target(source, name=name, custom=custom)

    def target_requests(self) -> list[str]:
        return [r.path for r in self.server.requests if r.path.startswith("image/targets/")]


def make_bench(tmp_path: Path, server: RepositoryServer | None = None, **faults: Any) -> Bench:
    srv = tmp_path / "srv"
    image = RepositoryDirectory.init(srv / "image", RepositoryKind.IMAGE)
    director = RepositoryDirectory.init(srv / "director", RepositoryKind.DIRECTOR)
    bench = Bench(tmp_path, srv, image, director, server or RepositoryServer(srv, **faults), {})
    bench.publish(ROOTFS, os.urandom(300_000), TBOX)
    # a signed ECU image (20,000 bytes) that the simulated ECU "bms" accepts (e2e campaigns)
    bench.publish(BMS_FW, make_image(3, 20_000 - ECU_IMAGE_OVERHEAD, hardware_id="bms"), BMS)
    director.assign(image, vehicle_id="VIN1", target_name=ROOTFS)
    director.assign(image, vehicle_id="VIN1", target_name=BMS_FW, ecu_id="bms")
    director.assign(image, vehicle_id="VIN2", target_name=ROOTFS)
    return bench


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = make_bench(tmp_path)
    with made.server:
        yield made


# --- end to end ----------------------------------------------------------------------------------


def test_check_returns_the_verified_plan_and_download_verifies(bench: Bench) -> None:
    client = bench.client()
    plan = client.check()
    assert [t.name for t in plan.targets] == [BMS_FW, ROOTFS]
    bms, rootfs = plan.targets
    image = bench.image.load().targets.signed.targets
    assert (rootfs.length, dict(rootfs.hashes)) == (300_000, image[ROOTFS].hashes)
    assert rootfs.custom.vehicle_id == "VIN1" and rootfs.slot == (ImageKind.TBOX, None)
    assert bms.slot == (ImageKind.ECU, "bms") and bms.release_counter == 3
    assert (plan.director_version, plan.image_version) == (3, 3)
    assert plan.verified_at == bench.now
    assert bench.target_requests() == []  # check fetches metadata only

    paths = {t.name: client.download(t, bench.tmp / "dl" / t.file_name) for t in plan.targets}
    for name, path in paths.items():
        assert path.read_bytes() == bench.firmware[name]
    assert sorted(p.name for p in (bench.tmp / "dl").iterdir()) == [
        "bms%2Ffw-3.bin",
        "tbox%2Frootfs-12.img",
    ]  # no temporary file left
    assert len(bench.target_requests()) == 2
    assert client.download(rootfs, paths[ROOTFS]) == paths[ROOTFS]  # already there
    assert len(bench.target_requests()) == 2
    json.dumps(plan.to_json())


def test_the_director_is_asked_at_the_vehicles_quoted_url(bench: Bench) -> None:
    odd = "VIN?1:%ä"
    bench.director.assign(bench.image, vehicle_id=odd, target_name=ROOTFS)
    plan = bench.client(odd).check()
    assert [t.name for t in plan.targets] == [ROOTFS]
    assert bench.config(odd).director_metadata_url.endswith(
        "/vehicles/VIN%3F1%3A%25%C3%A4/metadata/"
    )
    assert any(
        r.path.startswith(f"director/vehicles/{odd}/metadata/") for r in bench.server.requests
    )


def test_a_second_check_fetches_only_what_changed(bench: Bench) -> None:
    client = bench.client()
    client.check()
    before = len(bench.server.requests)
    plan = client.check()
    fetched = [r.path for r in bench.server.requests[before:] if r.status == 200]
    assert fetched == [
        "director/vehicles/VIN1/metadata/timestamp.json",
        "image/metadata/timestamp.json",
    ]
    bench.director.unassign(vehicle_id="VIN1", target_name=BMS_FW)
    assert [t.name for t in client.check().targets] == [ROOTFS]
    assert len(plan.targets) == 2


def test_an_equal_release_counter_passes_and_counters_may_come_from_a_function(
    bench: Bench,
) -> None:
    calls: list[object] = []

    def installed(slot: Slot) -> int | None:
        calls.append(slot)
        counters: dict[Slot, int] = {(ImageKind.TBOX, None): 12}
        return counters.get(slot)

    plan = bench.client().check(installed)
    assert len(plan.targets) == 2
    assert sorted(calls, key=str) == [(ImageKind.ECU, "bms"), (ImageKind.TBOX, None)]


async def test_async_wrappers(bench: Bench) -> None:
    client = bench.client()
    plan = await client.check_async({(ImageKind.TBOX, None): 11})
    path = await client.download_async(plan.targets[1], bench.tmp / "rootfs.img")
    assert path.read_bytes() == bench.firmware[ROOTFS]


def test_a_download_cut_by_the_network_resumes_after_a_restart(tmp_path: Path) -> None:
    made = make_bench(tmp_path, fail_after=150_000, fail_match="image/targets/*")
    with made.server:
        plan = made.client().check()
        rootfs = plan.targets[1]
        dest = made.tmp / "dl" / "rootfs.img"
        with pytest.raises(UpdateUnavailableError, match=r"image repository, target: .*connection"):
            made.client().download(rootfs, dest)
        assert not dest.exists() and list(dest.parent.iterdir()) == []
        restarted = made.client()  # a new process: only the state directory is left
        assert restarted.download(rootfs, dest).read_bytes() == made.firmware[ROOTFS]
        first, second = [r for r in made.server.requests if r.path.startswith("image/targets/")]
    assert first.dropped and first.body_bytes == 150_000
    offset = restarted.fetcher.stats.reused
    assert second.range == f"bytes={offset}-" and 150_000 - offset < CHECKPOINT
    assert second.body_bytes == 300_000 - offset


CHILD = """
import json, sys
from pathlib import Path
from ota.update_client import PlannedTarget, UpdateClient, UpdateClientConfig
from ota.target_info import TargetCustom

options = json.loads(sys.argv[1])
for key in ("state_dir", "director_root", "image_root"):
    options[key] = Path(options[key])
target = json.loads(sys.argv[2])
planned = PlannedTarget(
    target["name"], target["length"], target["hashes"],
    TargetCustom.from_json(target["custom"], where="test"),
)
UpdateClient(UpdateClientConfig(**options)).download(planned, Path(sys.argv[3]))
print("downloaded")
"""


def _child_download(bench: Bench, target: PlannedTarget, dest: Path, crashpoint: str) -> int:
    config = bench.config()
    options = {
        "vehicle_id": config.vehicle_id,
        "hardware_id": config.hardware_id,
        "ecus": dict(config.ecus),
        "director_url": config.director_url,
        "image_url": config.image_url,
        "state_dir": str(config.state_dir),
        "director_root": str(config.director_root),
        "image_root": str(config.image_root),
        "checkpoint_bytes": config.checkpoint_bytes,
        "resume_min_bytes": config.resume_min_bytes,
        "min_bytes_per_s": 0,
    }
    env = {**os.environ, "TBOX_CRASHPOINT": crashpoint, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(options), json.dumps(target.to_json()), str(dest)],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode


@pytest.mark.parametrize(
    "crashpoint",
    ["download.journaled:3", "download.data_synced:5", "update_client.target_written:1"],
)
def test_a_power_cut_during_a_download_loses_no_verified_bytes(
    bench: Bench, crashpoint: str
) -> None:
    client = bench.client()
    rootfs = client.check().targets[1]
    dest = bench.tmp / "dl" / "rootfs.img"
    assert _child_download(bench, rootfs, dest, crashpoint) == crashpoints.EXIT_STATUS
    assert not dest.exists()
    journals = list(bench.config().partial_dir.glob("*.journal"))
    journaled = DownloadJournal.from_bytes(journals[0].read_bytes()).offset if journals else 0
    before = len(bench.server.requests)
    resumed = bench.client()
    assert resumed.download(rootfs, dest).read_bytes() == bench.firmware[ROOTFS]
    again = [r for r in bench.server.requests[before:] if r.path.startswith("image/targets/")]
    if crashpoint.startswith("update_client"):
        assert again == []  # the verified copy was complete: only renamed
    else:
        # The resume starts where the journal (fsynced, hash-checked) said: 3 (resp. 4) chunks
        # of 64 KiB were received; 3 journaled (resp. the 5th synced but not journaled).
        (request,) = again
        assert journaled == (3 if "journaled" in crashpoint else 4) * 64 * 1024
        assert request.range == f"bytes={journaled}-" and request.body_bytes == 300_000 - journaled
        assert resumed.fetcher.stats.reused == journaled


def test_a_target_withdrawn_from_the_image_repository_is_not_downloaded(bench: Bench) -> None:
    client = bench.client()
    plan = client.check()
    bench.image.remove_target(ROOTFS)
    with pytest.raises(UpdateRejectedError) as excinfo:
        client.download(plan.targets[1], bench.tmp / "rootfs.img")
    assert excinfo.value.code is RejectionCode.DIRECTOR_IMAGE_MISMATCH
    assert "no longer lists it" in str(excinfo.value)
    assert bench.target_requests() == []


def test_an_unreachable_repository_is_unavailable_not_an_attack(
    bench: Bench, tmp_path: Path
) -> None:
    config = bench.config(director_url="http://127.0.0.1:9/director/")
    with pytest.raises(UpdateUnavailableError, match="director repository"):
        UpdateClient(config).check()
    missing = bench.config(image_url=bench.server.url + "nowhere/")
    with pytest.raises(UpdateUnavailableError, match="HTTP status 404"):
        UpdateClient(missing).check()


def test_configuration_is_checked(bench: Bench, tmp_path: Path) -> None:
    with pytest.raises(OtaUsageError, match="vehicle id"):
        bench.config("a/b")
    with pytest.raises(OtaUsageError, match="not an http"):
        bench.config(director_url="ftp://x/")
    with pytest.raises(OtaUsageError, match="hardware id"):
        bench.config(hardware_id="bad id")
    with pytest.raises(OtaUsageError, match="ECU id"):
        bench.config(ecus={"bad ecu": "hw"})
    with pytest.raises(OtaUsageError, match="max_target_bytes"):
        bench.config(max_target_bytes=0)
    config = bench.config()
    assert config.image_url.endswith("/image/") and config.ecus["bms"] == "bms-hw1"
    with pytest.raises(TypeError):
        config.ecus["x"] = "y"  # type: ignore[index]
    with pytest.raises(OtaUsageError, match="no such file"):
        UpdateClient(bench.config(director_root=tmp_path / "nope.json")).check()
    bad_root = tmp_path / "bad-root.json"
    bad_root.write_bytes(b"{}")
    with pytest.raises(OtaInputError, match="director repository: the trusted root"):
        UpdateClient(bench.config(director_root=bad_root)).check()


def test_the_metadata_cache_is_written_durably_through_our_crash_point(bench: Bench) -> None:
    before = METADATA_WRITTEN.hits
    bench.client().check()
    # root_history/1.root.json, timestamp, snapshot, targets for each of the two repositories
    assert METADATA_WRITTEN.hits - before == 8
    cache = bench.config().metadata_dir
    assert sorted(p.name for p in cache(Repository.DIRECTOR).iterdir()) == [
        "root.json",
        "root_history",
        "snapshot.json",
        "targets.json",
        "timestamp.json",
    ]


def test_python_tuf_internals_we_rely_on(bench: Bench, tmp_path: Path) -> None:
    # If python-tuf renames these, the client must fail here, not silently use the raw clock.
    when = datetime(2030, 1, 1, tzinfo=UTC)
    (tmp_path / "md").mkdir()
    updater = DurableUpdater(
        tmp_path / "md",
        bench.server.url + "image/metadata/",
        bootstrap=(bench.srv / "image" / "metadata" / "1.root.json").read_bytes(),
        fetcher=RecordingFetcher(tmp_path / "partial"),
        config=UpdaterConfig(),
        reference_time=when,
    )
    assert updater.reference_time == when
    assert updater._trusted_set.reference_time == when
    with pytest.raises(exceptions.ExpiredMetadataError):
        updater.refresh()  # every role has expired by 2030
    assert hasattr(Updater, "_persist_file")


# --- decisions -----------------------------------------------------------------------------------


def _target(name: str, custom: dict[str, Any], data: bytes = b"x") -> TargetFile:
    import hashlib

    return TargetFile(
        len(data), {"sha256": hashlib.sha256(data).hexdigest()}, name, {"custom": custom}
    )


def _config(tmp_path: Path) -> UpdateClientConfig:
    return UpdateClientConfig(
        vehicle_id="VIN1",
        hardware_id="tbox-hw2",
        ecus={"bms": "bms-hw1"},
        director_url="http://h/director",
        image_url="http://h/image",
        state_dir=tmp_path,
        director_root=tmp_path / "d.json",
        image_root=tmp_path / "i.json",
        max_target_bytes=1000,
    )


IMAGE_TBOX = {"hardware_id": "tbox-hw2", "release_counter": 5, "image_kind": "tbox"}
IMAGE_BMS = {"hardware_id": "bms-hw1", "release_counter": 2, "image_kind": "ecu"}


@pytest.mark.parametrize(
    ("director_custom", "image_custom", "code", "message"),
    [
        ({**IMAGE_TBOX, "vehicle_id": "VIN1"}, IMAGE_TBOX, None, ""),
        ({**IMAGE_TBOX, "vehicle_id": "VIN2"}, IMAGE_TBOX, "wrong_vehicle", "vehicle 'VIN2'"),
        (IMAGE_TBOX, IMAGE_TBOX, "wrong_vehicle", "vehicle None"),
        (
            {**IMAGE_TBOX, "hardware_id": "tbox-hw3", "vehicle_id": "VIN1"},
            IMAGE_TBOX,
            "wrong_hardware",
            "'tbox-hw3', this T-box is 'tbox-hw2'",
        ),
        ({**IMAGE_BMS, "vehicle_id": "VIN1"}, IMAGE_BMS, "wrong_ecu", "assigned to no ECU"),
        (
            {**IMAGE_BMS, "vehicle_id": "VIN1", "ecu_id": "abs"},
            IMAGE_BMS,
            "wrong_ecu",
            "ECU 'abs', which this client does not serve \\(ECUs: bms\\)",
        ),
        (
            {**IMAGE_BMS, "vehicle_id": "VIN1", "ecu_id": "bms", "hardware_id": "x"},
            {**IMAGE_BMS, "hardware_id": "x"},
            "wrong_hardware",
            "ECU bms is 'bms-hw1'",
        ),
        (
            {**IMAGE_TBOX, "vehicle_id": "VIN1", "release_counter": 9},
            IMAGE_TBOX,
            "director_image_mismatch",
            "release_counter is 9, image repository says 5",
        ),
        ({**IMAGE_TBOX, "vehicle_id": "VIN1"}, None, "director_image_mismatch", "does not list"),
        ({"vehicle_id": "VIN1"}, IMAGE_TBOX, "invalid_metadata", "custom lacks hardware_id"),
        (
            {**IMAGE_TBOX, "vehicle_id": "VIN1", "release_counter": 4},
            {**IMAGE_TBOX, "release_counter": 4},
            "downgrade",
            "release counter 4 is lower than the 5 installed on the T-box",
        ),
    ],
)
def test_verify_assignments(
    tmp_path: Path,
    director_custom: dict[str, Any],
    image_custom: dict[str, Any] | None,
    code: str | None,
    message: str,
) -> None:
    director = {"fw": _target("fw", director_custom)}
    image = {"fw": None if image_custom is None else _target("fw", image_custom)}
    installed: dict[Slot, int] = {(ImageKind.TBOX, None): 5}
    if code is None:
        (planned,) = verify_assignments(
            director, image, config=_config(tmp_path), installed=installed
        )
        assert planned.name == "fw" and planned.custom.release_counter == 5
        return
    with pytest.raises(UpdateRejectedError, match=message) as excinfo:
        verify_assignments(director, image, config=_config(tmp_path), installed=installed)
    assert excinfo.value.code == code
    assert excinfo.value.role == "fw" and excinfo.value.repository == "director"
    assert str(excinfo.value).startswith(f"{code}: director target fw: ")


def test_verify_assignments_refuses_an_oversized_target_and_a_slot_assigned_twice(
    tmp_path: Path,
) -> None:
    config = _config(tmp_path)
    big = {"fw": _target("fw", {**IMAGE_TBOX, "vehicle_id": "VIN1"}, b"x" * 1001)}
    with pytest.raises(UpdateRejectedError, match="1,001 bytes is more than the 1,000") as e1:
        verify_assignments(big, dict(big), config=config, installed={})
    assert e1.value.code is RejectionCode.ENDLESS_DATA
    two = {
        "a": _target("a", {**IMAGE_TBOX, "vehicle_id": "VIN1"}),
        "b": _target("b", {**IMAGE_TBOX, "vehicle_id": "VIN1"}),
    }
    with pytest.raises(UpdateRejectedError, match="the T-box is assigned twice") as e2:
        verify_assignments(two, dict(two), config=config, installed={})
    assert e2.value.code is RejectionCode.INVALID_METADATA
    assert verify_assignments({}, {}, config=config, installed={}) == ()


@pytest.mark.parametrize(
    ("error", "role", "code"),
    [
        (exceptions.ExpiredMetadataError("timestamp.json is expired"), "timestamp", "freeze"),
        (exceptions.UnsignedMetadataError("root was signed by 0/1 keys"), "root", "key_rotation"),
        (
            exceptions.UnsignedMetadataError("targets was signed by 0/1 keys"),
            "targets",
            "bad_signature",
        ),
        (
            exceptions.UnsignedMetadataError("targets was signed by 1/2 keys"),
            "targets",
            "threshold",
        ),
        (
            exceptions.BadVersionNumberError("Expected root version 3 instead got version 1"),
            "root",
            "rollback",
        ),
        (
            exceptions.BadVersionNumberError("New timestamp version 1 must be >= 2"),
            "timestamp",
            "rollback",
        ),
        (
            exceptions.BadVersionNumberError("Expected targets.json version 1, got 2."),
            "snapshot",
            "rollback",
        ),
        (
            exceptions.BadVersionNumberError("Expected snapshot version 3, got 2"),
            "snapshot",
            "mix_and_match",
        ),
        (
            exceptions.BadVersionNumberError("Expected targets v3, got v2."),
            "targets",
            "mix_and_match",
        ),
        (exceptions.LengthOrHashMismatchError("hash mismatch"), "snapshot", "mix_and_match"),
        (exceptions.LengthOrHashMismatchError("hash mismatch"), "target", "bad_hash"),
        (exceptions.DownloadLengthMismatchError("too long"), "timestamp", "endless_data"),
        (exceptions.SlowRetrievalError("slow"), "target", "slow_retrieval"),
        (
            exceptions.RepositoryError("New snapshot is missing info for 'x.json'"),
            "snapshot",
            "rollback",
        ),
        (DeserializationError("not JSON"), "timestamp", "invalid_metadata"),
    ],
)
def test_python_tuf_errors_map_to_rejection_codes(error: Exception, role: str, code: str) -> None:
    mapped = classify_tuf_error(error, repository="image", role=role)
    assert isinstance(mapped, UpdateRejectedError)
    assert mapped.code == code and mapped.role == role and mapped.repository == "image"
    assert str(mapped).startswith(f"{code}: image repository, {role}: ")
    assert str(error) in str(mapped)


def test_download_errors_and_os_errors_are_not_rejections() -> None:
    unavailable = classify_tuf_error(
        exceptions.DownloadHTTPError("http://h/x: HTTP status 503", 503), repository="d", role="x"
    )
    assert isinstance(unavailable, UpdateUnavailableError) and "503" in str(unavailable)
    assert isinstance(
        classify_tuf_error(OSError(28, "No space left"), repository="d", role=None), OtaIOError
    )
    with pytest.raises(TypeError):
        classify_tuf_error(ValueError("x"), repository="d", role=None)


def test_role_of_url() -> None:
    assert role_of_url("http://h/r/metadata/3.snapshot.json") == "snapshot"
    assert role_of_url("http://h/r/metadata/timestamp.json") == "timestamp"
    assert role_of_url("http://h/r/metadata/12.root.json") == "root"
    assert role_of_url("http://h/r/metadata/2.a%2Fb.json") == "a/b"
    assert role_of_url("http://h/r/targets/tbox/abc.rootfs.img") == "target"

"""The A/B installer: verified writes, anti-rollback, boot counter, health-gated commit, rollback,
broken state files, and — in a child process killed at every ``slots.*`` crash point — that a
power cut anywhere leaves a verified bootable slot and a status that tells the truth."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import crashpoints
from agent.crashpoints import all_crashpoints
from ota import ab_installer
from ota.ab_installer import AbInstaller
from ota.errors import (
    DowngradeError,
    ImageMismatchError,
    NoBootableSlotError,
    OtaUsageError,
    SlotIOError,
    SlotSequenceError,
    SlotStateError,
    SlotWriteVerificationError,
    UpdatePendingError,
)
from ota.health_check import CommandCheck, EntryPointCheck
from ota.slot_state import FailureKind, Phase, Slot, SlotStatus
from tests.ota import ab_crash_child as child
from tests.ota.ab_crash_child import FixedCheck

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(child.__file__)

PASS = FixedCheck(True)
FAIL = FixedCheck(False)


class Images:
    """Deterministic update images under a directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(exist_ok=True)

    def __call__(self, release: int) -> tuple[Path, str, int]:
        return child.image_file(self.directory, release)


@pytest.fixture
def images(tmp_path: Path) -> Images:
    return Images(tmp_path / "images")


@pytest.fixture
def slots(tmp_path: Path, images: Images) -> AbInstaller:
    """A T-box provisioned with release 1 in slot a and booted."""
    installer = AbInstaller(tmp_path / "slots", chunk_size=child.CHUNK_SIZE)
    installer.provision(*images(1), 1, version="v1")
    installer.boot()
    return installer


def install(slots: AbInstaller, images: Images, release: int) -> SlotStatus:
    return slots.install(*images(release), release, version=f"v{release}")


def update(slots: AbInstaller, images: Images, release: int) -> SlotStatus:
    install(slots, images, release)
    slots.boot()
    assert slots.check_health(PASS).passed
    return slots.commit()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


# --- the happy path ----------------------------------------------------------------------------


def test_provisioning_commits_release_1_in_slot_a(slots: AbInstaller) -> None:
    status = slots.status()
    assert (status.active, status.committed.slot, status.committed_release) == ("a", "a", 1)
    assert status.pending is None and status.try_slot is None and status.attempts_left is None
    assert status.a is not None and status.a.image.version == "v1"
    assert status.b is None
    assert status.max_attempts == 3
    document = json.loads(slots.state_path.read_text())
    assert document["format"] == 1 and document["active"] == "a" and document["pending"] is None
    assert document["committed"]["image"]["release_counter"] == 1


def test_install_writes_the_inactive_slot_and_marks_it_to_try(
    slots: AbInstaller, images: Images
) -> None:
    active_image = slots.image_path("a").read_bytes()
    status = install(slots, images, 2)
    assert slots.image_path("a").read_bytes() == active_image  # never touched
    assert slots.image_path("b").read_bytes() == child.image_bytes(2)
    assert (status.active, status.try_slot, status.attempts_left) == ("a", "b", 3)
    assert status.pending is not None and status.pending.phase is Phase.INSTALLED
    assert status.b is not None and status.b.image.release_counter == 2
    assert status.b.image.sha256 == file_sha256(slots.image_path("b"))


def test_boot_health_commit_makes_the_update_permanent(slots: AbInstaller, images: Images) -> None:
    install(slots, images, 2)
    booted = slots.boot()
    assert (booted.active, booted.committed.slot, booted.attempts_left) == ("b", "a", 2)
    assert booted.pending is not None and booted.pending.phase is Phase.TRYING
    result = slots.check_health(PASS)
    assert result.passed
    assert slots.status().pending is not None
    committed = slots.commit()
    assert (committed.active, committed.committed.slot, committed.committed_release) == (
        "b",
        "b",
        2,
    )
    assert committed.pending is None and committed.try_slot is None
    # the next boot runs it without counting anything
    assert slots.boot() == committed
    # and the next update goes into the other slot
    assert install(slots, images, 3).try_slot == "a"


def test_commit_is_idempotent(slots: AbInstaller, images: Images) -> None:
    first = update(slots, images, 2)
    before = slots.state_path.read_bytes()
    assert slots.commit() == first
    assert slots.commit() == first
    assert slots.state_path.read_bytes() == before  # nothing rewritten


def test_status_is_a_frozen_snapshot_with_a_json_form(slots: AbInstaller, images: Images) -> None:
    status = install(slots, images, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.active = "b"  # type: ignore[misc]
    document = status.to_json()
    json.dumps(document)
    assert document["try_slot"] == "b"
    assert document["pending"]["phase"] == "installed"
    assert document["slots"]["b"]["image"]["release_counter"] == 2


def test_a_reboot_after_a_passed_health_check_needs_it_to_pass_again(
    slots: AbInstaller, images: Images
) -> None:
    install(slots, images, 2)
    slots.boot()
    slots.check_health(PASS)
    status = slots.boot()  # a reboot before the commit
    assert status.pending is not None and status.pending.phase is Phase.TRYING
    with pytest.raises(SlotSequenceError, match="health check has not passed"):
        slots.commit()
    slots.check_health(PASS)
    assert slots.commit().committed_release == 2


def test_the_boot_counter_is_configurable(tmp_path: Path, images: Images) -> None:
    slots = AbInstaller(tmp_path / "one", max_attempts=1)
    slots.provision(*images(1), 1)
    install(slots, images, 2)
    assert slots.boot().attempts_left == 0
    status = slots.boot()
    assert status.active == "a" and status.last_failure is not None
    assert "booted 1 time without being committed" in status.last_failure.reason
    with pytest.raises(OtaUsageError, match="max_attempts"):
        AbInstaller(tmp_path, max_attempts=0)


# --- refusals ----------------------------------------------------------------------------------


def test_a_slot_that_reads_back_wrong_is_refused_and_the_active_one_untouched(
    slots: AbInstaller, images: Images, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ab_installer.sha256_from_disk

    def rot_then_hash(
        path: Path, chunk_size: int = ab_installer.DEFAULT_CHUNK_SIZE
    ) -> tuple[str, int]:
        if path == slots.image_path("b"):
            data = bytearray(path.read_bytes())
            data[100] ^= 0x01  # one bit flipped by the storage between writing and reading
            path.write_bytes(bytes(data))
        return real(path, chunk_size)

    monkeypatch.setattr(ab_installer, "sha256_from_disk", rot_then_hash)
    active_image = slots.image_path("a").read_bytes()
    with pytest.raises(SlotWriteVerificationError, match=r"slot b reads back as 12388 bytes"):
        install(slots, images, 2)
    monkeypatch.undo()
    status = slots.status()
    assert status.pending is None and status.try_slot is None and status.b is None
    assert status.last_failure is not None
    assert status.last_failure.kind is FailureKind.INSTALL_FAILED
    assert "reads back" in status.last_failure.reason
    assert slots.image_path("a").read_bytes() == active_image
    assert slots.boot().active == "a"
    assert update(slots, images, 2).committed_release == 2  # a later install works


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda data: data[:-1], "is 12387 bytes, not the expected 12388"),
        (lambda data: data + b"x", "is longer than the expected 12388 bytes"),
        (lambda data: b"X" + data[1:], "has sha256 .*, not the expected"),
    ],
    ids=["truncated", "too-long", "corrupt"],
)
def test_an_image_that_is_not_the_expected_one_is_refused(
    slots: AbInstaller, images: Images, damage: Callable[[bytes], bytes], message: str
) -> None:
    path, sha256, length = images(2)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ImageMismatchError, match=message):
        slots.install(path, sha256, length, 2)
    status = slots.boot()
    assert status.active == "a" and status.b is None
    assert status.last_failure is not None and status.last_failure.image.release_counter == 2


def test_a_missing_image_file_is_an_io_error_naming_it(slots: AbInstaller, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.img"
    with pytest.raises(SlotIOError, match=f"cannot read the update image {missing}"):
        slots.install(missing, "0" * 64, 1, 2)
    assert slots.status().last_failure is not None


def test_malformed_arguments_are_refused_before_anything_is_touched(
    slots: AbInstaller, images: Images
) -> None:
    path, sha256, length = images(2)
    before = snapshot_files(slots.root)
    with pytest.raises(OtaUsageError, match="sha256"):
        slots.install(path, sha256.upper(), length, 2)
    with pytest.raises(OtaUsageError, match="release counter"):
        slots.install(path, sha256, length, -1)
    with pytest.raises(OtaUsageError, match="length"):
        slots.install(path, sha256, -5, 2)
    assert snapshot_files(slots.root) == before


def test_a_downgrade_is_refused_with_a_clear_reason(slots: AbInstaller, images: Images) -> None:
    update(slots, images, 5)
    before = snapshot_files(slots.root)
    with pytest.raises(
        DowngradeError, match=r"release counter 4 is lower than the committed release 5"
    ):
        install(slots, images, 4)
    assert snapshot_files(slots.root) == before  # refused before touching anything


def test_the_committed_counter_is_reinstallable_only_with_the_same_image(
    slots: AbInstaller, images: Images
) -> None:
    update(slots, images, 5)
    other, _, length = images(6)
    with pytest.raises(
        DowngradeError, match="different image under the committed release counter 5"
    ):
        slots.install(other, file_sha256(other), length, 5)
    # the same image again repairs the other slot
    status = install(slots, images, 5)
    assert status.try_slot == "a" and status.a is not None and status.a.image.release_counter == 5


def test_a_second_install_while_one_is_pending_is_refused(
    slots: AbInstaller, images: Images
) -> None:
    install(slots, images, 2)
    with pytest.raises(UpdatePendingError, match=r"release 2 .* in slot b is still pending"):
        install(slots, images, 3)
    slots.boot()
    with pytest.raises(UpdatePendingError, match="phase trying"):
        install(slots, images, 3)
    assert slots.image_path("b").read_bytes() == child.image_bytes(2)


def test_steps_out_of_order_say_what_to_do(slots: AbInstaller, images: Images) -> None:
    with pytest.raises(SlotSequenceError, match="no update is pending"):
        slots.check_health(PASS)
    with pytest.raises(SlotSequenceError, match="nothing to roll back"):
        slots.rollback("operator")
    install(slots, images, 2)
    with pytest.raises(SlotSequenceError, match="installed but not booted yet; call boot"):
        slots.check_health(PASS)
    with pytest.raises(SlotSequenceError, match="not booted yet"):
        slots.commit()
    slots.boot()
    with pytest.raises(SlotSequenceError, match="health check has not passed"):
        slots.commit()
    with pytest.raises(SlotSequenceError, match="already provisioned"):
        slots.provision(*images(1), 1)


# --- rollback ----------------------------------------------------------------------------------


def test_boot_attempts_exhausted_roll_back_with_the_reason(
    slots: AbInstaller, images: Images
) -> None:
    install(slots, images, 2)
    assert [slots.boot().attempts_left for _ in range(3)] == [2, 1, 0]
    status = slots.boot()
    assert (status.active, status.committed_release, status.pending) == ("a", 1, None)
    assert status.last_failure is not None
    assert status.last_failure.kind is FailureKind.ROLLED_BACK
    assert status.last_failure.image.release_counter == 2
    assert "booted 3 times without being committed (boot attempts exhausted)" in (
        status.last_failure.reason
    )
    assert status.b is not None  # the rejected image stays, described, until overwritten


def health_entry_point_raises() -> bool:
    raise RuntimeError("CAN bus can0 is silent")


@pytest.mark.parametrize(
    ("check", "reason"),
    [
        (
            CommandCheck("echo broker unreachable; exit 3", timeout_s=10),
            "exited with status 3: broker unreachable",
        ),
        (CommandCheck(["sleep", "30"], timeout_s=0.3), "timed out after 0.3 s and was killed"),
        (
            EntryPointCheck(f"{__name__}:health_entry_point_raises", timeout_s=30),
            "raised RuntimeError: CAN bus can0 is silent",
        ),
    ],
    ids=["command-fails", "command-times-out", "entry-point-raises"],
)
def test_a_failing_health_check_rolls_back_at_once_with_its_reason(
    slots: AbInstaller, images: Images, check: CommandCheck | EntryPointCheck, reason: str
) -> None:
    install(slots, images, 2)
    slots.boot()
    result = slots.check_health(check)
    assert not result.passed and reason in result.reason
    status = slots.status()
    assert (status.active, status.committed_release, status.pending) == ("a", 1, None)
    assert status.last_failure is not None
    assert status.last_failure.kind is FailureKind.ROLLED_BACK
    assert status.last_failure.reason == f"health check failed: {result.reason}"
    assert slots.boot().active == "a"


def test_a_passing_real_health_check_allows_the_commit(slots: AbInstaller, images: Images) -> None:
    install(slots, images, 2)
    slots.boot()
    assert slots.check_health(CommandCheck(["true"], timeout_s=10)).passed
    assert slots.commit().committed_release == 2


def test_an_explicit_rollback_records_the_reason(slots: AbInstaller, images: Images) -> None:
    install(slots, images, 2)
    slots.boot()
    status = slots.rollback("campaign cancelled by the backend")
    assert (status.active, status.pending) == ("a", None)
    assert status.last_failure is not None
    assert status.last_failure.reason == "campaign cancelled by the backend"


def test_an_update_whose_slot_rots_before_its_boot_is_rolled_back(
    slots: AbInstaller, images: Images
) -> None:
    install(slots, images, 2)
    image = slots.image_path("b")
    image.write_bytes(image.read_bytes()[:-10])
    status = slots.boot()
    assert status.active == "a" and status.last_failure is not None
    assert "slot b does not verify: its image" in status.last_failure.reason


def test_a_committed_slot_that_does_not_verify_is_no_bootable_slot(slots: AbInstaller) -> None:
    image = slots.image_path("a")
    image.write_bytes(b"rot" + image.read_bytes()[3:])
    with pytest.raises(
        NoBootableSlotError, match=r"committed slot a \(release 1 \(v1\)\) does not verify"
    ):
        slots.boot()


# --- broken state ------------------------------------------------------------------------------


def test_a_missing_state_file_is_an_error_naming_it(slots: AbInstaller) -> None:
    slots.state_path.unlink()
    for operation in (slots.boot, slots.status, slots.commit):
        with pytest.raises(SlotStateError, match=r"state\.json: does not exist") as caught:
            operation()
        assert str(slots.state_path) in str(caught.value)
        assert "slot a: release 1 (v1); slot b: empty" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": 1, "act', "is not valid JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"format": 7}', "format: 7 is not 1"),
    ],
)
def test_a_corrupt_state_file_is_an_error_naming_it(
    slots: AbInstaller, content: bytes, message: str
) -> None:
    slots.state_path.write_bytes(content)
    with pytest.raises(SlotStateError, match=message) as caught:
        slots.boot()
    assert str(caught.value).startswith(f"{slots.state_path}: ")
    assert "recover(slot)" in str(caught.value)


def test_a_state_file_that_contradicts_itself_is_not_half_believed(
    slots: AbInstaller, images: Images
) -> None:
    install(slots, images, 2)
    document = json.loads(slots.state_path.read_text())
    document["active"] = "b"  # but the update has not been booted
    slots.state_path.write_text(json.dumps(document))
    with pytest.raises(SlotStateError, match="active: 'b' contradicts the rest of the file"):
        slots.boot()


def test_recover_trusts_only_a_named_slot_that_verifies(slots: AbInstaller, images: Images) -> None:
    update(slots, images, 2)  # slot b committed, slot a holds release 1
    with pytest.raises(SlotSequenceError, match="is readable"):
        slots.recover("a")
    slots.state_path.write_bytes(b"garbage")
    image = slots.image_path("a")
    good = image.read_bytes()
    image.write_bytes(b"!" + good[1:])
    with pytest.raises(SlotSequenceError, match="cannot trust slot a: its image"):
        slots.recover("a")
    image.write_bytes(good)
    status = slots.recover("b")
    assert (status.active, status.committed_release, status.pending) == ("b", 2, None)
    assert slots.boot() == status


def test_a_second_process_at_work_is_a_clear_error(slots: AbInstaller, images: Images) -> None:
    fd = os.open(slots.root / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process would
        with pytest.raises(SlotSequenceError, match="another process is working on the slots"):
            install(slots, images, 2)
        slots.status()  # a snapshot never waits for the lock
    finally:
        os.close(fd)
    install(slots, images, 2)


async def test_async_callers_run_it_in_a_thread(slots: AbInstaller, images: Images) -> None:
    import asyncio

    path, sha256, length = images(2)
    status = await asyncio.to_thread(slots.install, path, sha256, length, 2)
    assert status.try_slot == "b"


# --- crash points (contract C6) ----------------------------------------------------------------

SLOT_POINTS = [p.name for p in all_crashpoints() if p.name.startswith("slots.")]


def _run_child(root: Path, images: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHILD), str(root), str(images)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
    )


def _reported(stdout: str) -> list[tuple[str, int]]:
    """The child's complete lines as (word, release); a line cut by the crash was not said."""
    said = []
    for line in stdout.splitlines(keepends=True):
        if line.endswith("\n") and not line.startswith("hits "):
            word, number = line.split()
            said.append((word, int(number)))
    return said


def _manifest_on_disk(root: Path, slot: Slot) -> dict[str, object] | None:
    path = root / slot / "manifest.json"
    if not path.exists():
        return None
    document: dict[str, object] = json.loads(path.read_text())
    return document


def _assert_bootable_and_truthful(root: Path, status: SlotStatus) -> None:
    """Read the files independently of the installer and compare them with *status*."""
    for slot in ("a", "b"):
        on_disk = _manifest_on_disk(root, slot)
        reported = status.manifest(slot)
        if on_disk is None:
            assert reported is None, slot
            continue
        image = on_disk["image"]
        assert isinstance(image, dict)
        # a slot with a manifest holds exactly that image
        data = (root / slot / "image").read_bytes()
        assert (hashlib.sha256(data).hexdigest(), len(data)) == (image["sha256"], image["length"])
        assert reported is not None, slot
        assert reported.image.release_counter == image["release_counter"]
        assert reported.image.sha256 == image["sha256"]
    # never half-switched: after a boot, an update is either on trial and running, or gone
    pending = status.pending
    assert pending is None or pending.phase is Phase.TRYING, pending
    assert status.active == (pending.slot if pending else status.committed.slot)
    running = status.manifest(status.active)
    assert running is not None, "the running slot holds no verified image"
    assert running.image == (pending.image if pending else status.committed.image)
    # and the fallback is intact
    fallback = status.manifest(status.committed.slot)
    assert fallback is not None and fallback.image == status.committed.image


def _check_after_crash(root: Path, images: Path, name: str, stdout: str) -> None:
    said = _reported(stdout)
    slots = child.installer(root)
    if ("provisioned", 1) not in said and not slots.state_path.exists():
        slots.provision(*child.image_file(images, 1), 1, version="v1")  # simply done again
    status = slots.boot()
    _assert_bootable_and_truthful(root, status)
    started = [n for word, n in said if word == "update"]
    ended = {n for word, n in said if word != "update"}
    last_committed = max((n for word, n in said if word in {"committed", "provisioned"}), default=1)
    interrupted = started[-1] if started and started[-1] not in ended else None
    if status.pending is not None:  # still on trial: the campaign checks and commits it
        assert status.pending.image.release_counter == interrupted
        assert slots.check_health(PASS).passed
        status = slots.commit()
        _assert_bootable_and_truthful(root, status)
    assert status.committed_release >= last_committed
    if interrupted is not None:
        failure = status.last_failure
        installed = status.committed_release == interrupted
        reported_failed = failure is not None and failure.image.release_counter == interrupted
        if interrupted == child.CORRUPT_RELEASE:
            assert reported_failed and not installed
        elif not (installed or reported_failed):
            # no trace of the update: only when the cut came before its first state was saved
            assert name == "slots.before_begin", (name, status)
            assert status.committed_release == last_committed
    # the T-box still updates
    after = update(slots, Images(images), 100)
    assert (after.committed_release, after.pending) == (100, None)
    _assert_bootable_and_truthful(root, slots.boot())


@pytest.fixture(scope="module")
def baseline_hits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    directory = tmp_path_factory.mktemp("baseline")
    run = _run_child(directory / "slots", directory, CHILD_REPORT_HITS="1")
    assert run.returncode == 0, run.stderr
    hits = {}
    for line in run.stdout.splitlines():
        if line.startswith("hits "):
            _, name, n = line.split()
            hits[name] = int(n)
    assert _reported(run.stdout)[-1] == ("committed", 6)
    return hits


def test_the_crash_workload_reaches_every_slot_crash_point(baseline_hits: dict[str, int]) -> None:
    assert len(SLOT_POINTS) >= 10, SLOT_POINTS
    unreached = [name for name in SLOT_POINTS if baseline_hits.get(name, 0) == 0]
    assert not unreached, f"extend tests/ota/ab_crash_child.py to reach {unreached}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOT_POINTS)
def test_a_power_cut_at_any_slot_crash_point_leaves_a_verified_bootable_slot(
    name: str, baseline_hits: dict[str, int], tmp_path: Path
) -> None:
    hits = baseline_hits.get(name, 0)
    if hits == 0:
        pytest.fail(f"the crash workload never reaches {name}")
    for n in sorted({1, max(1, hits // 2), hits}):  # its first, a middle and its last arrival
        directory = tmp_path / f"at-{n}"
        directory.mkdir()
        run = _run_child(directory / "slots", directory, TBOX_CRASHPOINT=f"{name}:{n}")
        assert run.returncode == crashpoints.EXIT_STATUS, (n, run.returncode, run.stderr)
        assert f"crash point {name} reached {n}" in run.stderr
        _check_after_crash(directory / "slots", directory, name, run.stdout)

"""The campaign runner with a real A/B installer, a real upload queue and a local update source:
whole campaigns, the watchdog, deadlines, failures, start-up recovery and resumption."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from agent.command_channel import CommandFailed
from agent.commands import VerifiedCommand
from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import SequenceCounter
from agent.uplink import KINDS, OTA_STATUS_KIND
from agent.upload_queue import UploadQueue
from ota.ab_installer import AbInstaller
from ota.campaign import StatusEvent, Step
from ota.campaign_runner import CampaignRunner, StepBudgets
from ota.campaign_store import CampaignStore
from ota.errors import CampaignBusyError, CampaignRequestError, OtaVerificationError
from ota.health_check import CommandCheck, HealthCheck, HealthResult
from ota.slot_state import SlotStatus
from tests.ota.ab_crash_child import CHUNK_SIZE, IMAGE_LENGTH, FixedCheck, image_file
from tests.ota.campaign_crash_child import HOST_IMAGE, LocalSource, LocalTarget

VEHICLE = "VIN-R1"
S = OtaStatus
HOST_STEPS = [
    S.STATE_RECEIVED,
    S.STATE_DOWNLOADING,
    S.STATE_VERIFYING,
    S.STATE_INSTALLING,
    S.STATE_ACTIVATING,
]


def body(campaign_id: str = "c1", **fields: Any) -> bytes:
    return json.dumps({"campaign_id": campaign_id, **fields}).encode()


class HangingCheck:
    """A health check that gives no answer until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self) -> HealthResult:
        self.release.wait()
        return HealthResult(True, "answered late", 0.0)


class SlowInstaller(AbInstaller):
    """An installer whose writes hang until released (failing storage)."""

    release: threading.Event

    def install(self, *args: Any, **kwargs: Any) -> SlotStatus:
        self.release.wait()
        return super().install(*args, **kwargs)


class WrongFileSource(LocalSource):
    """An update client with a bug: it returns a file that is not the target."""

    def download(self, target: LocalTarget, dest: Path, progress: Any, **_: Any) -> Path:
        path = dest / "wrong.img"
        path.write_bytes(b"\0" * target.length)
        return path


class FailingCheckSource(LocalSource):
    def __init__(self, error: Exception) -> None:
        super().__init__([])
        self.error = error

    def check(self) -> list[LocalTarget]:
        raise self.error


@dataclass
class World:
    """A provisioned T-box (release 1 committed) and the images an update source serves."""

    root: Path
    queue: UploadQueue
    installer: AbInstaller
    counter: SequenceCounter
    host: LocalTarget
    events: list[threading.Event] = field(default_factory=list)

    def target(self, release: int) -> LocalTarget:
        path, _, _ = image_file(self.root / "images", release)
        return LocalTarget.of_file(f"tbox/rootfs-{release}.img", path, release)

    def source(self, *targets: LocalTarget, **kw: Any) -> LocalSource:
        kw.setdefault("fetch_log", self.root / "fetch.log")
        source = LocalSource(targets or (self.host,), **kw)
        self.events.append(source.release)
        return source

    def runner(
        self,
        source: LocalSource | None = None,
        *,
        installer: AbInstaller | None = None,
        check: HealthCheck | None = None,
        **kw: Any,
    ) -> CampaignRunner:
        kw.setdefault("progress_interval_s", 0.0)
        return CampaignRunner(
            CampaignStore(self.root / "ota"),
            installer or self.installer,
            source or self.source(),
            self.queue,
            health_check=check or FixedCheck(True),
            vehicle_id=VEHICLE,
            next_sequence=self.counter.next,
            **kw,
        )

    async def statuses(self) -> list[OtaStatus]:
        items = await self.queue.take(1 << 30, kinds=[OTA_STATUS_KIND])
        return [OtaStatus.FromString(item.payload) for item in items]

    def fetched(self) -> int:
        log = self.root / "fetch.log"
        return sum(int(n) for n in log.read_text().split()) if log.exists() else 0


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    images = tmp_path / "images"
    images.mkdir()
    installer = AbInstaller(tmp_path / "slots", max_attempts=3, chunk_size=CHUNK_SIZE)
    installer.provision(*image_file(images, 1), 1, version="v1")
    path, _, _ = image_file(images, 2)
    host = LocalTarget.of_file(HOST_IMAGE, path, 2)
    async with UploadQueue(tmp_path / "queue.db") as queue:
        w = World(tmp_path, queue, installer, SequenceCounter(tmp_path / "sequence"), host)
        try:
            yield w
        finally:
            for event in w.events:  # no hanging thread outlives the test
                event.set()


def host_lane(statuses: list[OtaStatus]) -> list[int]:
    """The host lane's states, a run of progress events counted once."""
    states: list[int] = []
    for s in statuses:
        if s.target == "host" and (not states or states[-1] != s.state):
            states.append(s.state)
    return states


def assert_numbered_in_order(statuses: list[OtaStatus]) -> None:
    sequences = [s.sequence for s in statuses]
    assert sequences == sorted(set(sequences)), sequences
    assert {s.vehicle_id for s in statuses} == {VEHICLE}
    assert {s.schema_version for s in statuses} == {1}


def assert_boots_committed(installer: AbInstaller, release: int) -> SlotStatus:
    status = installer.boot()  # hashes the committed slot: it must verify
    assert (status.committed_release, status.pending) == (release, None)
    return status


# --- whole campaigns ---------------------------------------------------------------------------


async def test_a_campaign_downloads_verifies_installs_activates_and_commits(world: World) -> None:
    runner = world.runner(check=CommandCheck(["true"], timeout_s=30))
    async with runner:
        command = VerifiedCommand("ota", "cmd-77", VEHICLE, 0, 0, body(), "k1")
        assert await runner.handle_command(command) == "campaign c1 received"
        final = await runner.wait_idle()
    assert final is not None and final.step is Step.COMMITTED
    assert_boots_committed(world.installer, 2)
    statuses = await world.statuses()
    assert host_lane(statuses) == [*HOST_STEPS, S.STATE_COMMITTED]
    assert_numbered_in_order(statuses)
    assert {(s.campaign_id, s.correlation_id) for s in statuses} == {("c1", "cmd-77")}
    progress = [(s.bytes_done, s.bytes_total) for s in statuses if s.bytes_done]
    assert progress == [(min(n * CHUNK_SIZE, IMAGE_LENGTH), IMAGE_LENGTH) for n in range(1, 5)]
    assert (
        statuses[-1].detail
        == "campaign c1: tbox/rootfs-2.img (release 2, 12388 bytes) is committed"
    )
    assert all(s.error_code == "" for s in statuses)
    assert world.fetched() == IMAGE_LENGTH
    assert not (world.root / "ota" / "downloads").exists()  # deleted once ended
    assert OTA_STATUS_KIND in KINDS  # the uplink publishes them


async def test_a_failing_health_check_is_rolled_back_with_its_reason(world: World) -> None:
    check = CommandCheck("echo 'database unreachable' >&2; exit 3", timeout_s=30)
    async with world.runner(check=check) as runner:
        await runner.submit(body(correlation_id="req-5"), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None and final.step is Step.ROLLED_BACK
    status = assert_boots_committed(world.installer, 1)
    assert status.last_failure is not None and status.last_failure.image.release_counter == 2
    statuses = await world.statuses()
    assert host_lane(statuses) == [*HOST_STEPS, S.STATE_ROLLED_BACK]
    last = statuses[-1]
    assert last.error_code == "health_check_failed" and last.correlation_id == "req-5"
    assert "exited with status 3: database unreachable" in last.detail


async def test_an_image_for_an_ecu_without_flashing_address_fails_the_campaign(
    world: World,
) -> None:
    ecu_path = world.root / "images" / "bms.bin"
    ecu_path.write_bytes(b"bms" * 100)
    ecu = LocalTarget.of_file("bms/fw-3.bin", ecu_path, 3, ecu_id="bms")
    async with world.runner(world.source(world.host, ecu)) as runner:
        await runner.submit(body(), command_id="cmd-1")
        assert (final := await runner.wait_idle()) is not None
    # all or nothing: the T-box image is not installed without the ECU's
    assert (final.step, final.error_code) == (Step.FAILED, "unsupported_image_kind")
    assert "bms/fw-3.bin (ECU bms): no flashing address" in final.detail
    assert world.installer.status().pending is None


@pytest.mark.parametrize(
    ("campaign", "make_source", "code"),
    [
        ({"targets": ["tbox/rootfs-9.img"]}, None, "not_assigned"),
        ({}, lambda w: w.source(w.target(0)), "downgrade"),
        ({}, lambda w: WrongFileSource([w.host]), "hash_mismatch"),
        (
            {},
            lambda w: FailingCheckSource(OtaVerificationError("bad signature")),
            "verification_failed",
        ),
        ({}, lambda w: FailingCheckSource(OSError("no route to host")), "check_failed"),
        ({}, lambda w: w.source(w.host, w.target(3)), "ambiguous_plan"),
        ({"deadline": "2020-01-01T00:00:00Z"}, None, "deadline_passed"),
    ],
)
async def test_a_campaign_that_cannot_go_on_fails_and_installs_nothing(
    world: World, campaign: dict[str, Any], make_source: Any, code: str
) -> None:
    source = make_source(world) if make_source else world.source()
    async with world.runner(source) as runner:
        await runner.submit(body(**campaign), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.FAILED, code)
    assert_boots_committed(world.installer, 1)
    assert world.installer.status().last_failure is None  # never touched
    last = (await world.statuses())[-1]
    assert (last.state, last.error_code) == (S.STATE_FAILED, code)
    assert last.detail.startswith("campaign c1: failed in step ")
    if code == "deadline_passed":
        assert source.checks == 0  # not even the metadata was fetched


async def test_the_committed_image_is_not_installed_again(world: World) -> None:
    async with world.runner(world.source(world.target(1))) as runner:
        await runner.submit(body(), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None and final.step is Step.COMMITTED
    assert "already the committed software" in final.detail
    assert host_lane(await world.statuses()) == [*HOST_STEPS[:3], S.STATE_COMMITTED]
    assert world.installer.status().last_failure is None


# --- the command ---------------------------------------------------------------------------------


async def test_one_campaign_at_a_time_and_repeats_are_answered(world: World) -> None:
    async with world.runner(world.source(stall_after=1)) as runner:
        await runner.submit(body("c1"), command_id="cmd-1")
        again = await runner.submit(body("c1"), command_id="cmd-2")
        assert again.startswith("campaign c1 was already received; it is ")
        with pytest.raises(CampaignBusyError, match="campaign c2 not started: campaign c1"):
            await runner.submit(body("c2"), command_id="cmd-3")
        command = VerifiedCommand("ota", "cmd-4", VEHICLE, 0, 0, body("c2"), "k1")
        with pytest.raises(CommandFailed) as failed:
            await runner.handle_command(command)
        assert failed.value.code == "busy"
        with pytest.raises(CampaignRequestError, match="unknown key 'campaign'"):
            await runner.submit(b'{"campaign": "c3"}', command_id="cmd-5")
    assert [s.campaign_id for s in await world.statuses() if s.state == S.STATE_RECEIVED] == ["c1"]


# --- the watchdog and the deadline ---------------------------------------------------------------


async def test_a_stalled_download_is_reported_failed_as_stalled(world: World) -> None:
    budgets = StepBudgets(download_stall_s=0.3)
    async with world.runner(world.source(stall_after=2), budgets=budgets) as runner:
        await runner.submit(body(), command_id="cmd-1")
        async with asyncio.timeout(10):
            final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.FAILED, "stalled")
    assert "downloading tbox/rootfs-2.img made no progress for 0.3 s" in final.detail
    statuses = await world.statuses()
    progress = [s.bytes_done for s in statuses if s.bytes_done]
    assert progress == [CHUNK_SIZE, 2 * CHUNK_SIZE]  # the progress kept the watchdog off
    assert_boots_committed(world.installer, 1)


async def test_a_download_past_the_deadline_fails_as_deadline_passed(world: World) -> None:
    deadline = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2))
    budgets = StepBudgets(download_stall_s=60)
    async with world.runner(world.source(stall_after=1), budgets=budgets) as runner:
        await runner.submit(body(deadline=deadline), command_id="cmd-1")
        async with asyncio.timeout(10):
            final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.FAILED, "deadline_passed")
    assert f"was not done by the deadline {deadline[:-1]}+00:00" in final.detail


async def test_a_hanging_health_check_is_rolled_back_as_stalled(world: World) -> None:
    check = HangingCheck()
    world.events.append(check.release)
    budgets = StepBudgets(activating_s=0.5)
    async with world.runner(check=check, budgets=budgets) as runner:
        await runner.submit(body(), command_id="cmd-1")
        async with asyncio.timeout(10):
            final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.ROLLED_BACK, "stalled")
    status = assert_boots_committed(world.installer, 1)
    assert status.last_failure is not None
    assert status.last_failure.reason.startswith("stalled: campaign c1: activating ")
    last = (await world.statuses())[-1]
    assert (last.state, last.error_code) == (S.STATE_ROLLED_BACK, "stalled")


async def test_a_stalled_install_is_failed_and_rolled_back_once_it_finishes(world: World) -> None:
    slow = SlowInstaller(world.root / "slots", max_attempts=3, chunk_size=CHUNK_SIZE)
    slow.release = threading.Event()
    world.events.append(slow.release)
    async with world.runner(installer=slow, budgets=StepBudgets(installing_s=0.3)) as runner:
        await runner.submit(body(), command_id="cmd-1")
        async with asyncio.timeout(10):
            while runner.campaign is None or not runner.campaign.final:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert runner.campaign.step is Step.FAILED
        assert runner.campaign.error_code == "stalled"
        with pytest.raises(CampaignBusyError):  # its write is still going on
            await runner.submit(body("c2"), command_id="cmd-2")
        slow.release.set()  # the storage wakes up: the write completes, then is rolled back
        async with asyncio.timeout(10):
            await runner.wait_idle()
    status = assert_boots_committed(world.installer, 1)
    assert status.last_failure is not None
    assert status.last_failure.reason.startswith("stalled: campaign c1 ended failed")


# --- start-up -------------------------------------------------------------------------------------


async def test_a_cancelled_download_resumes_at_the_next_start(world: World) -> None:
    first = world.source(stall_after=2)
    async with world.runner(first) as runner:
        await runner.submit(body(), command_id="cmd-1")
        async with asyncio.timeout(10):
            while world.fetched() < 2 * CHUNK_SIZE:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    # the agent stopped mid-download; the partial file stays
    first.release.set()
    second = world.source()
    async with world.runner(second) as runner:
        assert runner.campaign is not None
        final = await runner.wait_idle()
    assert final is not None and final.step is Step.COMMITTED
    assert second.checks == 1  # the client refreshed its metadata before resuming
    assert world.fetched() == IMAGE_LENGTH  # nothing fetched twice
    states = host_lane(await world.statuses())
    assert states == [*HOST_STEPS, S.STATE_COMMITTED]


async def test_a_corrupt_state_file_is_kept_aside_and_its_update_rolled_back(
    world: World,
) -> None:
    path, sha256, length = image_file(world.root / "images", 2)
    world.installer.install(path, sha256, length, 2)  # pending: no campaign vouches for it
    state = world.root / "ota" / "campaign.json"
    state.parent.mkdir()
    state.write_text('{"format": 1, "step": "activating"')
    async with world.runner() as runner:
        assert runner.campaign is None
    aside = list(state.parent.glob("campaign.json.corrupt-*"))
    assert len(aside) == 1 and not state.exists()
    status = assert_boots_committed(world.installer, 1)
    assert status.last_failure is not None
    assert "the campaign state file is unreadable" in status.last_failure.reason
    assert str(state) in status.last_failure.reason


async def test_statuses_a_crash_left_unsent_are_queued_at_start(world: World) -> None:
    async with world.runner() as runner:
        await runner.submit(body(), command_id="cmd-1")
        await runner.wait_idle()
    last = (await world.statuses())[-1]
    await world.queue.ack([item.id for item in await world.queue.take(1 << 30)])
    store = CampaignStore(world.root / "ota")
    ended = store.load()
    assert ended is not None and ended.step is Step.COMMITTED and not ended.outbox
    # as if the agent had died between saving its last step and queueing that step's event
    unsent = StatusEvent(Step.COMMITTED, last.time_us, last.detail, sequence=last.sequence)
    store.save_step(replace(ended, outbox=(unsent,)))
    async with world.runner() as runner:
        await runner.wait_idle()
    # the same message, same sequence number: a backend drops it as a duplicate
    assert [s.SerializeToString() for s in await world.statuses()] == [last.SerializeToString()]
    assert store.load() == ended

"""A campaign against real signed repositories: the director and image repositories built with
the repository tool, served over HTTP, verified by the real update client, installed into real
A/B slots. Also shows the adapter the agent uses between UpdateClient and the runner."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import SequenceCounter
from agent.uplink import OTA_STATUS_KIND
from agent.upload_queue import UploadQueue
from ota.ab_installer import AbInstaller
from ota.campaign import Step
from ota.campaign_runner import CampaignRunner, SlotInstaller, UpdateSource
from ota.campaign_store import CampaignStore
from ota.health_check import CommandCheck
from ota.target_info import ImageKind
from ota.update_client import PlannedTarget, Slot, UpdateClient
from tests.ota.ab_crash_child import image_file
from tests.ota.test_update_client import BMS_FW, ROOTFS, Bench, make_bench


class UpdateClientSource:
    """:class:`UpdateClient` as a campaign's :class:`UpdateSource`.

    ``check`` passes the installed release counter (from the slots) so that the client refuses
    a downgrade itself; ``download`` stores each target under its flat file name in the
    campaign's directory. The client reports no progress while it downloads, so the campaign
    hears of it once, at the end (its throughput floor and socket timeout catch a stall).
    """

    def __init__(self, client: UpdateClient, slots: SlotInstaller) -> None:
        self.client = client
        self.slots = slots

    def _installed(self, slot: Slot) -> int | None:
        if slot == (ImageKind.TBOX, None):
            return self.slots.status().committed_release
        return None  # ECU firmware: not this agent's (issue 5)

    def check(self) -> tuple[PlannedTarget, ...]:
        return self.client.check(self._installed).targets

    def download(
        self, target: PlannedTarget, dest: Path, progress: Callable[[int, int], None]
    ) -> Path:
        path = self.client.download(target, dest / target.file_name)
        progress(target.length, target.length)
        return path


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = make_bench(tmp_path)
    with made.server:
        yield made


async def test_a_campaign_installs_what_the_director_assigns_and_the_image_repo_vouches_for(
    bench: Bench, tmp_path: Path
) -> None:
    images = tmp_path / "factory"
    images.mkdir()
    slots = AbInstaller(tmp_path / "slots", max_attempts=3)
    slots.provision(*image_file(images, 11), 11, version="factory")
    source: UpdateSource[PlannedTarget] = UpdateClientSource(bench.client(), slots)
    async with UploadQueue(tmp_path / "q.db") as queue:
        runner = CampaignRunner(
            CampaignStore(tmp_path / "ota"),
            slots,
            source,
            queue,
            health_check=CommandCheck(["true"], timeout_s=30),
            vehicle_id="VIN1",
            next_sequence=SequenceCounter(tmp_path / "sequence").next,
        )
        async with runner:
            await runner.submit(json.dumps({"campaign_id": "r12"}).encode(), command_id="cmd-1")
            final = await runner.wait_idle()
        items = await queue.take(1 << 30, kinds=[OTA_STATUS_KIND])
    assert final is not None and final.step is Step.COMMITTED, final
    assert final.target is not None and final.target.name == ROOTFS
    status = slots.boot()
    assert (status.committed_release, status.pending) == (12, None)
    committed = slots.image_path(status.committed.slot).read_bytes()
    assert committed == bench.firmware[ROOTFS]
    statuses = [OtaStatus.FromString(item.payload) for item in items]
    assert [(s.target, s.error_code) for s in statuses if s.state == OtaStatus.STATE_FAILED] == [
        ("bms", "unsupported_image_kind")
    ]
    assert BMS_FW in next(s.detail for s in statuses if s.target == "bms")
    assert statuses[-1].state == OtaStatus.STATE_COMMITTED
    assert len(bench.target_requests()) == 1  # the ECU image was never downloaded

"""A campaign against real signed repositories: the director and image repositories built with
the repository tool, served over HTTP, verified by the real update client, installed into real
A/B slots. Also shows the adapter the agent uses between UpdateClient and the runner."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import SequenceCounter
from agent.uplink import OTA_STATUS_KIND
from agent.upload_queue import UploadQueue
from ota.ab_installer import AbInstaller
from ota.campaign import Step
from ota.campaign_runner import CampaignRunner, UpdateSource
from ota.campaign_store import CampaignStore
from ota.health_check import CommandCheck
from ota.update_client import PlannedTarget
from ota.update_source import UpdateClientSource
from tests.ota.ab_crash_child import image_file
from tests.ota.test_update_client import BMS_FW, ROOTFS, Bench, make_bench


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
            # every assigned target: the ECU has no flashing address here, so nothing is done
            await runner.submit(json.dumps({"campaign_id": "r11"}).encode(), command_id="cmd-0")
            refused = await runner.wait_idle()
            assert refused is not None and refused.error_code == "unsupported_image_kind"
            assert BMS_FW in refused.detail
            await queue.take(1 << 30, kinds=[OTA_STATUS_KIND])
            body = {"campaign_id": "r12", "targets": [ROOTFS]}
            await runner.submit(json.dumps(body).encode(), command_id="cmd-1")
            final = await runner.wait_idle()
        items = await queue.take(1 << 30, kinds=[OTA_STATUS_KIND])
    assert final is not None and final.step is Step.COMMITTED, final
    assert final.target is not None and final.target.name == ROOTFS
    status = slots.boot()
    assert (status.committed_release, status.pending) == (12, None)
    committed = slots.image_path(status.committed.slot).read_bytes()
    assert committed == bench.firmware[ROOTFS]
    statuses = [OtaStatus.FromString(item.payload) for item in items]
    assert {s.target for s in statuses} == {"host"}
    assert statuses[-1].state == OtaStatus.STATE_COMMITTED
    assert len(bench.target_requests()) == 1  # the ECU image was never downloaded

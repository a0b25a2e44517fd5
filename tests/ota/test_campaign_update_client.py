"""A campaign against real signed repositories: the director and image repositories built with
the repository tool, served over HTTP, verified by the real update client, installed into real
A/B slots. Also shows the adapter the agent uses between UpdateClient and the runner."""

from __future__ import annotations

import hashlib
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


async def test_an_ecu_campaign_keeps_its_image_and_the_next_one_comes_as_a_delta(
    bench: Bench, tmp_path: Path
) -> None:
    """Campaign 1 flashes bms/fw-3 into a simulated ECU and keeps the image; campaign 2's
    bms/fw-4 is published with a bsdiff4 delta from it and arrives as the patch."""
    from firmware_stub import EcuHost
    from ota.ecu_fleet import EcuEndpoint, EcuFleet
    from ota.image_cache import ImageCache
    from ota.target_info import ImageKind, TargetCustom
    from tests.firmware_stub.support import BMS, QUICK, channel, ecu_config, make_image

    images = tmp_path / "factory"
    images.mkdir()
    slots = AbInstaller(tmp_path / "slots", max_attempts=3)
    slots.provision(*image_file(images, 11), 11, version="factory")
    source = UpdateClientSource(bench.client(), slots)
    cache = ImageCache(tmp_path / "ecu-images")
    bus = channel()
    fleet = EcuFleet([EcuEndpoint("bms", bus, BMS.request_id, BMS.response_id)], timing=QUICK)
    ecu = ecu_config(BMS, factory=make_image(1, 4000, hardware_id="bms"))

    async def campaign(queue: UploadQueue, campaign_id: str) -> tuple[Step, str]:
        runner = CampaignRunner(
            CampaignStore(tmp_path / "ota"),
            slots,
            source,
            queue,
            health_check=CommandCheck(["true"], timeout_s=30),
            vehicle_id="VIN1",
            next_sequence=SequenceCounter(tmp_path / "sequence").next,
            ecus=fleet,
            ecu_images=cache,
        )
        async with runner:
            body = {"campaign_id": campaign_id, "targets": [name]}
            await runner.submit(json.dumps(body).encode(), command_id=campaign_id)
            final = await runner.wait_idle()
        assert final is not None
        return final.step, final.error_code

    async with (
        EcuHost(bus, [ecu], state_dir=tmp_path / "ecus"),
        UploadQueue(tmp_path / "q.db") as queue,
    ):
        name = BMS_FW
        assert await campaign(queue, "bms-3") == (Step.COMMITTED, "")
        v3 = bench.firmware[BMS_FW]
        assert cache.find(hashlib.sha256(v3).hexdigest()) is not None  # kept as a base
        # version 4: the same payload with a few bytes changed, signed again
        name = "bms/fw-4.bin"
        v4 = make_image(4, len(v3) - 192, hardware_id="bms")
        new, base = tmp_path / "bms-4.img", tmp_path / "bms-3.img"
        new.write_bytes(v4)
        base.write_bytes(v3)
        custom = TargetCustom(hardware_id="bms-hw1", release_counter=4, image_kind=ImageKind.ECU)
        bench.image.add_delta_target(new, base=base, name=name, custom=custom)
        bench.director.assign(bench.image, vehicle_id="VIN1", target_name=name, ecu_id="bms")
        before = len(bench.target_requests())
        assert await campaign(queue, "bms-4") == (Step.COMMITTED, "")
    report = source.last_report
    assert report is not None and report.method == "delta", report
    assert report.transferred < len(v4) // 2, report
    fetched = bench.target_requests()[before:]
    assert fetched and all("bsdiff4" in path for path in fetched), fetched
    meta = json.loads((tmp_path / "ecus" / "bms" / "meta.json").read_text())
    assert meta["banks"][meta["active"]]["version"] == 4

"""Vehicle-wide campaigns, all or nothing: the T-box and three simulated ECUs (firmware_stub) on
an in-process virtual bus, driven by the campaign runner through ota.ecu_fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import SequenceCounter
from agent.uplink import OTA_STATUS_KIND
from agent.upload_queue import UploadQueue
from firmware_stub import EcuHost, FaultPlan
from ota.ab_installer import AbInstaller
from ota.campaign import LanePhase, Step
from ota.campaign_runner import CampaignRunner
from ota.campaign_store import CampaignStore
from ota.ecu_flash import EcuAddress
from ota.ecu_fleet import EcuEndpoint, EcuFleet
from ota.health_check import HealthCheck
from tests.firmware_stub.support import (
    BMS,
    OTHER_KEY,
    QUICK,
    VCU,
    ecu_config,
    flasher,
    make_image,
    running,
)
from tests.ota.ab_crash_child import CHUNK_SIZE, FixedCheck, image_file
from tests.ota.campaign_crash_child import LocalSource, LocalTarget

ADAS = EcuAddress("adas", 0x7E2, 0x7EA)
ECUS = (BMS, VCU, ADAS)
S = OtaStatus


def body(campaign_id: str = "c1") -> bytes:
    return f'{{"campaign_id": "{campaign_id}"}}'.encode()


@dataclass
class Vehicle:
    """A T-box with release 1 committed and three ECUs running version 1."""

    root: Path
    queue: UploadQueue
    installer: AbInstaller
    host: EcuHost
    url: str
    counter: SequenceCounter

    def ecu_target(self, address: EcuAddress, version: int, **kw: Any) -> LocalTarget:
        path = self.root / "images" / f"{address.name}-{version}.img"
        path.write_bytes(make_image(version, 4000, hardware_id=address.name, **kw))
        return LocalTarget.of_file(
            f"{address.name}/fw-{version}.img", path, version, ecu_id=address.name
        )

    def host_target(self, release: int) -> LocalTarget:
        path, _, _ = image_file(self.root / "images", release)
        return LocalTarget.of_file(f"tbox/rootfs-{release}.img", path, release)

    def runner(
        self, targets: Sequence[LocalTarget], check: HealthCheck | None = None
    ) -> CampaignRunner:
        fleet = EcuFleet(
            [EcuEndpoint(a.name, self.url, a.request_id, a.response_id) for a in ECUS],
            timing=QUICK,
        )
        return CampaignRunner(
            CampaignStore(self.root / "ota"),
            self.installer,
            LocalSource(targets),
            self.queue,
            health_check=check or FixedCheck(True),
            vehicle_id="VIN-ECUS",
            next_sequence=self.counter.next,
            progress_interval_s=0.0,
            ecus=fleet,
        )

    async def versions(self) -> dict[str, int]:
        result = {}
        for address in ECUS:
            info = await flasher(self.url, address).read_info()
            result[address.name] = info.active.version
        return result

    async def lanes(self) -> dict[str, list[tuple[int, str]]]:
        items = await self.queue.take(1 << 30, kinds=[OTA_STATUS_KIND])
        lanes: dict[str, list[tuple[int, str]]] = {}
        for item in items:
            s = OtaStatus.FromString(item.payload)
            lanes.setdefault(s.target, []).append((s.state, s.error_code))
        return lanes


async def _vehicle(tmp_path: Path, faults: dict[str, FaultPlan]) -> AsyncIterator[Vehicle]:
    images = tmp_path / "images"
    images.mkdir()
    installer = AbInstaller(tmp_path / "slots", max_attempts=3, chunk_size=CHUNK_SIZE)
    installer.provision(*image_file(images, 1), 1, version="v1")
    configs = [
        ecu_config(
            a,
            factory=make_image(1, 4000, hardware_id=a.name),
            faults=faults.get(a.name),
        )
        for a in ECUS
    ]
    async with (
        UploadQueue(tmp_path / "queue.db") as queue,
        running(tmp_path / "ecus", configs) as (host, url),
    ):
        yield Vehicle(tmp_path, queue, installer, host, url, SequenceCounter(tmp_path / "seq"))


@pytest.fixture
async def vehicle(tmp_path: Path) -> AsyncIterator[Vehicle]:
    async for v in _vehicle(tmp_path, {}):
        yield v


@pytest.fixture
async def vehicle_with_failing_adas(tmp_path: Path) -> AsyncIterator[Vehicle]:
    # adas's version 2 crashes at start: its bootloader falls back to version 1
    async for v in _vehicle(tmp_path, {"adas": FaultPlan(boot_fails=frozenset({2}))}):
        yield v


async def test_one_campaign_updates_three_ecus_and_the_t_box_together(vehicle: Vehicle) -> None:
    targets = [vehicle.ecu_target(a, 2) for a in ECUS] + [vehicle.host_target(2)]
    async with vehicle.runner(targets) as runner:
        await runner.submit(body(), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None and final.step is Step.COMMITTED, final
    assert {lane.ecu_id: lane.phase for lane in final.ecus} == dict.fromkeys(
        ["bms", "vcu", "adas"], LanePhase.COMMITTED
    )
    assert await vehicle.versions() == {"bms": 2, "vcu": 2, "adas": 2}
    assert vehicle.installer.status().committed_release == 2
    lanes = await vehicle.lanes()
    for ecu in ("bms", "vcu", "adas"):
        assert [state for state, _ in lanes[ecu]][-3:] == [
            S.STATE_INSTALLING,
            S.STATE_ACTIVATING,
            S.STATE_COMMITTED,
        ]
    assert lanes["host"][-1] == (S.STATE_COMMITTED, "")
    # the same campaign again: every ECU already runs its image, nothing is flashed
    async with vehicle.runner(targets) as runner:
        await runner.submit(body("c2"), command_id="cmd-2")
        again = await runner.wait_idle()
    assert again is not None and again.step is Step.COMMITTED


async def test_the_third_of_three_ecus_refusing_its_image_leaves_every_ecu_as_it_was(
    vehicle: Vehicle,
) -> None:
    targets = [
        vehicle.ecu_target(BMS, 2),
        vehicle.ecu_target(VCU, 2),
        vehicle.ecu_target(ADAS, 2, key=OTHER_KEY),  # not signed by the key adas trusts
        vehicle.host_target(2),
    ]
    async with vehicle.runner(targets) as runner:
        await runner.submit(body(), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.FAILED, "ecu_refused")
    assert "ECU adas" in final.detail and "signature" in final.detail
    assert {lane.ecu_id: lane.phase for lane in final.ecus} == {
        "bms": LanePhase.ROLLED_BACK,
        "vcu": LanePhase.ROLLED_BACK,
        "adas": LanePhase.ROLLED_BACK,
    }
    assert await vehicle.versions() == {"bms": 1, "vcu": 1, "adas": 1}
    status = vehicle.installer.status()
    assert (status.committed_release, status.pending) == (1, None)
    # the staged version 2 does not come back with a power cycle: it is invalid in its bank
    for address in (BMS, VCU):
        info = await flasher(vehicle.url, address).read_info()
        assert all(b.version != 2 or b.state.name == "INVALID" for b in info.banks), info
    lanes = await vehicle.lanes()
    assert (S.STATE_FAILED, "ecu_refused") in lanes["adas"]
    assert lanes["bms"][-1] == (S.STATE_ROLLED_BACK, "ecu_refused")
    assert lanes["host"][-1] == (S.STATE_FAILED, "ecu_refused")


async def test_the_third_of_three_ecus_failing_at_boot_rolls_every_ecu_and_the_t_box_back(
    vehicle_with_failing_adas: Vehicle,
) -> None:
    vehicle = vehicle_with_failing_adas
    targets = [vehicle.ecu_target(a, 2) for a in ECUS] + [vehicle.host_target(2)]
    async with vehicle.runner(targets) as runner:
        await runner.submit(body(), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None
    assert (final.step, final.error_code) == (Step.ROLLED_BACK, "ecu_activation_failed")
    assert await vehicle.versions() == {"bms": 1, "vcu": 1, "adas": 1}
    status = vehicle.installer.status()
    assert (status.committed_release, status.pending) == (1, None)
    lanes = await vehicle.lanes()
    # bms and vcu ran version 2 before adas failed: they were rolled back
    assert (S.STATE_ACTIVATING, "") in lanes["bms"]
    assert lanes["bms"][-1] == (S.STATE_ROLLED_BACK, "ecu_activation_failed")
    assert lanes["host"][-1] == (S.STATE_ROLLED_BACK, "ecu_activation_failed")
    assert "(ECUs: bms rolled_back, vcu rolled_back, adas rolled_back)" in final.detail


async def test_a_failed_t_box_health_check_rolls_the_ecus_back(vehicle: Vehicle) -> None:
    targets = [vehicle.ecu_target(a, 2) for a in (BMS, VCU)] + [vehicle.host_target(2)]
    async with vehicle.runner(targets, check=FixedCheck(False)) as runner:
        await runner.submit(body(), command_id="cmd-1")
        final = await runner.wait_idle()
    assert final is not None
    assert (final.step, final.error_code) == (Step.ROLLED_BACK, "health_check_failed")
    assert await vehicle.versions() == {"bms": 1, "vcu": 1, "adas": 1}
    assert vehicle.installer.status().committed_release == 1


async def test_an_ecu_image_below_what_the_ecu_runs_is_a_downgrade_and_changes_nothing(
    vehicle: Vehicle,
) -> None:
    up = [vehicle.ecu_target(a, 2) for a in (BMS, VCU)]
    async with vehicle.runner(up) as runner:
        await runner.submit(body(), command_id="cmd-1")
        assert (done := await runner.wait_idle()) is not None and done.step is Step.COMMITTED
    # vcu back to version 1 (signed, and the director says so): the ECU refuses it
    down = [vehicle.ecu_target(ADAS, 2), vehicle.ecu_target(VCU, 1)]
    async with vehicle.runner(down) as runner:
        await runner.submit(body("c2"), command_id="cmd-2")
        final = await runner.wait_idle()
    assert final is not None and (final.step, final.error_code) == (Step.FAILED, "downgrade")
    assert await vehicle.versions() == {"bms": 2, "vcu": 2, "adas": 1}

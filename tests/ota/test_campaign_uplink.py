"""Campaign statuses on the wire (C5): the runner's OtaStatus events through the durable queue and
the real uplink to a real Mosquitto, decoded by an independent subscriber on ota/status."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest

from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import SequenceCounter
from agent.uplink import OTA_STATUS_KIND, Uplink, UplinkConfig
from agent.upload_queue import QueueItem, UploadQueue
from ota.ab_installer import AbInstaller
from ota.campaign_runner import CampaignRunner
from ota.campaign_store import CampaignStore
from ota.health_check import CommandCheck, HealthCheck
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary
from tests.ota.ab_crash_child import CHUNK_SIZE, image_file
from tests.ota.campaign_crash_child import LocalSource, LocalTarget

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

VEHICLE = "VIN-OTA1"
TOPIC = f"vehicles/{VEHICLE}/ota/status"
S = OtaStatus
STEPS = [
    S.STATE_RECEIVED,
    S.STATE_DOWNLOADING,
    S.STATE_VERIFYING,
    S.STATE_INSTALLING,
    S.STATE_ACTIVATING,
]


async def _until(condition: Callable[[], bool], within: float = 20.0) -> None:
    """Wait for *condition* (a deadline against hangs, not a timing assertion)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polls counters that have no event
            await asyncio.sleep(0.01)


async def _subscribe(port: int, received: list[OtaStatus], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-backend") as sub:
        await sub.subscribe(f"vehicles/{VEHICLE}/#", qos=1)
        ready.set()
        async for message in sub.messages:
            assert str(message.topic) == TOPIC
            assert isinstance(message.payload, bytes)
            received.append(OtaStatus.FromString(message.payload))


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, list[OtaStatus]]]:
    (tmp_path / "broker").mkdir()
    with MosquittoBroker(tmp_path / "broker") as broker:
        received: list[OtaStatus] = []
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(_subscribe(broker.port, received, ready))
            await _until(ready.is_set)
            yield broker, received
            task.cancel()


def _slots(tmp_path: Path) -> tuple[AbInstaller, Path]:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    slots = AbInstaller(tmp_path / "slots", max_attempts=3, chunk_size=CHUNK_SIZE)
    if not slots.state_path.exists():
        slots.provision(*image_file(images, 1), 1, version="v1")
    return slots, images


def _runner(
    tmp_path: Path, queue: UploadQueue, uplink: Uplink | None, release: int, check: HealthCheck
) -> CampaignRunner:
    slots, images = _slots(tmp_path)
    path, _, _ = image_file(images, release)
    target = LocalTarget.of_file(f"tbox/rootfs-{release}.img", path, release)
    sequence: Callable[[], int]
    if uplink is not None:
        sequence = uplink.next_sequence
    else:  # no uplink in this "boot": the vehicle's counter all the same
        sequence = SequenceCounter(tmp_path / "sequence").next
    return CampaignRunner(
        CampaignStore(tmp_path / "ota"),
        slots,
        LocalSource([target]),
        queue,
        health_check=check,
        vehicle_id=VEHICLE,
        next_sequence=sequence,
        notify=uplink.notify if uplink is not None else lambda: None,
        progress_interval_s=0.0,
    )


def _config(tmp_path: Path, port: int) -> UplinkConfig:
    return UplinkConfig(
        host="127.0.0.1", port=port, vehicle_id=VEHICLE, sequence_file=tmp_path / "sequence"
    )


def _host_states(statuses: list[OtaStatus], campaign_id: str) -> list[int]:
    states: list[int] = []
    for s in statuses:
        if s.campaign_id == campaign_id and (not states or states[-1] != s.state):
            states.append(s.state)
    return states


async def test_campaign_statuses_arrive_in_order_with_increasing_sequence_numbers(
    tmp_path: Path, backend: tuple[MosquittoBroker, list[OtaStatus]]
) -> None:
    broker, received = backend
    passing = CommandCheck(["true"], timeout_s=30)
    failing = CommandCheck("echo 'can0 silent for 5 s' >&2; exit 4", timeout_s=30)
    async with (
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(_config(tmp_path, broker.port), queue) as uplink,
    ):
        async with _runner(tmp_path, queue, uplink, 2, passing) as runner:
            await runner.submit(json.dumps({"campaign_id": "c1"}).encode(), command_id="cmd-1")
            await runner.wait_idle()
        await _until(lambda: any(s.state == S.STATE_COMMITTED for s in received))
        async with _runner(tmp_path, queue, uplink, 3, failing) as runner:
            body = {"campaign_id": "c2", "correlation_id": "req-2"}
            await runner.submit(json.dumps(body).encode(), command_id="cmd-2")
            await runner.wait_idle()
        await _until(lambda: any(s.state == S.STATE_ROLLED_BACK for s in received))
        await _until(lambda: queue.stats.items == 0)  # deleted once acknowledged
        assert uplink.stats.by_kind.get(OTA_STATUS_KIND) == len(received)
    assert _host_states(received, "c1") == [*STEPS, S.STATE_COMMITTED]
    assert _host_states(received, "c2") == [*STEPS, S.STATE_ROLLED_BACK]
    sequences = [s.sequence for s in received]
    assert sequences == sorted(set(sequences))  # in order, each once
    assert {(s.vehicle_id, s.schema_version) for s in received} == {(VEHICLE, 1)}
    assert {s.correlation_id for s in received if s.campaign_id == "c1"} == {"cmd-1"}
    assert {s.correlation_id for s in received if s.campaign_id == "c2"} == {"req-2"}
    progress = [(s.bytes_done, s.bytes_total) for s in received if s.bytes_done]
    assert progress and all(0 < done <= total for done, total in progress)
    rolled_back = received[-1]
    assert rolled_back.error_code == "health_check_failed"
    assert "exited with status 4: can0 silent for 5 s" in rolled_back.detail
    assert _slots(tmp_path)[0].boot().committed_release == 2


async def test_statuses_queued_without_a_link_are_delivered_after_a_reboot(
    tmp_path: Path, backend: tuple[MosquittoBroker, list[OtaStatus]]
) -> None:
    broker, received = backend
    async with UploadQueue(tmp_path / "q.db") as queue:
        async with _runner(tmp_path, queue, None, 2, CommandCheck(["true"])) as runner:
            await runner.submit(json.dumps({"campaign_id": "c9"}).encode(), command_id="cmd-9")
            await runner.wait_idle()
        queued = queue.stats.items
    assert queued > 0 and received == []
    # the next boot: the same queue file, now with a link
    async with (
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(_config(tmp_path, broker.port), queue),
    ):
        await _until(lambda: queue.stats.items == 0)
        await _until(lambda: len(received) == queued)
    assert _host_states(received, "c9") == [*STEPS, S.STATE_COMMITTED]
    sequences = [s.sequence for s in received]
    assert sequences == sorted(set(sequences))


async def test_a_stored_status_that_is_not_an_ota_status_is_dropped_not_published(
    tmp_path: Path, backend: tuple[MosquittoBroker, list[OtaStatus]]
) -> None:
    broker, received = backend
    good = OtaStatus(vehicle_id=VEHICLE, sequence=7, campaign_id="c1", state=S.STATE_RECEIVED)
    async with UploadQueue(tmp_path / "q.db") as queue:
        await queue.put(
            [
                QueueItem(OTA_STATUS_KIND, 0, b"\xff\xff not a status", 1.0),
                QueueItem(OTA_STATUS_KIND, 0, good.SerializeToString(), 1.0),
            ]
        )
        async with Uplink(_config(tmp_path, broker.port), queue) as uplink:
            await _until(lambda: queue.stats.items == 0)
            await _until(lambda: len(received) == 1)
            assert uplink.stats.malformed == 1
    assert received == [good]  # published as stored, its sequence number untouched

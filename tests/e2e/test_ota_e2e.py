"""An update campaign end to end: signed repositories served over HTTP → a signed ``cmd/ota``
command through a real Mosquitto → the agent (the same code as ``tbox run``) verifies with the
update client, installs into real A/B slots, commits after the health check → ``ota/status``
events at the backend, in order; and a second start of the agent boots the committed slot."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.busurl import parse_bus_url
from agent.commands import make_command, sign_command
from agent.config.model import (
    AgentConfig,
    BusConfig,
    CommandsConfig,
    EcuFlashConfig,
    MqttConfig,
    OtaConfig,
    QueueConfig,
    StatusConfig,
)
from agent.proto.tbox.v1 import CommandResult, OtaStatus
from agent.service import AgentService, running
from can_dbc import SAMPLE_VEHICLE_DBC
from firmware_stub import EcuHost
from ota.ab_installer import AbInstaller
from tests.agent.test_service import _until
from tests.firmware_stub.support import BMS, ecu_config, make_image
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary
from tests.ota.ab_crash_child import image_file
from tests.ota.test_update_client import BMS_FW, ROOTFS, Bench, make_bench

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

VEHICLE = "VIN1"  # the bench's director assigns the T-box image and a BMS image to it
PREFIX = f"vehicles/{VEHICLE}/"


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tbox-ota-") as tmp:
        yield Path(tmp)


@pytest.fixture
def bench(work: Path) -> Iterator[Bench]:
    made = make_bench(work)
    with made.server:
        yield made


_ENDS = (OtaStatus.STATE_COMMITTED, OtaStatus.STATE_FAILED, OtaStatus.STATE_ROLLED_BACK)


class _Backend:
    def __init__(self, port: int) -> None:
        self.port = port
        self.statuses: list[OtaStatus] = []
        self.results: list[CommandResult] = []
        self.client: aiomqtt.Client | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="ota-backend") as client:
            self.client = client
            await client.subscribe(PREFIX + "#", qos=1)
            ready.set()
            async for message in client.messages:
                topic = str(message.topic)[len(PREFIX) :]
                assert isinstance(message.payload, bytes)
                if topic == "ota/status":
                    self.statuses.append(OtaStatus.FromString(message.payload))
                elif topic == "cmd/ota/result":
                    self.results.append(CommandResult.FromString(message.payload))


@contextlib.asynccontextmanager
async def _backend(port: int) -> AsyncIterator[_Backend]:
    backend = _Backend(port)
    ready = asyncio.Event()
    task = asyncio.create_task(backend.run(ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        yield backend
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _config(work: Path, bench: Bench, port: int, pub: Path, bus: str) -> AgentConfig:
    client = bench.config(VEHICLE)
    state = work / "state"
    spec = parse_bus_url(bus)
    return AgentConfig(
        vehicle_id=VEHICLE,
        state_dir=state,
        buses=(BusConfig(spec, (Path(SAMPLE_VEHICLE_DBC),)),),
        queue=QueueConfig(state / "queue.db"),
        status=StatusConfig(work / "status.sock"),
        mqtt=MqttConfig(host="127.0.0.1", port=port, keepalive_s=5, backoff_max_s=1.0),
        commands=CommandsConfig(trusted_keys=(("ops", pub),)),
        ota=OtaConfig(
            director_url=client.director_url,
            image_url=client.image_url,
            hardware_id=client.hardware_id,
            director_root=client.director_root,
            image_root=client.image_root,
            ecus=tuple(client.ecus.items()),
            # the ECU behind the T-box, on the agent's bus: flashed in the same campaign
            flash=(("bms", EcuFlashConfig(spec, request_id=0x7E0, response_id=0x7E8)),),
            slots_dir=work / "slots",
            health_check="test -d /",
            min_bytes_per_s=0,
        ),
        source="test",
    )


async def test_a_signed_campaign_is_installed_committed_and_reported(
    work: Path, bench: Bench
) -> None:
    key = Ed25519PrivateKey.generate()
    pub = work / "ops.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    factory = work / "factory"
    factory.mkdir()
    AbInstaller(work / "slots").provision(*image_file(factory, 11), 11, version="factory")
    (work / "broker").mkdir()
    bus = f"virtual://ota-{time.monotonic_ns()}?name=can0"
    ecu = ecu_config(BMS, factory=make_image(1, hardware_id="bms"))
    with MosquittoBroker(work / "broker") as broker:
        config = _config(work, bench, broker.port, pub, bus)
        async with (
            EcuHost(bus, [ecu], state_dir=work / "ecus"),
            _backend(broker.port) as backend,
            running(AgentService(config)) as service,
        ):
            assert backend.client is not None
            command = make_command(
                "ota", json.dumps({"campaign_id": "rollout-12"}).encode(), vehicle_id=VEHICLE
            )
            await backend.client.publish(
                PREFIX + "cmd/ota", sign_command(key, "ops", command), qos=1
            )
            await _until(
                lambda: any(s.state in _ENDS and s.target == "host" for s in backend.statuses),
                within=60,
            )
            snapshot = service.snapshot()
        # Nothing else to wait for: every status is published before the commit one.
        assert backend.results and backend.results[0].command_id == command.command_id
        host = [s for s in backend.statuses if s.target != "bms"]
        states = [s.state for s in host]
        assert states[0] == OtaStatus.STATE_RECEIVED and states[-1] == OtaStatus.STATE_COMMITTED
        for step in (
            OtaStatus.STATE_DOWNLOADING,
            OtaStatus.STATE_VERIFYING,
            OtaStatus.STATE_INSTALLING,
            OtaStatus.STATE_ACTIVATING,
        ):
            assert step in states, states
        assert all(s.campaign_id == "rollout-12" for s in backend.statuses)
        assert all(s.correlation_id == command.command_id for s in backend.statuses)
        sequences = [s.sequence for s in backend.statuses]
        assert sequences == sorted(set(sequences))
        # The ECU image was flashed in the same campaign, in its own lane (issue 5).
        bms = [s.state for s in backend.statuses if s.target == "bms"]
        assert bms[0] == OtaStatus.STATE_DOWNLOADING and bms[-1] == OtaStatus.STATE_COMMITTED
        assert OtaStatus.STATE_ACTIVATING in bms
        assert BMS_FW in next(s.detail for s in backend.statuses if s.target == "bms")
        assert snapshot["ota"]["campaign"]["step"] == "committed"
        meta = json.loads((work / "ecus" / "bms" / "meta.json").read_text())
        assert meta["banks"][meta["active"]]["version"] == 3

        # The committed slot holds the director's image byte for byte, and a restart of the
        # agent (a reboot of the simulated T-box) boots it and changes nothing.
        slots = AbInstaller(work / "slots").status()
        assert slots.committed_release == 12 and slots.pending is None
        image = AbInstaller(work / "slots").image_path(slots.committed.slot).read_bytes()
        assert image == bench.firmware[ROOTFS]
        async with running(AgentService(config)) as again:
            assert again.snapshot()["ota"]["slots"]["committed"]["image"]["release_counter"] == 12

"""The agent service in-process: simulator → agent → real Mosquitto → a subscriber; commands."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.busurl import BusSpec, parse_bus_url
from agent.commands import make_command, sign_command
from agent.config.model import (
    AgentConfig,
    BusConfig,
    CommandsConfig,
    MqttConfig,
    QueueConfig,
    SchemesConfig,
    StateConfig,
    StatusConfig,
)
from agent.proto.tbox.v1 import CommandResult, StateUpdate
from agent.service import AgentService, running
from agent.telemetry_codec import decode_batch, samples_of
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from sim import TrafficGenerator, VehicleModel, load_scenario
from sim.runner import BusSink, SimulationRunner
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

VEHICLE = "VIN-S1"
PREFIX = f"vehicles/{VEHICLE}/"
SCHEMES = """
[[scheme]]
id = "speed-5hz"
kind = "periodic"
period_ms = 200
signals = ["ESC_VehSpd", "BMS_SoC"]
"""
PUSHED = """
[[scheme]]
id = "motor-10hz"
kind = "periodic"
priority = 2
period_ms = 100
signals = ["MCU_MotorSpeed"]
"""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="tbox-svc-") as tmp:
        yield Path(tmp)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    (tmp_path / "broker").mkdir()
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def signing_key(short_dir: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pub = short_dir / "ops.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, pub


def _config(
    short_dir: Path, port: int, spec: BusSpec, pub: Path | None = None, **schemes: object
) -> AgentConfig:
    files = short_dir / "schemes.toml"
    files.write_text(SCHEMES)
    state = short_dir / "state"
    return AgentConfig(
        vehicle_id=VEHICLE,
        state_dir=state,
        buses=(BusConfig(spec, (Path(SAMPLE_VEHICLE_DBC),)),),
        queue=QueueConfig(state / "queue.db"),
        status=StatusConfig(short_dir / "status.sock"),
        mqtt=MqttConfig(host="127.0.0.1", port=port, keepalive_s=5, backoff_max_s=1.0),
        schemes=SchemesConfig(files=(files,), **schemes),  # type: ignore[arg-type]
        state=StateConfig(signals=("ESC_VehSpd", "VCU_Gear"), min_interval_ms=200),
        commands=CommandsConfig(trusted_keys=(("ops", pub),) if pub else ()),
        source="test",
    )


@contextlib.asynccontextmanager
async def _vehicle(spec: BusSpec) -> AsyncIterator[None]:
    database = load_dbc(SAMPLE_VEHICLE_DBC).database
    model = VehicleModel(load_scenario("city"), seed=1)
    generator = TrafficGenerator({"can0": [database]}, model, seed=1, start_time=time.time())
    async with BusSink(spec) as sink, SimulationRunner(generator, [sink]) as runner:
        runner.start()
        yield


class _Backend:
    """A subscriber to everything the vehicle publishes, decoding as a backend would."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.telemetry: list[tuple[int, str, float, dict[str, object]]] = []
        self.results: list[CommandResult] = []
        self.states: list[StateUpdate] = []
        self.client: aiomqtt.Client | None = None

    async def run(self, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.port, identifier="backend") as client:
            self.client = client
            await client.subscribe(PREFIX + "#", qos=1)
            ready.set()
            async for message in client.messages:
                topic = str(message.topic)[len(PREFIX) :]
                payload = message.payload
                assert isinstance(payload, bytes)
                if topic == "telemetry":
                    batch = decode_batch(payload)
                    for record in batch.records:
                        values: dict[str, object] = {s.signal: s.value for s in samples_of(record)}
                        self.telemetry.append(
                            (batch.sequence, record.scheme_id, record.trigger_time_us / 1e6, values)
                        )
                elif topic.endswith("/result"):
                    self.results.append(CommandResult.FromString(payload))
                elif topic == "state":
                    self.states.append(StateUpdate.FromString(payload))

    async def command(self, key: Ed25519PrivateKey, kind: str, body: bytes) -> CommandResult:
        assert self.client is not None
        command = make_command(kind, body, vehicle_id=VEHICLE)
        before = len(self.results)
        await self.client.publish(PREFIX + f"cmd/{kind}", sign_command(key, "ops", command), qos=1)
        async with asyncio.timeout(10):
            while len(self.results) == before:  # noqa: ASYNC110 - results arrive in another task
                await asyncio.sleep(0.02)
        result = self.results[-1]
        assert result.command_id == command.command_id
        return result


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


async def _until(predicate: object, within: float = 15.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling counters of other components
            await asyncio.sleep(0.05)


def _spec(name: str) -> BusSpec:
    return parse_bus_url(f"virtual://svc-{name}-{time.monotonic_ns()}?name=can0")


async def test_simulator_to_backend_with_state_and_status(
    short_dir: Path, broker: MosquittoBroker
) -> None:
    spec = _spec("flow")
    config = _config(short_dir, broker.port, spec)
    service = AgentService(config)
    async with _backend(broker.port) as backend, running(service), _vehicle(spec):
        await _until(lambda: len(backend.telemetry) >= 10 and backend.states)
        reader, writer = await asyncio.open_unix_connection(str(config.status.socket))
        status = json.loads(await reader.readline())
        writer.close()
    # Periodic records every 200 ms of bus time, each with both signals, speeds plausible.
    records = [r for r in backend.telemetry if r[1] == "speed-5hz"]
    times = [r[2] for r in records]
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps and all(g == pytest.approx(0.2, abs=1e-3) for g in gaps), gaps
    both = {"ESC_VehSpd", "BMS_SoC"}
    for index, (_, _, _, values) in enumerate(records):
        # The first tick may come before BMS_SoC's first frame (every 100 ms) has arrived.
        assert set(values) == both or (index == 0 and set(values) < both), (index, values)
        if "ESC_VehSpd" in values:
            assert 0 <= float(values["ESC_VehSpd"]) < 200  # type: ignore[arg-type]
    state = backend.states[-1]
    assert state.vehicle_id == VEHICLE
    assert {s.signal for s in state.signals} == {"ESC_VehSpd", "VCU_Gear"}
    assert status["vehicle_id"] == VEHICLE
    assert status["uplink"]["link"] == "connected"
    assert status["buses"]["can0"]["frames"] > 0
    assert status["pipeline"]["records"] >= 10
    assert status["schemes"] == {"active": 1, "ids": ["speed-5hz"], "source": "files"}
    # Staged shutdown removed the status socket and closed the queue file cleanly.
    assert not config.status.socket.exists()
    assert config.queue.path.exists()


async def test_retained_state_reaches_a_late_subscriber(
    short_dir: Path, broker: MosquittoBroker
) -> None:
    spec = _spec("state")
    service = AgentService(_config(short_dir, broker.port, spec))
    async with running(service), _vehicle(spec):
        await _until(lambda: service.snapshot()["pipeline"]["state_updates"] > 0)
        await asyncio.sleep(0.5)
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="late") as client:
        await client.subscribe(PREFIX + "state", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert message.retain
    assert isinstance(message.payload, bytes)
    update = StateUpdate.FromString(message.payload)
    assert {s.signal for s in update.signals} == {"ESC_VehSpd", "VCU_Gear"}


async def test_commands_answered_and_schemes_pushed(
    short_dir: Path, broker: MosquittoBroker, signing_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, pub = signing_key
    spec = _spec("cmd")
    config = _config(short_dir, broker.port, spec, pub)
    service = AgentService(config)
    async with _backend(broker.port) as backend, running(service), _vehicle(spec):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        ping = await backend.command(key, "ping", b"")
        assert (ping.status, ping.message) == (CommandResult.STATUS_OK, "pong")

        forged = await backend.command(Ed25519PrivateKey.generate(), "ping", b"")
        assert (forged.status, forged.error_code) == (
            CommandResult.STATUS_REJECTED,
            "bad_signature",
        )

        unknown = await backend.command(key, "reboot", b"")
        assert (unknown.status, unknown.error_code) == (
            CommandResult.STATUS_REJECTED,
            "unsupported_kind",
        )

        bad = await backend.command(
            key, "schemes", PUSHED.replace("MCU_MotorSpeed", "NoSuch").encode()
        )
        assert (bad.status, bad.error_code) == (CommandResult.STATUS_FAILED, "invalid_body")
        assert "NoSuch" in bad.message
        assert not config.pushed_schemes_file.exists()

        syntax = await backend.command(key, "schemes", b"[[scheme]\nid=")
        assert (syntax.status, syntax.error_code) == (CommandResult.STATUS_FAILED, "invalid_body")

        pushed = await backend.command(key, "schemes", PUSHED.encode())
        assert pushed.status == CommandResult.STATUS_OK, pushed.message
        assert "motor-10hz" in pushed.message
        await _until(lambda: any(r[1] == "motor-10hz" for r in backend.telemetry))
        assert config.pushed_schemes_file.read_text() == PUSHED
        stats = service.snapshot()["commands"]
        assert stats["accepted"] == 2 and stats["rejected"] == 2 and stats["failed"] == 2
        # Answers never come back to the vehicle as commands ("no local" + topic check).
        assert stats["received"] == 6
        marker = len(backend.telemetry)

    # Restarted, the agent collects what it last confirmed: the pushed set.
    spec = _spec("cmd2")
    config = _config(short_dir, broker.port, spec, pub)
    service = AgentService(config)
    async with _backend(broker.port) as backend, running(service), _vehicle(spec):
        await _until(lambda: len(backend.telemetry) >= 3)
        assert {r[1] for r in backend.telemetry} == {"motor-10hz"}
        assert service.snapshot()["schemes"]["source"] == "pushed"
    assert marker > 0


async def test_unknown_scheme_signal_stops_the_start(short_dir: Path) -> None:
    spec = _spec("bad")
    config = _config(short_dir, 1, spec)
    (short_dir / "schemes.toml").write_text(PUSHED.replace("MCU_MotorSpeed", "NoSuch"))
    service = AgentService(config)
    with pytest.raises(Exception, match="NoSuch"):
        async with running(service):
            pass


async def test_records_stay_queued_while_the_broker_is_down(
    short_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "broker").mkdir()
    broker = MosquittoBroker(tmp_path / "broker")  # not started yet: the link is down
    spec = _spec("down")
    service = AgentService(_config(short_dir, broker.port, spec))
    try:
        async with running(service), _vehicle(spec):
            await _until(lambda: service.snapshot()["queue"]["items"] >= 5)
            assert service.snapshot()["uplink"]["link"] == "disconnected"
            backlog = service.snapshot()["queue"]["items"]
            await asyncio.to_thread(broker.start)
            await _until(lambda: service.snapshot()["queue"]["items"] == 0)
            assert service.snapshot()["uplink"]["records"] >= backlog
    finally:
        broker.kill()


async def test_a_command_sent_while_the_agent_is_offline_is_answered_after_restart(
    short_dir: Path, broker: MosquittoBroker, signing_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, pub = signing_key
    config = _config(short_dir, broker.port, _spec("offline"), pub)
    service = AgentService(config)
    async with running(service):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
    # The agent is gone; its MQTT 5 session (session_expiry_s, default 1 day) is kept.
    async with _backend(broker.port) as backend:
        assert backend.client is not None
        command = make_command("ping", b"", vehicle_id=VEHICLE, command_id="while-offline")
        await backend.client.publish(PREFIX + "cmd/ping", sign_command(key, "ops", command), qos=1)
        service = AgentService(
            replace(config, buses=(BusConfig(_spec("back"), config.buses[0].dbc),))
        )
        async with running(service):
            await _until(lambda: bool(backend.results))
    [result] = backend.results
    assert (result.command_id, result.message) == ("while-offline", "pong")

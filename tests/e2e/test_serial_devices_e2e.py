"""Serial devices end to end: simulated GNSS, modem and slcan adapter on pseudo-terminals → the
agent (the same code as ``tbox run``) → a real Mosquitto → a backend decoding what arrives."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.busurl import BusSpec, parse_bus_url
from agent.config.model import (
    AgentConfig,
    BusConfig,
    GnssConfig,
    ModemConfig,
    MqttConfig,
    QueueConfig,
    SchemesConfig,
    StatusConfig,
)
from agent.service import AgentService, running
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from sim import TrafficGenerator, VehicleModel, load_scenario
from sim.gnss_twin import GnssFaults, GnssTwin
from sim.modem_twin import ModemTwin
from sim.runner import BusSink, SimulationRunner
from sim.slcan_twin import SlcanTwin
from tests.agent.test_service import _Backend, _backend, _until
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

VEHICLE = "VIN-S1"  # the backend helper subscribes to this vehicle's topics

DEVICE_SCHEMES = """
[[scheme]]
id = "where-2hz"
kind = "periodic"
period_ms = 500
signals = ["gnss:GNSS.speed", "gnss:GNSS.latitude", "ESC_VehSpd", "modem:MODEM.rssi_dbm"]

[[scheme]]
id = "registration"
kind = "on_change"
signals = ["modem:MODEM.registration"]
"""

CAN_SCHEMES = """
[[scheme]]
id = "speed-5hz"
kind = "periodic"
period_ms = 200
signals = ["ESC_VehSpd"]
"""


@pytest.fixture
def work() -> Iterator[Path]:
    # Unix socket paths are short; pytest's tmp_path may not be.
    with tempfile.TemporaryDirectory(prefix="tbox-dev-") as tmp:
        yield Path(tmp)


@pytest.fixture
def broker(work: Path) -> Iterator[MosquittoBroker]:
    (work / "broker").mkdir()
    with MosquittoBroker(work / "broker") as b:
        yield b


def _config(work: Path, port: int, spec: BusSpec, schemes: str, **devices: Any) -> AgentConfig:
    files = work / "schemes.toml"
    files.write_text(schemes)
    state = work / "state"
    return AgentConfig(
        vehicle_id=VEHICLE,
        state_dir=state,
        buses=(BusConfig(spec, (Path(SAMPLE_VEHICLE_DBC),)),),
        queue=QueueConfig(state / "queue.db"),
        status=StatusConfig(work / "status.sock"),
        mqtt=MqttConfig(host="127.0.0.1", port=port, keepalive_s=5, backoff_max_s=1.0),
        schemes=SchemesConfig(files=(files,)),
        source="test",
        **devices,
    )


@contextlib.asynccontextmanager
async def _traffic(spec: BusSpec, model: VehicleModel) -> AsyncIterator[None]:
    database = load_dbc(SAMPLE_VEHICLE_DBC).database
    generator = TrafficGenerator({"can0": [database]}, model, seed=1, start_time=time.time())
    async with BusSink(spec) as sink, SimulationRunner(generator, [sink]) as runner:
        runner.start()
        yield


def _virtual(name: str) -> BusSpec:
    return parse_bus_url(f"virtual://dev-{name}-{time.monotonic_ns()}?name=can0")


def _records(backend: _Backend, scheme: str) -> list[dict[str, object]]:
    return [values for _, scheme_id, _, values in backend.telemetry if scheme_id == scheme]


async def test_gnss_and_modem_become_signals_through_faults_unplugs_and_a_lost_network(
    work: Path, broker: MosquittoBroker
) -> None:
    spec = _virtual("gnss")
    model = VehicleModel(load_scenario("city"), seed=1)
    faults = GnssFaults(garbage=0.08, truncated=0.05, bad_checksum=0.05)
    config = _config(
        work,
        broker.port,
        spec,
        DEVICE_SCHEMES,
        gnss=GnssConfig(str(work / "gnss0"), silence_timeout_s=1.0, fix_timeout_s=3.0),
        modem=ModemConfig(str(work / "modem0"), poll_interval_s=0.5, response_timeout_s=0.4),
    )
    service = AgentService(config)
    async with (
        GnssTwin(model, rate_hz=5, faults=faults, seed=3, link=work / "gnss0") as gnss,
        ModemTwin(link=work / "modem0") as modem,
        _backend(broker.port) as backend,
        running(service),
        _traffic(spec, model),
    ):

        def devices() -> dict[str, Any]:
            found: dict[str, Any] = service.snapshot()["devices"]
            return found

        await _until(lambda: len(_records(backend, "where-2hz")) >= 6, within=30)
        # Broken sentences were counted and skipped; the receiver stayed usable.
        await _until(
            lambda: devices()["gnss"]["garbage"] > 0 and devices()["gnss"]["bad_checksum"] > 0
        )
        assert devices()["gnss"]["state"] == "ok"
        assert devices()["modem"]["state"] == "ok"

        # Pulled out and plugged back in: reported, reopened, values flow again.
        seen: set[str] = set()
        unplug = asyncio.create_task(gnss.unplug(2.0))
        while not unplug.done():
            seen.add(devices()["gnss"]["state"])
            await asyncio.sleep(0.05)
        await unplug
        assert seen & {"port_lost", "silent"}, seen
        await _until(lambda: devices()["gnss"]["state"] == "ok", within=20)
        assert devices()["gnss"]["reopens"] >= 1
        count = len(_records(backend, "where-2hz"))
        await _until(
            lambda: any("gnss:GNSS.speed" in r for r in _records(backend, "where-2hz")[count:]),
            within=20,
        )

        # The network drops: the change of registration is recorded, and so is the return.
        good = modem.network
        modem.set_network(good.dropped())
        await _until(
            lambda: {"modem:MODEM.registration": "searching"} in _records(backend, "registration")
        )
        modem.set_network(good)
        await _until(
            lambda: _records(backend, "registration")[-1] == {"modem:MODEM.registration": "home"}
        )

    # GNSS speed is the CAN speed of the same simulated vehicle (GNSS at 5 Hz lags a little).
    pairs = [
        (r["gnss:GNSS.speed"], r["ESC_VehSpd"])
        for r in _records(backend, "where-2hz")
        if "gnss:GNSS.speed" in r and "ESC_VehSpd" in r
    ]
    assert len(pairs) >= 6
    for gnss_kmh, can_kmh in pairs:
        assert isinstance(gnss_kmh, float) and isinstance(can_kmh, float | int)
        assert abs(gnss_kmh - can_kmh) < 6.0, pairs
    assert any(
        isinstance(r.get("modem:MODEM.rssi_dbm"), int) for r in _records(backend, "where-2hz")
    )


async def test_the_agent_reads_can_through_an_slcan_adapter(
    work: Path, broker: MosquittoBroker
) -> None:
    # The vehicle's bus on one side of the adapter; the agent on the other, through python-can's
    # own slcan driver on the adapter's serial port (C7: slcan:///dev/tty…).
    vehicle_bus = _virtual("slcan")
    model = VehicleModel(load_scenario("city"), seed=2)
    async with SlcanTwin(vehicle_bus.url, link=work / "ttyCAN0") as adapter:
        spec = parse_bus_url(f"slcan://{work / 'ttyCAN0'}?bitrate=500000&sleep_after_open=0.1")
        assert spec.name == "ttyCAN0"
        config = _config(work, broker.port, spec, CAN_SCHEMES)
        service = AgentService(config)
        async with _backend(broker.port) as backend, running(service), _traffic(vehicle_bus, model):
            await _until(lambda: len(_records(backend, "speed-5hz")) >= 10, within=30)
            bus = service.snapshot()["buses"]["ttyCAN0"]
        assert adapter.frames.to_host > 0
    assert bus["open"] and bus["frames"] > 0 and bus["errors"] == 0
    speeds = [r["ESC_VehSpd"] for r in _records(backend, "speed-5hz")]
    assert all(isinstance(v, float | int) and 0 <= v < 200 for v in speeds)

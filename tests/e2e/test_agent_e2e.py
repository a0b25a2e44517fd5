"""`tbox run` end to end, every part a real process: the simulator serving socketcand, the agent,
Mosquitto, and a backend subscriber.

* every batch decodes with bindings generated afresh from the shipped ``.proto`` files, in a
  Python process that never imports the agent (what a backend author does);
* the broker SIGKILLed and restarted mid-run: no periodic record is missing, and a record that
  arrives twice arrives in batches with the same sequence number;
* the agent SIGKILLed mid-run and restarted: every record its queue had accepted is delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.telemetry_codec import decode_batch, samples_of
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary
from tests.sim_server import start_sim_server, stop_sim_server

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

REPO = Path(__file__).resolve().parents[2]
VEHICLE = "VIN-E2E"
PERIOD_S = 0.25
SCHEMES = f"""
[[scheme]]
id = "speed"
kind = "periodic"
period_ms = {int(PERIOD_S * 1000)}
signals = ["ESC_VehSpd", "MCU_MotorSpeed"]
"""
# Mosquitto saves its sessions on every change, so a backend's persistent session (and what is
# queued for it) survives the broker's SIGKILL: the test then sees everything the agent published.
PERSISTENT = (
    "persistence true\npersistence_location {dir}/\nautosave_interval 1\nautosave_on_changes true\n"
)


@pytest.fixture
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tbox-e2e-") as tmp:  # short: a unix socket lives here
        yield Path(tmp)


def _write_config(workdir: Path, sim_port: int, broker_port: int) -> Path:
    (workdir / "schemes.toml").write_text(SCHEMES)
    config = workdir / "agent.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [vehicle]
            id = "{VEHICLE}"
            state_dir = "{workdir / "state"}"

            [[bus]]
            url = "socketcand://127.0.0.1:{sim_port}/can0"

            [schemes]
            files = ["schemes.toml"]

            [state]
            signals = ["ESC_VehSpd"]

            [mqtt]
            host = "127.0.0.1"
            port = {broker_port}
            keepalive_s = 5
            backoff_initial_s = 0.5
            backoff_max_s = 1.0

            [status]
            socket = "{workdir / "status.sock"}"
            """
        )
    )
    return config


def _start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


class _Backend:
    """Raw telemetry payloads as received, over a persistent MQTT 5 session."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.payloads: list[bytes] = []
        self.connected = asyncio.Event()

    def records(self) -> list[tuple[int, str, float]]:
        """(batch sequence, scheme id, trigger time) of every record received."""
        out = []
        for payload in self.payloads:
            batch = decode_batch(payload)
            for record in batch.records:
                assert record.series and samples_of(record)
                out.append((batch.sequence, record.scheme_id, record.trigger_time_us / 1e6))
        return out

    async def run(self) -> None:
        expiry = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        expiry.SessionExpiryInterval = 3600
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    self.port,
                    identifier="e2e-backend",
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    properties=expiry,
                ) as client:
                    await client.subscribe(f"vehicles/{VEHICLE}/telemetry", qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        assert isinstance(message.payload, bytes)
                        self.payloads.append(message.payload)
            except aiomqtt.MqttError:
                self.connected.clear()
                await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def _backend(port: int) -> AsyncIterator[_Backend]:
    backend = _Backend(port)
    task = asyncio.create_task(backend.run())
    try:
        async with asyncio.timeout(10):
            await backend.connected.wait()
        yield backend
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _until(predicate: Callable[[], object], within: float = 30.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling other processes' effects
            await asyncio.sleep(0.05)


def _assert_contiguous(times: list[float]) -> None:
    ordered = sorted(set(times))
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(ordered)]
    assert all(g == pytest.approx(PERIOD_S, abs=1e-3) for g in gaps), gaps


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
            raise AssertionError(f"agent ignored SIGTERM:\n{log.read_text()}") from None
    assert proc.returncode == 0, log.read_text()


def _independent_decode(payloads: list[bytes], workdir: Path) -> list[dict[str, object]]:
    """Decode *payloads* in a fresh Python with bindings generated from the shipped .proto."""
    proto_root = REPO / "agent" / "proto"
    out = workdir / "gen"
    out.mkdir()
    protos = sorted(
        str(p.relative_to(proto_root)) for p in (proto_root / "tbox/v1").glob("*.proto")
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"--python_out={out}",
            *protos,
        ],
        check=True,
    )
    data = workdir / "payloads"
    data.mkdir()
    for i, payload in enumerate(payloads):
        (data / f"{i:06d}.bin").write_bytes(payload)
    script = textwrap.dedent(
        """
        import json, pathlib, sys
        import zstandard
        from tbox.v1 import telemetry_pb2
        assert "agent" not in sys.modules
        out = []
        for path in sorted(pathlib.Path(sys.argv[1]).iterdir()):
            batch = telemetry_pb2.TelemetryBatch()
            batch.ParseFromString(zstandard.ZstdDecompressor().decompress(path.read_bytes()))
            out.append({"vehicle_id": batch.vehicle_id, "sequence": batch.sequence,
                        "schema_version": batch.schema_version,
                        "records": [[r.scheme_id, r.trigger_time_us,
                                     sorted(s.signal for s in r.series)] for r in batch.records]})
        print(json.dumps(out))
        """
    )
    result = subprocess.run(
        [sys.executable, "-s", "-c", script, str(data)],
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(out), "PATH": os.environ.get("PATH", "")},
        cwd=out,
    )
    decoded: list[dict[str, object]] = json.loads(result.stdout)
    return decoded


async def test_broker_killed_and_restarted_and_independent_decoding(
    workdir: Path, tmp_path: Path
) -> None:
    (tmp_path / "broker").mkdir()
    broker = MosquittoBroker(tmp_path / "broker", extra_config=PERSISTENT.format(dir=tmp_path))
    broker.start()
    sim, sim_port = start_sim_server(tmp_path, "--quiet")
    log = workdir / "agent.log"
    agent = _start_agent(_write_config(workdir, sim_port, broker.port), log)
    try:
        async with _backend(broker.port) as backend:
            await _until(lambda: len(backend.records()) >= 8)
            broker.kill()
            await asyncio.sleep(3)  # records pile up in the agent's queue
            broker.start()
            await _until(backend.connected.is_set)
            before = len(backend.records())
            await _until(lambda: len(backend.records()) >= before + 20)
            _stop(agent, log)
        records = backend.records()
    finally:
        agent.kill()
        stop_sim_server(sim)
        broker.kill()
    _assert_contiguous([t for _, _, t in records])
    # A record that came twice came in batches with the same sequence number.
    first_seen: dict[float, int] = {}
    for sequence, _, t in records:
        assert first_seen.setdefault(t, sequence) == sequence
    # Time span: the outage is inside the received series, not at its edge.
    assert max(t for *_, t in records) - min(t for *_, t in records) > 5

    decoded = _independent_decode(backend.payloads, workdir)
    assert len(decoded) == len(backend.payloads)
    assert {d["vehicle_id"] for d in decoded} == {VEHICLE}
    assert {d["schema_version"] for d in decoded} == {1}
    flat = [r for d in decoded for r in d["records"]]  # type: ignore[attr-defined]
    assert len(flat) == len(records)
    # A periodic record carries the values known at its tick: one that comes before the
    # motor's first frame after the agent started has only the speed.
    both = ["ESC_VehSpd", "MCU_MotorSpeed"]
    assert all(r[0] == "speed" and r[2] in (both, ["ESC_VehSpd"], ["MCU_MotorSpeed"]) for r in flat)
    assert all(r[2] == both for r in flat[2:]), [r[2] for r in flat[:5]]


async def test_agent_killed_and_restarted_delivers_what_its_queue_accepted(
    workdir: Path, tmp_path: Path
) -> None:
    (tmp_path / "broker").mkdir()
    broker = MosquittoBroker(tmp_path / "broker")  # down while the agent first runs
    sim, sim_port = start_sim_server(tmp_path, "--quiet")
    config = _write_config(workdir, sim_port, broker.port)
    log = workdir / "agent.log"
    queue_db = workdir / "state" / "queue.db"
    agent = _start_agent(config, log)
    try:

        def stored() -> int:
            # The queue holds its file exclusively (one agent per file): ask the agent instead.
            try:
                with socket.socket(socket.AF_UNIX) as client:
                    client.connect(str(workdir / "status.sock"))
                    status = json.loads(client.makefile().readline())
            except (OSError, ValueError):
                return 0
            return int(status.get("queue", {}).get("items", 0))

        await _until(lambda: stored() >= 12)
        agent.send_signal(signal.SIGKILL)  # a power cut, mid-run
        agent.wait(10)
        with contextlib.closing(sqlite3.connect(queue_db)) as db:
            rows = db.execute("SELECT payload FROM items").fetchall()
        from agent.proto.tbox.v1 import Record

        accepted = {Record.FromString(bytes(row[0])).trigger_time_us / 1e6 for row in rows}
        assert len(accepted) >= 12

        broker.start()
        async with _backend(broker.port) as backend:
            agent = _start_agent(config, log)
            await _until(lambda: accepted <= {t for *_, t in backend.records()}, within=30)
            _stop(agent, log)
    finally:
        agent.kill()
        stop_sim_server(sim)
        broker.kill()


# --- every crash point, in the whole agent ------------------------------------------------------

# Points that only a damaged or full queue reaches; tests/agent/test_upload_queue.py crashes the
# queue at each of them with the conditions that reach them.
ONLY_WITH_A_DAMAGED_OR_FULL_QUEUE = {
    "queue.after_evict",
    "queue.after_move_aside",
    "queue.after_purge_commit",
    "queue.before_purge_commit",
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """One broker and one simulator for every crash case: (broker port, simulator port)."""
    base = tmp_path_factory.mktemp("rig")
    (base / "broker").mkdir()
    with MosquittoBroker(base / "broker") as broker:
        sim, sim_port = start_sim_server(base, "--quiet")
        try:
            yield broker.port, sim_port
        finally:
            stop_sim_server(sim)


# Points reached once per run (a new queue file, the first sequence reservation): crash at once.
ONCE_PER_RUN = {
    "queue.before_create_commit",
    "sequence.reserve_written",
    "sequence.reserve_renamed",
}


# The telemetry path's points (queue, batch sequence, uplink): crashed here with the whole agent.
# Updates and flashing have crash tests of their own that enumerate their points the same way.
TELEMETRY_PREFIXES = ("queue.", "sequence.", "uplink.")
OWN_CRASH_TESTS = {
    "slots.": "tests/ota/test_ab_installer.py",
    "campaign.": "tests/ota/test_campaign_crash.py",
    "download.": "tests/ota/test_fetcher.py",
    "update_client.": "tests/ota/test_update_client.py",
    "trusted_time.": "tests/ota/test_trusted_time.py",
    "ecu.": "tests/ota/test_ecu_crash.py",
}


def _crash_point_names() -> list[str]:
    from agent.crashpoints import all_crashpoints

    return [
        p.name
        for p in all_crashpoints()
        if p.name.startswith(TELEMETRY_PREFIXES) and p.name not in ONLY_WITH_A_DAMAGED_OR_FULL_QUEUE
    ]


def test_every_crash_point_has_a_crash_test() -> None:
    from agent.crashpoints import all_crashpoints

    repo = Path(__file__).resolve().parents[2]
    for point in all_crashpoints():
        if point.name.startswith(TELEMETRY_PREFIXES):
            continue
        prefix = next((p for p in OWN_CRASH_TESTS if point.name.startswith(p)), None)
        assert prefix is not None, f"crash point {point.name} is crashed by no test"
        test = (repo / OWN_CRASH_TESTS[prefix]).read_text()
        # Those tests read their points from the registry by prefix, never from a fixed list.
        assert repr(prefix) in test or f'"{prefix}' in test, (point.name, OWN_CRASH_TESTS[prefix])


def test_the_other_crash_points_are_crashed_by_the_queue_tests() -> None:
    from agent.crashpoints import all_crashpoints
    from tests.agent.test_upload_queue import QUEUE_POINTS

    assert set(QUEUE_POINTS) >= ONLY_WITH_A_DAMAGED_OR_FULL_QUEUE
    assert {p.name for p in all_crashpoints()} >= ONLY_WITH_A_DAMAGED_OR_FULL_QUEUE


@pytest.mark.parametrize("name", _crash_point_names())
async def test_no_crash_point_loses_an_accepted_record(
    name: str, rig: tuple[int, int], workdir: Path
) -> None:
    broker_port, sim_port = rig
    config = _write_config(workdir, sim_port, broker_port)
    # A vehicle per case, so that cases sharing the broker never see each other's batches.
    vehicle = f"VIN-CP-{abs(hash(name)) % 10**8}"
    config.write_text(config.read_text().replace(VEHICLE, vehicle))
    log = workdir / "agent.log"
    with log.open("ab") as out:
        agent = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for in a thread
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=out,
            env={**os.environ, "TBOX_CRASHPOINT": f"{name}:{1 if name in ONCE_PER_RUN else 2}"},
        )
    try:
        code = await asyncio.to_thread(agent.wait, 20)
    finally:
        agent.kill()
    assert code == 137, log.read_text()
    queue_db = workdir / "state" / "queue.db"
    from agent.proto.tbox.v1 import Record

    with contextlib.closing(sqlite3.connect(queue_db)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        # No table: the crash came before the new file's schema was committed; nothing accepted.
        rows = db.execute("SELECT payload FROM items").fetchall() if "items" in tables else []
    accepted = {Record.FromString(bytes(row[0])).trigger_time_us for row in rows}

    topic = f"vehicles/{vehicle}/telemetry"
    received: set[int] = set()
    async with aiomqtt.Client("127.0.0.1", broker_port, identifier=f"cp-{vehicle}") as client:
        await client.subscribe(topic, qos=1)
        agent = _start_agent(config, log)
        try:
            async with asyncio.timeout(30):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    batch = decode_batch(message.payload)
                    received.update(r.trigger_time_us for r in batch.records)
                    if accepted <= received:  # and the restarted agent delivers again
                        break
        finally:
            _stop(agent, log)
    assert accepted <= received

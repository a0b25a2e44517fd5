"""The uplink against a real Mosquitto: delivery, a broker killed and restarted, stats."""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest

from agent import crashpoints
from agent.telemetry_codec import decode_batch, encode_record
from agent.uplink import Uplink, UplinkConfig
from agent.upload_queue import QueueError, QueueItem, UploadQueue
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary
from tests.pki import issue

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

T0 = 1_700_000_000.0
VEHICLE = "VIN-U1"
TOPIC = f"vehicles/{VEHICLE}/telemetry"
REPO = Path(__file__).resolve().parents[2]

# The agent's uplink in a child process, run until a crash point ends it.
CHILD = f"""
import asyncio, sys
from pathlib import Path
from agent.upload_queue import UploadQueue
from agent.uplink import Uplink, UplinkConfig

async def main(db, port, sequence):
    config = UplinkConfig(
        host="127.0.0.1", port=int(port), vehicle_id={VEHICLE!r}, sequence_file=Path(sequence),
        batch_max_bytes=512, take_max_bytes=2048,
    )
    async with UploadQueue(db) as queue, Uplink(config, queue):
        await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:]))
"""


@dataclass(frozen=True, slots=True)
class Sample:
    signal: str
    t: float
    value: float | int | str


@dataclass(frozen=True, slots=True)
class Rec:
    scheme_id: str
    priority: int
    trigger_time: float
    samples: tuple[Sample, ...]


def _record(n: int, priority: int = 3) -> Rec:
    # The record's number is its SEQ sample, so a decoded record says which one it is.
    t = T0 + n
    samples = (Sample("SEQ", t, n), Sample("SPEED", t, 10.0 + n * 0.5), Sample("GEAR", t, n % 6))
    return Rec("periodic_1s", priority, t, samples)


def _items(numbers: range, priority: int = 3) -> list[QueueItem]:
    return [
        QueueItem("telemetry", priority, encode_record(_record(n, priority)), time.time())
        for n in numbers
    ]


def _config(tmp_path: Path, port: int, **kw: object) -> UplinkConfig:
    return UplinkConfig(
        host="127.0.0.1",
        port=port,
        vehicle_id=VEHICLE,
        sequence_file=tmp_path / "sequence",
        **kw,  # type: ignore[arg-type]
    )


@dataclass
class Received:
    """(sequence, [record numbers]) per batch, as an independent subscriber decoded them."""

    batches: list[tuple[int, list[int]]]
    values: dict[int, tuple[float, int]]

    def numbers(self) -> list[int]:
        return [n for _, ns in self.batches for n in ns]


async def _subscribe(port: int, received: Received, ready: asyncio.Event) -> None:
    """Collect telemetry batches, reconnecting whenever the broker goes away."""
    while True:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="test-backend") as sub:
                await sub.subscribe(f"vehicles/{VEHICLE}/#", qos=1)
                ready.set()
                async for message in sub.messages:
                    assert str(message.topic) == TOPIC
                    assert isinstance(message.payload, bytes)
                    batch = decode_batch(message.payload)
                    assert batch.vehicle_id == VEHICLE
                    numbers = []
                    for rec in batch.records:
                        series = {s.signal: s for s in rec.series}
                        n = series["SEQ"].ints.values[0]
                        numbers.append(n)
                        received.values[n] = (
                            series["SPEED"].doubles.values[0],
                            series["GEAR"].ints.values[0],
                        )
                    received.batches.append((batch.sequence, numbers))
        except aiomqtt.MqttError:
            ready.clear()
            await asyncio.sleep(0.02)


@pytest.fixture
async def backend(tmp_path: Path) -> AsyncIterator[tuple[MosquittoBroker, Received, asyncio.Event]]:
    (tmp_path / "broker").mkdir()
    with MosquittoBroker(tmp_path / "broker") as broker:
        received = Received([], {})
        ready = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(_subscribe(broker.port, received, ready))
            await _until(ready.is_set)
            yield broker, received, ready
            task.cancel()


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for *condition* (a deadline against hangs, not a timing assertion)."""
    async with asyncio.timeout(within):
        # Polling: the conditions read other components' counters, which have no event to await.
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_records_arrive_decoded_with_equal_values(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event], mqtt5: bool
) -> None:
    broker, received, _ = backend
    async with (
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(_config(tmp_path, broker.port, mqtt5=mqtt5), queue) as uplink,
    ):
        await queue.put(_items(range(200)))
        uplink.notify()
        await _until(lambda: len(set(received.numbers())) == 200)
        await _until(lambda: queue.stats.items == 0)
        assert sorted(received.numbers()) == list(range(200))
        for n in range(200):
            assert received.values[n] == (10.0 + n * 0.5, n % 6)
        stats = uplink.stats
        assert stats.link == "connected" and stats.protocol == ("5" if mqtt5 else "3.1.1")
        assert stats.records == 200 and stats.batches == len(received.batches)
        assert stats.reconnects == 0 and stats.malformed == 0
        sequences = [s for s, _ in received.batches]
        assert sequences == sorted(set(sequences))


async def test_a_failing_link_quality_source_does_not_stop_the_uplink(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, received, _ = backend

    def broken() -> dict[str, object]:
        raise OSError("modem port gone")

    async with (
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(_config(tmp_path, broker.port), queue, link_quality=broken) as uplink,
    ):
        await queue.put(_items(range(5)))
        uplink.notify()
        await _until(lambda: len(received.numbers()) == 5)
        assert [(e.event, dict(e.quality)) for e in uplink.stats.link_events] == [("connected", {})]


async def test_most_urgent_first_and_unbatchable_dropped(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, received, _ = backend
    async with UploadQueue(tmp_path / "q.db") as queue:
        # Queued before the uplink starts, so that one take sees them all.
        await queue.put(_items(range(0, 5), priority=7))
        await queue.put([QueueItem("telemetry", 0, b"\xff\xff not a record", time.time())])
        await queue.put(_items(range(5, 10), priority=1))
        async with Uplink(_config(tmp_path, broker.port), queue) as uplink:
            await _until(lambda: len(received.numbers()) == 10)
            await _until(lambda: queue.stats.items == 0)
            assert received.numbers() == [5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
            assert uplink.stats.malformed == 1 and uplink.stats.records == 10


async def test_broker_killed_and_restarted_loses_nothing(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, received, ready = backend
    # Small batches, so that the kill lands mid-run with batches still queued.
    config = _config(
        tmp_path, broker.port, batch_max_bytes=512, take_max_bytes=2048, backoff_initial_s=0.5
    )
    total = 600
    during = 100  # records accepted while the broker is down: the outage always has a backlog
    polls = iter(range(-60, -200, -10))

    def link_quality() -> dict[str, object]:
        return {"rssi_dbm": next(polls), "access_technology": "E-UTRAN"}

    async with (
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(config, queue, link_quality=link_quality) as uplink,
    ):
        await queue.put(_items(range(total - during)))
        uplink.notify()
        await _until(lambda: len(received.batches) >= 3)
        broker.kill()
        await _until(lambda: uplink.stats.link == "disconnected")
        await queue.put(_items(range(total - during, total)))
        uplink.notify()
        await _until(lambda: uplink.stats.connect_failures >= 1)
        assert queue.stats.items >= during
        # The subscriber reconnects within milliseconds; the uplink waits out its backoff
        # (≥ 0.4 s), so nothing it publishes after the restart is missed by the subscriber.
        broker.start()
        await _until(ready.is_set)
        await _until(lambda: queue.stats.items == 0)
        await _until(lambda: len(set(received.numbers())) == total)

        numbers = received.numbers()
        assert set(numbers) == set(range(total))
        # Duplicates only as whole batches carrying the same sequence number.
        by_sequence: dict[int, list[int]] = {}
        for sequence, ns in received.batches:
            assert by_sequence.setdefault(sequence, ns) == ns
        assert sorted(n for ns in by_sequence.values() for n in ns) == list(range(total))
        for n in range(total):
            assert received.values[n] == (10.0 + n * 0.5, n % 6)

        stats = uplink.stats
        assert stats.reconnects == 1 and stats.link == "connected"
        assert stats.records == total and stats.batches == len(by_sequence)
        # Every batch the subscriber saw was one publish: a first one or a counted resend.
        assert len(received.batches) <= stats.batches + stats.resent
        assert stats.last_error
        # The link's quality is on record at each connection and at the loss.
        events = [(e.event, e.quality.get("rssi_dbm"), bool(e.error)) for e in stats.link_events]
        assert events == [("connected", -60, False), ("lost", -70, True), ("connected", -80, False)]


async def test_crash_before_ack_loses_nothing(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, received, _ = backend
    total = 300
    db = tmp_path / "q.db"
    async with UploadQueue(db) as queue:
        await queue.put(_items(range(total)))
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(db),
        str(broker.port),
        str(tmp_path / "sequence"),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), crashpoints.ENV_VAR: "uplink.before_ack:3"},
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, err = await child.communicate()
    assert child.returncode == crashpoints.EXIT_STATUS, err.decode()
    # The third batch reached the broker (and the subscriber) but was never acked.
    await _until(lambda: len(received.batches) == 3)
    crashed = received.batches[2][1]
    sequences_before = [s for s, _ in received.batches]
    async with UploadQueue(db) as queue:
        remaining = total - len(received.batches[0][1]) - len(received.batches[1][1])
        assert queue.stats.items == remaining
        async with Uplink(_config(tmp_path, broker.port, batch_max_bytes=512), queue) as uplink:
            await _until(lambda: queue.stats.items == 0)
            await _until(lambda: uplink.stats.records == remaining)
    numbers = received.numbers()
    assert set(numbers) == set(range(total))
    # Only the crashed batch's records came twice (in a new batch: its grouping was in memory),
    # and the restarted counter never reused a sequence number.
    assert sorted(numbers) == sorted([*range(total), *crashed])
    later = [s for s, _ in received.batches[3:]]
    assert min(later) > max(sequences_before)


async def test_tls_with_client_certificate(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "ca", None)
    issue(pki, "server", ca, ip="127.0.0.1")
    issue(pki, "vehicle", ca)
    issue(pki, "other-ca", None)  # trusted by nobody: a server signed by it must be refused
    (tmp_path / "broker").mkdir()
    tls = (
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n" + ("user root\n" if os.geteuid() == 0 else "")
        # As root, Mosquitto drops to user "mosquitto", which cannot read pytest's private
        # temporary directory; this broker is a loopback test fixture, so it may stay root.
    )
    with MosquittoBroker(tmp_path / "broker", extra_config=tls) as broker:
        vehicle = {
            "tls_cert_file": pki / "vehicle.pem",
            "tls_key_file": pki / "vehicle.key",
        }
        subscriber_tls = ssl.create_default_context(cafile=str(pki / "ca.pem"))
        subscriber_tls.load_cert_chain(pki / "vehicle.pem", pki / "vehicle.key")
        async with (
            aiomqtt.Client(
                "127.0.0.1", broker.port, identifier="tls-backend", tls_context=subscriber_tls
            ) as sub,
            UploadQueue(tmp_path / "q.db") as queue,
        ):
            await sub.subscribe(TOPIC, qos=1)
            await queue.put(_items(range(10)))
            # A server whose certificate the configured CA did not sign: never connected.
            wrong = _config(tmp_path, broker.port, tls_ca_file=pki / "other-ca.pem", **vehicle)
            async with Uplink(wrong, queue) as uplink:
                await _until(lambda: uplink.stats.connect_failures >= 1)
                assert uplink.stats.link == "disconnected" and "CERTIFICATE" in (
                    uplink.stats.last_error.upper()
                )
            assert queue.stats.items == 10
            right = _config(tmp_path, broker.port, tls_ca_file=pki / "ca.pem", **vehicle)
            async with Uplink(right, queue) as uplink, asyncio.timeout(10):
                async for message in sub.messages:
                    assert isinstance(message.payload, bytes)
                    batch = decode_batch(message.payload)
                    assert [r.series[0].ints.values[0] for r in batch.records] == list(range(10))
                    break
                await _until(lambda: queue.stats.items == 0)
                assert uplink.stats.records == 10


async def test_a_failing_queue_ends_the_uplink_and_its_body(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, _, _ = backend
    queue = UploadQueue(tmp_path / "q.db")
    await queue.open()
    with pytest.raises(ExceptionGroup) as raised:
        async with Uplink(_config(tmp_path, broker.port), queue) as uplink:
            await _until(lambda: uplink.stats.link == "connected")
            await queue.aclose()
            uplink.notify()
            await asyncio.Event().wait()  # cancelled by the uplink's failure
    assert raised.group_contains(QueueError)


def test_uplink_crash_point_is_listed() -> None:
    names = {p.name for p in crashpoints.all_crashpoints()}
    assert "uplink.before_ack" in names


def test_config_rejects_long_keepalive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keepalive_s"):
        _config(tmp_path, 1883, keepalive_s=60)
    assert _config(tmp_path, 1883).topic_prefix == f"vehicles/{VEHICLE}/"


class _Mqtt311Only:
    """A TCP relay to a real broker that plays a broker without MQTT 5: it answers an MQTT 5
    CONNECT with CONNACK "unsupported protocol version" (0x84) and relays 3.1.1 connections."""

    def __init__(self, broker_port: int) -> None:
        self.broker_port = broker_port
        self.refused = 0
        self.relayed = 0
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> _Mqtt311Only:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # CONNECT: fixed header, remaining length (varint), then "\x00\x04MQTT" and the level.
        head = await reader.readexactly(1)
        length_bytes = b""
        while True:
            byte = await reader.readexactly(1)
            length_bytes += byte
            if not byte[0] & 0x80:
                break
        length = sum((b & 0x7F) << (7 * i) for i, b in enumerate(length_bytes))
        body = await reader.readexactly(length)
        if body[6] == 5:
            self.refused += 1
            writer.write(bytes([0x20, 0x03, 0x00, 0x84, 0x00]))  # CONNACK, reason 0x84
            await writer.drain()
            writer.close()
            return
        self.relayed += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.broker_port)
        up_writer.write(head + length_bytes + body)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_falls_back_to_mqtt311_when_the_broker_refuses_mqtt5(
    tmp_path: Path, backend: tuple[MosquittoBroker, Received, asyncio.Event]
) -> None:
    broker, received, _ = backend
    async with (
        _Mqtt311Only(broker.port) as relay,
        UploadQueue(tmp_path / "q.db") as queue,
        Uplink(_config(tmp_path, relay.port), queue) as uplink,
    ):
        await queue.put(_items(range(50)))
        uplink.notify()
        await _until(lambda: len(set(received.numbers())) == 50)
        await _until(lambda: queue.stats.items == 0)
        assert (relay.refused, relay.relayed) == (1, 1)
        stats = uplink.stats
        assert stats.protocol == "3.1.1" and stats.link == "connected"
        assert stats.connect_failures == 1 and stats.records == 50

"""The uplink against a Mosquitto that confines each vehicle to its own topics (TLS + ACL).

The broker identifies a client by the common name of its certificate (``use_identity_as_username``)
and allows a vehicle only ``vehicles/<its CN>/#`` through one ACL pattern; a ``backend`` user may
read every vehicle's topics. What Mosquitto 2.0 does with a client that oversteps, measured here:

* a subscription to another vehicle's topics is **granted** (SUBACK QoS 1 with MQTT 5 and 3.1.1
  alike); the read permission is checked per message instead, and none is delivered;
* a QoS 1 publish to another vehicle's topic is **dropped and acknowledged**: MQTT 5 gets a PUBACK
  with reason code 0x87 (not authorized), MQTT 3.1.1 a plain PUBACK indistinguishable from a
  success. aiomqtt ignores PUBACK reason codes: ``publish()`` returns normally in both cases.

The uplink therefore reads the reason code itself: with MQTT 5, an uplink whose vehicle id does
not match its certificate gets every batch refused (``PublishRefusedError``), keeps its records
queued and retries with backoff. With MQTT 3.1.1 (its fallback for brokers without MQTT 5) a
refusal cannot be told from a delivery: the records are acked and lost — a limit of the protocol,
pinned down here so that it stays visible.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from agent.schemes.model import CollectedRecord, Sample
from agent.telemetry_codec import decode_batch, encode_record
from agent.uplink import Uplink, UplinkConfig
from agent.upload_queue import QueueItem, UploadQueue
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary
from tests.pki import issue

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

T0 = 1_700_000_000.0
VEHICLES = ("VIN-A", "VIN-B")
# Mosquitto's ACL file: "pattern" lines apply to every user, %u being the client's username (here
# its certificate's CN); the backend's own entry follows its "user" line.
ACL = "pattern readwrite vehicles/%u/#\n\nuser backend\ntopic read vehicles/#\n"
PROBE = b"probe"
NOT_AUTHORIZED = 0x87
GRANTED_QOS1 = 1


@dataclass
class Pki:
    directory: Path

    def context(self, name: str) -> ssl.SSLContext:
        """A client TLS context presenting *name*'s certificate and trusting the test CA."""
        context = ssl.create_default_context(cafile=str(self.directory / "ca.pem"))
        context.load_cert_chain(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        return context


@dataclass
class Backend:
    """What the backend (reading ``vehicles/#``) received: raw messages and decoded records."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    records: dict[str, list[int]] = field(default_factory=dict)  # topic → record numbers

    def topics(self) -> set[str]:
        return {topic for topic, _ in self.messages}


@dataclass
class Setup:
    broker: MosquittoBroker
    pki: Pki
    backend: Backend
    tmp_path: Path

    def client(self, cert: str, identifier: str, *, mqtt5: bool = True) -> aiomqtt.Client:
        """A plain aiomqtt client presenting *cert*'s certificate."""
        return aiomqtt.Client(
            "127.0.0.1",
            self.broker.port,
            identifier=identifier,
            tls_context=self.pki.context(cert),
            protocol=aiomqtt.ProtocolVersion.V5 if mqtt5 else aiomqtt.ProtocolVersion.V311,
        )

    def config(self, vehicle_id: str, cert: str, *, mqtt5: bool = True) -> UplinkConfig:
        return UplinkConfig(
            host="127.0.0.1",
            port=self.broker.port,
            vehicle_id=vehicle_id,
            sequence_file=self.tmp_path / f"sequence-{vehicle_id}-{cert}",
            tls_ca_file=self.pki.directory / "ca.pem",
            tls_cert_file=self.pki.directory / f"{cert}.pem",
            tls_key_file=self.pki.directory / f"{cert}.key",
            batch_max_bytes=1024,  # several batches per test
            backoff_initial_s=0.2,
            mqtt5=mqtt5,
        )


def _items(numbers: range) -> list[QueueItem]:
    """Periodic-scheme records; record *n* carries n as its SEQ sample."""
    items = []
    for n in numbers:
        t = T0 + n
        samples = (
            Sample("SEQ", t, n),
            # Values that do not repeat, so that 100 records need several 1 KiB batches.
            *(
                Sample("ESC_VehicleSpeed.ESC_VehSpd", t + i * 0.1, (n * 7919 + i * 104_729) / 97)
                for i in range(10)
            ),
        )
        record = CollectedRecord("periodic-1s", 5, t, samples)
        items.append(QueueItem("telemetry", 5, encode_record(record), time.time()))
    return items


async def _backend(setup: Setup, subscribed: asyncio.Event) -> None:
    async with setup.client("backend", "acl-backend") as sub:
        await sub.subscribe("vehicles/#", qos=1)
        subscribed.set()
        async for message in sub.messages:
            assert isinstance(message.payload, bytes)
            topic = str(message.topic)
            setup.backend.messages.append((topic, message.payload))
            if topic.endswith("/telemetry"):
                batch = decode_batch(message.payload)
                numbers = [r.series[0].ints.values[0] for r in batch.records]
                setup.backend.records.setdefault(topic, []).extend(numbers)


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = issue(pki, "ca", None)
    issue(pki, "server", ca, ip="127.0.0.1")
    for name in (*VEHICLES, "backend"):
        issue(pki, name, ca)
    (tmp_path / "acl").write_text(ACL)
    (tmp_path / "broker").mkdir()
    config = (
        f"cafile {pki / 'ca.pem'}\ncertfile {pki / 'server.pem'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\n"
        # The later setting wins over MosquittoBroker's "allow_anonymous true".
        f"allow_anonymous false\nacl_file {tmp_path / 'acl'}\n"
        # As root, Mosquitto drops to user "mosquitto", which cannot read pytest's temporary
        # directory; this broker is a loopback test fixture, so it may stay root.
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    with MosquittoBroker(tmp_path / "broker", extra_config=config) as broker:
        result = Setup(broker, Pki(pki), Backend(), tmp_path)
        subscribed = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(_backend(result, subscribed))
            await _until(subscribed.is_set)
            yield result
            task.cancel()


async def _until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for *condition* (a deadline against hangs, not a timing assertion)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - other components' counters have no event
            await asyncio.sleep(0.01)


async def _probe(setup: Setup, topic: str) -> None:
    """Publish PROBE to *topic* as VIN-A and wait until the backend has it.

    Mosquitto handles publishes one at a time and forwards them in order, so anything published
    before the probe that the backend was ever going to receive has arrived once the probe has.
    """
    async with setup.client("VIN-A", "acl-prober") as prober:
        await prober.publish(topic, PROBE, qos=1)
    await _until(lambda: (topic, PROBE) in setup.backend.messages)


def _capture_pubacks(client: aiomqtt.Client) -> list[int]:
    """Record the reason code of every PUBACK *client* receives (aiomqtt does not expose them)."""
    codes: list[int] = []
    paho = client._client  # aiomqtt's paho client: its on_publish callback gets the reason code
    forward = paho.on_publish

    def on_publish(*args: Any) -> None:
        codes.append(args[3].value)  # (client, userdata, mid, reason_code, properties)
        if forward is not None:
            forward(*args)

    paho.on_publish = on_publish
    return codes


async def test_vehicle_delivers_its_own_records(setup: Setup) -> None:
    async with (
        UploadQueue(setup.tmp_path / "a.db") as queue,
        Uplink(setup.config("VIN-A", "VIN-A"), queue) as uplink,
    ):
        await queue.put(_items(range(100)))
        uplink.notify()
        await _until(lambda: len(setup.backend.records.get("vehicles/VIN-A/telemetry", [])) >= 100)
        await _until(lambda: queue.stats.items == 0)
        assert setup.backend.records == {"vehicles/VIN-A/telemetry": list(range(100))}
        assert uplink.stats.records == 100 and uplink.stats.batches > 1
        assert uplink.stats.connect_failures == 0
        for _, payload in setup.backend.messages:
            assert decode_batch(payload).vehicle_id == "VIN-A"


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_vehicle_cannot_read_another_vehicles_traffic(setup: Setup, mqtt5: bool) -> None:
    async with (
        setup.client("VIN-A", "acl-spy", mqtt5=mqtt5) as spy,
        UploadQueue(setup.tmp_path / "b.db") as queue,
    ):
        granted = await spy.subscribe("vehicles/VIN-B/#", qos=1)
        # Granted, not refused: Mosquitto 2.0 checks the read permission per message instead.
        assert [getattr(code, "value", code) for code in granted] == [GRANTED_QOS1]
        await spy.subscribe("vehicles/VIN-A/#", qos=1)  # the spy's own topics: a control

        async with Uplink(setup.config("VIN-B", "VIN-B"), queue) as uplink:
            await queue.put(_items(range(50)))
            uplink.notify()
            await _until(lambda: queue.stats.items == 0)
        assert setup.backend.records == {"vehicles/VIN-B/telemetry": list(range(50))}

        # B's traffic went through the broker before this; the spy sees only its own probe.
        await _probe(setup, "vehicles/VIN-A/probe")
        seen = []
        async with asyncio.timeout(5):
            async for message in spy.messages:
                seen.append(str(message.topic))
                if message.payload == PROBE:
                    break
        assert seen == ["vehicles/VIN-A/probe"]


@pytest.mark.parametrize("mqtt5", [True, False], ids=["mqtt5", "mqtt311"])
async def test_publish_to_another_vehicles_topic_is_acknowledged_and_dropped(
    setup: Setup, mqtt5: bool
) -> None:
    async with setup.client("VIN-A", "acl-intruder", mqtt5=mqtt5) as intruder:
        codes = _capture_pubacks(intruder)
        # No exception: aiomqtt returns from publish() on any PUBACK, whatever its reason code.
        await intruder.publish("vehicles/VIN-B/telemetry", b"forged", qos=1)
        await intruder.publish("vehicles/VIN-A/status", b"allowed", qos=1)
    # MQTT 5 says "not authorized"; MQTT 3.1.1 has no reason codes: a plain PUBACK (0).
    assert codes == [NOT_AUTHORIZED if mqtt5 else 0, 0]
    await _probe(setup, "vehicles/VIN-A/probe")
    assert [topic for topic, _ in setup.backend.messages] == [
        "vehicles/VIN-A/status",
        "vehicles/VIN-A/probe",
    ]


async def _impersonate(setup: Setup, seconds: float, *, mqtt5: bool = True) -> tuple[Uplink, int]:
    """Run an uplink configured as VIN-B with VIN-A's certificate for *seconds* with 30 records
    queued; return it and how many items its queue still holds."""
    async with UploadQueue(setup.tmp_path / "impostor.db") as queue:
        await queue.put(_items(range(30)))
        async with Uplink(setup.config("VIN-B", "VIN-A", mqtt5=mqtt5), queue) as uplink:
            await _until(lambda: uplink.stats.link == "connected")
            await asyncio.sleep(seconds)
        return uplink, queue.stats.items


async def test_impersonating_uplink_gets_nothing_delivered_and_keeps_its_records(
    setup: Setup,
) -> None:
    uplink, remaining = await _impersonate(setup, 2.0)
    await _probe(setup, "vehicles/VIN-A/probe")
    assert setup.backend.topics() == {"vehicles/VIN-A/probe"}
    assert remaining == 30
    assert uplink.stats.batches == 0 and uplink.stats.records == 0
    assert "not authorized (0x87)" in uplink.stats.last_error.lower()
    # Connecting is allowed, publishing to B's topic is not: refused, reconnected, refused…
    assert uplink.stats.connect_failures == 0 and uplink.stats.reconnects >= 1


async def test_impersonating_uplink_on_mqtt311_cannot_tell_and_loses_records(setup: Setup) -> None:
    # MQTT 3.1.1's PUBACK has no reason code: the broker's refusal looks like a delivery.
    uplink, remaining = await _impersonate(setup, 2.0, mqtt5=False)
    assert remaining == 0
    assert uplink.stats.records == 30 and uplink.stats.last_error == ""
    await _probe(setup, "vehicles/VIN-A/probe")
    assert setup.backend.topics() == {"vehicles/VIN-A/probe"}

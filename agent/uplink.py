"""The uplink: drains the :class:`~agent.upload_queue.UploadQueue` to an MQTT broker (contract C5).

:class:`Uplink` is an async context manager owning one background task (in a
:class:`asyncio.TaskGroup` it owns) that connects with aiomqtt and, while connected, repeatedly

1. takes the most urgent stored items (the queue's order: priority, then age),
2. packs the leading run of one kind into a zstd batch with :class:`BatchBuilder` and a number
   from the persisted :class:`SequenceCounter` — or, for an item of kind ``ota_status``, takes
   it as it is: one ``tbox.v1.OtaStatus`` per message, numbered when it was queued,
3. publishes it with QoS 1 to its topic under ``vehicles/<vehicle id>/`` (:data:`TOPICS`;
   aiomqtt returns after PUBACK),
4. and only then acks the items, so that the queue deletes only what the broker acknowledged.

Update campaign statuses
    The campaign runner (:mod:`ota.campaign_runner`) queues each ``OtaStatus`` as an item of
    kind :data:`OTA_STATUS_KIND`, complete with vehicle id and a number from
    :meth:`Uplink.next_sequence` taken when it was queued. The uplink publishes the stored bytes
    unchanged, one message per item, to ``ota/status``: a status re-sent after a restart is the
    same message with the same sequence number, which a backend drops as a duplicate. A stored
    item that is not an ``OtaStatus`` is dropped like an unbatchable record.

Link loss
    A dropped connection is noticed by a watcher on the client's message stream, a silently dead
    link by the keepalive (≤ 20 s) within 2 × keepalive + 1 s; the in-flight publish is
    abandoned, its items stay queued, and the uplink reconnects with exponential backoff and
    jitter. The batch that
    was in flight is kept in memory: if, after reconnecting, the queue's most urgent items are
    still exactly that batch's items, the *same bytes* (same sequence number) are published
    again, so a backend de-duplicating on ``(vehicle_id, sequence)`` sees only whole-batch
    duplicates. If the queue's head changed meanwhile (a more urgent record arrived, an item
    expired, or the process restarted), a new batch with a new sequence number is built and
    some records may reach the backend twice under different numbers; records are never lost.
    Sequence numbers are strictly increasing but not contiguous: a number consumed by a batch that
    was never published (a dropped link, an unbatchable record) is skipped.

Protocol
    MQTT 5; if the broker refuses it (CONNACK "unsupported protocol version"), the uplink falls
    back to 3.1.1 for the rest of its life. TLS, when configured, always verifies the server's
    certificate and host name; a client certificate is sent when one is configured.

Side channel
    Besides queued records, the uplink carries small messages that must not wait behind a
    backlog nor survive a restart: command results and the retained ``state`` message
    (:meth:`Uplink.publish_soon`). They are kept in memory (latest per key; results bounded) and
    published, before any queued batch, as soon as the link is up. Topics listed in
    ``UplinkConfig.subscriptions`` are subscribed (QoS 1, MQTT 5 "no local") on every connection;
    what arrives on them is read with ``async for message in uplink.messages()``.

Records that can never be batched (:class:`UnbatchableRecordError`: malformed, or too large
even alone) are acked — removed from the queue — and counted in :attr:`UplinkStats.malformed`.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import aiomqtt
from google.protobuf.message import DecodeError
from paho.mqtt import client as mqtt_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import crashpoints
from agent.backoff import Backoff
from agent.proto.tbox.v1 import OtaStatus
from agent.telemetry_codec import (
    DEFAULT_MAX_BYTES,
    Batch,
    BatchBuilder,
    SequenceCounter,
    UnbatchableRecordError,
)
from agent.upload_queue import StoredItem, UploadQueue

log = logging.getLogger(__name__)

#: The queue kind of update campaign statuses: one serialized ``tbox.v1.OtaStatus`` per item.
OTA_STATUS_KIND: Final = "ota_status"
#: Queue kinds the uplink publishes, and the topic (under ``vehicles/<id>/``) of each.
TOPICS: Final = {"telemetry": "telemetry", "events": "events", OTA_STATUS_KIND: "ota/status"}
KINDS: Final = tuple(TOPICS)
# paho pings once per keepalive whatever else is sent and gives up when a ping is unanswered
# for another keepalive, so a silently dead link is noticed within 2 × keepalive + 1 s
# (benchmarks/bench_dead_link.py): 20 s keeps that within the 45 s the agent promises.
MAX_KEEPALIVE_S: Final = 20

# CONNACK codes meaning "I don't speak MQTT 5": 0x01 (3.1.1's "unacceptable protocol version",
# what a 3.1.1-only broker answers) and 0x84 (MQTT 5's "unsupported protocol version").
_PROTOCOL_REFUSED = frozenset({0x01, 0x84})

CP_BEFORE_ACK = crashpoints.declare(
    "uplink.before_ack",
    "the broker acknowledged a batch (PUBACK); its items are not yet acked in the queue",
)


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    """Everything the uplink needs; times in seconds, sizes in bytes.

    ``sequence_file`` persists the batch sequence reservation (:class:`SequenceCounter`). TLS is
    used when ``tls`` is true or any TLS file is given: ``tls_ca_file`` (``None``: the system's
    trust store), ``tls_cert_file``/``tls_key_file`` for a client certificate. The server is
    always verified. ``take_max_bytes`` is how many stored payload bytes are read per batch
    (they compress several-fold, so more than ``batch_max_bytes``). ``idle_poll_s`` bounds how
    long an empty queue is left unchecked when nobody calls :meth:`Uplink.notify`.
    ``session_expiry_s`` > 0 (MQTT 5 only) asks the broker to keep the session that long after a
    disconnection: the subscriptions, and the QoS 1 messages (commands) that arrive meanwhile.
    """

    host: str
    vehicle_id: str
    sequence_file: Path
    port: int = 1883
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 15
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    mqtt5: bool = True
    batch_max_bytes: int = DEFAULT_MAX_BYTES
    take_max_bytes: int = 1024 * 1024
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    backoff_jitter: float = 0.2
    publish_timeout_s: float = 30.0
    idle_poll_s: float = 1.0
    subscriptions: tuple[str, ...] = ()
    session_expiry_s: int = 0
    incoming_max: int = 64
    outbox_max: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.keepalive_s <= MAX_KEEPALIVE_S:
            raise ValueError(
                f"keepalive_s {self.keepalive_s} must be 1–{MAX_KEEPALIVE_S}: a longer one "
                "notices a dead link too late"
            )
        if not self.vehicle_id or any(c in self.vehicle_id for c in "/+#"):
            raise ValueError(f"vehicle_id {self.vehicle_id!r} must be non-empty, without / + #")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.take_max_bytes < self.batch_max_bytes:
            raise ValueError("take_max_bytes must be at least batch_max_bytes")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("backoff needs 0 < backoff_initial_s ≤ backoff_max_s")
        if not 0 <= self.session_expiry_s < 2**32:
            raise ValueError("session_expiry_s must be 0 … 2**32-1")
        if not 0 <= self.backoff_jitter < 1:
            raise ValueError("backoff_jitter must be in [0, 1)")

    @property
    def topic_prefix(self) -> str:
        """``vehicles/<vehicle id>/``."""
        return f"vehicles/{self.vehicle_id}/"

    @property
    def uses_tls(self) -> bool:
        """Whether connections are made over TLS."""
        return self.tls or self.tls_ca_file is not None or self.tls_cert_file is not None

    def backoff_delays(self) -> Iterator[float]:
        """Reconnect delays: initial, doubling up to the maximum, each ± the jitter fraction."""
        backoff = Backoff(self.backoff_initial_s, self.backoff_max_s, self.backoff_jitter)
        return backoff.delays()


@dataclass(slots=True)
class UplinkStats:
    """Counters since the uplink started; updated by its task, read by anyone.

    ``bytes`` counts payload bytes of acknowledged batches; ``records`` counts records in
    acknowledged batches; ``resent`` counts batches published again after a link loss;
    ``refused`` counts publishes the broker refused (PUBACK failure code, e.g. an ACL denial:
    the records stay queued); ``reconnects`` counts connections made after the first;
    ``connect_failures`` counts failed attempts; ``malformed`` counts records dropped as
    unbatchable. ``side_published`` and ``side_dropped`` count side-channel messages published
    and pushed out of a full outbox;
    ``incoming`` and ``incoming_dropped`` count messages received on the subscriptions and those
    dropped because nobody read them fast enough. ``subscribed`` is true while connected with
    every subscription acknowledged. ``link_events`` are the latest connections and losses
    (newest last, at most :data:`LINK_EVENTS_KEPT`), each with the cellular link's quality at
    that moment when the uplink was given a ``link_quality`` source: what explains a gap.
    """

    batches: int = 0
    records: int = 0
    bytes: int = 0
    resent: int = 0
    refused: int = 0
    malformed: int = 0
    side_published: int = 0
    side_dropped: int = 0
    incoming: int = 0
    incoming_dropped: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    link: Literal["connected", "disconnected"] = "disconnected"
    subscribed: bool = False
    protocol: str = "5"
    last_error: str = ""
    by_kind: dict[str, int] = field(default_factory=dict)
    link_events: list[LinkEvent] = field(default_factory=list)


#: How many connections and losses :attr:`UplinkStats.link_events` keeps.
LINK_EVENTS_KEPT: Final = 16


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """The uplink connected or lost its connection at wall time ``t``; ``quality`` is what the
    link-quality source said then (e.g. ``{"rssi_dbm": -71, "access_technology": "E-UTRAN"}``),
    empty without one; ``error`` is why a connection was lost or refused."""

    t: float
    event: Literal["connected", "lost"]
    quality: Mapping[str, object]
    error: str = ""


class PublishRefusedError(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5 PUBACK ≥ 0x80).

    Mosquitto does so for a topic its ACL denies (0x87 "Not authorized"). The message was not
    accepted: its records stay queued, and the uplink reconnects with backoff as after a link loss.
    """


class _CheckedClient(aiomqtt.Client):
    """An aiomqtt client that notices PUBACK failure reason codes.

    aiomqtt resolves a publish on any PUBACK, whatever its reason code; a refused batch would be
    taken as delivered and deleted from the queue. The uplink publishes one message at a time, so
    a refusal recorded while a publish is awaited belongs to that publish.
    """

    refusal: str | None = None

    def _on_publish(
        self,
        client: Any,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self.refusal = f"{reason_code} (0x{reason_code.value:02X})"
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_checked(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish with QoS 1; :class:`PublishRefusedError` if the broker refused it."""
        self.refusal = None
        await self.publish(topic, payload, qos=1, retain=retain)
        if self.refusal is not None:
            raise PublishRefusedError(f"broker refused the publish to {topic}: {self.refusal}")


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A message received on one of the uplink's subscriptions."""

    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _SideMessage:
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A built batch and the queue ids it carries, kept until acked."""

    kind: str
    ids: tuple[int, ...]
    batch: Batch


class Uplink:
    """Drains *queue* to the broker of *config* until the context exits.

    ::

        async with UploadQueue(path) as queue, Uplink(config, queue) as uplink:
            await queue.put(items)
            uplink.notify()  # optional: don't wait for the next idle poll

    Exiting cancels the background task; unacknowledged items stay in the queue. Errors other
    than MQTT ones (the queue closed, the sequence file unwritable) end the task and are raised
    from the ``async with`` block.
    """

    def __init__(
        self,
        config: UplinkConfig,
        queue: UploadQueue,
        *,
        link_quality: Callable[[], Mapping[str, object] | None] | None = None,
    ) -> None:
        self.config = config
        self.stats = UplinkStats()
        self._link_quality = link_quality
        self._queue = queue
        self._wakeup = asyncio.Event()
        self._protocol = (
            aiomqtt.ProtocolVersion.V5 if config.mqtt5 else aiomqtt.ProtocolVersion.V311
        )
        self.stats.protocol = "5" if config.mqtt5 else "3.1.1"
        self._builders = {
            kind: BatchBuilder(config.vehicle_id, max_bytes=config.batch_max_bytes, kind=kind)
            for kind in ("telemetry", "events")
        }
        self._sequence: SequenceCounter | None = None
        self._tls: ssl.SSLContext | None = None
        self._in_flight: _InFlight | None = None  # built, published, not acknowledged yet
        self._delivered: _InFlight | None = None  # acknowledged by the broker, not yet acked
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected_once = False
        # Side channel: keyed messages replace their predecessor; unkeyed ones get a fresh key.
        self._outbox: dict[object, _SideMessage] = {}
        self._incoming: asyncio.Queue[IncomingMessage] = asyncio.Queue(config.incoming_max)

    def notify(self) -> None:
        """Tell the uplink that new items were queued (wakes it if it is idle)."""
        self._wakeup.set()

    def next_sequence(self) -> int:
        """A number from the vehicle's batch sequence, for a side-channel message."""
        if self._sequence is None:
            raise RuntimeError("the uplink is not started")
        return self._sequence.next()

    def publish_soon(
        self, suffix: str, payload: bytes, *, retain: bool = False, key: str | None = None
    ) -> None:
        """Publish *payload* to ``vehicles/<id>/<suffix>`` (QoS 1) once the link is up.

        A message with the *key* of one still waiting replaces it (the retained state: only the
        newest matters). Held in memory only; when more than ``outbox_max`` wait, the oldest is
        dropped and counted.
        """
        slot: object = key if key is not None else object()
        self._outbox.pop(slot, None)
        self._outbox[slot] = _SideMessage(self.config.topic_prefix + suffix, payload, retain)
        while len(self._outbox) > self.config.outbox_max:
            del self._outbox[next(iter(self._outbox))]
            self.stats.side_dropped += 1
        self._wakeup.set()

    async def messages(self) -> AsyncIterator[IncomingMessage]:
        """Messages received on ``UplinkConfig.subscriptions``, across reconnections."""
        while True:
            yield await self._incoming.get()

    async def __aenter__(self) -> Uplink:
        # Opened here, not in the task, so that a bad TLS file or sequence file fails loudly at
        # start instead of being retried forever as if it were a link problem.
        self._tls = self._tls_context()
        self._sequence = await asyncio.to_thread(SequenceCounter, self.config.sequence_file)
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._task = self._group.create_task(self._run(), name="uplink")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._group is not None and self._task is not None
        self._task.cancel()
        try:
            # The body's exception goes to the group too: if the task failed, the group cancelled
            # the body, and only with that CancelledError can it tell it was its own doing.
            await self._group.__aexit__(exc_type, exc, tb)
        finally:
            self._group = None
            self.stats.link = "disconnected"

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self.config
        if not cfg.uses_tls:
            return None
        # create_default_context: CERT_REQUIRED and host name checking; there is deliberately no
        # option to turn them off.
        context = ssl.create_default_context(
            cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file is not None else None
        )
        if cfg.tls_cert_file is not None and cfg.tls_key_file is not None:
            context.load_cert_chain(str(cfg.tls_cert_file), str(cfg.tls_key_file))
        return context

    def _client(self) -> _CheckedClient:
        cfg = self.config
        # A persistent MQTT 5 session: commands sent while the vehicle is offline wait at the
        # broker (bounded by the expiry) instead of being lost. Without subscriptions there is
        # nothing worth keeping.
        persistent = (
            self._protocol == aiomqtt.ProtocolVersion.V5
            and cfg.session_expiry_s > 0
            and bool(cfg.subscriptions)
        )
        properties = None
        if persistent:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = cfg.session_expiry_s
        return _CheckedClient(
            cfg.host,
            cfg.port,
            identifier=cfg.client_id or f"tbox-{cfg.vehicle_id}",
            username=cfg.username,
            password=cfg.password,
            protocol=self._protocol,
            keepalive=cfg.keepalive_s,
            tls_context=self._tls,
            timeout=cfg.publish_timeout_s,
            clean_start=False if persistent else mqtt_client.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )

    # --- the background task ------------------------------------------------------------------

    async def _run(self) -> None:
        delays = self.config.backoff_delays()
        while True:
            error: Exception | None = None
            connected = False
            try:
                async with self._client() as client:
                    connected = True
                    self._on_connected()
                    delays = self.config.backoff_delays()
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._watch(client))
                        tg.create_task(self._drain(client))
            except* aiomqtt.MqttError as group:
                error = group.exceptions[0]
                if isinstance(error, PublishRefusedError):
                    # Not a link problem, but retrying at once would hammer the broker with a
                    # batch it refuses: back off as after a link loss; the records stay queued.
                    self.stats.refused += 1
            self.stats.link = "disconnected"
            self.stats.subscribed = False
            if error is None:  # pragma: no cover - both session tasks run until they fail
                continue
            self.stats.last_error = f"{type(error).__name__}: {error}"
            if connected:
                self._record_link("lost", self.stats.last_error)
            if not connected:
                self.stats.connect_failures += 1
                if self._refused_protocol(error):
                    continue  # retry at once with 3.1.1
            log.warning("uplink: %s; reconnecting with backoff", self.stats.last_error)
            await asyncio.sleep(next(delays))

    def _on_connected(self) -> None:
        if self._connected_once:
            self.stats.reconnects += 1
        self._connected_once = True
        self.stats.link = "connected"
        event = self._record_link("connected")
        quality = ", ".join(f"{k} {v}" for k, v in event.quality.items())
        log.info(
            "uplink: connected to %s:%d%s",
            self.config.host,
            self.config.port,
            f" (link: {quality})" if quality else "",
        )

    def _record_link(self, kind: Literal["connected", "lost"], error: str = "") -> LinkEvent:
        quality: Mapping[str, object] = {}
        if self._link_quality is not None:
            try:
                quality = dict(self._link_quality() or {})
            except Exception:  # a broken source must not stop the uplink
                log.exception("uplink: the link-quality source failed")
        event = LinkEvent(time.time(), kind, quality, error)
        events = self.stats.link_events
        events.append(event)
        del events[:-LINK_EVENTS_KEPT]
        return event

    def _refused_protocol(self, error: Exception) -> bool:
        if not isinstance(error, aiomqtt.MqttCodeError):
            return False
        code = getattr(error.rc, "value", error.rc)
        if self._protocol != aiomqtt.ProtocolVersion.V5 or code not in _PROTOCOL_REFUSED:
            return False
        log.warning("uplink: broker refused MQTT 5; falling back to 3.1.1")
        self._protocol = aiomqtt.ProtocolVersion.V311
        self.stats.protocol = "3.1.1"
        return True

    async def _watch(self, client: _CheckedClient) -> None:
        # Iterating the message stream also raises MqttError the moment the connection drops,
        # which cancels a publish waiting for its PUBACK.
        for topic in self.config.subscriptions:
            if self._protocol == aiomqtt.ProtocolVersion.V5:
                # no_local: a subscription to cmd/# must not hand us our own cmd/<kind>/result.
                options = SubscribeOptions(qos=1, noLocal=True)
                await client.subscribe(topic, options=options)
            else:
                await client.subscribe(topic, qos=1)
        self.stats.subscribed = True
        async for message in client.messages:
            self.stats.incoming += 1
            try:
                self._incoming.put_nowait(IncomingMessage(str(message.topic), message.payload))
            except asyncio.QueueFull:
                self.stats.incoming_dropped += 1

    async def _drain(self, client: _CheckedClient) -> None:
        await self._settle()
        while True:
            # Cleared before looking, so that a notify() during the take is not lost.
            self._wakeup.clear()
            await self._publish_side(client)
            items = await self._queue.take(self.config.take_max_bytes, kinds=KINDS)
            if not items:
                self._in_flight = None
                try:
                    async with asyncio.timeout(self.config.idle_poll_s):
                        await self._wakeup.wait()
                except TimeoutError:
                    pass  # poll anyway: a producer may not call notify()
                continue
            try:
                in_flight = self._resend_or_build(items)
            except UnbatchableRecordError as e:
                # It would block the queue's head forever: drop it through the queue (an ack)
                # and count it here, since the queue's ledger counts only its own drops.
                self.stats.malformed += 1
                log.warning("uplink: dropping stored %s item %d: %s", items[0].kind, items[0].id, e)
                await self._queue.ack([items[0].id])
                continue
            await self._publish(client, in_flight)

    def _resend_or_build(self, items: list[StoredItem]) -> _InFlight:
        kind = items[0].kind
        run: list[StoredItem] = []
        for item in items:
            if item.kind != kind:
                break
            run.append(item)
            if kind == OTA_STATUS_KIND:
                break  # one message per status
        previous = self._in_flight
        if previous is not None and previous.kind == kind:
            head = tuple(item.id for item in run[: len(previous.ids)])
            if head == previous.ids:
                self.stats.resent += 1
                return previous
        self._in_flight = None
        if kind == OTA_STATUS_KIND:
            return self._single(run[0])
        return self._build(kind, run)

    def _single(self, item: StoredItem) -> _InFlight:
        """An ``ota_status`` item as its own message: its stored bytes, checked, unchanged."""
        if len(item.payload) > self.config.batch_max_bytes:
            raise UnbatchableRecordError(
                "too_large",
                f"an OtaStatus of {len(item.payload)} bytes exceeds the "
                f"{self.config.batch_max_bytes}-byte message cap",
            )
        try:
            status = OtaStatus.FromString(item.payload)
        except DecodeError as e:
            raise UnbatchableRecordError("malformed", f"not a tbox.v1.OtaStatus: {e}") from None
        batch = Batch(item.payload, status.sequence, 1, len(item.payload))
        self._in_flight = _InFlight(OTA_STATUS_KIND, (item.id,), batch)
        return self._in_flight

    def _build(self, kind: str, run: Sequence[StoredItem]) -> _InFlight:
        # Runs in the event loop: a 128 KiB zstd batch takes ~1 ms, and the builder is not
        # thread-safe. The sequence counter writes (fsync) once per 1024 numbers.
        assert self._sequence is not None
        builder = self._builders[kind]
        batch = builder.build(
            [item.payload for item in run], sequence=self._sequence.next(), created_time=time.time()
        )
        ids = tuple(item.id for item in run[: batch.count])
        self._in_flight = _InFlight(kind, ids, batch)
        return self._in_flight

    async def _publish(self, client: _CheckedClient, in_flight: _InFlight) -> None:
        await client.publish_checked(
            self.config.topic_prefix + TOPICS[in_flight.kind], in_flight.batch.payload
        )
        # PUBACK received: the broker owns the batch now, it must never be resent.
        self._in_flight = None
        self._delivered = in_flight
        CP_BEFORE_ACK.hit()
        await self._settle()

    async def _publish_side(self, client: _CheckedClient) -> None:
        while self._outbox:
            slot, message = next(iter(self._outbox.items()))
            await client.publish_checked(message.topic, message.payload, retain=message.retain)
            # Only now: a link loss during the publish leaves it waiting for the next connection.
            # A newer message with the same key may have replaced it meanwhile; keep that one.
            if self._outbox.get(slot) is message:
                del self._outbox[slot]
            self.stats.side_published += 1

    async def _settle(self) -> None:
        """Ack the batch the broker acknowledged, and count it, once.

        A link loss can cancel the drain while the ack is pending; the queue may or may not have
        committed it, so the next drain calls this again first (acks are idempotent).
        """
        delivered = self._delivered
        if delivered is None:
            return
        await self._queue.ack(delivered.ids)
        self._delivered = None
        batch = delivered.batch
        self.stats.batches += 1
        self.stats.records += batch.count
        self.stats.bytes += len(batch.payload)
        self.stats.by_kind[delivered.kind] = self.stats.by_kind.get(delivered.kind, 0) + batch.count

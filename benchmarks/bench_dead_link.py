"""A silently dead link: how long until ``Uplink`` notices, and how it recovers once it heals.

A TCP proxy (asyncio, in this process) sits between the uplink and a local Mosquitto. While a
producer queues a record every 50 ms and the uplink publishes them, the proxy turns into a
**black hole**: every byte in both directions is read and dropped and no socket is closed — what a
cellular link that died looks like to both ends (the broker's own keepalive disconnect is not
passed on either). New connections during the outage are refused, as when the modem has lost the
network. The uplink's link state is polled every 50 ms; the time from the start of the black hole
to ``stats.link == "disconnected"`` is the detection time, and ``stats.last_error`` tells which
mechanism fired:

* the MQTT keepalive: paho 2.2 sends a PINGREQ every ``keepalive_s`` whatever the traffic (its
  idle timer is not reset by ordinary writes) and drops the connection when no byte came back
  ``keepalive_s`` after the ping; aiomqtt checks once a second. Detection therefore takes between
  1× and 2× the keepalive (+ ≤ 1 s) depending on where in the ping cycle the link dies; the
  black hole is started just after a PINGRESP went through, the **worst phase**, so the figure
  measured is the bound; or
* the publish timeout: a batch sent into the black hole gets no PUBACK within
  ``publish_timeout_s`` (30 s by default). At keepalive 15 s both fire ~30 s after the link died.

``--outage`` seconds after detection the proxy heals (traffic passes, connections are accepted);
the benchmark prints the time to reconnect and to drain what was queued during the outage, and
checks with a subscriber connected to the broker directly that no record was lost.

Runs the uplink's default configuration (keepalive 15 s, or ``--keepalive S``) and, to show how
detection scales with the keepalive, ``--compare S`` (default 5; 0 skips it). Prints detection
time and detection/keepalive for each, and PASS/FAIL against the target: a dead link noticed
within 45 s with the default configuration. Exits 1 on FAIL or a lost record. Takes ~70 s.

    .venv/bin/python benchmarks/bench_dead_link.py [--keepalive 15] [--compare 5] [--outage 3]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from agent.local_broker import BrokerError, LocalBroker, free_port
from agent.schemes.model import CollectedRecord, Sample
from agent.telemetry_codec import decode_batch, encode_record
from agent.uplink import MAX_KEEPALIVE_S, Uplink, UplinkConfig
from agent.upload_queue import QueueItem, UploadQueue

TARGET_S = 45.0
VEHICLE = "VIN-DEAD-LINK"
PERIOD_S = 0.05  # the producer's record interval
POLL_S = 0.05
WARM_UP_S = 2.0  # publishing normally before the black hole


# --- the broker -----------------------------------------------------------------------------


@contextmanager
def _mosquitto(directory: Path) -> Iterator[int]:
    """A private Mosquitto on a free loopback port (:class:`LocalBroker`); yields the port."""
    try:
        broker = LocalBroker(
            directory,
        )
        broker.start()
    except BrokerError as e:
        raise SystemExit(str(e)) from None
    try:
        yield broker.port
    finally:
        broker.kill()


# --- the proxy ------------------------------------------------------------------------------


PINGREQ, PINGRESP = 12, 13  # MQTT control packet types


class _Framer:
    """Splits one direction of an MQTT byte stream into packets; yields their types."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._skip = 0  # bytes of a packet's body still to come

    def feed(self, data: bytes) -> list[int]:
        skipped = min(self._skip, len(data))
        self._skip -= skipped
        buffer = self._buffer
        buffer += data[skipped:]
        types: list[int] = []
        while len(buffer) >= 2:
            # Fixed header: type and flags, then the remaining length (1-4 byte varint).
            length, shift, i = 0, 0, 1
            while i < len(buffer):
                length |= (buffer[i] & 0x7F) << shift
                shift += 7
                i += 1
                if not buffer[i - 1] & 0x80:
                    break
            else:
                break  # the length is incomplete
            types.append(buffer[0] >> 4)
            if i + length <= len(buffer):
                del buffer[: i + length]
            else:
                self._skip = i + length - len(buffer)
                buffer.clear()
        return types


class _Connection:
    """One proxied connection; once *dead* it drops everything and never closes the client."""

    def __init__(
        self, proxy: BlackHoleProxy, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.dead = False

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = _Framer()
        from_client = writer is self.upstream
        while data := await reader.read(65536):
            for kind in framer.feed(data):
                self.proxy.packet(from_client=from_client, kind=kind, dropped=self.dead)
            if not self.dead:
                writer.write(data)
                await writer.drain()
        # End of stream. A dead link passes no FIN either: the broker closing its side (its own
        # keepalive) must not reach the client.
        if not self.dead or from_client:
            writer.close()


class BlackHoleProxy:
    """Forwards a loopback port to the broker; :meth:`black_hole` kills the link, :meth:`heal`
    restores it. Notes when PINGREQ/PINGRESP packets pass or vanish."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.connections: set[_Connection] = set()
        self.pingresp = asyncio.Event()  # set whenever a PINGRESP reaches the client
        self.dropped_pings: list[float] = []  # time.monotonic() of PINGREQs into the black hole
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def packet(self, *, from_client: bool, kind: int, dropped: bool) -> None:
        if from_client and kind == PINGREQ and dropped:
            self.dropped_pings.append(time.monotonic())
        elif not from_client and kind == PINGRESP and not dropped:
            self.pingresp.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def black_hole(self) -> None:
        """Drop all traffic of open connections, silently; refuse new ones."""
        for connection in self.connections:
            connection.dead = True
        await self._stop_listening()

    async def heal(self) -> None:
        """Accept and forward again (connections that went dead stay dead)."""
        await self.start()

    async def close(self) -> None:
        await self._stop_listening()
        for connection in self.connections:
            connection.client.close()
            connection.upstream.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        connection = _Connection(self, writer, up_writer)
        self.connections.add(connection)
        tasks = [
            asyncio.create_task(connection.pump(reader, up_writer)),
            asyncio.create_task(connection.pump(up_reader, writer)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            self.connections.discard(connection)
            writer.close()
            up_writer.close()


# --- records, producer and subscriber -------------------------------------------------------


def _item(n: int) -> QueueItem:
    t = time.time()
    samples = (Sample("SEQ", t, n), *(Sample("SPEED", t + i / 10, 50.0 + i) for i in range(10)))
    record = CollectedRecord("periodic-1s", 5, t, samples)
    return QueueItem("telemetry", 5, encode_record(record), t)


@dataclass
class Produced:
    count: int = 0


async def _produce(queue: UploadQueue, uplink: Uplink, produced: Produced) -> None:
    while True:
        await queue.put([_item(produced.count)])
        produced.count += 1
        uplink.notify()
        await asyncio.sleep(PERIOD_S)


async def _subscribe(port: int, seen: set[int], ready: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier="dead-link-backend") as sub:
        await sub.subscribe(f"vehicles/{VEHICLE}/#", qos=1)
        ready.set()
        async for message in sub.messages:
            assert isinstance(message.payload, bytes)
            for rec in decode_batch(message.payload).records:
                seen.add(rec.series[0].ints.values[0])


async def _until(condition: Callable[[], bool], within: float) -> float:
    """Poll *condition* every POLL_S; the time.monotonic() when it held."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - the uplink's stats have no event to await
            await asyncio.sleep(POLL_S)
    return time.monotonic()


@dataclass(frozen=True)
class Result:
    keepalive: int
    publish_timeout_s: float
    detect_s: float
    mechanism: str
    last_error: str
    queued_at_detection: int
    pings_s: tuple[float, ...]
    failures_in_outage: int
    reconnect_s: float
    drain_s: float
    produced: int
    lost: int


def _mechanism(error: str) -> str:
    # The black hole never closes a socket: a disconnection can only be paho's keepalive giving
    # up (the message stream's error, caused by MQTT_ERR_KEEPALIVE); a publish that got no PUBACK
    # fails with aiomqtt's "Operation timed out".
    if "Disconnected" in error or "keepalive" in error:
        return "keepalive"
    if "timed out" in error:
        return "publish timeout"
    return "unexpected error"


async def _run(directory: Path, broker: int, keepalive: int, outage: float) -> Result:
    proxy = BlackHoleProxy(broker)
    await proxy.start()
    seen: set[int] = set()
    ready = asyncio.Event()
    produced = Produced()
    config = UplinkConfig(
        host="127.0.0.1",
        port=proxy.port,
        vehicle_id=VEHICLE,
        sequence_file=directory / f"sequence-{keepalive}",
        keepalive_s=keepalive,
    )
    try:
        async with asyncio.TaskGroup() as tg:
            subscriber = tg.create_task(_subscribe(broker, seen, ready))
            await asyncio.wait_for(ready.wait(), 10)
            async with (
                UploadQueue(directory / f"queue-{keepalive}.db") as queue,
                Uplink(config, queue) as uplink,
            ):
                producer = tg.create_task(_produce(queue, uplink, produced))
                await _until(lambda: uplink.stats.link == "connected", 10)
                await asyncio.sleep(WARM_UP_S)
                assert uplink.stats.records > 0, "nothing was published before the black hole"
                # The worst moment for the keepalive: just after a ping was answered.
                proxy.pingresp.clear()
                await asyncio.wait_for(proxy.pingresp.wait(), keepalive + 5)
                start = time.monotonic()
                await proxy.black_hole()  # its first, synchronous step kills the connections
                failures = uplink.stats.connect_failures
                detected = await _until(lambda: uplink.stats.link == "disconnected", 120)
                last_error = uplink.stats.last_error
                queued = queue.stats.items

                await asyncio.sleep(outage)
                failures = uplink.stats.connect_failures - failures
                await proxy.heal()
                healed = time.monotonic()
                reconnected = await _until(lambda: uplink.stats.link == "connected", 60)
                producer.cancel()
                total = produced.count
                drained = await _until(lambda: queue.stats.items == 0 and len(seen) >= total, 60)
            subscriber.cancel()
    finally:
        await proxy.close()
    return Result(
        keepalive=keepalive,
        publish_timeout_s=config.publish_timeout_s,
        detect_s=detected - start,
        mechanism=_mechanism(last_error),
        last_error=last_error,
        queued_at_detection=queued,
        pings_s=tuple(t - start for t in proxy.dropped_pings),
        failures_in_outage=failures,
        reconnect_s=reconnected - healed,
        drain_s=drained - reconnected,
        produced=total,
        lost=len(set(range(total)) - seen),
    )


def _report(r: Result) -> None:
    print(
        f"  keepalive {r.keepalive:>2} s: dead link noticed after {r.detect_s:5.1f} s = "
        f"{r.detect_s / r.keepalive:.2f}x keepalive, by the {r.mechanism} ({r.last_error!r}); "
        f"{r.queued_at_detection} records queued meanwhile",
        flush=True,
    )
    pings = ", ".join(f"{t:.1f}" for t in r.pings_s) or "none"
    print(f"     PINGREQ into the black hole at +{pings} s", flush=True)
    print(
        f"     healed: reconnected after {r.reconnect_s:.2f} s ({r.failures_in_outage} refused "
        f"attempts during the outage), queue drained {r.drain_s:.2f} s later; "
        f"{r.produced} records produced, {r.lost} lost",
        flush=True,
    )


async def _main(keepalive: int, compare: int, outage: float) -> bool:
    logging.basicConfig(level=logging.ERROR)  # the uplink's reconnect warnings are expected
    directory = Path(tempfile.mkdtemp(prefix="bench-dead-link-"))
    print(
        f"silently dead link (black-hole proxy) under a publishing uplink; outage held "
        f"{outage:g} s after detection, then healed:",
        flush=True,
    )
    results = []
    try:
        with _mosquitto(directory) as broker:
            for k in (compare, keepalive) if compare else (keepalive,):
                results.append(await _run(directory, broker, k, outage))
                _report(results[-1])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    main_run = results[-1]
    lost = sum(r.lost for r in results)
    met = main_run.detect_s <= TARGET_S and lost == 0
    if compare:
        ratio = main_run.detect_s / results[0].detect_s
        print(
            f"  detection at keepalive {keepalive} s / at {compare} s: {ratio:.2f}x "
            f"(keepalive ratio {keepalive / compare:.2f}x)"
        )
    print(
        f"  target: noticed within {TARGET_S:.0f} s at keepalive {keepalive} s "
        f"(publish_timeout_s {main_run.publish_timeout_s:g}): "
        f"{main_run.detect_s:.1f} s, {lost} lost: {'PASS' if met else 'FAIL'}"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keepalive", type=int, default=15, help="the run the target applies to")
    parser.add_argument("--compare", type=int, default=5, help="a second keepalive; 0: none")
    parser.add_argument("--outage", type=float, default=3.0, help="seconds dead after detection")
    args = parser.parse_args()
    if not 1 <= args.keepalive <= MAX_KEEPALIVE_S or not 0 <= args.compare <= MAX_KEEPALIVE_S:
        parser.error(f"keepalives must be 1–{MAX_KEEPALIVE_S} s (the uplink's range)")
    met = asyncio.run(_main(args.keepalive, args.compare, args.outage))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

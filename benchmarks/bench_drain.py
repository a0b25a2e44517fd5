"""Queue drain rate: a full ``UploadQueue`` emptied by ``Uplink`` into a local Mosquitto.

The queue (SQLite, in a temporary directory) is filled with ``--records`` telemetry records
(``encode_record``) shaped like the periodic schemes of the sample vehicle (``tbox_ev.dbc``): one
record per scheme and second, 14–26 samples of 2–4 signals at their bus resolution (≈ 20 samples
per record on average, ~360 bytes encoded; ~5.9 bytes per sample once batched, where real RAV4
traffic takes 2.8: the noise here is pessimistic). Mosquitto 2.0 runs on a free loopback port
with a minimal configuration; a subscriber in another process (the backend: it is not on the
vehicle) decodes every batch with ``decode_batch``, counts records and samples, and says when it
has seen every record.

* ``tbox``: ``Uplink`` with its default configuration (zstd protobuf batches ≤ 128 KiB, QoS 1,
  one in flight) from the moment it is started until the subscriber has every record and the
  queue is empty. Includes connecting, SQLite takes and acks, batching and compression.
* ``baseline`` (same run, same broker): what a naive agent does — one JSON message per record
  (``{"vehicle_id", "scheme_id", "trigger_time", "samples": [{"signal", "t", "value"}, …]}``),
  published with plain aiomqtt at QoS 1, each awaited. The JSON is serialized before the clock
  starts and there is no queue at all, so the baseline is measured at its most favourable. It
  publishes the first ``--baseline-records`` of the same records (a rate, so fewer suffice).

The two runs alternate ``--reps`` times (the queue is refilled before each tbox run, outside the
clock); prints each run, then the medians of samples/s and records/s and their ratio, and
PASS/FAIL against the issue's target of ≥ 50,000 signal samples/s drained. Exits 1 on FAIL or if
a record is missing.

    .venv/bin/python benchmarks/bench_drain.py [--records 100000] [--baseline-records 10000]
                                               [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiomqtt

from agent.local_broker import BrokerError, LocalBroker
from agent.schemes.model import CollectedRecord, Sample
from agent.telemetry_codec import decode_batch, encode_record
from agent.uplink import Uplink, UplinkConfig, UplinkStats
from agent.upload_queue import QueueItem, UploadQueue

TARGET = 50_000  # signal samples/s (issue)
VEHICLE = "VIN-BENCH-1"
T0 = 1_750_000_000.0
PUT_CHUNK = 5_000

Signal = tuple[str, int, float, Callable[[float], float]]  # name, Hz, resolution, value at t

# Periodic 1 s schemes of the sample vehicle: (scheme id, [(signal, samples per second,
# resolution of the DBC signal, value as a function of time)]). A resolution of 1 means an int.
SCHEMES: tuple[tuple[str, tuple[Signal, ...]], ...] = (
    (
        "drive-1s",
        (
            ("ESC_VehicleSpeed.ESC_VehSpd", 10, 0.01, lambda t: 70 + 40 * math.sin(t / 60)),
            ("EPS_Steering.EPS_SteerAngle", 10, 0.1, lambda t: 8 * math.sin(t / 7)),
            ("VCU_DriveState.VCU_AccelPedal", 5, 0.4, lambda t: 20 + 15 * math.sin(t / 11)),
            ("VCU_DriveState.VCU_Gear", 1, 1, lambda t: 4),
        ),
    ),
    (
        "battery-1s",
        (
            ("BMS_PackStatus.BMS_PackVoltage", 2, 0.01, lambda t: 380 - t / 500),
            ("BMS_PackStatus.BMS_PackCurrent", 10, 0.1, lambda t: 60 + 50 * math.sin(t / 9)),
            ("BMS_SoC.BMS_SoC", 1, 0.1, lambda t: 80 - t / 400),
            ("BMS_Temperatures.BMS_CellTempMax", 1, 1, lambda t: 31 + t / 3600),
        ),
    ),
    (
        "dynamics-1s",
        (
            ("ESC_Dynamics.ESC_YawRate", 10, 0.01, lambda t: 3 * math.sin(t / 7)),
            ("ESC_Dynamics.ESC_LatAccel", 10, 0.01, lambda t: 1.2 * math.sin(t / 7 + 0.3)),
        ),
    ),
)


def _records(n: int) -> list[CollectedRecord]:
    """*n* records: the schemes in turn, one record each per second of a drive. Bus timing
    jitters by up to 60 % of a period and values carry up to ±3 steps of sensor noise
    (pseudo-random, fixed seed): noisier than real traffic, so they compress less well."""
    rng = random.Random(1)
    out = []
    for k in range(n):
        scheme_id, signals = SCHEMES[k % len(SCHEMES)]
        second = T0 + k // len(SCHEMES)
        samples = []
        for name, hz, resolution, value in signals:
            for j in range(hz):
                t = second + (j + 0.6 * rng.random()) / hz
                steps = round(value(t - T0) / resolution + 6 * rng.random() - 3)
                v: float | int = steps if resolution == 1 else round(steps * resolution, 6)
                samples.append(Sample(name, t, v))
        out.append(CollectedRecord(scheme_id, 5, second, tuple(samples)))
    return out


def _as_json(record: CollectedRecord) -> bytes:
    return json.dumps(
        {
            "vehicle_id": VEHICLE,
            "scheme_id": record.scheme_id,
            "trigger_time": record.trigger_time,
            "samples": [{"signal": s.signal, "t": s.t, "value": s.value} for s in record.samples],
        },
        separators=(",", ":"),
    ).encode()


# --- the broker -----------------------------------------------------------------------------


@contextmanager
def _mosquitto(directory: Path) -> Iterator[int]:
    """A private Mosquitto on a free loopback port (:class:`LocalBroker`); yields the port."""
    try:
        broker = LocalBroker(
            directory,
            # The default (1000 QoS 1 messages queued per subscriber) drops the baseline's messages
            # whenever the subscriber falls behind: the benchmark measures the sender, so no limit.
            extra_config="max_queued_messages 0\n",
        )
        broker.start()
    except BrokerError as e:
        raise SystemExit(str(e)) from None
    try:
        yield broker.port
    finally:
        broker.kill()


# --- the subscriber (another process) -------------------------------------------------------


async def _subscribe(port: int, mode: str, records: int, samples: int) -> None:
    """Count records and samples until every record was seen; print ``ready`` and ``done``."""
    seen: set[tuple[str, int]] = set()
    counted = 0
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-backend-{mode}") as sub:
        await sub.subscribe(f"vehicles/{VEHICLE}/#", qos=1)
        print("ready", flush=True)
        async for message in sub.messages:
            assert isinstance(message.payload, bytes)
            if mode == "batches":
                for rec in decode_batch(message.payload).records:
                    seen.add((rec.scheme_id, rec.trigger_time_us))
                    counted += sum(len(s.time_delta_us) for s in rec.series)
            else:
                obj = json.loads(message.payload)
                seen.add((obj["scheme_id"], round(obj["trigger_time"] * 1e6)))
                counted += len(obj["samples"])
            if len(seen) >= records:
                break
    print(f"done {len(seen)} {counted} {samples}", flush=True)


class Backend:
    """The subscriber process: started and subscribed before the clock starts."""

    def __init__(self, port: int, mode: str, records: list[CollectedRecord]) -> None:
        self.args = (str(port), mode, str(len(records)), str(sum(len(r.samples) for r in records)))
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Backend:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--subscribe", *self.args, stdout=asyncio.subprocess.PIPE
        )
        assert self.process.stdout is not None
        async with asyncio.timeout(20):
            line = await self.process.stdout.readline()
        if line.strip() != b"ready":
            raise SystemExit(f"subscriber did not start: {line!r}")
        return self

    async def done(self, within: float) -> tuple[int, int]:
        """Wait for the subscriber to have every record; (records, samples) it counted."""
        assert self.process is not None and self.process.stdout is not None
        try:
            async with asyncio.timeout(within):
                line = await self.process.stdout.readline()
        except TimeoutError:
            raise SystemExit(f"the subscriber did not see every record within {within} s") from None
        _, records, samples, _ = line.split()
        return int(records), int(samples)

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# --- the two runs ---------------------------------------------------------------------------


async def _tbox(
    db: Path, port: int, records: list[CollectedRecord], items: list[QueueItem]
) -> tuple[float, int, UplinkStats]:
    """Seconds to drain *items* through the uplink; records the subscriber saw; uplink stats."""
    config = UplinkConfig(
        host="127.0.0.1", port=port, vehicle_id=VEHICLE, sequence_file=db.parent / "sequence"
    )
    async with UploadQueue(db) as queue, Backend(port, "batches", records) as b:
        for i in range(0, len(items), PUT_CHUNK):
            await queue.put(items[i : i + PUT_CHUNK])
        start = time.perf_counter()
        async with Uplink(config, queue) as uplink:
            seen, _ = await b.done(within=120)
            # The last ack may follow the subscriber's last message; the queue has no event.
            while queue.stats.items:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - start
    return seconds, seen, uplink.stats


async def _baseline(port: int, records: list[CollectedRecord]) -> tuple[float, int]:
    """Seconds to publish *records* as one JSON message each, QoS 1, awaited one by one."""
    payloads = [_as_json(r) for r in records]
    topic = f"vehicles/{VEHICLE}/telemetry_json"
    async with (
        Backend(port, "json", records) as backend,
        aiomqtt.Client("127.0.0.1", port, identifier="bench-naive") as client,
    ):
        start = time.perf_counter()
        for payload in payloads:
            await client.publish(topic, payload, qos=1)
        seen, _ = await backend.done(within=120)
        seconds = time.perf_counter() - start
    return seconds, seen


async def _main(records: int, baseline_records: int, reps: int) -> bool:
    t = time.perf_counter()
    recs = _records(records)
    now = time.time()
    items = [QueueItem("telemetry", r.priority, encode_record(r), now) for r in recs]
    samples = sum(len(r.samples) for r in recs)
    base_recs = recs[:baseline_records]
    base_samples = sum(len(r.samples) for r in base_recs)
    print(
        f"drain to a local Mosquitto: {records:,} records, {samples:,} samples "
        f"({samples / records:.1f} per record, {sum(len(i.payload) for i in items) / records:.0f} "
        f"bytes encoded; made in {time.perf_counter() - t:.1f} s); baseline: the first "
        f"{len(base_recs):,}",
        flush=True,
    )
    base_rates: list[float] = []
    tbox_rates: list[float] = []
    lost = 0
    directory = Path(tempfile.mkdtemp(prefix="bench-drain-"))
    try:
        with _mosquitto(directory) as port:
            for rep in range(reps):
                base_s, base_seen = await _baseline(port, base_recs)
                tbox_s, tbox_seen, stats = await _tbox(
                    directory / f"queue-{rep}.db", port, recs, items
                )
                lost += (records - tbox_seen) + (len(base_recs) - base_seen)
                base_rates.append(base_samples / base_s)
                tbox_rates.append(samples / tbox_s)
                print(
                    f"  rep: baseline {base_rates[-1]:,.0f} samples/s ({base_s:.2f} s), tbox "
                    f"{tbox_rates[-1]:,.0f} samples/s ({tbox_s:.2f} s, {stats.batches} batches "
                    f"of {stats.bytes / stats.batches / 1024:.0f} KiB, "
                    f"{stats.records / stats.batches:,.0f} records each)",
                    flush=True,
                )
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    base = statistics.median(base_rates)
    tbox = statistics.median(tbox_rates)
    per_record = samples / records
    met = tbox >= TARGET and lost == 0
    print(
        f"  baseline: JSON message per record, aiomqtt QoS 1 awaited  "
        f"{base:>11,.0f} samples/s {base / per_record:>9,.0f} records/s"
    )
    print(
        f"  tbox: UploadQueue -> Uplink, zstd protobuf batches, QoS 1  "
        f"{tbox:>11,.0f} samples/s {tbox / per_record:>9,.0f} records/s "
        f"= {tbox / base:.1f}x baseline"
    )
    print(
        f"  (median of {reps}); missing records: {lost}; target >= {TARGET:,} samples/s "
        f"drained: {'PASS' if met else 'FAIL'}"
    )
    return met


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--baseline-records", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--subscribe", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscribe:
        port, mode, records, samples = args.subscribe
        asyncio.run(_subscribe(int(port), mode, int(records), int(samples)))
        return 0
    if min(args.records, args.baseline_records, args.reps) < 1:
        parser.error("--records, --baseline-records and --reps must be positive")
    met = asyncio.run(_main(args.records, min(args.baseline_records, args.records), args.reps))
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

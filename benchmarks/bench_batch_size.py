"""Benchmark: bytes per sample of telemetry batches against JSON lines, measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_batch_size.py [--reps N]``

Samples are real: the ``can0`` frames of the RAV4 log (tests/data), read with
``agent.canlog.read_log`` and decoded with ``can_dbc.Decoder``. They are grouped into records as a
periodic collection scheme would make them: one record per 1 s window holding every sample of the
scheme's signals in that window. Two schemes:

* ``10 signals``: speed, two wheel speeds, steering angle and rate, yaw rate, longitudinal
  acceleration, engine speed, gas pedal and brake pressure (floats and ints, 25-80 Hz) — the
  issue's case, and the one the target applies to;
* ``every signal``: all 170-odd decoded signals, checksums and counters included (shown to be
  honest about a harder mix).

For each, the same samples are encoded four ways and the bytes per sample printed:

* ``json``: one ``{"signal": …, "t": …, "value": …}`` object per line, uncompressed — the baseline
  named in the issue;
* ``json+zstd``: the same lines compressed with zstd level 3 — for fairness, to show what
  compression alone does;
* ``protobuf``: the serialized ``TelemetryBatch`` messages before compression;
* ``protobuf+zstd``: the batch payloads as published (``BatchBuilder``, 128 KiB cap).

The ratio of ``protobuf+zstd`` to ``json`` is the issue's target (≤ 30 %). Throughput is encoding
(``encode_record`` for every record, then ``BatchBuilder.build`` until all are batched) in samples
per second of CPU time (``time.process_time``), median of ``--reps`` runs, next to ``json.dumps``
of the same samples measured interleaved with it. Exits 1 if the ratio exceeds 30 % for the
10-signal scheme, 0 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import zstandard

from agent.canlog import read_log
from agent.telemetry_codec import BatchBuilder, decode_batch, encode_record, samples_of
from can_dbc import Decoder, load_dbc

RAV4 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rav4-2018-comma2k19"
TARGET_RATIO = 0.30
WINDOW_S = 1.0
TEN_SIGNALS = (
    ("SPEED", "SPEED"),
    ("WHEEL_SPEEDS", "WHEEL_SPEED_FL"),
    ("WHEEL_SPEEDS", "WHEEL_SPEED_FR"),
    ("STEER_ANGLE_SENSOR", "STEER_ANGLE"),
    ("STEER_ANGLE_SENSOR", "STEER_RATE"),
    ("KINEMATICS", "YAW_RATE"),
    ("KINEMATICS", "ACCEL_X"),
    ("ENGINE_RPM", "RPM"),
    ("GAS_PEDAL", "GAS_PEDAL"),
    ("BRAKE_MODULE", "BRAKE_PRESSURE"),
)


@dataclass(frozen=True, slots=True)
class Sample:
    """A decoded sample, shaped like agent.schemes' Sample."""

    signal: str
    t: float
    value: float | int | str


@dataclass(frozen=True, slots=True)
class Collected:
    """A record, shaped like agent.schemes' CollectedRecord."""

    scheme_id: str
    priority: int
    trigger_time: float
    samples: tuple[Sample, ...]


Decoded = list[tuple[float, str, str, float | int | str]]  # (t, message, signal, value)


def decode_log() -> Decoded:
    """Every signal of every known-id ``can0`` frame of the RAV4 log, in log order."""
    decoder = Decoder(load_dbc(RAV4 / "toyota_new_mc_pt_generated.dbc").database)
    out: Decoded = []
    for frame in read_log(RAV4 / "rav4_60s.log"):
        if frame.channel != "can0":
            continue
        decoded = decoder.decode(frame.arbitration_id, bytes(frame.data))
        if decoded is None:
            continue
        for name, value in decoded.signals.items():
            out.append((frame.timestamp, decoded.message, name, value))
    return out


def periodic_records(
    decoded: Decoded, scheme_id: str, keep: Callable[[str, str], str | None]
) -> list[Collected]:
    """1 s windows of the samples ``keep`` names (it returns the sample's name, or None)."""
    windows: dict[int, list[Sample]] = {}
    start = decoded[0][0]
    for t, message, signal, value in decoded:
        name = keep(message, signal)
        if name is not None:
            windows.setdefault(int((t - start) // WINDOW_S), []).append(Sample(name, t, value))
    return [
        Collected(scheme_id, 1, start + index * WINDOW_S, tuple(samples))
        for index, samples in sorted(windows.items())
    ]


def json_lines(records: Iterable[Collected]) -> bytes:
    """The issue's baseline: one JSON object per sample, one per line."""
    dumps = json.dumps
    return "".join(
        dumps({"signal": s.signal, "t": s.t, "value": s.value}) + "\n"
        for record in records
        for s in record.samples
    ).encode()


def encode_batches(records: list[Collected]) -> list[bytes]:
    """Records to published batch payloads, as the vehicle would: queue bytes, then batches."""
    payloads = [encode_record(record) for record in records]
    builder = BatchBuilder("JTMWFREV0JD000001")
    batches = []
    sequence = 1
    while payloads:
        batch = builder.build(payloads, sequence=sequence, created_time=1_533_245_000.0)
        batches.append(batch.payload)
        payloads = payloads[batch.count :]
        sequence += 1
    return batches


def check_round_trip(records: list[Collected], batches: list[bytes]) -> None:
    """The batches hold exactly the samples (times to the microsecond): no benchmark of a bug."""
    decoded = [
        s for payload in batches for r in decode_batch(payload).records for s in samples_of(r)
    ]
    original = [s for r in records for s in r.samples]
    assert len(decoded) == len(original)
    key = lambda s: (s.signal, round(s.t * 1e6))  # noqa: E731
    for got, want in zip(sorted(decoded, key=key), sorted(original, key=key), strict=True):
        assert got.signal == want.signal
        assert abs(got.t - want.t) < 1e-6
        assert got.value == want.value
        assert type(got.value) is type(want.value)


def bench(label: str, records: list[Collected], reps: int) -> float:
    """Print one scheme's figures; return the protobuf+zstd / json ratio."""
    samples = sum(len(r.samples) for r in records)
    signals = len({s.signal for r in records for s in r.samples})
    batches = encode_batches(records)
    check_round_trip(records, batches)
    as_json = json_lines(records)
    sizes = {
        "json": len(as_json),
        "json+zstd": len(zstandard.ZstdCompressor(level=3).compress(as_json)),
        "protobuf": sum(len(decode_batch(b).SerializeToString()) for b in batches),
        "protobuf+zstd": sum(len(b) for b in batches),
    }
    runs: dict[str, list[float]] = {"tbox": [], "json": []}
    timers: dict[str, Callable[[], object]] = {
        "tbox": lambda: encode_batches(records),
        "json": lambda: json_lines(records),
    }
    for rep in range(reps):
        for name in list(timers)[rep % 2 :] + list(timers)[: rep % 2]:  # alternate the order
            gc.collect()
            start = time.process_time()
            timers[name]()
            runs[name].append(samples / (time.process_time() - start))
    rate = {name: statistics.median(values) for name, values in runs.items()}
    ratio = sizes["protobuf+zstd"] / sizes["json"]
    print(
        f"[{label}] {samples} samples of {signals} signals in {len(records)} records "
        f"(1 s windows), {len(batches)} batch(es) under 128 KiB"
    )
    for name, size in sizes.items():
        print(
            f"  {name:<14} {size / samples:7.2f} bytes/sample  {size:>9} bytes  "
            f"{size / sizes['json']:6.1%} of json"
        )
    print(f"  ratio protobuf+zstd / json: {ratio:.1%} (target <= {TARGET_RATIO:.0%})")
    print(
        f"  encode throughput: {rate['tbox']:,.0f} samples/s (records + batches, zstd), "
        f"json.dumps {rate['json']:,.0f} samples/s: {rate['tbox'] / rate['json']:.2f}x"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=5, help="repetitions per encoder (median)")
    args = parser.parse_args(argv)
    logging.getLogger("cantools").setLevel(logging.ERROR)
    decoded = decode_log()
    wanted = set(TEN_SIGNALS)
    ten = periodic_records(decoded, "ten", lambda m, s: s if (m, s) in wanted else None)
    # Signal names repeat across messages (CHECKSUM, STEER_ANGLE…): qualify them all here.
    every = periodic_records(decoded, "every", lambda m, s: f"{m}.{s}")
    ratio = bench("10 signals", ten, args.reps)
    bench("every signal", every, args.reps)
    if ratio > TARGET_RATIO:
        print(f"FAIL: a batch takes {ratio:.1%} of the JSON bytes, above {TARGET_RATIO:.0%}")
        return 1
    print(f"OK: a batch takes at most {TARGET_RATIO:.0%} of the JSON bytes for the same samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Telemetry on the wire (C5): records, batches under a byte cap, decoding, sequence numbers."""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from enum import IntEnum
from itertools import accumulate, pairwise
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent import crashpoints
from agent.errors import InputError
from agent.proto import PROTO_ROOT
from agent.proto.tbox.v1 import (
    SCHEMA_VERSION,
    Record,
    SecurityEvent,
    SecurityEventBatch,
    Series,
    StringValues,
    TelemetryBatch,
    telemetry_pb2,
)
from agent.telemetry_codec import (
    ZSTD_MAGIC,
    Batch,
    BatchBuilder,
    DecodedSample,
    SequenceCounter,
    UnbatchableRecordError,
    decode_batch,
    decode_event_batch,
    encode_record,
    first_sequence,
    samples_of,
)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
Value = float | int | str


@dataclass(frozen=True, slots=True)
class Sample:
    """The shape of agent.schemes' Sample (not imported: the codec accepts a Protocol)."""

    signal: str
    t: float
    value: Value


@dataclass(frozen=True, slots=True)
class Collected:
    """The shape of agent.schemes' CollectedRecord."""

    scheme_id: str
    priority: int
    trigger_time: float
    samples: tuple[Sample, ...]


def _record(n: int = 50, *, start: float = T0, scheme: str = "periodic_1s") -> Collected:
    samples = []
    for i in range(n):
        t = start + i * 0.01
        samples.append(Sample("SPEED", t, 12.5 + i * 0.25))
        samples.append(Sample("GEAR", t + 0.001, i % 6))
        samples.append(Sample("DRIVE_MODE", t + 0.002, "ECO" if i % 10 else "SPORT"))
    return Collected(scheme, 3, start, tuple(samples))


def _noisy_record(rng: random.Random, start: float) -> Collected:
    """One second of three signals as real traffic has them: jittered times, drifting values."""
    samples = []
    speed = rng.uniform(0, 30)
    for i in range(100):
        t = start + i * 0.01 + rng.uniform(0, 0.003)
        speed += rng.gauss(0, 0.05)
        samples.append(Sample("SPEED", t, speed))
        samples.append(Sample("RPM", t + 0.001, rng.randrange(800, 3000)))
        samples.append(Sample("STEER", t + 0.002, rng.uniform(-90, 90)))
    return Collected("periodic_1s", 3, start, tuple(samples))


def _opaque_record(text: str) -> bytes:
    """A record of one string sample: its size is the text's, and random text won't compress."""
    series = Series(signal="r", strings=StringValues(values=[text]))
    return Record(scheme_id="opaque", series=[series]).SerializeToString()


def _by_signal(
    samples: list[DecodedSample] | tuple[Sample, ...],
) -> dict[str, list[tuple[float, Value]]]:
    out: dict[str, list[tuple[float, Value]]] = {}
    for s in samples:
        out.setdefault(s.signal, []).append((s.t, s.value))
    return out


def _assert_same_samples(decoded: list[DecodedSample], original: tuple[Sample, ...]) -> None:
    got, want = _by_signal(decoded), _by_signal(original)
    assert got.keys() == want.keys()

    def order(tv: tuple[float, Value]) -> tuple[int, str, str]:
        # By microsecond time; samples of one signal at the same microsecond but of different
        # types sit in different series, so among those only the type order is defined.
        value = int(tv[1]) if isinstance(tv[1], bool) else tv[1]
        return round(tv[0] * 1e6), type(value).__name__, repr(value)

    for signal, values in want.items():
        assert len(got[signal]) == len(values)
        pairs = zip(sorted(got[signal], key=order), sorted(values, key=order), strict=True)
        for (t_got, v_got), (t_want, v_want) in pairs:
            assert abs(t_got - t_want) <= 0.5e-6 + 2 * math.ulp(t_want)
            if isinstance(v_want, float) and math.isnan(v_want):
                assert isinstance(v_got, float)
                assert math.isnan(v_got)
            else:
                assert v_got == v_want
                expected_type = int if isinstance(v_want, int) else type(v_want)
                assert type(v_got) is expected_type


def _build_all(
    builder: BatchBuilder, payloads: list[bytes], first_sequence: int = 1
) -> list[Batch]:
    batches = []
    rest = payloads
    sequence = first_sequence
    while rest:
        batch = builder.build(rest, sequence=sequence, created_time=T0)
        batches.append(batch)
        rest = rest[batch.count :]
        sequence += 1
    return batches


# --------------------------------------------------------------------------------------------
# Records and round trips


def test_round_trip_keeps_values_types_and_times() -> None:
    records = [_record(start=T0 + k, scheme=f"s{k % 3}") for k in range(20)]
    payloads = [encode_record(r) for r in records]
    batches = _build_all(BatchBuilder("VIN-1"), payloads)
    assert len(batches) == 1
    batch = decode_batch(batches[0].payload)
    assert batch.vehicle_id == "VIN-1"
    assert batch.sequence == 1
    assert batch.schema_version == SCHEMA_VERSION == 1
    assert batch.created_time_us == round(T0 * 1e6)
    assert len(batch.records) == len(records)
    for decoded, record in zip(batch.records, records, strict=True):
        assert decoded.scheme_id == record.scheme_id
        assert decoded.priority == record.priority
        assert decoded.trigger_time_us == round(record.trigger_time * 1e6)
        _assert_same_samples(samples_of(decoded), record.samples)


def test_samples_are_columns_per_signal_with_delta_times() -> None:
    record = Record.FromString(encode_record(_record(5)))
    assert [(s.signal, s.WhichOneof("values")) for s in record.series] == [
        ("SPEED", "doubles"),
        ("GEAR", "ints"),
        ("DRIVE_MODE", "strings"),
    ]
    speed = record.series[0]
    assert list(speed.time_delta_us) == [0, 10_000, 10_000, 10_000, 10_000]
    assert list(speed.doubles.values) == [12.5, 12.75, 13.0, 13.25, 13.5]
    assert list(record.series[1].time_delta_us) == [1000, 10_000, 10_000, 10_000, 10_000]


def test_samples_before_the_trigger_have_negative_deltas() -> None:
    record = Collected("cond", 1, T0, (Sample("A", T0 - 2.0, 1), Sample("A", T0 + 1.0, 2)))
    decoded = Record.FromString(encode_record(record))
    assert list(decoded.series[0].time_delta_us) == [-2_000_000, 3_000_000]
    assert samples_of(decoded) == [DecodedSample("A", T0 - 2.0, 1), DecodedSample("A", T0 + 1.0, 2)]


class Gear(IntEnum):
    PARK = 0
    DRIVE = 3


class Celsius(float):
    pass


def test_value_types_at_the_edges() -> None:
    samples = (
        Sample("I", T0, -(2**63)),
        Sample("I", T0 + 1, 2**63 - 1),
        Sample("U", T0 + 2, 2**63),
        Sample("U", T0 + 3, 2**64 - 1),
        Sample("HUGE", T0 + 4, 2**70),
        Sample("B", T0 + 5, True),
        Sample("E", T0 + 6, Gear.DRIVE),
        Sample("F", T0 + 7, Celsius(21.5)),
        Sample("NAN", T0 + 8, math.nan),
        Sample("INF", T0 + 9, -math.inf),
        Sample("S", T0 + 10, "ÜBER ✓"),
        Sample("MIXED", T0 + 11, "OFF"),
        Sample("MIXED", T0 + 12, 7),
    )
    decoded = Record.FromString(encode_record(Collected("edge", 0, T0, samples)))
    kinds = [(s.signal, s.WhichOneof("values")) for s in decoded.series]
    assert ("U", "uints") in kinds
    assert ("HUGE", "doubles") in kinds
    assert ("MIXED", "strings") in kinds
    assert ("MIXED", "ints") in kinds
    values = {(s.signal, s.t): s.value for s in samples_of(decoded)}
    assert values["I", T0] == -(2**63)
    assert values["I", T0 + 1] == 2**63 - 1
    assert values["U", T0 + 3] == 2**64 - 1
    assert values["HUGE", T0 + 4] == float(2**70)
    assert values["B", T0 + 5] == 1
    assert type(values["B", T0 + 5]) is int
    assert values["E", T0 + 6] == 3
    assert type(values["E", T0 + 6]) is int
    assert values["F", T0 + 7] == 21.5
    assert type(values["F", T0 + 7]) is float
    assert math.isnan(values["NAN", T0 + 8])  # type: ignore[arg-type]
    assert values["INF", T0 + 9] == -math.inf
    assert values["S", T0 + 10] == "ÜBER ✓"
    assert values["MIXED", T0 + 11] == "OFF"
    assert values["MIXED", T0 + 12] == 7


def test_an_empty_record_is_valid() -> None:
    decoded = Record.FromString(encode_record(Collected("s", 1, T0, ())))
    assert decoded.scheme_id == "s"
    assert samples_of(decoded) == []


@pytest.mark.parametrize(
    ("record", "error", "text"),
    [
        (Collected("s", 1, math.nan, ()), ValueError, "trigger time"),
        (Collected("s", 1, T0, (Sample("A", math.inf, 1),)), ValueError, "signal 'A'"),
        (Collected("s", 1, T0, (Sample("A", 1e300, 1),)), ValueError, "out of range"),
        (Collected("s", -1, T0, ()), ValueError, "priority"),
        (Collected("s", 2**32, T0, ()), ValueError, "priority"),
        (Collected("s", 1, T0, (Sample("A", T0, None),)), TypeError, "NoneType"),  # type: ignore[arg-type]
        (Collected("s", 1, T0, (Sample("A", T0, 10**400),)), ValueError, "out of range"),
    ],
)
def test_unencodable_records_raise(record: Collected, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        encode_record(record)


sample_values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.text(max_size=12),
    st.booleans(),
)
records = st.builds(
    Collected,
    scheme_id=st.text(max_size=20),
    priority=st.integers(0, 2**32 - 1),
    trigger_time=st.floats(0, 4e9),
    samples=st.lists(
        st.builds(
            Sample,
            signal=st.sampled_from(["A", "B", "SPEED", "Ω"]),
            t=st.floats(0, 4e9),
            value=sample_values,
        ),
        max_size=30,
    ).map(tuple),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(records, min_size=1, max_size=8))
def test_round_trip_any_records(recs: list[Collected]) -> None:
    batch = decode_batch(
        BatchBuilder("V")
        .build([encode_record(r) for r in recs], sequence=5, created_time=T0)
        .payload
    )
    assert len(batch.records) == len(recs)
    for decoded, record in zip(batch.records, recs, strict=True):
        assert decoded.scheme_id == record.scheme_id
        _assert_same_samples(samples_of(decoded), record.samples)


# --------------------------------------------------------------------------------------------
# Batches: the wire format, independent of this package


def test_batch_is_zstd_of_exactly_what_protobuf_would_serialize() -> None:
    payloads = [encode_record(_record(10, start=T0 + k)) for k in range(5)]
    batch = BatchBuilder("VIN-1").build(payloads, sequence=42, created_time=T0)
    assert batch.payload[:4] == ZSTD_MAGIC
    raw = zstandard.ZstdDecompressor().decompress(batch.payload)
    assert len(raw) == batch.raw_bytes
    expected = TelemetryBatch(
        vehicle_id="VIN-1",
        sequence=42,
        schema_version=SCHEMA_VERSION,
        created_time_us=round(T0 * 1e6),
        records=[Record.FromString(p) for p in payloads],
    ).SerializeToString()
    assert raw == expected


def test_batch_decodes_with_only_the_generated_classes_and_zstd() -> None:
    record = _record(20)
    payload = (
        BatchBuilder("VIN-7").build([encode_record(record)], sequence=9, created_time=T0).payload
    )
    # What a backend does: zstd, parse, then rebuild times from the deltas as the .proto says.
    batch = telemetry_pb2.TelemetryBatch.FromString(
        zstandard.ZstdDecompressor().decompress(payload)
    )
    rebuilt = []
    for rec in batch.records:
        for series in rec.series:
            values = getattr(series, series.WhichOneof("values") or "doubles").values
            times = accumulate(series.time_delta_us, initial=rec.trigger_time_us)
            rebuilt += [
                (series.signal, us / 1e6, v) for us, v in zip(list(times)[1:], values, strict=True)
            ]
    assert batch.vehicle_id == "VIN-7"
    assert batch.sequence == 9
    _assert_same_samples([DecodedSample(*s) for s in rebuilt], record.samples)


def test_batch_decodes_with_bindings_generated_from_the_shipped_proto(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools is not installed (scripts/setup dev)")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"--python_out={tmp_path}",
            str(PROTO_ROOT / "tbox" / "v1" / "telemetry.proto"),
        ],
        check=True,
    )
    record = _record(3)
    payload_file = tmp_path / "batch.bin"
    payload_file.write_bytes(
        BatchBuilder("VIN-9").build([encode_record(record)], sequence=3, created_time=T0).payload
    )
    # A separate interpreter that never imports agent: only the fresh bindings and zstandard.
    script = textwrap.dedent(
        """
        import sys, zstandard
        sys.path.insert(0, sys.argv[1])
        from tbox.v1 import telemetry_pb2
        data = zstandard.ZstdDecompressor().decompress(open(sys.argv[2], "rb").read())
        batch = telemetry_pb2.TelemetryBatch.FromString(data)
        rec = batch.records[0]
        print(batch.vehicle_id, batch.sequence, rec.scheme_id, len(rec.series),
              rec.series[0].signal, rec.series[0].doubles.values[2])
        """
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", script, str(tmp_path), str(payload_file)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out == ["VIN-9", "3", "periodic_1s", "3", "SPEED", "13.0"]


# --------------------------------------------------------------------------------------------
# Batches: the byte cap, and records that cannot be batched


def test_a_backlog_splits_into_batches_under_the_cap_in_order() -> None:
    rng = random.Random(7)
    payloads = [encode_record(_noisy_record(rng, T0 + k)) for k in range(400)]
    builder = BatchBuilder("VIN-1", max_bytes=16 * 1024)
    batches = _build_all(builder, payloads)
    assert len(batches) > 3
    assert all(len(b.payload) <= 16 * 1024 for b in batches)
    assert [b.sequence for b in batches] == list(range(1, len(batches) + 1))
    # Most batches are well filled: the ratio guess converges.
    assert sum(len(b.payload) for b in batches[:-1]) / (len(batches) - 1) > 0.7 * 16 * 1024
    decoded = [r for b in batches for r in decode_batch(b.payload).records]
    assert [r.SerializeToString() for r in decoded] == payloads


payload_lists = st.lists(
    st.one_of(
        records.map(encode_record),
        st.binary(max_size=3000).map(lambda b: _opaque_record(b.hex())),
        st.integers(1, 40_000).map(lambda n: _opaque_record(os.urandom(n).hex())),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload_lists, st.integers(256, 48 * 1024), st.integers(1, 9))
def test_no_batch_ever_exceeds_the_cap(payloads: list[bytes], cap: int, level: int) -> None:
    builder = BatchBuilder("VIN-" + "x" * 40, max_bytes=cap, level=level)
    rest, delivered = payloads, []
    sequence = 2**64 - 1 - len(payloads)  # the longest header
    while rest:
        try:
            batch = builder.build(rest, sequence=sequence, created_time=T0)
        except UnbatchableRecordError as e:
            assert e.reason == "too_large"
            alone = zstandard.ZstdCompressor(level=level).compress(
                builder.header(sequence=sequence, created_time=T0)
                + b"\x2a"
                + _varint(len(rest[0]))
                + rest[0]
            )
            assert len(alone) > cap
            event("a record too large for any batch")
            rest = rest[1:]
            continue
        assert 1 <= batch.count <= len(rest)
        if batch.count < len(rest):
            event("a batch filled before the end of the backlog")
        assert len(batch.payload) <= cap
        delivered += [r.SerializeToString() for r in decode_batch(batch.payload).records]
        assert delivered[-batch.count :] == rest[: batch.count]
        rest = rest[batch.count :]
        sequence += 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def test_a_record_too_large_even_compressed_is_reported_not_skipped() -> None:
    big = _opaque_record(os.urandom(4000).hex())
    small = encode_record(_record(5))
    builder = BatchBuilder("V", max_bytes=2048)
    batch = builder.build([small, small, big, small], sequence=1, created_time=T0)
    assert batch.count == 2
    with pytest.raises(UnbatchableRecordError, match="more than the batch cap of 2048") as caught:
        builder.build([big, small], sequence=2, created_time=T0)
    assert caught.value.reason == "too_large"
    assert isinstance(caught.value, InputError)


def test_a_malformed_payload_ends_the_batch_then_is_reported() -> None:
    good = encode_record(_record(5))
    broken = good + b"\x0a\x05ab"  # a string field that claims 5 bytes and has 2
    builder = BatchBuilder("V")
    batch = builder.build([good, good, broken, good], sequence=1, created_time=T0)
    assert batch.count == 2
    with pytest.raises(
        UnbatchableRecordError, match=r"does not parse as tbox\.v1\.Record"
    ) as caught:
        builder.build([broken, good], sequence=2, created_time=T0)
    assert caught.value.reason == "malformed"


def test_highly_compressible_backlogs_fill_the_cap() -> None:
    # Constant signals compress ~50x: the builder must not stop at the uncompressed cap.
    flat = Collected("flat", 1, T0, tuple(Sample("X", T0 + i * 0.01, 0) for i in range(500)))
    payloads = [encode_record(flat)] * 2000
    batches = _build_all(BatchBuilder("V", max_bytes=8192), payloads)
    assert all(len(b.payload) <= 8192 for b in batches)
    assert batches[0].raw_bytes > 5 * 8192


def test_the_uncompressed_size_is_bounded_too() -> None:
    flat = encode_record(Collected("flat", 1, T0, tuple(Sample("X", T0, 0) for _ in range(1000))))
    builder = BatchBuilder("V", max_bytes=4096, max_raw_bytes=3 * len(flat) + 100)
    batch = builder.build([flat] * 10, sequence=1, created_time=T0)
    assert batch.count == 3
    assert batch.raw_bytes <= 3 * len(flat) + 100
    with pytest.raises(UnbatchableRecordError, match="uncompressed batch limit") as caught:
        BatchBuilder("V", max_bytes=4096, max_raw_bytes=8192).build(
            [flat * (8192 // len(flat) + 1)], sequence=1, created_time=T0
        )
    assert caught.value.reason == "too_large"


def test_build_needs_payloads_and_a_sane_cap() -> None:
    with pytest.raises(ValueError, match="no payloads"):
        BatchBuilder("V").build([], sequence=1, created_time=T0)
    with pytest.raises(ValueError, match="too small"):
        BatchBuilder("V", max_bytes=100)
    with pytest.raises(ValueError, match="below max_bytes"):
        BatchBuilder("V", max_bytes=4096, max_raw_bytes=1000)


def test_security_events_batch_the_same_way() -> None:
    events = [
        SecurityEvent(
            event_definition_id=0x8001, count=i + 1, rule_id="flood", can_id=0x10, time_us=i
        ).SerializeToString()
        for i in range(30)
    ]
    builder = BatchBuilder("VIN-3", kind="events")
    batch = builder.build(events, sequence=7, created_time=T0)
    decoded = decode_event_batch(batch.payload)
    assert isinstance(decoded, SecurityEventBatch)
    assert decoded.vehicle_id == "VIN-3"
    assert decoded.sequence == 7
    assert [e.count for e in decoded.events] == list(range(1, 31))
    assert decoded.events[0].HasField("can_id")
    with pytest.raises(UnbatchableRecordError):
        builder.build([b"\xff\xff\xff"], sequence=8, created_time=T0)


# --------------------------------------------------------------------------------------------
# Decoding errors


def test_decoding_refuses_what_is_not_a_batch() -> None:
    with pytest.raises(InputError, match="not a zstd frame"):
        decode_batch(b"\x0a\x03VIN")
    with pytest.raises(InputError, match=r"does not decompress|broken zstd"):
        decode_batch(ZSTD_MAGIC + b"\x00" * 20)
    not_proto = zstandard.ZstdCompressor().compress(b"\xff" * 64)
    with pytest.raises(InputError, match=r"not a tbox\.v1\.TelemetryBatch"):
        decode_batch(not_proto)
    bomb = zstandard.ZstdCompressor().compress(b"\x00" * 2_000_000)
    with pytest.raises(InputError, match="more than 1000000"):
        decode_batch(bomb, max_size=1_000_000)
    with pytest.raises(InputError, match="events payload"):
        decode_event_batch(b"nope")


# --------------------------------------------------------------------------------------------
# Sequence numbers


def test_first_sequence_continues_after_the_reservation_or_from_the_clock() -> None:
    assert first_sequence(41, now=T0) == 42
    assert first_sequence(0, now=T0) == 1
    assert first_sequence(None, now=T0) == round(T0 * 1e6)
    assert first_sequence(None, now=0.0) == 1


def test_counter_reserves_blocks_and_never_reuses_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    counter = SequenceCounter(path, block=10, clock=lambda: 5.0)
    numbers = [counter.next() for _ in range(3)]
    assert numbers == [5_000_000, 5_000_001, 5_000_002]
    assert path.read_text() == "5000009\n"  # one reservation for the first ten
    numbers += [counter.next() for _ in range(8)]
    assert path.read_text() == "5000019\n"
    # A crash: the object is gone without any goodbye; the next process starts after the block.
    reopened = SequenceCounter(path, block=10, clock=lambda: 0.0)
    assert reopened.next() == 5_000_020
    assert not list(tmp_path.glob(".*.tmp"))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.integers(0, 25), min_size=1, max_size=8), st.integers(1, 12))
def test_numbers_strictly_increase_across_any_crashes(
    tmp_path: Path, runs: list[int], block: int
) -> None:
    path = tmp_path / f"seq-{block}-{'-'.join(map(str, runs))}"
    path.unlink(missing_ok=True)
    seen: list[int] = []
    for count in runs:  # each run is a process that hands out `count` numbers, then crashes
        counter = SequenceCounter(path, block=block, clock=lambda: 1.0)
        seen += [counter.next() for _ in range(count)]
    assert all(a < b for a, b in pairwise(seen))


def test_an_unreadable_file_restarts_from_the_clock(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sequence"
    path.write_text("garbage")
    with caplog.at_level(logging.WARNING):
        counter = SequenceCounter(path, clock=lambda: 2.5)
    assert counter.next() == 2_500_000
    assert "restarting from the clock" in caplog.text


def test_counter_refuses_to_hand_out_numbers_it_cannot_reserve(tmp_path: Path) -> None:
    counter = SequenceCounter(tmp_path / "missing-dir" / "sequence")
    with pytest.raises(OSError):
        counter.next()


def test_a_power_cut_during_a_reservation_loses_no_uniqueness(tmp_path: Path) -> None:
    path = tmp_path / "sequence"
    script = textwrap.dedent(
        f"""
        from agent.telemetry_codec import SequenceCounter
        counter = SequenceCounter({str(path)!r}, block=5, clock=lambda: 1.0)
        for _ in range(100):
            print(counter.next(), flush=True)
        """
    )
    handed_out: list[int] = []
    for point in ("sequence.reserve_written", "sequence.reserve_renamed"):
        for at in (1, 2, 3):
            proc = subprocess.run(
                [sys.executable, "-c", script],
                check=False,
                env={**os.environ, crashpoints.ENV_VAR: f"{point}:{at}"},
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            assert proc.returncode == crashpoints.EXIT_STATUS, proc.stderr
            handed_out += [int(line) for line in proc.stdout.split()]
    assert handed_out == sorted(set(handed_out))
    assert len(handed_out) > 10

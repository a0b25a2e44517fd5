"""Attacks on live traffic (sim.attack_live): injected into a virtual bus, or in the simulator."""

from __future__ import annotations

import asyncio
import csv
import functools
import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from agent.canlog import read_log
from agent.errors import UsageError
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from can_dbc.integrity import IntegritySpec
from sim import LogRecorder, SimulationRunner, TrafficGenerator, VehicleModel, load_scenario
from sim.attack_live import AttackedProducer, LiveAttack, SentLabelSink, sent_description_path
from sim.attacks import DiagnosticAbuse, Flooding, Masquerade, Replay, Spoofing, Suspension


@functools.cache
def sample_db() -> Any:
    return load_dbc(SAMPLE_VEHICLE_DBC).database


def read_labels(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
    assert path.read_text().startswith("index,time,attack,channel,id\n")
    return rows


async def ecu(bus: can.BusABC, frame_id: int, period: float, stop: asyncio.Event) -> None:
    """A real sender: *frame_id* every *period* seconds, a counter in byte 0."""
    for counter in itertools.count():
        if stop.is_set():
            return
        bus.send(can.Message(arbitration_id=frame_id, is_extended_id=False, data=[counter & 0xFF]))
        await asyncio.sleep(period)


def drain(bus: can.BusABC) -> list[can.Message]:
    frames = []
    while (msg := bus.recv(0.0)) is not None:
        frames.append(msg)
    return frames


async def test_spoofing_injected_into_a_virtual_bus(tmp_path: Path) -> None:
    channel = f"attack-{uuid.uuid4().hex}"
    sender = can.Bus(interface="virtual", channel=channel)
    listener = can.Bus(interface="virtual", channel=channel)
    stop = asyncio.Event()
    labels_file = tmp_path / "live.labels.csv"
    attack = Spoofing(start=0.3, duration=0.6, target_id=0x200, data=bytes.fromhex("EE"))
    try:
        real = asyncio.create_task(ecu(sender, 0x200, 0.01, stop))
        live = LiveAttack(f"virtual://{channel}", attack)
        describe = live.stream.describe
        live.labels = SentLabelSink(labels_file, lambda _: "spoofing", describe=describe)
        async with live.labels, live:
            await asyncio.wait_for(live.run(), 5.0)
        stop.set()
        await real
        seen = drain(listener)
    finally:
        sender.shutdown()
        listener.shutdown()
    forged = [m for m in seen if bytes(m.data) == b"\xee"]
    genuine = [m for m in seen if bytes(m.data) != b"\xee"]
    assert live.received >= 20  # it read the real sender to learn its rate
    rate = live.stream.describe()["parameters"]["rate"]
    assert 20 < rate < 110  # asyncio.sleep(0.01) is 10 ms or more on a busy machine
    assert len(forged) == live.stream.injected == pytest.approx(0.6 * rate, abs=3)
    assert live.sink is not None and live.sink.frames_sent == len(forged)
    # Both streams of the id interleave on the wire.
    kinds = [bytes(m.data) == b"\xee" for m in seen]
    assert sum(1 for a, b in itertools.pairwise(kinds) if a != b) > 10
    assert len(genuine) > 20
    rows = read_labels(labels_file)
    assert [int(r["index"]) for r in rows] == list(range(len(forged)))
    assert {(r["attack"], r["channel"], r["id"]) for r in rows} == {("spoofing", channel, "0x200")}
    described = json.loads(sent_description_path(labels_file).read_text())
    assert described["kind"] == "spoofing" and described["frames_sent"] == len(forged)
    assert described["end"] - described["start"] == pytest.approx(0.6)


async def test_flooding_and_diagnostics_need_no_traffic_to_learn_from() -> None:
    channel = f"attack-{uuid.uuid4().hex}"
    listener = can.Bus(interface="virtual", channel=channel)
    try:
        for attack, expected in (
            (Flooding(start=0.1, duration=0.3, rate=1000), 300),
            (DiagnosticAbuse(start=0.0, duration=0.35, interval=0.1), 12),
        ):
            async with LiveAttack(f"virtual://{channel}", attack) as live:
                await asyncio.wait_for(live.run(), 5.0)
            seen = drain(listener)
            assert len(seen) == expected == live.stream.injected
            assert {m.arbitration_id for m in seen} == set(attack.targets())
    finally:
        listener.shutdown()


async def test_replay_on_a_live_bus_resends_what_it_heard() -> None:
    channel = f"attack-{uuid.uuid4().hex}"
    sender = can.Bus(interface="virtual", channel=channel)
    listener = can.Bus(interface="virtual", channel=channel)
    stop = asyncio.Event()
    attack = Replay(start=0.4, duration=0.3, target_ids=(0x321,))
    try:
        real = asyncio.create_task(ecu(sender, 0x321, 0.02, stop))
        async with LiveAttack(f"virtual://{channel}", attack) as live:
            await asyncio.wait_for(live.run(), 5.0)
        stop.set()
        await real
        seen = drain(listener)
    finally:
        sender.shutdown()
        listener.shutdown()
    counters = [m.data[0] for m in seen]
    replayed = live.stream.injected
    assert 5 <= replayed <= 16
    # The replayed counters went by once before: the sequence steps back when the replay starts.
    assert any(b < a for a, b in itertools.pairwise(counters))


@pytest.mark.parametrize("attack", [Suspension(target_ids=(1,)), Masquerade(target_id=1)])
def test_a_live_bus_cannot_silence_a_sender(attack: Any) -> None:
    with pytest.raises(UsageError, match=r"cannot silence another sender on a live bus: run it"):
        LiveAttack("virtual://x", attack)


async def test_masquerade_inside_the_simulator_with_labels_of_what_was_sent(
    tmp_path: Path,
) -> None:
    """The path of `tbox sim run|serve --attack … --record R --attack-labels L`."""
    db = sample_db()
    model = VehicleModel(load_scenario("city"), seed=1)
    generator = TrafficGenerator({"can0": [db]}, model, seed=1)
    message = db.get_message_by_frame_id(0xB0)
    attack = Masquerade(start=2.0, duration=2.0, target_id=0xB0, message=message, value=77.0)
    producer = AttackedProducer(generator, attack, track_labels=True)
    record, labels_file = tmp_path / "run.log", tmp_path / "run.labels.csv"
    async with (
        LogRecorder(record) as recorder,
        SentLabelSink(labels_file, producer.label_of, describe=producer.stream.describe) as labels,
    ):
        runner = SimulationRunner(producer, [recorder, labels], speed=0)
        async with runner:
            producer.start_time = 1_700_000_000.0
            await runner.run(6.0)
    frames = list(read_log(record))
    rows = read_labels(labels_file)
    assert len(rows) == producer.stream.injected == pytest.approx(200, abs=2)
    spec = IntegritySpec.for_message(message)
    assert spec is not None
    for row in rows:
        frame = frames[int(row["index"])]  # the index in the sent stream is the index in --record
        assert float(row["time"]) == pytest.approx(frame.timestamp, abs=1e-6)
        assert frame.arbitration_id == 0xB0 and row["id"] == "0x0B0"
        assert spec.verify(frame.data) is True
        assert db.decode_message(0xB0, bytes(frame.data))["ESC_VehSpd"] == pytest.approx(77.0)
    labelled = {int(r["index"]) for r in rows}
    start = 1_700_000_000.0 + 2.0
    in_window = [
        i
        for i, m in enumerate(frames)
        if m.arbitration_id == 0xB0 and start <= m.timestamp < start + 2.0
    ]
    assert set(in_window) == labelled  # the real sender is silent in the window
    counters = [spec.read_counter(m.data) for m in frames if m.arbitration_id == 0xB0]
    steps = [(b - a) % 16 for a, b in itertools.pairwise(c for c in counters if c is not None)]
    assert steps.count(1) >= len(steps) - 1  # continuous, except where the real ECU resumes
    described = json.loads(sent_description_path(labels_file).read_text())
    assert described["start"] == pytest.approx(start)
    assert described["injected"] == len(rows)
    # Forged frames come late by a random jitter: one more or less may fit in the window.
    assert described["removed"] == pytest.approx(len(rows), abs=1)
    assert described["frames_sent"] == len(frames)

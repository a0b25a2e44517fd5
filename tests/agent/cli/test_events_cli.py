"""``tbox events watch``: security event batches, encoded as the agent's uplink encodes them, are
published to a real Mosquitto and the watcher's lines, JSON, warnings and errors are checked."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from agent.cli import main
from agent.telemetry_codec import BatchBuilder
from security.events import ForensicFrame, SecurityEvent, context_data
from security.rules import Severity
from tests.mosquitto_broker import MosquittoBroker, free_port, mosquitto_binary

VEHICLE = "V-EVT"
TOPIC = f"vehicles/{VEHICLE}/events"
T0 = 1_796_569_674_275_983  # 2026-12-06 15:07:54.275983 UTC, in µs

needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")


def _events() -> list[SecurityEvent]:
    allowlist = SecurityEvent(
        event_definition_id=0xA001,
        idsm_instance_id=1,
        sensor_instance_id=1,
        count=1969,
        time_us=T0,
        context_data=context_data(0, bytes(8)),
        rule_id="can0.allowlist",
        severity=Severity.HIGH,
        channel="can0",
        can_id=0,
        observed="CAN id 0x0",
        expected="one of the 42 ids allowed on can0",
        description="only the CAN ids of the clean recording appear on can0",
        last_time_us=T0 + 1_000_000,
        frames=(
            ForensicFrame(-1500, "can0", 0x2A0, False, False, bytes.fromhex("1b14"), False),
            ForensicFrame(0, "can0", 0x000, False, False, bytes(8), True),
            ForensicFrame(250, "can0", 0x18DAF110, True, False, b"", False),
        ),
    )
    flood = SecurityEvent(
        event_definition_id=0xA002,
        idsm_instance_id=1,
        sensor_instance_id=2,
        count=1,
        time_us=T0 + 37_084,
        context_data=context_data(None, None),
        rule_id="can0.flood",
        severity=Severity.MEDIUM,
        channel="can0",
        can_id=None,
        observed="more than 198 frames in 100 ms",
        expected="at most 198 frames in 100 ms (the peak × 1.5)",
        description="",
        last_time_us=T0 + 37_084,
    )
    spoof = SecurityEvent(
        event_definition_id=0xA003,
        idsm_instance_id=1,
        sensor_instance_id=3,
        count=2,
        time_us=T0 + 2_000_000,
        context_data=context_data(0x0B0, bytes(8)),
        rule_id="can0.signal-rate",
        severity=Severity.CRITICAL,
        channel="can0",
        can_id=0x0B0,
        observed="ESC_VehSpd changed by 180 km/h in 10 ms",
        expected="at most 12 km/h per 10 ms",
        description="signals change no faster than in the clean recording",
        last_time_us=T0 + 2_500_000,
    )
    return [allowlist, flood, spoof]


def _batch(events: list[SecurityEvent], sequence: int) -> bytes:
    """The payload the agent's uplink publishes for these events."""
    builder = BatchBuilder(VEHICLE, kind="events")
    payloads = [e.to_proto().SerializeToString() for e in events]
    batch = builder.build(payloads, sequence=sequence, created_time=T0 / 1e6)
    assert batch.count == len(events)
    return batch.payload


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with (
        tempfile.TemporaryDirectory(prefix="tbox-events-") as tmp,
        MosquittoBroker(Path(tmp)) as running,
    ):
        yield running


async def _watch(broker: MosquittoBroker, *args: str) -> asyncio.subprocess.Process:
    """``tbox events watch`` in a process of its own, once it is subscribed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "events",
        "watch",
        "--broker",
        broker.url,
        "--vehicle-id",
        VEHICLE,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "TZ": "UTC"},
    )
    assert process.stderr is not None
    line = await asyncio.wait_for(process.stderr.readline(), 20)
    assert b"watching vehicles/V-EVT/events on 127.0.0.1:" in line, line
    return process


async def _finish(process: asyncio.subprocess.Process) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def _publish(broker: MosquittoBroker, *payloads: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for payload in payloads:
            await client.publish(TOPIC, payload, qos=1)


@needs_mosquitto
async def test_one_explained_line_per_event_garbage_warned_about_resent_batch_shown_once(
    broker: MosquittoBroker,
) -> None:
    process = await _watch(broker, "--count", "3", "--frames", "--timeout", "20")
    allowlist, flood, spoof = _events()
    first = _batch([allowlist, flood], sequence=7)
    await _publish(broker, b"not zstd", first, first, _batch([spoof], sequence=8))
    code, out, err = await _finish(process)
    assert code == 0, err
    assert out.splitlines() == [
        "2026-12-06 15:07:54.275  HIGH      can0.allowlist  can0 0x000  ×1969 in 1.00 s  "
        "observed CAN id 0x0; expected one of the 42 ids allowed on can0 — only the CAN ids of "
        "the clean recording appear on can0",
        "       -1.500 ms  can0 0x2A0      [2] 1B 14",
        "       +0.000 ms  can0 0x000      [8] 00 00 00 00 00 00 00 00  ← flagged",
        "       +0.250 ms  can0 0x18DAF110 [0] -",
        "2026-12-06 15:07:54.313  MEDIUM    can0.flood  can0 -  ×1  "
        "observed more than 198 frames in 100 ms; expected at most 198 frames in 100 ms (the peak "
        "× 1.5)",
        "2026-12-06 15:07:56.275  CRITICAL  can0.signal-rate  can0 0x0B0  ×2 in 0.50 s  "
        "observed ESC_VehSpd changed by 180 km/h in 10 ms; expected at most 12 km/h per 10 ms "
        "— signals change no faster than in the clean recording",
    ]
    assert (
        "tbox events: warning: vehicles/V-EVT/events: undecodable payload of 8 bytes skipped: "
        "events payload is not a zstd frame" in err
    )
    assert "Traceback" not in err
    assert err.rstrip().endswith(
        "3 security events in 2 batches (1 repeated batches skipped, 1 undecodable payloads)"
    )


@needs_mosquitto
async def test_json_is_what_tbox_ids_run_prints(broker: MosquittoBroker) -> None:
    process = await _watch(broker, "--json", "--count", "2", "--timeout", "20")
    events = _events()
    await _publish(broker, _batch(events, sequence=1))
    code, out, err = await _finish(process)
    assert code == 0, err
    # --count 2 stops after two events even though the batch held three; the very bytes of C4.
    assert out.splitlines() == [json.dumps(e.to_json()) for e in events[:2]]


@needs_mosquitto
async def test_timeout_ends_the_watch_and_fails_only_when_count_events_did_not_come(
    broker: MosquittoBroker,
) -> None:
    waiting = await _watch(broker, "--count", "2", "--timeout", "0.5")
    watching = await _watch(broker, "--timeout", "0.5")
    await _publish(broker, _batch(_events()[:1], sequence=1))
    code, out, err = await _finish(waiting)
    assert code == 1 and out.count("\n") == 1
    assert "tbox events: error: 1 of 2 security events from vehicle V-EVT within 0.5 s" in err
    code, out, err = await _finish(watching)
    assert code == 0 and out.count("\n") == 1, err


def test_an_unreachable_broker_is_one_explained_line(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    argv = ["events", "watch", "--broker", f"mqtt://127.0.0.1:{port}", "--vehicle-id", VEHICLE]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tbox events: error: broker 127.0.0.1:{port}: cannot connect: ")
    assert err.rstrip().endswith("(is the broker running? is --broker right?)")
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "http://x", "--vehicle-id", "V"], "expected mqtt://HOST:PORT"),
        (["--broker", "mqtt://h:99999", "--vehicle-id", "V"], "not a number from 1 to 65535"),
        (["--broker", "mqtt://h", "--vehicle-id", "V/#"], "has no '/', '+', '#'"),
        (["--broker", "mqtt://h", "--vehicle-id", "V", "--count", "0"], "at least 1"),
        (["--broker", "mqtt://h", "--vehicle-id", "V", "--timeout", "0"], "more than 0"),
    ],
)
def test_bad_usage_exits_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["events", "watch", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("words", [["events"], ["events", "watch"]], ids=" ".join)
def test_help_and_unknown_options(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0
    assert "usage: tbox events" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2


@pytest.mark.parametrize("url", ["mqtt://[::1", "mqtt://host/path", "http://host:1883", "mqtt://"])
def test_a_malformed_broker_url_is_a_usage_error(url: str) -> None:
    from agent.cli.broker_args import parse_broker_url
    from agent.errors import UsageError

    with pytest.raises(UsageError, match="--broker"):
        parse_broker_url(url)

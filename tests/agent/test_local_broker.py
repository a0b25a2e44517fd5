"""The Mosquitto test fixture itself: a real broker, QoS 1 round trip, kill and restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from agent.local_broker import LocalBroker as MosquittoBroker


async def _round_trip(port: int, topic: str, payload: bytes) -> bytes:
    async with (
        aiomqtt.Client("127.0.0.1", port, identifier=f"sub-{topic}") as sub,
        aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{topic}") as pub,
    ):
        await sub.subscribe(topic, qos=1)
        await pub.publish(topic, payload, qos=1)
        async with asyncio.timeout(5):
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message")


async def test_broker_round_trip_survives_kill_and_restart(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path) as broker:
        assert await _round_trip(broker.port, "vehicles/v1/telemetry", b"\x01\x02") == b"\x01\x02"
        broker.kill()
        with pytest.raises(aiomqtt.MqttError):
            await _round_trip(broker.port, "vehicles/v1/telemetry", b"x")
        broker.start()
        assert await _round_trip(broker.port, "vehicles/v1/state", b"back") == b"back"

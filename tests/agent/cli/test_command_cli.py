"""``tbox command``: keygen, and send against a running agent through a real Mosquitto."""

from __future__ import annotations

import asyncio
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.busurl import parse_bus_url
from agent.cli import main
from agent.config.model import (
    AgentConfig,
    BusConfig,
    CommandsConfig,
    MqttConfig,
    QueueConfig,
    StatusConfig,
)
from agent.service import AgentService, running
from can_dbc import SAMPLE_VEHICLE_DBC
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary


@pytest.fixture
def work() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="tbox-cmd-") as tmp:
        yield Path(tmp)


def test_keygen_writes_a_private_key_only_its_owner_reads(
    work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["command", "keygen", str(work / "ops.pem")]) == 0
    assert stat.S_IMODE((work / "ops.pem").stat().st_mode) == 0o600
    assert (work / "ops.pem.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert main(["command", "keygen", str(work / "ops.pem")]) == 2
    assert "exists: not overwriting a key" in capsys.readouterr().err


async def _send(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        "command",
        "send",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
async def test_send_signs_publishes_and_prints_the_result(work: Path) -> None:
    assert main(["command", "keygen", str(work / "ops.pem")]) == 0
    assert main(["command", "keygen", str(work / "other.pem")]) == 0
    (work / "broker").mkdir()
    with MosquittoBroker(work / "broker") as broker:
        state = work / "state"
        config = AgentConfig(
            vehicle_id="V-CMD",
            state_dir=state,
            buses=(
                BusConfig(
                    parse_bus_url(f"virtual://cmd-{time.monotonic_ns()}?name=can0"),
                    (Path(SAMPLE_VEHICLE_DBC),),
                ),
            ),
            queue=QueueConfig(state / "queue.db"),
            status=StatusConfig(work / "status.sock"),
            mqtt=MqttConfig(host="127.0.0.1", port=broker.port, keepalive_s=5),
            commands=CommandsConfig(trusted_keys=(("ops", work / "ops.pem.pub"),)),
            source="test",
        )
        common = ("--broker", broker.url, "--vehicle-id", "V-CMD", "--timeout", "20")
        async with running(AgentService(config)):
            code, out, _ = await _send("ping", *common, "--key", str(work / "ops.pem"))
            assert (code, out) == (0, "ping: ok: pong\n")
            code, out, _ = await _send("ping", *common, "--key", str(work / "other.pem"))
            assert code == 1 and out.startswith("ping: rejected (bad_signature)")
            code, out, _ = await _send(
                "schemes", *common, "--key", str(work / "ops.pem"), "--body", "[[scheme]]\nx = 1\n"
            )
            assert code == 1 and out.startswith("schemes: failed (invalid_body)")
    code, _, err = await _send("ping", "--broker", "http://x", "--vehicle-id", "V", "--key", "k")
    assert code == 2 and "expected mqtt://HOST:PORT" in err

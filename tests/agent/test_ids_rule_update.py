"""IDS rule updates over the command channel (``cmd/ids-rules``): signed, checked, applied to the
running engine, persisted for the next start, refused when older than what is applied."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.commands import DEFAULT_MAX_BYTES
from agent.config.model import AgentConfig, IdsConfig
from agent.proto.tbox.v1 import CommandResult
from agent.service import AgentService, running
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from security.learn import learn_rules
from security.rulefile import format_rules
from sim import TrafficGenerator, VehicleModel, load_scenario
from tests.agent import test_service
from tests.agent.test_service import VEHICLE, _backend, _config, _spec, _until, _vehicle
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")

# The agent tests' fixtures: a short directory (unix socket paths), Mosquitto, a signing key.
short_dir = test_service.short_dir
broker = test_service.broker
signing_key = test_service.signing_key

OK, FAILED, REJECTED = (
    CommandResult.STATUS_OK,
    CommandResult.STATUS_FAILED,
    CommandResult.STATUS_REJECTED,
)

DLC = """
[[rule]]
id = "can0.dlc"
kind = "dlc"
severity = "medium"
description = "lengths of the sample vehicle's fastest ids"
bus = "can0"
messages = [{ can_id = 0x0A0, dlc = 8 }, { can_id = 0x0B0, dlc = 8 }]
"""
SILENCE = """
[[rule]]
id = "can0.silence"
kind = "suspension"
severity = "high"
description = "0x0A0 keeps coming"
bus = "can0"
messages = [{{ can_id = 0x0A0, max_silence_ms = {ms} }}]
"""
FLOOD = """
[[rule]]
id = "can0.flood"
kind = "flood"
severity = "high"
description = "bus load"
bus = "can0"
max_frames = 5000
"""


def _rules(revision: int, *rules: str) -> bytes:
    return (f"version = 1\nrevision = {revision}\n" + "".join(rules)).encode()


def _ids_config(short_dir: Path, port: int, pub: Path, name: str) -> AgentConfig:
    rules = short_dir / "rules.toml"
    if not rules.exists():
        rules.write_bytes(_rules(1, DLC, SILENCE.format(ms=500)))
    return replace(_config(short_dir, port, _spec(name), pub), ids=IdsConfig(rules=rules))


async def test_a_signed_rule_update_is_applied_persisted_and_kept_after_a_restart(
    short_dir: Path, broker: MosquittoBroker, signing_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, pub = signing_key
    config = _ids_config(short_dir, broker.port, pub, "ids1")
    pushed_file = config.state_dir / "pushed-ids-rules.toml"
    update = _rules(2, DLC, SILENCE.format(ms=1000), FLOOD)
    service = AgentService(config)
    async with (
        _backend(broker.port) as backend,
        running(service),
        _vehicle(config.buses[0].spec),
    ):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        await _until(lambda: service.snapshot()["ids"]["frames"] > 100)
        assert service.snapshot()["ids"]["rules_revision"] == 1

        forged = await backend.command(Ed25519PrivateKey.generate(), "ids-rules", update)
        assert (forged.status, forged.error_code) == (REJECTED, "bad_signature")
        assert service.snapshot()["commands"]["by_code"] == {"bad_signature": 1}

        broken = update.replace(b"max_frames = 5000", b"max_frames = -5")
        bad = await backend.command(key, "ids-rules", broken)
        assert (bad.status, bad.error_code) == (FAILED, "invalid_body")
        assert bad.message.startswith("cmd/ids-rules:")
        assert "rule[2].max_frames" in bad.message and "(rule 'can0.flood')" in bad.message
        line = int(bad.message.split(":")[1])
        assert broken.decode().splitlines()[line - 1] == "max_frames = -5"

        unnumbered = await backend.command(key, "ids-rules", update.replace(b"revision = 2\n", b""))
        assert (unnumbered.status, unnumbered.error_code) == (FAILED, "invalid_body")
        assert "revision" in unnumbered.message
        assert not pushed_file.exists()

        # Compressed, as `tbox command send --zstd` sends it.
        applied = await backend.command(
            key, "ids-rules", zstandard.ZstdCompressor().compress(update)
        )
        assert applied.status == OK, applied.message
        assert applied.message == (
            "applied rules revision 2: 3 rules (1 changed, 1 added, 0 removed; "
            "timing state kept for 1)"
        )
        assert pushed_file.read_bytes() == update
        status = service.snapshot()["ids"]
        assert (status["rules"], status["rules_revision"], status["rules_source"]) == (
            3,
            2,
            "pushed",
        )
        assert status["rules_updated_at"] is not None
        frames = status["frames"]
        await _until(lambda: service.snapshot()["ids"]["frames"] > frames + 100)  # judging on

        old = await backend.command(key, "ids-rules", _rules(1, DLC))
        assert (old.status, old.error_code) == (FAILED, "stale_revision")
        assert "older than the applied revision 2" in old.message
        assert service.snapshot()["ids"]["rules_revision"] == 2

    # Restarted, the agent detects with the update it confirmed, not with [ids] rules.
    service = AgentService(_ids_config(short_dir, broker.port, pub, "ids2"))
    async with running(service):
        # Stopped before its MQTT session is up, an agent may take the session over from the
        # next one (same client id) later; let every agent connect before it stops.
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        status = service.snapshot()["ids"]
        assert (status["rules"], status["rules_revision"], status["rules_source"]) == (
            3,
            2,
            "pushed",
        )
        assert status["rules_updated_at"] == pytest.approx(pushed_file.stat().st_mtime)

    # A newer [ids] rules file (shipped with a software update) wins over an older update.
    (short_dir / "rules.toml").write_bytes(_rules(3, DLC))
    service = AgentService(_ids_config(short_dir, broker.port, pub, "ids3"))
    async with running(service):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        status = service.snapshot()["ids"]
        assert (status["rules"], status["rules_revision"], status["rules_source"]) == (
            1,
            3,
            "file",
        )


async def test_a_rule_update_without_ids_configured_fails_clearly(
    short_dir: Path, broker: MosquittoBroker, signing_key: tuple[Ed25519PrivateKey, Path]
) -> None:
    key, pub = signing_key
    service = AgentService(_config(short_dir, broker.port, _spec("noids"), pub))
    async with _backend(broker.port) as backend, running(service):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        result = await backend.command(key, "ids-rules", _rules(1, DLC))
    assert (result.status, result.error_code) == (FAILED, "not_configured")
    assert "[ids]" in result.message


def _learned_rules(revision: int) -> bytes:
    """Rules learned from 20 s of the sample vehicle: ~30 KB, over the default command limit."""
    database = load_dbc(SAMPLE_VEHICLE_DBC).database
    model = VehicleModel(load_scenario("city"), seed=5)
    generator = TrafficGenerator({"can0": [database]}, model, seed=5, start_time=0.0)
    learned = learn_rules(list(generator.frames_until(20.0)), {"can0": [database]})
    return format_rules(replace(learned, revision=revision)).encode()


async def _send(*args: str) -> tuple[int, str]:
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
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_tbox_command_send_zstd_fits_a_learned_rule_set_into_one_command(
    short_dir: Path, broker: MosquittoBroker
) -> None:
    assert main(["command", "keygen", str(short_dir / "ops.pem")]) == 0
    learned = short_dir / "learned.toml"
    learned.write_bytes(await asyncio.to_thread(_learned_rules, 5))
    assert learned.stat().st_size > DEFAULT_MAX_BYTES
    config = _ids_config(short_dir, broker.port, short_dir / "ops.pem.pub", "cli")
    send = (
        "ids-rules",
        *("--broker", broker.url, "--vehicle-id", VEHICLE, "--timeout", "20"),
        *("--key", str(short_dir / "ops.pem"), "--body-file", str(learned)),
    )
    service = AgentService(config)
    async with running(service):
        await _until(lambda: service.snapshot()["uplink"]["subscribed"])
        # (Uncompressed it is refused as too_large, in a result without the command's id: the
        # verifier does not read an oversized payload, so `tbox command send` would wait in vain.)
        code, out = await _send(*send, "--zstd")
        assert code == 0, out
        assert out.startswith("ids-rules: ok: applied rules revision 5: ")
        assert service.snapshot()["ids"]["rules_revision"] == 5

"""``tbox demo``: the vehicle, the agent and a local broker end to end (C1)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from tests.mosquitto_broker import MosquittoBroker, mosquitto_binary

REPO = Path(__file__).resolve().parents[3]


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--once", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _numbers(pattern: str, text: str) -> tuple[int, ...]:
    m = re.search(pattern, text)
    assert m, text
    return tuple(int(g.replace(",", "")) for g in m.groups())


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_outage_then_drain_loses_nothing() -> None:
    result = _demo("--duration", "12", "--broker-outage", "3", "--vehicle-id", "DEMO-T1")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    (uploaded,) = _numbers(r"([\d,]+) uploaded", out)
    (reconnects,) = _numbers(r"\((\d+) reconnects\)", out)
    batches, records = _numbers(r"backend: ([\d,]+) batches, ([\d,]+) records", out)
    assert uploaded > 5 and records == uploaded and batches > 0, out
    assert reconnects >= 1, out
    assert "records missing: 0" in out, out
    assert "0 undecodable" in out, out
    assert "broker down for 3 s (outage; modem signal lost)" in out and "broker back" in out, out


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
def test_with_a_running_broker(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path) as broker:
        result = _demo("--duration", "4", "--broker", broker.url)
    assert result.returncode == 0, result.stderr
    assert "records missing: 0" in result.stdout
    (records,) = _numbers(r"backend: [\d,]+ batches, ([\d,]+) records", result.stdout)
    assert records > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--duration", "0"], "--duration must be positive"),
        (["--broker", "http://x:1"], "expected mqtt://HOST:PORT"),
        (["--broker", "mqtt://x:1", "--broker-outage", "2"], "needs the local broker"),
        (["--vehicle-id", "a/b"], "--vehicle-id"),
    ],
)
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(mosquitto_binary() is None, reason="needs mosquitto")
async def test_the_live_view_shows_position_and_link_quality_beside_the_can_signals() -> None:
    import argparse
    import asyncio
    import io

    from rich.console import Console

    from agent.cli import demo as demo_cli

    args = argparse.Namespace(
        duration=20.0,
        broker=None,
        vehicle_id="DEMO-LIVE",
        broker_outage=None,
        scenario="city",
        seed=0,
        once=True,
    )
    demo = demo_cli._Demo(args, None, Console(file=io.StringIO()), live=False)
    run = asyncio.create_task(demo.main())
    try:
        async with asyncio.timeout(30):
            while True:
                service = demo.service
                snap = service.snapshot() if service is not None else {}
                devices = snap.get("devices", {})
                ready = devices.get("gnss", {}).get("values", {}).get("latitude") is not None
                signals = demo.backend.latest
                if ready and "modem:MODEM.rssi_dbm" in signals and "gnss:GNSS.speed" in signals:
                    break
                await asyncio.sleep(0.1)
        console = Console(width=140, record=True, file=io.StringIO())
        console.print(demo.render())
        text = console.export_text()
    finally:
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    assert re.search(
        r"GNSS position \(ok\)[\s│]+48\.\d{5}, 11\.\d{5} · [\d.]+ km/h · \d+ satellites", text
    ), text
    assert re.search(r"cellular link \(ok\)[\s│]+-\d+ dBm · E-UTRAN · home", text), text
    for signal in ("ESC_VehSpd", "gnss:GNSS.latitude", "modem:MODEM.rssi_dbm"):
        assert signal in text, text

"""Shared test support for the simulated ECU and the flasher: keys, images, hosts, timings."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from firmware_stub import EcuConfig, EcuHost, FaultPlan, ServerConfig
from ota.ecu_flash import EcuAddress, EcuFlasher, FlashTiming
from ota.ecu_image import build_image

#: Deterministic keys: the same in every process (crash tests run children).
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"tbox test ecu key").digest())
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"another key").digest())
PUBLIC: Ed25519PublicKey = KEY.public_key()

BMS = EcuAddress("bms", 0x7E0, 0x7E8)
VCU = EcuAddress("vcu", 0x7E1, 0x7E9)

#: Timeouts short enough for dropped responses and power cuts to cost little test time.
QUICK = FlashTiming(p2=0.3, p2_star=2.0, slow_step=20.0, reconnect=5.0, retry_pause=0.02)

_channels = itertools.count()


def payload(version: int, size: int) -> bytes:
    """Firmware bytes for *version*: distinct per version, the same in every process."""
    block = hashlib.sha256(f"firmware {version}".encode()).digest()
    return (block * (size // len(block) + 1))[:size]


def make_image(
    version: int,
    size: int = 3000,
    *,
    hardware_id: str = "bms",
    key: Ed25519PrivateKey = KEY,
) -> bytes:
    """A signed image."""
    return build_image(
        payload(version, size), version=version, hardware_id=hardware_id, private_key=key
    )


def public_pem(key: Ed25519PrivateKey = KEY) -> bytes:
    """*key*'s public key as PEM."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Ed25519PrivateKey = KEY) -> bytes:
    """*key* as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def channel() -> str:
    """A fresh in-process bus URL (virtual channels live as long as the process)."""
    return f"virtual://ecu-test-{next(_channels)}"


def ecu_config(
    address: EcuAddress = BMS,
    *,
    factory: bytes | None = None,
    faults: FaultPlan | None = None,
    max_block_length: int = 1026,
    bank_size: int = 1 << 16,
    erase_time_s: float = 0.0,
    check_time_s: float = 0.0,
    trusted: Ed25519PublicKey | None = PUBLIC,
    **server: Any,
) -> EcuConfig:
    """An ECU configuration with small blocks and banks (many blocks, quick erases)."""
    return EcuConfig(
        address=address,
        server=ServerConfig(address.name, max_block_length=max_block_length, **server),
        bank_size=bank_size,
        trusted_key=trusted,
        erase_time_s=erase_time_s,
        check_time_s=check_time_s,
        faults=faults or FaultPlan(),
        factory_image=factory,
    )


@contextlib.asynccontextmanager
async def running(
    state_dir: Path, configs: Sequence[EcuConfig], *, events: list[str] | None = None
) -> AsyncIterator[tuple[EcuHost, str]]:
    """Simulated ECUs on a fresh virtual bus: ``(host, bus URL)``."""
    url = channel()

    def on_event(ecu: str, text: str) -> None:
        if events is not None:
            events.append(f"{ecu}: {text}")

    async with EcuHost(url, configs, state_dir=state_dir, on_event=on_event) as host:
        yield host, url


def flasher(url: str, address: EcuAddress = BMS, **kwargs: Any) -> EcuFlasher:
    """A flasher with quick timeouts."""
    kwargs.setdefault("timing", QUICK)
    return EcuFlasher(url, address, **kwargs)


# --- command-line helpers ----------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def tbox(args: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m agent ARGS…`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


class EcuRun:
    """A running ``tbox ecu run`` subprocess; a thread collects its stderr lines (so that the
    pipe never fills however much it prints)."""

    def __init__(self, args: Sequence[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "ecu", "run", *args],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.strip() == "tbox ecu run: ready":
                self.ready.set()

    @property
    def stderr(self) -> str:
        """Everything printed on stderr so far."""
        return "".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the process, reap it, return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def start_ecu_run(args: Sequence[str], within: float = 30.0) -> EcuRun:
    """Start ``tbox ecu run ARGS…`` and return once it printed ``ready``."""
    run = EcuRun(args)
    deadline = time.monotonic() + within
    while not run.ready.wait(0.05):
        if run.proc.poll() is not None or time.monotonic() > deadline:
            run.stop(signal.SIGKILL)
            raise AssertionError(f"tbox ecu run did not get ready: {run.stderr}")
    return run


def one_line_error(result: subprocess.CompletedProcess[str], status: int, pattern: str) -> str:
    """Assert the C1 failure shape: *status*, one stderr line with *pattern*, no traceback."""
    assert result.returncode == status, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]
    return lines[0]

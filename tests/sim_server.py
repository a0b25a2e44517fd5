"""Test support: `tbox sim serve` in a subprocess, listening on a free loopback port."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def start_sim_server(
    tmp_path: Path, *args: str, port: int = 0, within: float = 30.0
) -> tuple[subprocess.Popen[str], int]:
    """Start ``python -m agent sim serve --socketcand 127.0.0.1:PORT ARGS…``; return it, its port.

    stderr is piped (read it with ``communicate()``); pass ``--quiet`` for long runs so the pipe
    never fills.
    """
    port_file = tmp_path / f"port-{time.monotonic_ns()}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent",
            "sim",
            "serve",
            "--socketcand",
            f"127.0.0.1:{port}",
            "--port-file",
            str(port_file),
            *args,
        ],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + within
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"tbox sim serve exited early: {err}")
        if time.monotonic() > deadline:
            stop_sim_server(proc)
            raise AssertionError(f"tbox sim serve did not listen within {within} s")
        time.sleep(0.02)
    return proc, int(port_file.read_text())


def stop_sim_server(proc: subprocess.Popen[str]) -> None:
    """Kill the server if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)

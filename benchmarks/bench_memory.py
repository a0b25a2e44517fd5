"""Resident memory of ``tbox run`` with the sample vehicle: peak, growth, and the import floor.

Every part is a real process: the simulator serving the sample vehicle (``tbox sim serve``, one
500 kbit/s bus at ~30 % load, ~1,250 frames/s) over socketcand, a private Mosquitto
(:class:`~agent.local_broker.LocalBroker`) and the agent (``tbox run``) with a 10 Hz periodic
scheme, an on-change scheme, a condition scheme with window functions and the retained state
topic. The agent's ``VmRSS`` (``/proc/<pid>/status``) is sampled every 5 s for ``--minutes``;
the kernel's high-water mark ``VmHWM`` gives the true peak between samples.

The agent runs *without the optional mf4 extra*: python-can imports ``asammdf`` eagerly when it is
installed (the dev environment has it; production installs do not), which pulls in pandas and
numpy (~60 MB). The agent is started with ``sys.modules['asammdf'] = None`` and the benchmark
checks its ``/proc/<pid>/maps`` for pandas, numpy and asammdf shared objects.

Baseline in the same run: the floor, a Python process (also without asammdf) that only imports
the libraries the agent is built on (asyncio, ssl, sqlite3, python-can, cantools, aiomqtt,
protobuf, cryptography, zstandard) and idles. Prints the agent/floor ratio.

Target (issue): peak ≤ 64 MiB (67.1 MB) and no growth: least-squares slope of the samples after
the warm-up ≤ 1 MiB per 10 minutes. Exits 1 if either is missed.

    .venv/bin/python benchmarks/bench_memory.py [--minutes 10] [--quick] [--imports]

``--quick``: one minute, 20 s warm-up (the slope is then printed, not judged). ``--imports``: also
print the RSS each group of the agent's imports adds (where the memory goes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024
TARGET_PEAK_MIB = 64.0
TARGET_GROWTH_MIB_PER_10MIN = 1.0
NO_MF4 = "import sys; sys.modules['asammdf'] = None; "
AGENT_CODE = NO_MF4 + "from agent.cli import main; sys.exit(main(['run', '--config', sys.argv[1]]))"
FLOOR_IMPORTS = (
    "asyncio",
    "ssl",
    "sqlite3",
    "can",
    "cantools",
    "aiomqtt",
    "google.protobuf.message",
    "cryptography.hazmat.primitives.asymmetric.ed25519",
    "zstandard",
)
FLOOR_CODE = (
    NO_MF4
    + "import importlib\n"
    + "for name in sys.argv[1:]: importlib.import_module(name)\n"
    + "print('ready', flush=True)\n"
    + "sys.stdin.read()\n"  # idle until the benchmark closes our stdin
)
#: Import groups for --imports, each measured on top of the previous ones.
IMPORT_STEPS = (
    ("bare interpreter", ""),
    ("asyncio, ssl, sqlite3", "import asyncio, ssl, sqlite3"),
    ("python-can", "import can"),
    ("cantools", "import cantools"),
    ("aiomqtt", "import aiomqtt"),
    (
        "protobuf, cryptography, zstandard",
        "import google.protobuf.message, zstandard\n"
        "import cryptography.hazmat.primitives.asymmetric.ed25519",
    ),
    ("agent.config (+ codec, queue, uplink, protobuf bindings)", "import agent.config"),
    ("agent.service (+ schemes, pipeline, commands…)", "import agent.service"),
    ("tbox's argument parser (every subcommand)", "import agent.cli; agent.cli.build_parser()"),
    (
        "sample DBC loaded",
        "from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc\ndb = load_dbc(SAMPLE_VEHICLE_DBC)",
    ),
)
SCHEMES = """\
version = 1

[[scheme]]
id = "drive-10hz"
kind = "periodic"
period_ms = 100
signals = [
  "ESC_VehicleSpeed.ESC_VehSpd", "MCU_Speed.MCU_MotorSpeed", "MCU_Torque.MCU_TorqueActual",
  "BMS_PackStatus.BMS_PackVoltage", "BMS_PackStatus.BMS_PackCurrent", "BMS_SoC.BMS_SoC",
]

[[scheme]]
id = "changes"
kind = "on_change"
signals = [
  "VCU_DriveState.VCU_Gear", "VCU_DriveState.VCU_AccelPedal", "ESC_VehicleSpeed.ESC_VehSpd",
  "BCM_Doors.BCM_CentralLock",
]
deadband = { "ESC_VehicleSpeed.ESC_VehSpd" = 2.0, "VCU_DriveState.VCU_AccelPedal" = 5.0 }

[[scheme]]
id = "speed-swing"
kind = "condition"
condition = 'max(ESC_VehicleSpeed.ESC_VehSpd, "5s") - min(ESC_VehicleSpeed.ESC_VehSpd, "5s") > 15'
min_interval_ms = 10000
capture = [
  "ESC_VehicleSpeed.ESC_VehSpd", "ESC_VehicleSpeed.ESC_LongAccel", "MCU_Speed.MCU_MotorSpeed",
  "ESC_Status.ESC_BrakePressure",
]
pre_ms = 5000
post_ms = 2000
"""


# --- processes ---------------------------------------------------------------------------------


def _rss_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of *pid* in KiB (empty once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        m.group(1): int(m.group(2))
        for m in re.finditer(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", text, re.M)
    }


def _cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (all its threads) in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _optional_libraries_mapped(pid: int) -> list[str]:
    """Shared objects of pandas, numpy or asammdf mapped into *pid* (should be none)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return []
    found = {m.group(1) for m in re.finditer(r"/(pandas|numpy|numpy\.libs|asammdf)/\S*\.so", maps)}
    return sorted(found)


def _stop(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    """SIGTERM (a clean stop), then SIGKILL after *grace* seconds; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@contextlib.contextmanager
def _started(proc: subprocess.Popen[Any]) -> Iterator[subprocess.Popen[Any]]:
    try:
        yield proc
    finally:
        _stop(proc)


def _start_sim(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = workdir / "sim.port"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "sim", "serve", "--socketcand", "127.0.0.1:0"),
            *("--port-file", str(port_file), "--scenario", "city", "--quiet"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "sim.log").open("wb"),
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise SystemExit(f"tbox sim serve did not start: {(workdir / 'sim.log').read_text()}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def _write_config(workdir: Path, sim_port: int, broker_port: int) -> Path:
    (workdir / "schemes.toml").write_text(SCHEMES)
    config = workdir / "agent.toml"
    config.write_text(
        textwrap.dedent(
            f"""\
            [vehicle]
            id = "BENCH-MEMORY"
            state_dir = "{workdir / "state"}"

            [[bus]]
            url = "socketcand://127.0.0.1:{sim_port}/can0"

            [schemes]
            files = ["schemes.toml"]

            [state]
            signals = [
              "ESC_VehicleSpeed.ESC_VehSpd", "BMS_SoC.BMS_SoC", "VCU_DriveState.VCU_Gear",
              "BCM_Doors.BCM_CentralLock",
            ]

            [mqtt]
            host = "127.0.0.1"
            port = {broker_port}
            keepalive_s = 15

            [status]
            socket = "{workdir / "status.sock"}"
            """
        )
    )
    return config


def _status(workdir: Path) -> dict[str, Any] | None:
    from agent.cli.status import fetch_status
    from agent.errors import TboxError

    try:
        return fetch_status(workdir / "status.sock", timeout=2.0)
    except TboxError:
        return None


def _wait_receiving(proc: subprocess.Popen[bytes], workdir: Path, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the agent exited with {proc.returncode}:\n{log.read_text()}")
        status = _status(workdir)
        if status and status["buses"].get("can0", {}).get("frames", 0) > 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"the agent received no frames within 60 s:\n{log.read_text()}")


def _floor_kib() -> tuple[int, list[str]]:
    """RSS (KiB) of an idle Python that imported only FLOOR_IMPORTS, and optional libs mapped."""
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOOR_CODE, *FLOOR_IMPORTS],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"ready":
            raise SystemExit("the floor process failed to import its libraries")
        time.sleep(1.0)
        return _rss_kib(proc.pid).get("VmRSS", 0), _optional_libraries_mapped(proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        _stop(proc)


def _import_steps() -> list[tuple[str, int]]:
    """RSS (KiB) after each cumulative group of IMPORT_STEPS, without asammdf."""
    code = NO_MF4 + "import re\n"
    report = (
        "print(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1), "
        "flush=True)\n"
    )
    for _, step in IMPORT_STEPS:
        code += step + "\n" + report
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [(label, int(kib)) for (label, _), kib in zip(IMPORT_STEPS, out, strict=True)]


# --- figures -----------------------------------------------------------------------------------


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope dy/dx of *points* (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def _at(samples: Sequence[tuple[float, int]], t: float) -> tuple[float, int]:
    return min(samples, key=lambda s: abs(s[0] - t))


def _run(args: argparse.Namespace, workdir: Path) -> bool:
    from agent.local_broker import LocalBroker

    seconds = args.minutes * 60
    floor_kib, floor_libs = _floor_kib()
    (workdir / "broker").mkdir()
    broker = LocalBroker(workdir / "broker")
    log = workdir / "agent.log"
    samples: list[tuple[float, int]] = []  # (seconds since the agent started, VmRSS KiB)
    cpu_mark: tuple[float, float, int] | None = None  # (time, CPU seconds, frames) after warm-up
    with broker:
        sim, port = _start_sim(workdir)
        with _started(sim):
            config = _write_config(workdir, port, broker.port)
            agent = subprocess.Popen(
                [sys.executable, "-c", AGENT_CODE, str(config)],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log.open("wb"),
            )
            with _started(agent):
                start = time.monotonic()
                _wait_receiving(agent, workdir, log)
                libs = _optional_libraries_mapped(agent.pid)
                first = _status(workdir)
                print(
                    f"agent pid {agent.pid} receiving after {time.monotonic() - start:.1f} s; "
                    f"sampling VmRSS every {args.interval:g} s for {args.minutes:g} min",
                    flush=True,
                )
                next_sample = start
                while True:
                    now = time.monotonic()
                    if now >= next_sample:
                        rss = _rss_kib(agent.pid).get("VmRSS")
                        if rss is None or agent.poll() is not None:
                            raise SystemExit(f"the agent died:\n{log.read_text()[-3000:]}")
                        samples.append((now - start, rss))
                        if cpu_mark is None and now - start >= args.warmup:
                            status = _status(workdir)
                            frames = status["buses"]["can0"]["frames"] if status else 0
                            cpu_mark = (time.monotonic(), _cpu_seconds(agent.pid), frames)
                        if len(samples) % 12 == 1:
                            print(
                                f"  t={now - start:6.0f} s  VmRSS {rss / 1024:5.1f} MiB",
                                flush=True,
                            )
                        next_sample += args.interval
                    if now - start >= seconds:
                        break
                    time.sleep(max(0.0, min(next_sample, start + seconds) - time.monotonic()))
                final = _rss_kib(agent.pid)
                cpu_end = (time.monotonic(), _cpu_seconds(agent.pid))
                last = _status(workdir)
    if first is None or last is None or cpu_mark is None:
        raise SystemExit("could not read the agent's status")
    cpu_wall = cpu_end[0] - cpu_mark[0]
    cores = (cpu_end[1] - cpu_mark[1]) / cpu_wall
    frame_rate = (last["buses"]["can0"]["frames"] - cpu_mark[2]) / cpu_wall

    peak_sampled = max(rss for _, rss in samples)
    hwm = final.get("VmHWM", peak_sampled)
    peak_mib = max(hwm, peak_sampled) / 1024
    one_min = _at(samples, 60.0)
    end = samples[-1]
    warm = [(t, rss / 1024) for t, rss in samples if t >= args.warmup]
    growth = _slope(warm) * 600  # MiB per 10 minutes
    floor_mib = floor_kib / 1024
    peak_ok = peak_mib <= TARGET_PEAK_MIB
    # Below 5 minutes after the warm-up a slope says little (one step of the allocator swings
    # it by MiBs per 10 min): reported, not judged.
    judged = seconds - args.warmup >= 300
    growth_ok = growth <= TARGET_GROWTH_MIB_PER_10MIN or not judged
    buses, pipe, up = last["buses"]["can0"], last["pipeline"], last.get("uplink", {})

    print(
        f"\nagent resident memory, sample vehicle over socketcand (1 bus), {args.minutes:g} min, "
        f"{len(samples)} samples; measured WITHOUT the optional mf4 extra (asammdf blocked)"
    )
    print(
        f"  optional libraries mapped into the agent: {', '.join(libs) or 'none'} "
        f"(floor process: {', '.join(floor_libs) or 'none'})"
    )
    print(
        f"  agent work: {buses['frames']:,} frames, {pipe['decoded']:,} decoded, "
        f"{pipe['records']:,} records, {up.get('batches', 0):,} MQTT batches "
        f"({up.get('records', 0):,} records acknowledged, {up.get('bytes', 0):,} bytes), "
        f"queue {last['queue']['items']} items"
    )
    print(
        f"  agent CPU after the warm-up: {cores:.3f} cores at {frame_rate:,.0f} frames/s "
        f"= {cores / frame_rate * 1e6:.0f} µs per frame"
    )
    print(
        f"  peak RSS {peak_mib:.1f} MiB = {peak_mib * MIB / 1e6:.1f} MB (VmHWM; sampled max "
        f"{peak_sampled / 1024:.1f} MiB); RssAnon {final.get('RssAnon', 0) / 1024:.1f} MiB, "
        f"RssFile {final.get('RssFile', 0) / 1024:.1f} MiB at the end"
    )
    print(
        f"  RSS at {one_min[0]:.0f} s {one_min[1] / 1024:.1f} MiB, at the end ({end[0]:.0f} s) "
        f"{end[1] / 1024:.1f} MiB: {(end[1] - one_min[1]) / 1024:+.2f} MiB"
    )
    print(
        f"  growth (least-squares slope of {len(warm)} samples after {args.warmup:g} s warm-up): "
        f"{growth:+.2f} MiB per 10 min"
        + ("" if judged else " (not judged: too short a run, needs >= 5 min after the warm-up)")
    )
    print(
        f"  floor (idle Python importing {', '.join(FLOOR_IMPORTS)}): {floor_mib:.1f} MiB; "
        f"agent peak / floor = {peak_mib / floor_mib:.2f}x (+{peak_mib - floor_mib:.1f} MiB)"
    )
    if args.imports:
        print("  RSS after each import group (cumulative, one process, no asammdf):")
        before = 0
        for label, kib in _import_steps():
            print(f"    {label:<58} {kib / 1024:6.1f} MiB  (+{(kib - before) / 1024:.1f})")
            before = kib
    verdict = "PASS" if peak_ok and growth_ok and not libs else "FAIL"
    print(
        f"{verdict}: peak {peak_mib:.1f} MiB {'<=' if peak_ok else '>'} {TARGET_PEAK_MIB:g} MiB "
        f"({TARGET_PEAK_MIB * MIB / 1e6:.1f} MB); growth {growth:+.2f} MiB/10 min "
        + (
            f"{'<=' if growth_ok else '>'} {TARGET_GROWTH_MIB_PER_10MIN:g}"
            if judged
            else "(not judged)"
        )
    )
    return verdict == "PASS"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="run length (default 10)")
    parser.add_argument("--quick", action="store_true", help="one minute, 20 s warm-up")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds left out of the slope (default 60)"
    )
    parser.add_argument(
        "--imports", action="store_true", help="also show the RSS each import group adds"
    )
    args = parser.parse_args()
    if args.quick:
        args.minutes = 1.0
    if args.warmup is None:
        args.warmup = 20.0 if args.quick else 60.0
    # Short: the agent's status socket lives in here (unix socket paths are limited).
    workdir = Path(tempfile.mkdtemp(prefix="tbx-mem-"))
    try:
        ok = _run(args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too: clean up the subprocesses on the way out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)

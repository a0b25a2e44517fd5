"""The whole pipeline at four busy buses: simulator → socketcand → ``tbox run`` → queue → MQTT.

Every part is a real process. The simulator (``tbox sim serve``) drives the sample vehicle's DBC
on four buses, can0..can3, sped up so that together they carry ``--rate`` frames/s (default
18,000: four 500 kbit/s buses at full load; the sample vehicle alone loads a bus to ~30 %,
~1,250 frames/s, so the run is ~3.6× faster than real time). The agent (``tbox run``, a config of
four socketcand buses, each with the sample DBC) evaluates a 10 Hz periodic scheme of six
signals, an on-change scheme with deadbands and a condition scheme with window functions and the
retained state topic, and uploads to a private Mosquitto (``agent.local_broker.LocalBroker``).
Signals are named without a bus, so every bus decodes them: a worst case, since on
a real vehicle a signal is on one bus (the condition's 5 s window then holds the speed of all
four buses: 2,000 samples, each scanned on every update).

Measured over a window of ``--seconds`` (after ``--warmup``): the agent's CPU time (utime +
stime of all its threads, ``/proc/<pid>/stat``) → cores used; frames received (the status
socket's ``buses.<name>.frames`` + ``filtered``) against frames the simulator sent (its own
count) → lost; frames decoded; records. Also: the agent's CPU by thread (event loop; bus
readers and the SQLite writer), the simulator's and the broker's CPU (on a 2-core machine they
share the cores with the agent) and the whole machine's, to tell noise from other jobs.

Baseline in the same run, the same traffic and measurement: the naive way, in a subprocess —
python-can ``socketcand`` buses + ``can.Notifier`` + ``AsyncBufferedReader``, cantools
``decode_message`` on every frame, the same three schemes written plainly, and each record
INSERTed and committed on its own (SQLite WAL, ``synchronous=FULL``, as the agent's queue); it
has no uplink. Both run without the optional mf4 extra (``asammdf`` blocked, as in production).

Target (issue): ≤ 0.5 core and 0 frames lost at ≈ 18,000 frames/s. Exits 1 if missed.

    .venv/bin/python benchmarks/bench_pipeline.py [--seconds 30] [--rate 18000] [--quick]
        [--no-baseline] [--profile N]

``--profile N`` runs the agent under cProfile (every thread, timed by the thread's CPU time) and
prints its top N functions; the profiler's overhead inflates that run's CPU several-fold, so its
figures are not the benchmark's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DBC = ROOT / "can_dbc" / "vehicles" / "tbox_ev.dbc"
TARGET_RATE = 18_000
TARGET_CORES = 0.5
TICKS = os.sysconf("SC_CLK_TCK")
NO_MF4 = "import sys; sys.modules['asammdf'] = None; "
AGENT_CODE = NO_MF4 + "from agent.cli import main; sys.exit(main(['run', '--config', sys.argv[1]]))"
#: The agent under cProfile: one profile per thread (reader threads too), merged at exit. The
#: timer is each thread's CPU time, so waits (select, locks, queues) cost nothing in it.
PROFILED_AGENT_CODE = NO_MF4 + textwrap.dedent(
    """\
    import cProfile, pstats, threading, time
    profiles = []
    def _start(*_):
        p = cProfile.Profile(time.thread_time)
        profiles.append(p)
        p.enable()
    threading.setprofile(_start)
    main_profile = cProfile.Profile(time.thread_time)
    profiles.append(main_profile)
    from agent.cli import main
    main_profile.enable()
    try:
        status = main(['run', '--config', sys.argv[1]])
    finally:
        for p in profiles:
            p.disable()
        stats = pstats.Stats(profiles[0])
        for p in profiles[1:]:
            stats.add(p)
        stats.dump_stats(sys.argv[2])
    sys.exit(status)
    """
)
NAIVE_CHILD_ARG = "--naive-child"

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
STATE_SIGNALS = (
    "ESC_VehicleSpeed.ESC_VehSpd",
    "BMS_SoC.BMS_SoC",
    "VCU_DriveState.VCU_Gear",
    "BCM_Doors.BCM_CentralLock",
)
# The same schemes, as the naive baseline writes them (signal names as cantools returns them).
PERIODIC = (
    "ESC_VehSpd",
    "MCU_MotorSpeed",
    "MCU_TorqueActual",
    "BMS_PackVoltage",
    "BMS_PackCurrent",
    "BMS_SoC",
)
CHANGES = {"VCU_Gear": 0.0, "VCU_AccelPedal": 5.0, "ESC_VehSpd": 2.0, "BCM_CentralLock": 0.0}
CAPTURE = ("ESC_VehSpd", "ESC_LongAccel", "MCU_MotorSpeed", "ESC_BrakePressure")


# --- processes ---------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (all its threads) in seconds; NaN once it has gone."""
    try:
        return _cpu_seconds_of(Path(f"/proc/{pid}/stat"))
    except OSError:
        return float("nan")


def _machine_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal = values[7] if len(values) > 7 else 0
    guest = sum(values[8:10])  # already counted in user and nice
    return (sum(values) - guest - idle - steal) / TICKS, steal / TICKS


def _thread_cpu_seconds(pid: int) -> dict[int, float]:
    """utime + stime per thread id of *pid*."""
    out = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                out[int(task.name)] = _cpu_seconds_of(task / "stat")
    return out


def _cpu_seconds_of(stat: Path) -> float:
    text = stat.read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5)


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


def _base_rate_per_bus() -> float:
    """Frames/s the sample vehicle puts on one bus in real time (60 s of the city scenario)."""
    from can_dbc import load_dbc
    from sim import TrafficGenerator, VehicleModel, load_scenario

    db = load_dbc(SAMPLE_DBC).database
    model = VehicleModel(load_scenario("city"), seed=0)
    generator = TrafficGenerator({"can0": [db]}, model, bitrate=500_000, seed=0, start_time=0.0)
    return len(generator.frames_until(60.0)) / 60.0


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def summary(self) -> tuple[int, float, int, int]:
        """(frames sent, seconds, clients served, clients dropped) from its last line."""
        text = self.log.read_text()
        m = re.search(r"sent (\d+) frames in ([\d.]+) s to (\d+) clients \((\d+) dropped", text)
        if m is None:
            raise SystemExit(f"tbox sim serve did not report what it sent:\n{text[-2000:]}")
        return int(m.group(1)), float(m.group(2)), int(m.group(3)), int(m.group(4))


def _start_sim(workdir: Path, buses: int, speed: float, run_seconds: float, tag: str) -> Sim:
    port_file = workdir / f"sim-{tag}.port"
    log = workdir / f"sim-{tag}.log"
    dbcs = [a for i in range(buses) for a in ("--dbc", f"can{i}={SAMPLE_DBC}")]
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "agent", "sim", "serve", "--socketcand", "127.0.0.1:0"),
            *("--port-file", str(port_file), "--scenario", "city", "--quiet", *dbcs),
            *("--speed", f"{speed:.4f}", "--wait-clients", str(buses)),
            *("--duration", f"{run_seconds * speed:.3f}"),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise SystemExit(f"tbox sim serve did not start: {log.read_text()}")
        time.sleep(0.05)
    return Sim(proc, int(port_file.read_text()), log)


def _write_config(workdir: Path, sim_port: int, broker_port: int, buses: int) -> Path:
    (workdir / "schemes.toml").write_text(SCHEMES)
    bus_tables = "".join(
        f'[[bus]]\nurl = "socketcand://127.0.0.1:{sim_port}/can{i}"\ndbc = ["{SAMPLE_DBC}"]\n\n'
        for i in range(buses)
    )
    state = ", ".join(f'"{s}"' for s in STATE_SIGNALS)
    config = workdir / "agent.toml"
    config.write_text(
        f'[vehicle]\nid = "BENCH-PIPELINE"\nstate_dir = "{workdir / "state"}"\n\n'
        + bus_tables
        + '[schemes]\nfiles = ["schemes.toml"]\n\n'
        + f"[state]\nsignals = [{state}]\n\n"
        + f'[queue]\npath = "{workdir / "queue.db"}"\nmax_bytes = "64MiB"\n\n'
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {broker_port}\nkeepalive_s = 15\n\n'
        + f'[status]\nsocket = "{workdir / "status.sock"}"\n'
    )
    return config


# --- one measured run --------------------------------------------------------------------------


@dataclass
class Counters:
    received: int = 0
    decoded: int = 0
    records: int = 0
    uplinked: int = 0
    batches: int = 0


@dataclass
class Result:
    label: str
    cores: float
    rate: float  # frames/s received in the window
    decoded_rate: float
    record_rate: float
    uplink_rate: float
    batch_rate: float
    drain_s: float  # from the simulator's end until the consumer had everything
    sent: int
    received: int
    lost: int
    offered_rate: float
    main_thread_cores: float  # the event loop's thread (the agent: pipeline, queue, uplink)
    other_thread_cores: list[float]  # every other thread, busiest first
    sim_cores: float
    broker_cores: float
    machine_cores: float  # every process's CPU: noise from others shows as the rest
    steal_cores: float  # taken by the hypervisor for other guests
    dropped_clients: int

    @property
    def keeps_up(self) -> bool:
        """Received at least 95 % of what was offered during the window."""
        return self.rate >= 0.95 * self.offered_rate

    @property
    def us_per_frame(self) -> float:
        return self.cores / self.rate * 1e6 if self.rate else float("inf")


def _agent_counters(workdir: Path) -> Counters | None:
    from agent.cli.status import fetch_status
    from agent.errors import TboxError

    try:
        s = fetch_status(workdir / "status.sock", timeout=2.0)
    except TboxError:
        return None
    return Counters(
        received=sum(b["frames"] + b["filtered"] for b in s["buses"].values()),
        decoded=s["pipeline"]["decoded"],
        records=s["pipeline"]["records"],
        uplinked=s.get("uplink", {}).get("records", 0),
        batches=s.get("uplink", {}).get("batches", 0),
    )


def _naive_counters(workdir: Path) -> Counters | None:
    try:
        data = json.loads((workdir / "naive.json").read_text())
    except (OSError, ValueError):
        return None
    return Counters(data["received"], data["decoded"], data["records"])


def _measure(
    label: str,
    args: argparse.Namespace,
    workdir: Path,
    broker: Any,
    speed: float,
    consumer: str,
) -> Result:
    """Run the simulator and one consumer (``agent`` or ``naive``); measure the window."""
    run_seconds = args.warmup + args.seconds + 1.0
    sim = _start_sim(workdir, args.buses, speed, run_seconds, consumer)
    log = workdir / f"{consumer}.log"
    if consumer == "agent":
        config = _write_config(workdir, sim.port, broker.port, args.buses)
        code = PROFILED_AGENT_CODE if args.profile else AGENT_CODE
        extra = [str(workdir / "agent.prof")] if args.profile else []
        cmd = [sys.executable, "-c", code, str(config), *extra]
        counters = _agent_counters
    else:
        cmd = [sys.executable, __file__, NAIVE_CHILD_ARG, str(sim.port), str(args.buses)]
        cmd.append(str(workdir))
        counters = _naive_counters
    with _started(sim.proc):
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))
        with _started(proc):
            deadline = time.monotonic() + 60
            while (c := counters(workdir)) is None or c.received == 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{label} received nothing:\n{log.read_text()[-3000:]}")
                time.sleep(0.05)
            time.sleep(args.warmup)
            pids = (proc.pid, sim.proc.pid, broker.process.pid)
            cpu0 = [_cpu_seconds(p) for p in pids]
            machine0 = _machine_seconds()
            threads0 = _thread_cpu_seconds(proc.pid)
            t0, c0 = time.monotonic(), counters(workdir)
            time.sleep(args.seconds)
            cpu1 = [_cpu_seconds(p) for p in pids]
            machine1 = _machine_seconds()
            threads1 = _thread_cpu_seconds(proc.pid)
            t1, c1 = time.monotonic(), counters(workdir)
            if c0 is None or c1 is None:
                raise SystemExit(f"could not read {label}'s counters")
            try:
                sim.proc.wait(run_seconds + 30)
            except subprocess.TimeoutExpired:
                raise SystemExit("the simulator did not finish its run") from None
            # Let the consumer take what is still in flight, until its count stands still.
            sim_end, caught_up = time.monotonic(), time.monotonic()
            last = -1
            while (c := counters(workdir)) is not None and c.received != last:
                if last >= 0:
                    caught_up = time.monotonic()
                last = c.received
                time.sleep(0.5)
            final = counters(workdir)
        # The naive child writes its last counts as it stops; the agent's socket is gone by then.
        final = counters(workdir) or final
    if final is None:
        raise SystemExit(f"could not read {label}'s final counters")
    if consumer == "agent" and args.profile:
        _print_profile(workdir / "agent.prof", args.profile)
    sent, sim_s, _, dropped = sim.summary()
    wall = t1 - t0
    cores = [(b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    per_thread = {tid: (cpu - threads0.get(tid, 0.0)) / wall for tid, cpu in threads1.items()}
    main_thread = per_thread.pop(proc.pid, 0.0)
    return Result(
        label=label,
        cores=cores[0],
        rate=(c1.received - c0.received) / wall,
        decoded_rate=(c1.decoded - c0.decoded) / wall,
        record_rate=(c1.records - c0.records) / wall,
        uplink_rate=(c1.uplinked - c0.uplinked) / wall,
        batch_rate=(c1.batches - c0.batches) / wall,
        drain_s=caught_up - sim_end,
        sent=sent,
        received=final.received,
        lost=sent - final.received,
        offered_rate=sent / sim_s if sim_s else 0.0,
        main_thread_cores=main_thread,
        other_thread_cores=sorted(per_thread.values(), reverse=True),
        sim_cores=cores[1],
        broker_cores=cores[2],
        machine_cores=(machine1[0] - machine0[0]) / wall,
        steal_cores=(machine1[1] - machine0[1]) / wall,
        dropped_clients=dropped,
    )


def _print_profile(path: Path, top: int) -> None:
    import pstats

    stats = pstats.Stats(str(path), stream=sys.stdout)
    print(f"\nagent profile (cProfile, CPU time of every thread; top {top} by own time):")
    stats.sort_stats("tottime").print_stats(top)
    print(f"agent profile: top {top} of the agent's and python-can's functions by cumulative time:")
    stats.sort_stats("cumulative").print_stats(r"agent/|can_dbc/|socketcand|aiomqtt|paho", top)


# --- the naive baseline (runs in a child process) ----------------------------------------------


class _NaiveStore:
    """One transaction per record, as a naive durable queue does."""

    def __init__(self, path: Path) -> None:
        import sqlite3

        self.conn = sqlite3.connect(path)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        self.conn.execute(
            "CREATE TABLE records (id INTEGER PRIMARY KEY, scheme TEXT, t REAL, payload TEXT)"
        )
        self.records = 0

    def put(self, scheme: str, t: float, values: Any) -> None:
        self.conn.execute(
            "INSERT INTO records (scheme, t, payload) VALUES (?, ?, ?)",
            (scheme, t, json.dumps(values)),
        )
        self.conn.commit()
        self.records += 1


async def _naive(port: int, buses: int, workdir: Path) -> None:
    import can
    import cantools

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    db: Any = cantools.database.load_file(SAMPLE_DBC)
    store = _NaiveStore(workdir / "naive.db")
    counts = {"received": 0, "decoded": 0}
    status = workdir / "naive.json"

    def publish() -> None:
        tmp = status.with_suffix(".tmp")
        tmp.write_text(json.dumps({**counts, "records": store.records}))
        tmp.replace(status)

    bus_list = [
        can.Bus(interface="socketcand", channel=f"can{i}", host="127.0.0.1", port=port)
        for i in range(buses)
    ]
    reader = can.AsyncBufferedReader()
    notifier = can.Notifier(bus_list, [reader], loop=loop)

    async def consume() -> None:
        last: dict[str, Any] = {}
        reported: dict[str, Any] = {}
        next_periodic: float | None = None
        speeds: deque[tuple[float, float]] = deque()
        swinging, last_trigger = False, -float("inf")
        decode = db.decode_message
        async for msg in reader:
            counts["received"] += 1
            try:
                signals: dict[str, Any] = decode(msg.arbitration_id, msg.data)
            except (KeyError, ValueError):
                continue
            counts["decoded"] += 1
            t = msg.timestamp
            last.update(signals)
            if next_periodic is None:
                next_periodic = t + 0.1
            elif t >= next_periodic:
                store.put("drive-10hz", t, {name: last.get(name) for name in PERIODIC})
                while next_periodic <= t:
                    next_periodic += 0.1
            for name, band in CHANGES.items():
                if name in signals:
                    value, old = signals[name], reported.get(name)
                    if old is None or (value != old if band == 0 else abs(value - old) > band):
                        reported[name] = value
                        store.put("changes", t, {name: str(value)})
            if "ESC_VehSpd" in signals:
                speeds.append((t, signals["ESC_VehSpd"]))
                while speeds[0][0] < t - 5.0:
                    speeds.popleft()
                values = [v for _, v in speeds]
                now_swinging = max(values) - min(values) > 15
                if now_swinging and not swinging and t - last_trigger >= 10.0:
                    last_trigger = t
                    capture = {name: last.get(name) for name in CAPTURE}
                    store.put("speed-swing", t, {"capture": capture, "speeds": list(speeds)})
                swinging = now_swinging

    async def report() -> None:
        while True:
            publish()
            await asyncio.sleep(0.25)

    tasks = [asyncio.create_task(consume()), asyncio.create_task(report())]
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        notifier.stop()
        for bus in bus_list:
            bus.shutdown()
        publish()


def _naive_child(argv: list[str]) -> int:
    import logging

    # The client logs a line whenever TCP splits a frame; the agent silences it too.
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_naive(int(argv[0]), int(argv[1]), Path(argv[2])))
    return 0


# --- main --------------------------------------------------------------------------------------


def _threads(r: Result) -> str:
    busy = [c for c in r.other_thread_cores if c >= 0.0005]
    return (
        f"  {'':<9} by thread: event loop {r.main_thread_cores:.3f}, the {len(busy)} other "
        f"busy threads {sum(busy):.3f} ({', '.join(f'{c:.3f}' for c in busy)})"
    )


def _machine(r: Result) -> str:
    rest = max(0.0, r.machine_cores - r.cores - r.sim_cores - r.broker_cores)
    return (
        f"  {'':<9} machine in this window: {r.machine_cores:.2f} of {os.cpu_count()} cores busy "
        f"({rest:.2f} other processes); hypervisor steal {r.steal_cores:.2f} cores"
    )


def _line(r: Result) -> str:
    return (
        f"  {r.label:<9} {r.cores:5.3f} cores = {r.us_per_frame:5.1f} µs CPU/frame at "
        f"{r.rate:8,.0f} frames/s received ({r.decoded_rate:,.0f} decoded/s, "
        f"{r.record_rate:,.1f} records/s"
        + (
            f", {r.uplink_rate:,.1f} uplinked/s in {r.batch_rate:,.1f} MQTT batches/s"
            if r.label == "tbox"
            else ""
        )
        + f"); {'keeps up' if r.keeps_up else 'FALLS BEHIND'}; lost {r.lost:,} of {r.sent:,}"
        + ("" if r.keeps_up else f" (caught up {r.drain_s:.0f} s after the simulator stopped)")
        + (f" ({r.dropped_clients} connections dropped as too slow)" if r.dropped_clients else "")
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == NAIVE_CHILD_ARG:
        sys.modules["asammdf"] = None  # type: ignore[assignment]
        return _naive_child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window (30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before the window (5)")
    parser.add_argument("--rate", type=float, default=TARGET_RATE, help="frames/s, all buses")
    parser.add_argument("--buses", type=int, default=4, help="buses (4)")
    parser.add_argument("--quick", action="store_true", help="a 10 s window")
    parser.add_argument("--no-baseline", action="store_true", help="skip the naive baseline")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.seconds = 10.0
    per_bus = _base_rate_per_bus()
    speed = args.rate / (per_bus * args.buses)
    from agent.local_broker import LocalBroker

    workdir = Path(tempfile.mkdtemp(prefix="tbx-pipe-"))  # short: holds a unix socket
    try:
        (workdir / "broker").mkdir()
        with LocalBroker(workdir / "broker") as broker:
            print(
                f"pipeline: {args.buses} buses x sample vehicle ({per_bus:,.0f} frames/s each in "
                f"real time) sped up {speed:.2f}x = {args.rate:,.0f} frames/s; window "
                f"{args.seconds:g} s after {args.warmup:g} s warm-up",
                flush=True,
            )
            tbox = _measure("tbox", args, workdir, broker, speed, "agent")
            naive = None
            if not args.no_baseline:
                naive = _measure("naive", args, workdir, broker, speed, "naive")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"  offered by the simulator: {tbox.offered_rate:,.0f} frames/s "
        f"(its CPU {tbox.sim_cores:.3f} cores; Mosquitto {tbox.broker_cores:.3f} cores)"
    )
    print(_line(tbox))
    print(_threads(tbox))
    print(_machine(tbox))
    if naive is not None:
        print(_line(naive) + f"  [simulator {naive.sim_cores:.3f} cores]")
        print(_threads(naive))
        print(_machine(naive))
        print(
            "  naive = python-can socketcand + Notifier + AsyncBufferedReader, cantools "
            "decode_message per frame, one SQLite commit per record, no uplink"
        )
        print(
            f"  CPU per frame: tbox {tbox.us_per_frame:.1f} µs vs naive {naive.us_per_frame:.1f} "
            f"µs: naive/tbox = {naive.us_per_frame / tbox.us_per_frame:.2f}x"
        )
    near = tbox.rate >= 0.95 * TARGET_RATE
    ok = near and tbox.cores <= TARGET_CORES and tbox.lost == 0
    if tbox.offered_rate < 0.95 * args.rate:
        print(
            f"  NOTE: the simulator offered only {tbox.offered_rate:,.0f} of {args.rate:,.0f} "
            "frames/s on this machine"
        )
    if not near:
        per_k = tbox.cores / (tbox.rate / 1000)
        print(
            f"  EXTRAPOLATION (not measured): {per_k:.4f} cores per 1k frames/s -> "
            f"{per_k * TARGET_RATE / 1000:.2f} cores at {TARGET_RATE:,} frames/s"
        )
    print(
        f"{'PASS' if ok else 'FAIL'}: <= {TARGET_CORES} core and 0 frames lost at ~"
        f"{TARGET_RATE:,} frames/s: tbox {tbox.cores:.3f} cores at {tbox.rate:,.0f} frames/s, "
        f"lost {tbox.lost:,}"
    )
    return 0 if ok else 1


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM too: clean up the subprocesses on the way out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)

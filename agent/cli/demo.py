"""``tbox demo``: the sample vehicle, the agent and a broker end to end, with a live view (C1).

Everything runs on this machine in one process (the broker in its own): the virtual vehicle
(:mod:`sim`) sends its CAN traffic on an in-process bus, and its simulated GNSS receiver and
cellular modem answer on pseudo-terminals (the GNSS reads the same vehicle, so its speed is the
CAN speed); the agent (:class:`AgentService`, the same
code as ``tbox run``) reads and decodes it, collects records by the demo's schemes, queues them in
SQLite and uploads them over MQTT; a backend subscriber decodes every batch it receives. The
broker is a private Mosquitto on a free loopback port unless ``--broker`` names a running one.
``--broker-outage S`` kills the local broker for S seconds and drops the modem's signal meanwhile:
the queue grows, then drains, and the uplink's link events record the signal at the loss.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent.cli.broker_args import parse_broker_url
from agent.errors import UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from agent.busurl import BusSpec
    from agent.local_broker import LocalBroker
    from agent.service import AgentService
    from sim.modem_twin import ModemTwin
    from sim.vehicle import VehicleModel

_REFRESH_S: Final = 0.5
_DRAIN_WAIT_S: Final = 5.0
_DEFAULT_VEHICLE: Final = "DEMO-0001"

#: The demo's collection schemes over the sample vehicle (``can_dbc/vehicles/tbox_ev.dbc``).
DEMO_SCHEMES: Final = """\
[[scheme]]
id = "drive-10hz"
kind = "periodic"
priority = 5
period_ms = 100
signals = ["ESC_VehSpd", "MCU_MotorSpeed", "VCU_AccelPedal", "BMS_PackVoltage",
           "BMS_PackCurrent", "BMS_SoC"]

[[scheme]]
id = "gear-and-brake"
kind = "on_change"
priority = 3
signals = ["VCU_Gear", "ESC_BrakePedalPressed", "ESC_VehSpd"]
deadband = { "ESC_VehSpd" = 5.0 }

[[scheme]]
id = "hard-braking"
kind = "condition"
priority = 1
condition = "ESC_LongAccel < -3"
min_interval_ms = 5000
capture = ["ESC_VehSpd", "ESC_LongAccel", "ESC_BrakePressure"]
pre_ms = 2000
post_ms = 1000

[[scheme]]
id = "position-1hz"
kind = "periodic"
priority = 5
period_ms = 1000
signals = ["gnss:GNSS.latitude", "gnss:GNSS.longitude", "gnss:GNSS.speed",
           "gnss:GNSS.satellites", "modem:MODEM.rssi_dbm", "modem:MODEM.access_technology"]

[[scheme]]
id = "left-start-area"
kind = "condition"
priority = 2
condition = 'not inside("start")'
capture = ["gnss:GNSS.latitude", "gnss:GNSS.longitude", "ESC_VehSpd"]
"""


def demo_schemes(lat: float, lon: float) -> str:
    """:data:`DEMO_SCHEMES` with the geofence ``start``: 150 m around where the drive begins."""
    return (
        f'{DEMO_SCHEMES}\n[[geofence]]\nid = "start"\n'
        f"circle = {{ lat = {lat!r}, lon = {lon!r}, radius_m = 150 }}\n"
    )


_STATE_SIGNALS: Final = (
    "ESC_VehSpd",
    "VCU_Gear",
    "BMS_SoC",
    "BMS_PackVoltage",
    "MCU_MotorSpeed",
    "TMS_OutsideTemp",
    "gnss:GNSS.latitude",
    "gnss:GNSS.longitude",
    "modem:MODEM.rssi_dbm",
)


def register(subparsers: Any) -> None:
    """Add ``tbox demo``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="simulated vehicle → agent → MQTT broker → backend, with a live view",
        description=(
            "Run the sample vehicle simulator, the agent and a local Mosquitto broker on free "
            "loopback ports, and a backend subscriber that decodes every batch; show signals, "
            "upload rate, queue depth and link state live. Without --duration it runs until "
            "Ctrl-C."
        ),
    )
    parser.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument(
        "--broker",
        metavar="mqtt://HOST:PORT",
        help="use this running broker instead of starting a local Mosquitto",
    )
    parser.add_argument(
        "--vehicle-id", default=_DEFAULT_VEHICLE, metavar="ID", help=f"default {_DEFAULT_VEHICLE}"
    )
    parser.add_argument(
        "--broker-outage",
        type=float,
        metavar="S",
        help="kill the local broker for S seconds (10 s in, or a quarter of --duration)",
    )
    parser.add_argument("--scenario", default="city", help="driving scenario (default city)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument(
        "--once", action="store_true", help="no live view: print the summary at the end"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handle ``tbox demo``."""
    from rich.console import Console

    if args.duration is not None and args.duration <= 0:
        raise UsageError("--duration must be positive")
    broker = parse_broker_url(args.broker) if args.broker else None
    if args.broker_outage is not None:
        if args.broker_outage <= 0:
            raise UsageError("--broker-outage must be positive")
        if broker is not None:
            raise UsageError("--broker-outage needs the local broker: leave out --broker")
    vid = args.vehicle_id
    if not vid or len(vid) > 64 or any(c in vid for c in "/+# \t"):
        raise UsageError(f"--vehicle-id {vid!r}: 1–64 characters without / + # or spaces")
    console = Console()
    live = console.is_terminal and not args.once
    demo = _Demo(args, broker, console, live)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(demo.main())
    demo.print_summary()
    return 0


@dataclass
class _Backend:
    """What the backend subscriber saw: batches decoded, duplicates, the latest values."""

    batches: int = 0
    records: int = 0
    samples: int = 0
    duplicates: int = 0
    undecodable: int = 0
    sequences: set[int] = field(default_factory=set)
    latest: dict[str, tuple[float, Any]] = field(default_factory=dict)
    state_updates: int = 0
    rate: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))

    def samples_per_s(self) -> float:
        if len(self.rate) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.rate[0], self.rate[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class _EventLog(logging.Handler):
    """Warnings of the agent, shown in the live view's event list instead of on stderr."""

    def __init__(self, events: deque[str], started: float) -> None:
        super().__init__(logging.WARNING)
        self._events = events
        self._started = started

    def emit(self, record: logging.LogRecord) -> None:
        self._events.append(f"{record.created - self._started:6.1f} s  {record.getMessage()}")


class _Demo:
    def __init__(
        self,
        args: argparse.Namespace,
        broker: tuple[str, int] | None,
        console: Console,
        live: bool,
    ) -> None:
        self.args = args
        self.external = broker
        self.console = console
        self.live = live
        self.backend = _Backend()
        self.events: deque[str] = deque(maxlen=200)
        self.started = time.time()
        self.service: AgentService | None = None
        self.modem: ModemTwin | None = None
        self.final: dict[str, Any] = {}
        self.host = ""
        self.port = 0
        self._link = "disconnected"

    def event(self, text: str) -> None:
        self.events.append(f"{time.time() - self.started:6.1f} s  {text}")

    async def main(self) -> None:
        from agent.local_broker import LocalBroker
        from agent.service import AgentService, running

        root = logging.getLogger()
        saved = root.handlers[:]
        root.handlers = [_EventLog(self.events, self.started)]
        try:
            with tempfile.TemporaryDirectory(prefix="tbox-demo-") as tmp:
                work = Path(tmp)
                broker: LocalBroker | None = None
                if self.external is None:
                    (work / "broker").mkdir()
                    # Persistent, so that a restart keeps the backend's session: what the vehicle
                    # delivers while the backend reconnects waits for it at the broker.
                    broker = LocalBroker(work / "broker", persistent=True)
                    await asyncio.to_thread(broker.start)
                    self.host, self.port = "127.0.0.1", broker.port
                    self.event(f"local Mosquitto started on 127.0.0.1:{broker.port}")
                else:
                    self.host, self.port = self.external
                try:
                    from sim import VehicleModel, load_scenario

                    scenario = load_scenario(self.args.scenario)
                    model = VehicleModel(scenario, seed=self.args.seed)
                    spec, config = self._config(work, model)
                    self.service = AgentService(config)
                    async with (
                        self._devices(work, model),
                        self._subscriber(),
                        running(self.service),
                        self._simulator(spec, model),
                        asyncio.TaskGroup() as tasks,
                    ):
                        self.event("agent and simulator started")
                        tasks.create_task(self._watch())
                        if self.args.broker_outage and broker is not None:
                            tasks.create_task(self._outage(broker))
                        await self._run_for(self.args.duration)
                        await self._drain()
                        self.final = self.service.snapshot()
                        raise _Done
                finally:
                    if broker is not None:
                        broker.kill()
        except* _Done:
            pass
        finally:
            root.handlers = saved

    async def _run_for(self, duration: float | None) -> None:
        if self.live:
            from rich.live import Live

            with Live(self.render(), console=self.console, auto_refresh=False) as live:
                deadline = None if duration is None else time.monotonic() + duration
                while deadline is None or time.monotonic() < deadline:
                    await asyncio.sleep(_REFRESH_S)
                    live.update(self.render(), refresh=True)
        elif duration is not None:
            await asyncio.sleep(duration)
        else:
            await asyncio.Event().wait()

    async def _drain(self) -> None:
        """Give the queue a moment to empty so that the summary counts what was delivered."""
        assert self.service is not None
        deadline = time.monotonic() + _DRAIN_WAIT_S
        while time.monotonic() < deadline:
            snap = self.service.snapshot()
            if not snap.get("queue", {}).get("items") and snap["uplink"]["link"] == "connected":
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the last PUBLISH reaching the subscriber

    def _config(self, work: Path, model: VehicleModel) -> tuple[BusSpec, Any]:
        from agent.busurl import parse_bus_url
        from agent.config.model import (
            AgentConfig,
            BusConfig,
            GnssConfig,
            ModemConfig,
            MqttConfig,
            QueueConfig,
            SchemesConfig,
            StateConfig,
            StatusConfig,
        )
        from can_dbc import SAMPLE_VEHICLE_DBC

        schemes = work / "schemes.toml"
        start = model.values()
        # The start area is where the scenario begins: leaving it triggers a geofence record.
        schemes.write_text(demo_schemes(start["latitude_deg"], start["longitude_deg"]))
        spec = parse_bus_url(f"virtual://tbox-demo-{os.getpid()}-{id(self):x}?name=can0")
        state_dir = work / "state"
        config = AgentConfig(
            vehicle_id=self.args.vehicle_id,
            state_dir=state_dir,
            buses=(BusConfig(spec, (Path(SAMPLE_VEHICLE_DBC),)),),
            queue=QueueConfig(state_dir / "queue.db"),
            status=StatusConfig(work / "status.sock"),
            # A short keepalive and backoff so that the outage shows within seconds.
            mqtt=MqttConfig(host=self.host, port=self.port, keepalive_s=5, backoff_max_s=2.0),
            schemes=SchemesConfig(files=(schemes,), accept_pushed=False),
            state=StateConfig(signals=_STATE_SIGNALS, min_interval_ms=1000),
            gnss=GnssConfig(str(work / "gnss0"), silence_timeout_s=3.0, fix_timeout_s=5.0),
            modem=ModemConfig(str(work / "modem0"), poll_interval_s=2.0, response_timeout_s=1.0),
            source="tbox demo",
        )
        return spec, config

    @contextlib.asynccontextmanager
    async def _devices(self, work: Path, model: VehicleModel) -> AsyncIterator[None]:
        """The vehicle's GNSS receiver and modem on pseudo-terminals (``gnss0``, ``modem0``)."""
        from sim.gnss_twin import GnssTwin
        from sim.modem_twin import ModemTwin

        async with (
            GnssTwin(model, link=work / "gnss0", rate_hz=1) as gnss,
            ModemTwin(link=work / "modem0") as modem,
        ):
            self.modem = modem
            self.event(f"GNSS receiver on {gnss.path}, modem on {modem.path}")
            try:
                yield
            finally:
                self.modem = None

    @contextlib.asynccontextmanager
    async def _simulator(self, spec: BusSpec, model: VehicleModel) -> AsyncIterator[None]:
        from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
        from sim import TrafficGenerator
        from sim.runner import BusSink, SimulationRunner

        database = (await asyncio.to_thread(load_dbc, SAMPLE_VEHICLE_DBC)).database
        generator = TrafficGenerator(
            {spec.name: [database]}, model, seed=self.args.seed, start_time=time.time()
        )
        async with BusSink(spec) as sink, SimulationRunner(generator, [sink]) as runner:
            runner.start()
            yield

    @contextlib.asynccontextmanager
    async def _subscriber(self) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as tasks:
            task = tasks.create_task(self._subscribe(), name="demo-backend")
            try:
                yield
            finally:
                task.cancel()

    async def _subscribe(self) -> None:
        import aiomqtt

        prefix = f"vehicles/{self.args.vehicle_id}/"
        while True:
            try:
                # A persistent session (as a real backend has): batches published while it is
                # away are queued for it at the broker, not lost.
                async with aiomqtt.Client(
                    self.host,
                    self.port,
                    identifier=f"tbox-demo-backend-{os.getpid()}-{id(self):x}",
                    clean_session=False,
                ) as client:
                    await client.subscribe(prefix + "telemetry", qos=1)
                    await client.subscribe(prefix + "state", qos=1)
                    async for message in client.messages:
                        payload = message.payload
                        if isinstance(payload, bytes | bytearray):
                            self._receive(str(message.topic)[len(prefix) :], bytes(payload))
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    def _receive(self, kind: str, payload: bytes) -> None:
        from agent.proto.tbox.v1 import StateUpdate
        from agent.telemetry_codec import decode_batch, samples_of

        b = self.backend
        try:
            if kind == "state":
                update = StateUpdate.FromString(payload)
                b.state_updates += 1
                for state in update.signals:
                    value = getattr(state, state.WhichOneof("value") or "double_value")
                    b.latest[state.signal] = (state.time_us / 1e6, value)
                return
            batch = decode_batch(payload)
        except Exception:  # a backend counts what it cannot read; it never stops on it
            b.undecodable += 1
            return
        if batch.sequence in b.sequences:
            b.duplicates += 1
            return
        b.sequences.add(batch.sequence)
        b.batches += 1
        b.records += len(batch.records)
        for record in batch.records:
            samples = samples_of(record)
            b.samples += len(samples)
            for s in samples:
                b.latest[s.signal] = (s.t, s.value)
        b.rate.append((time.monotonic(), b.samples))

    async def _watch(self) -> None:
        assert self.service is not None
        grew_at: int | None = None
        while True:
            await asyncio.sleep(0.2)
            snap = self.service.snapshot()
            link = snap.get("uplink", {}).get("link", "disconnected")
            items = snap.get("queue", {}).get("items", 0)
            if link != self._link:
                self._link = link
                self.event(f"link {link}" + (f" — {items} records queued" if items else ""))
                if link == "disconnected":
                    grew_at = items
            if grew_at is not None and link == "connected" and items == 0:
                self.event("backlog drained: the queue is empty again")
                grew_at = None

    async def _outage(self, broker: LocalBroker) -> None:
        duration = self.args.duration
        start = 10.0 if duration is None else min(10.0, duration / 4)
        await asyncio.sleep(start)
        modem = self.modem
        good = None if modem is None else modem.network
        if modem is not None and good is not None:
            # A tunnel: the radio loses the network as the broker becomes unreachable.
            modem.set_network(good.dropped())
        await asyncio.to_thread(broker.stop)
        self.event(f"broker down for {self.args.broker_outage:g} s (outage; modem signal lost)")
        await asyncio.sleep(self.args.broker_outage)
        if modem is not None and good is not None:
            modem.set_network(good)
        await asyncio.to_thread(broker.start)
        self.event("broker back")

    # -- rendering -----------------------------------------------------------------------------

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.markup import escape
        from rich.panel import Panel
        from rich.table import Table

        from agent.live_view import format_value

        snap = self.service.snapshot() if self.service is not None else {}
        pipeline = snap.get("pipeline", {})
        queue = snap.get("queue", {})
        uplink = snap.get("uplink", {})
        link = uplink.get("link", "disconnected")
        colour = "green" if link == "connected" else "red"

        signals = Table(title="Signals as the backend received them", expand=True)
        signals.add_column("signal")
        signals.add_column("value", justify="right")
        signals.add_column("age", justify="right")
        now = time.time()
        for name in sorted(self.backend.latest)[:18]:
            t, value = self.backend.latest[name]
            signals.add_row(name, format_value(value), f"{max(0.0, now - t):.1f} s")

        flow = Table(title="Pipeline", expand=True, show_header=False)
        flow.add_column("what")
        flow.add_column("value", justify="right")
        flow.add_row(
            "CAN frames read / decoded",
            f"{pipeline.get('frames', 0):,} / {pipeline.get('decoded', 0):,}",
        )
        flow.add_row("records made", f"{pipeline.get('records', 0):,}")
        flow.add_row(
            "queue depth",
            f"{queue.get('items', 0):,} records, {queue.get('bytes', 0) / 1024:,.1f} KiB",
        )
        flow.add_row(f"link ({self.host}:{self.port})", f"[{colour}]{link}[/]")
        devices = snap.get("devices", {})
        gnss = devices.get("gnss", {})
        g = gnss.get("values", {})
        lat, lon = g.get("latitude"), g.get("longitude")
        if isinstance(lat, float | int) and isinstance(lon, float | int):
            where = (
                f"{lat:.5f}, {lon:.5f} · {g.get('speed', 0):.1f} km/h · "
                f"{g.get('satellites', '–')} satellites"
            )
        else:
            where = "no fix yet"
        flow.add_row(f"GNSS position ({gnss.get('state', '–')})", escape(where))
        modem = devices.get("modem", {})
        m = modem.get("values", {})
        cell = " · ".join(
            str(v)
            for v in (
                f"{m['rssi_dbm']} dBm" if "rssi_dbm" in m else "no signal",
                m.get("access_technology"),
                m.get("registration"),
                m.get("operator"),
            )
            if v
        )
        flow.add_row(f"cellular link ({modem.get('state', '–')})", escape(cell))
        flow.add_row("records uploaded", f"{uplink.get('records', 0):,}")
        flow.add_row("reconnects", f"{uplink.get('reconnects', 0)}")
        flow.add_row(
            "backend: batches / records",
            f"{self.backend.batches:,} / {self.backend.records:,}",
        )
        flow.add_row("backend: samples/s", f"{self.backend.samples_per_s():,.0f}")
        events = "\n".join(list(self.events)[-8:]) or "—"
        title = (
            f"tbox demo — vehicle {self.args.vehicle_id} — "
            f"{time.time() - self.started:.0f} s (Ctrl-C to stop)"
        )
        return Panel(
            Group(flow, signals, Panel(events, title="Events")), title=title, title_align="left"
        )

    def print_summary(self) -> None:
        snap = self.final
        if not snap:
            return
        p, q, u, b = snap["pipeline"], snap.get("queue", {}), snap.get("uplink", {}), self.backend
        lost = p["queued"] - b.records - q.get("items", 0)
        print(
            f"tbox demo: {p['frames']:,} frames read, {p['decoded']:,} decoded; "
            f"{p['records']:,} records made, {p['queued']:,} queued, "
            f"{u.get('records', 0):,} uploaded in {u.get('batches', 0):,} batches "
            f"({u.get('reconnects', 0)} reconnects); {q.get('items', 0):,} still queued"
        )
        print(
            f"backend: {b.batches:,} batches, {b.records:,} records, {b.samples:,} samples "
            f"decoded, {b.duplicates} duplicate batches, {b.undecodable} undecodable; "
            f"{b.state_updates} state updates; records missing: {max(0, lost)}"
        )
        devices = snap.get("devices", {})
        gnss, modem = devices.get("gnss", {}), devices.get("modem", {})
        g, m = gnss.get("values", {}), modem.get("values", {})
        if gnss or modem:
            print(
                f"devices: GNSS {gnss.get('state', '–')}, {gnss.get('sentences', 0):,} sentences, "
                f"last position {g.get('latitude', '–')}, {g.get('longitude', '–')} at "
                f"{g.get('speed', '–')} km/h; modem {modem.get('state', '–')}, "
                f"{modem.get('polls', 0)} polls, {m.get('rssi_dbm', '–')} dBm "
                f"{m.get('access_technology', '')}"
            )
        for line in self.events:
            print(f"  {line}")


class _Done(Exception):  # noqa: N818 - ends the demo's task group after a normal run
    """Leaves the demo's task group once the run is over (cancelling its helpers)."""

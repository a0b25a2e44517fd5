"""The agent process: builds every stage from the configuration, runs them, stops them in stages.

:class:`AgentService` is the supervisor of ``tbox run``. Start-up, in order — anything wrong
stops the start with an explained error before a single frame is read:

1. the state directory, the DBC files per bus, the scheme set (pushed schemes persisted in the
   state directory win over the configured files), the trusted command keys and, with ``[ids]``,
   the IDS engine (a rule update persisted in the state directory wins over ``[ids] rules``
   unless that file has a higher revision);
2. the :class:`~agent.upload_queue.UploadQueue` (SQLite, its own thread);
3. the :class:`~agent.uplink.Uplink` (MQTT; subscribes ``vehicles/<id>/cmd/#``);
4. the :class:`~agent.status_endpoint.StatusEndpoint` (``tbox status``, Prometheus);
5. the :class:`~agent.frame_source.FrameSource` (one reader thread per bus), and the serial
   devices configured: the :class:`~agent.gnss.GnssReceiver` and the
   :class:`~agent.modem.ModemMonitor` (a missing port is not an error: it is retried).

Then, in one :class:`asyncio.TaskGroup`: *intake* (frame batches → :class:`TelemetryPipeline` →
queue), *ticker* (timers when buses are quiet, the retained ``state`` topic), *commands*
(:class:`~agent.command_channel.CommandChannel`) and one task per serial device (its values →
the pipeline as the device buses ``gnss`` and ``modem``; its health changes → the log).

Shutdown (SIGTERM, Ctrl-C, or a failed stage) runs the stages in reverse, each bounded by
``[shutdown] stage_timeout_s``: stop reading the buses and devices; close open capture windows
and commit their records; stop the uplink (what it has not delivered stays queued); close the status
endpoint; close the queue. A stage that overruns is cut short with a warning; records the queue
accepted are on disk whatever happens (contract C6).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from agent.command_channel import CommandChannel, CommandFailed
from agent.commands import CommandVerifier, VerifiedCommand, load_trusted_keys
from agent.config.model import AgentConfig
from agent.durable_file import write_durably
from agent.errors import InputError
from agent.frame_source import FrameSource
from agent.gnss import GNSS_BUS, GNSS_MESSAGE, GNSS_SIGNALS, GnssReceiver, GnssUpdate
from agent.modem import MODEM_BUS, MODEM_MESSAGE, MODEM_SIGNALS, ModemMonitor, ModemUpdate
from agent.pipeline import TelemetryPipeline
from agent.proto.tbox.v1 import SCHEMA_VERSION, SignalState, StateUpdate
from agent.schemes import CollectedRecord, Sample, Scheme, load_schemes, parse_schemes
from agent.serial_device import StateChange
from agent.status_endpoint import StatusEndpoint
from agent.telemetry_codec import ZSTD_MAGIC, encode_record
from agent.uplink import Uplink
from agent.upload_queue import DROP_REASONS, QueueItem, UploadQueue

if TYPE_CHECKING:
    from security.rules import RuleSet

__all__ = ["AgentService", "running"]

log = logging.getLogger(__name__)

_TICK_S: Final = 0.05
#: How far the IDS's idea of "now" stays behind the extrapolated bus clock when nothing arrives:
#: intake hands frames over in batches, and under load a batch may come this late. Suspension
#: is then reported this much later (the target is within 1 s).
_IDS_TICK_LAG_S: Final = 0.25
_MICROS: Final = 1_000_000
#: Largest ``cmd/schemes`` body accepted (the command's own size limit applies first).
_MAX_SCHEMES_BYTES: Final = 256 * 1024
#: Largest ``cmd/ids-rules`` rule file accepted, once decompressed (a learned rule set of a whole
#: vehicle is tens of KiB; zstd makes it a tenth of that on the wire).
_MAX_IDS_RULES_BYTES: Final = 1024 * 1024
#: How rule updates are named in errors and in the persisted file's place.
_IDS_RULES_SOURCE: Final = "cmd/ids-rules"
_PUSHED_IDS_RULES: Final = "pushed-ids-rules.toml"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tbox-agent")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def _signal_state(sample: Sample) -> SignalState:
    state = SignalState(signal=sample.signal, time_us=round(sample.t * _MICROS))
    value = sample.value
    if isinstance(value, str):
        state.string_value = value
    elif isinstance(value, bool | int):
        if value >= 1 << 63:
            state.uint_value = int(value)
        else:
            state.int_value = int(value)
    else:
        state.double_value = float(value)
    return state


class AgentService:
    """The running agent; :meth:`run` serves until cancelled, then shuts down in stages."""

    def __init__(self, config: AgentConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._started = clock()
        self._version = _version()
        self.pipeline: TelemetryPipeline | None = None
        self._queue: UploadQueue | None = None
        self._uplink: Uplink | None = None
        self._source: FrameSource | None = None
        self._channel: CommandChannel | None = None
        self._gnss: GnssReceiver | None = None
        self._modem: ModemMonitor | None = None
        self._campaigns: Any = None  # ota.campaign_runner.CampaignRunner with [ota]
        self._installer: Any = None  # ota.ab_installer.AbInstaller with [ota]
        self._ids: Any = None  # security.engine.IdsEngine with [ids]
        self._ids_events = 0
        self._ids_rules_source = "file"  # or "pushed": a rule update's, persisted
        self._ids_rules_updated_at: float | None = None
        # The latest value of every device signal, for the status snapshot.
        self._device_values: dict[str, dict[str, float | int | str]] = {}
        self._scheme_source = "files"
        self._queued = 0
        self._encode_errors = 0
        # Bus time keeps running between frames: the last frame's time plus the monotonic time
        # since it arrived (the buses' clock may be a replayed log's, not the wall clock).
        self._bus_t: float | None = None
        self._bus_mono = 0.0
        self._state_published = -float("inf")
        self._ready = asyncio.Event()

    # -- running -------------------------------------------------------------------------------

    async def wait_ready(self) -> None:
        """Return once every stage is started (for tests and ``tbox demo``)."""
        await self._ready.wait()

    async def run(self) -> None:
        """Start every stage and serve until cancelled; then stop them in stages."""
        cfg = self.config
        await asyncio.to_thread(cfg.state_dir.mkdir, parents=True, exist_ok=True)
        dbcs, schemes, keys = await asyncio.to_thread(self._load_inputs)
        device_buses: dict[str, dict[str, list[str]]] = {}
        if cfg.gnss is not None:
            device_buses[GNSS_BUS] = {GNSS_MESSAGE: list(GNSS_SIGNALS)}
        if cfg.modem is not None:
            device_buses[MODEM_BUS] = {MODEM_MESSAGE: list(MODEM_SIGNALS)}
        self.pipeline = TelemetryPipeline(
            dbcs,
            schemes,
            state_signals=cfg.state.signals,
            state_interval_ms=cfg.state.min_interval_ms,
            device_buses=device_buses,
        )
        if cfg.ids is not None:
            self._ids = await asyncio.to_thread(self._ids_engine, dbcs)
        verifier = CommandVerifier(
            keys,
            cfg.vehicle_id,
            max_bytes=cfg.commands.max_bytes,
            max_skew=cfg.commands.max_skew_s,
            max_lifetime=cfg.commands.max_lifetime_s,
        )
        uplink_config = replace(
            cfg.uplink_config(), subscriptions=(f"vehicles/{cfg.vehicle_id}/cmd/#",)
        )
        timeout = cfg.shutdown.stage_timeout_s
        queue = UploadQueue(cfg.queue.path, max_bytes=cfg.queue.max_bytes, clock=self._clock)
        await queue.open()
        self._queue = queue
        try:
            async with (
                Uplink(uplink_config, queue, link_quality=self._link_quality) as uplink,
                self._updates(queue, uplink) as campaigns,
            ):
                self._uplink = uplink
                handlers = self._handlers()
                if campaigns is not None:
                    handlers["ota"] = campaigns.handle_command
                self._channel = CommandChannel(verifier, handlers, uplink)
                try:
                    await self._serve(uplink)
                finally:
                    # Leaving the block stops the uplink: what it has not delivered stays queued.
                    self._channel = None
        finally:
            self._uplink = None
            await self._stage("queue", queue.aclose(), timeout)
            self._queue = None
            log.info("agent stopped")

    @contextlib.asynccontextmanager
    async def _updates(self, queue: UploadQueue, uplink: Uplink) -> AsyncIterator[Any]:
        """The campaign runner of ``[ota]`` (None without it), resuming a campaign a restart
        interrupted; its status events go through the queue, so they survive restarts too."""
        ota = self.config.ota
        if ota is None:
            yield None
            return
        # Imported only when updates are configured: python-tuf and its crypto cost ~30 MB.
        from ota.ab_installer import AbInstaller
        from ota.campaign_runner import CampaignRunner, StepBudgets
        from ota.campaign_store import CampaignStore
        from ota.health_check import CommandCheck
        from ota.image_cache import ImageCache
        from ota.update_client import UpdateClient, UpdateClientConfig
        from ota.update_source import UpdateClientSource

        cfg = self.config
        slots = cfg.slots_dir
        if not (slots / "state.json").exists():
            raise InputError(
                f"[ota]: the A/B slots in {slots} are not provisioned: run "
                f"`tbox ota slots provision {slots} IMAGE --release-counter N` once"
            )
        installer = AbInstaller(slots, max_attempts=ota.max_boot_attempts)
        client = UpdateClient(
            UpdateClientConfig(
                vehicle_id=cfg.vehicle_id,
                hardware_id=ota.hardware_id,
                ecus=dict(ota.ecus),
                director_url=ota.director_url,
                image_url=ota.image_url,
                state_dir=cfg.state_dir / "update-client",
                director_root=ota.director_root,
                image_root=ota.image_root,
                max_target_bytes=ota.max_target_bytes,
                min_bytes_per_s=ota.min_bytes_per_s,
            )
        )
        fleet = None
        if ota.flash:
            from ota.ecu_flash import DEFAULT_SECRET, SeedKeyAlgorithm
            from ota.ecu_fleet import EcuEndpoint, EcuFleet

            fleet = EcuFleet(
                [
                    EcuEndpoint(
                        ecu,
                        flash.bus,
                        flash.request_id,
                        flash.response_id,
                        secret=flash.secret or DEFAULT_SECRET,
                        algorithm=SeedKeyAlgorithm(flash.algorithm),
                        security_level=flash.security_level,
                    )
                    for ecu, flash in ota.flash
                ],
                tester_id=cfg.vehicle_id[-10:],
            )
        runner = CampaignRunner(
            CampaignStore(cfg.state_dir / "campaign"),
            installer,
            UpdateClientSource(client, installer),
            queue,
            health_check=CommandCheck(ota.health_check or "true", timeout_s=ota.health_timeout_s),
            vehicle_id=cfg.vehicle_id,
            next_sequence=uplink.next_sequence,
            notify=uplink.notify,
            budgets=StepBudgets(download_stall_s=ota.download_stall_s),
            boot_on_start=ota.boot_on_start,
            ecus=fleet,
            ecu_images=ImageCache(cfg.state_dir / "campaign" / "ecu-images"),
        )
        async with runner:
            self._campaigns = runner
            self._installer = installer
            try:
                yield runner
            finally:
                self._campaigns = None

    async def _serve(self, uplink: Uplink) -> None:
        cfg = self.config
        pipeline = self.pipeline
        assert pipeline is not None
        timeout = cfg.shutdown.stage_timeout_s
        status = StatusEndpoint(
            self.snapshot, socket_path=cfg.status.socket, prometheus=cfg.status.prometheus
        )
        async with status, contextlib.AsyncExitStack() as devices:
            # Intrusion detection judges every frame (unknown ids are what fuzzing looks like):
            # no id filter then.
            frame_ids = None if self._ids is not None else pipeline.frame_ids()
            source = FrameSource([bus.spec for bus in cfg.buses], frame_ids=frame_ids)
            await source.__aenter__()
            self._source = source
            devices.push_async_callback(self._close_devices)
            try:
                if cfg.gnss is not None:
                    g = cfg.gnss
                    self._gnss = await devices.enter_async_context(
                        GnssReceiver(
                            g.port,
                            baudrate=g.baudrate,
                            silence_timeout_s=g.silence_timeout_s,
                            fix_timeout_s=g.fix_timeout_s,
                        )
                    )
                if cfg.modem is not None:
                    m = cfg.modem
                    self._modem = await devices.enter_async_context(
                        ModemMonitor(
                            m.port,
                            baudrate=m.baudrate,
                            poll_interval_s=m.poll_interval_s,
                            response_timeout_s=m.response_timeout_s,
                        )
                    )
                log.info(
                    "agent %s started: %d buses, %d schemes (%s), broker %s:%d",
                    cfg.vehicle_id,
                    len(cfg.buses),
                    len(pipeline.schemes),
                    self._scheme_source,
                    cfg.mqtt.host,
                    cfg.mqtt.port,
                )
                self._ready.set()
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._intake(source), name="agent-intake")
                    tasks.create_task(self._ticker(), name="agent-ticker")
                    channel = self._channel
                    assert channel is not None
                    tasks.create_task(channel.run(uplink.messages), name="agent-commands")
                    if self._gnss is not None:
                        tasks.create_task(self._device(self._gnss), name="agent-gnss")
                    if self._modem is not None:
                        tasks.create_task(self._device(self._modem), name="agent-modem")
            finally:
                await self._stage(
                    "intake",
                    asyncio.gather(source.aclose(grace=timeout), devices.aclose()),
                    timeout,
                )
                await self._stage("collect", self._commit(pipeline.flush()), timeout)
                if self._ids is not None:
                    await self._stage("collect", self._commit_events(self._ids.finish()), timeout)

    @staticmethod
    async def _stage(name: str, step: Awaitable[object], limit_s: float) -> None:
        try:
            async with asyncio.timeout(limit_s):
                await step
        except TimeoutError:
            log.warning("shutdown: stage %r took longer than %g s; cut short", name, limit_s)

    # -- start-up inputs (in a thread: file I/O and DBC parsing) -------------------------------

    def _load_inputs(self) -> tuple[dict[str, list[Any]], tuple[Scheme, ...], dict[str, Any]]:
        from can_dbc import load_dbc

        cache: dict[Path, Any] = {}
        dbcs: dict[str, list[Any]] = {}
        for bus in self.config.buses:
            for path in bus.dbc:
                if path not in cache:
                    cache[path] = load_dbc(path).database
            dbcs[bus.name] = [cache[p] for p in bus.dbc]
        keys = load_trusted_keys(dict(self.config.commands.trusted_keys))
        return dbcs, self._initial_schemes(), keys

    def _initial_schemes(self) -> tuple[Scheme, ...]:
        cfg = self.config
        pushed = cfg.pushed_schemes_file
        if cfg.schemes.accept_pushed and pushed.exists():
            try:
                schemes = load_schemes(pushed)
            except InputError as e:
                # It was valid when written (durably, atomically); if it is not now, the files
                # are a better fallback than refusing to start a vehicle's agent.
                log.error("pushed schemes unusable, using the configured files: %s", e)
            else:
                self._scheme_source = "pushed"
                return schemes
        collected: list[Scheme] = []
        for path in cfg.schemes.files:
            collected.extend(load_schemes(path))
        return tuple(collected)

    # -- the data path -------------------------------------------------------------------------

    @property
    def _pushed_ids_rules_file(self) -> Path:
        return self.config.state_dir / _PUSHED_IDS_RULES

    def _ids_engine(self, dbcs: dict[str, list[Any]]) -> Any:
        """The engine of ``[ids]``: with the last rule update (``cmd/ids-rules``) persisted in the
        state directory, else with ``[ids] rules``."""
        from security.engine import EngineConfig, IdsEngine
        from security.errors import RuleBindingError
        from security.keys import load_keys
        from security.rulefile import load_rules

        ids = self.config.ids
        assert ids is not None
        keys = load_keys(ids.keys) if ids.keys is not None else None
        settings = EngineConfig(idsm_instance_id=ids.idsm_instance_id)
        configured = load_rules(ids.rules)
        pushed = self._pushed_ids_rules(configured)
        if pushed is not None:
            try:
                engine = IdsEngine(pushed, databases=dbcs, keys=keys, config=settings)
            except RuleBindingError as e:
                # Valid when it was applied; a DBC changed since. Detecting with the configured
                # rules beats refusing to start the vehicle's agent.
                log.error("pushed IDS rules unusable, using %s: %s", ids.rules, e)
            else:
                self._ids_rules_source = "pushed"
                self._ids_rules_updated_at = self._pushed_ids_rules_file.stat().st_mtime
                return engine
        return IdsEngine(configured, databases=dbcs, keys=keys, config=settings)

    def _pushed_ids_rules(self, configured: RuleSet) -> RuleSet | None:
        """The persisted rule update, unless there is none, it is unusable, or *configured* (the
        ``[ids] rules`` file) has a higher revision — newer rules shipped with the software."""
        from security.rulefile import load_rules

        path = self._pushed_ids_rules_file
        if not path.exists():
            return None
        try:
            pushed = load_rules(path)
        except InputError as e:
            log.error("pushed IDS rules unusable, using the configured ones: %s", e)
            return None
        newer = configured.revision
        if newer is not None and (pushed.revision is None or newer > pushed.revision):
            log.info(
                "IDS rules: %s (revision %d) is newer than the pushed rules (revision %s)",
                configured.source,
                newer,
                pushed.revision,
            )
            return None
        return pushed

    async def _commit_events(self, events: Iterable[Any]) -> None:
        """Queue security events ahead of all telemetry (priority 0, never evicted first)."""
        queue = self._queue
        if queue is None:
            return
        now = self._clock()
        items = [
            QueueItem(
                "events",
                0,
                e.to_proto().SerializeToString(),
                now,
                now + self.config.queue.ttl_s,
            )
            for e in events
        ]
        if not items:
            return
        await queue.put(items)
        self._ids_events += len(items)
        if self._uplink is not None:
            self._uplink.notify()

    async def _intake(self, source: FrameSource) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        engine = self._ids
        async for batch in source:
            if engine is not None:
                judge = engine.process
                for frame in batch:
                    judge(frame)
                events = engine.pop_events()
                if events:
                    await self._commit_events(events)
            records = pipeline.process(batch)
            if batch:
                self._bus_t = batch[-1].timestamp
                self._bus_mono = time.monotonic()
            if records:
                await self._commit(records)

    async def _device(self, device: GnssReceiver | ModemMonitor) -> None:
        """Feed a serial device's values to the pipeline; log its health changes."""
        pipeline = self.pipeline
        assert pipeline is not None
        bus, message = (
            (GNSS_BUS, GNSS_MESSAGE)
            if isinstance(device, GnssReceiver)
            else (MODEM_BUS, MODEM_MESSAGE)
        )
        item: GnssUpdate | ModemUpdate | StateChange
        async for item in device:
            if isinstance(item, StateChange):
                level = logging.INFO if item.state == "ok" else logging.WARNING
                log.log(level, "%s: %s → %s: %s", bus, item.previous, item.state, item.reason)
                continue
            if not item.signals:
                continue
            self._device_values.setdefault(bus, {}).update(item.signals)
            # On the buses' clock, so that conditions mixing CAN and device signals (and windows
            # over them) see one timeline even when the buses replay a log.
            t = self._bus_now()
            records = pipeline.process_signals(
                item.time if t is None else t, bus, message, item.signals
            )
            if records:
                await self._commit(records)

    async def _close_devices(self) -> None:
        self._gnss = None
        self._modem = None

    def _link_quality(self) -> dict[str, object] | None:
        """The cellular link as the modem last saw it (for the uplink's link events)."""
        modem = self._modem
        latest = None if modem is None else modem.latest
        if latest is None:
            return None
        quality: dict[str, object] = dict(latest.signals())
        quality["age_s"] = round(max(0.0, time.time() - latest.time), 1)
        return quality

    def _bus_now(self) -> float | None:
        if self._bus_t is None:
            return None
        return self._bus_t + (time.monotonic() - self._bus_mono)

    async def _ticker(self) -> None:
        pipeline = self.pipeline
        assert pipeline is not None
        while True:
            await asyncio.sleep(_TICK_S)
            now = self._bus_now()
            if now is None:
                continue
            records = pipeline.tick(now)
            if records:
                await self._commit(records)
            if self._ids is not None:
                # A bus that goes quiet still closes windows (suspension, aggregation). The
                # clock is extrapolated from the last frame handled; frames still on their way
                # through intake (a loaded machine) must not look like a silence.
                self._ids.tick(now - _IDS_TICK_LAG_S)
                events = self._ids.pop_events()
                if events:
                    await self._commit_events(events)
            self._publish_state()

    async def _commit(self, records: Iterable[CollectedRecord]) -> None:
        queue = self._queue
        if queue is None:
            return
        now = self._clock()
        expires = now + self.config.queue.ttl_s
        items: list[QueueItem] = []
        for record in records:
            try:
                payload = encode_record(record)
            except (ValueError, TypeError) as e:
                self._encode_errors += 1
                log.warning("scheme %s: record not encodable, dropped: %s", record.scheme_id, e)
                continue
            items.append(QueueItem("telemetry", record.priority, payload, now, expires))
        if not items:
            return
        await queue.put(items)
        self._queued += len(items)
        if self._uplink is not None:
            self._uplink.notify()

    def _publish_state(self) -> None:
        pipeline, uplink = self.pipeline, self._uplink
        if pipeline is None or uplink is None:
            return
        now = time.monotonic()
        if now - self._state_published < self.config.state.min_interval_ms / 1000:
            return
        snapshot = pipeline.take_state()
        if snapshot is None:
            return
        self._state_published = now
        self._send_state(snapshot.values())

    def _send_state(self, samples: Iterable[Sample]) -> None:
        """Publish the full last known state, retained; a newer one replaces it if still waiting."""
        uplink = self._uplink
        assert uplink is not None
        update = StateUpdate(
            vehicle_id=self.config.vehicle_id,
            sequence=uplink.next_sequence(),
            schema_version=SCHEMA_VERSION,
            created_time_us=round(self._clock() * _MICROS),
        )
        update.signals.extend(_signal_state(s) for s in sorted(samples))
        uplink.publish_soon("state", update.SerializeToString(), retain=True, key="state")

    # -- commands ------------------------------------------------------------------------------

    def _handlers(self) -> dict[str, Callable[[VerifiedCommand], Awaitable[str]]]:
        return {
            "schemes": self._on_schemes,
            "ping": self._on_ping,
            "state": self._on_state,
            # Registered without [ids] too: the sender learns why the update cannot apply.
            "ids-rules": self._on_ids_rules,
        }

    async def _on_ping(self, command: VerifiedCommand) -> str:
        return "pong"

    async def _on_state(self, command: VerifiedCommand) -> str:
        pipeline = self.pipeline
        assert pipeline is not None
        snapshot = pipeline.state_snapshot()
        self._send_state(snapshot.values())
        return f"state published ({len(snapshot)} signals)"

    async def _on_schemes(self, command: VerifiedCommand) -> str:
        """``cmd/schemes``: the body is a scheme document in TOML (the files' format)."""
        if not self.config.schemes.accept_pushed:
            raise CommandFailed(
                "not_accepted",
                "this vehicle does not accept pushed schemes (schemes.accept_pushed)",
            )
        if len(command.body) > _MAX_SCHEMES_BYTES:
            raise CommandFailed("too_large", f"scheme document over {_MAX_SCHEMES_BYTES} bytes")
        try:
            text = command.body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CommandFailed("invalid_body", f"scheme document is not UTF-8 ({e})") from None
        schemes = parse_schemes(text, source="cmd/schemes")
        pipeline = self.pipeline
        assert pipeline is not None
        pipeline.check_schemes(schemes)  # unknown signals fail here, before anything changes
        # Persisted before it takes effect: after a restart the vehicle collects what it last
        # confirmed to the backend.
        await asyncio.to_thread(
            write_durably, self.config.pushed_schemes_file, text.encode("utf-8")
        )
        await self._commit(pipeline.replace_schemes(schemes))
        self._scheme_source = "pushed"
        ids = ", ".join(s.id for s in schemes) or "none"
        return f"installed {len(schemes)} schemes: {ids}"

    async def _on_ids_rules(self, command: VerifiedCommand) -> str:
        """``cmd/ids-rules``: the body is an IDS rule file with a ``revision`` (TOML, or TOML in
        one zstd frame); it replaces the running rules, keeping the state of unchanged ones."""
        from security.rulefile import parse_rules, rollback_problem

        engine = self._ids
        if engine is None:
            raise CommandFailed(
                "not_configured",
                "this vehicle runs no intrusion detection ([ids] is not in its configuration)",
            )
        text = _ids_rules_text(command.body)
        # A RuleFileError (an InputError) becomes invalid_body, naming the line and the rule.
        rules = await asyncio.to_thread(parse_rules, text, _IDS_RULES_SOURCE)
        if rules.revision is None:
            raise CommandFailed(
                "invalid_body",
                f"{_IDS_RULES_SOURCE}: revision: is required in a rule update "
                "(a whole number, not lower than the applied one)",
            )
        problem = rollback_problem(engine.rules, rules)
        if problem is not None:
            raise CommandFailed("stale_revision", problem)
        # Compiled off the loop (the engine judges frames meanwhile); binding errors name the
        # line and the rule too.
        prepared = await asyncio.to_thread(engine.prepare, rules)
        # Persisted before it takes effect: after a restart the vehicle detects with what it
        # last confirmed to the backend.
        await asyncio.to_thread(write_durably, self._pushed_ids_rules_file, text.encode("utf-8"))
        changes = engine.replace_rules(prepared)
        self._ids_rules_source = "pushed"
        self._ids_rules_updated_at = self._clock()
        return f"applied rules revision {rules.revision}: {changes.summary()}"

    # -- status --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The status snapshot served to ``tbox status`` and Prometheus."""
        cfg = self.config
        source, queue, uplink, channel = self._source, self._queue, self._uplink, self._channel
        pipeline = self.pipeline
        buses: dict[str, Any] = {}
        if source is not None:
            for name, bus in source.stats.items():
                buses[name] = {
                    "url": bus.url,
                    "open": bus.is_open,
                    "frames": bus.frames,
                    "filtered": bus.filtered,
                    "errors": bus.errors,
                    "reopens": bus.reopens,
                    "last_error": bus.last_error,
                }
        devices: dict[str, Any] = {}
        for kind, device in ((GNSS_BUS, self._gnss), (MODEM_BUS, self._modem)):
            if device is not None:
                devices[kind] = {
                    **dataclasses.asdict(device.health),
                    "values": dict(self._device_values.get(kind, {})),
                }
        p = pipeline.stats if pipeline is not None else None
        result: dict[str, Any] = {
            "vehicle_id": cfg.vehicle_id,
            "version": self._version,
            "pid": os.getpid(),
            "uptime_s": round(self._clock() - self._started, 3),
            "started": self._started,
            "buses": buses,
            "devices": devices,
            "pipeline": {
                "frames": p.frames if p else 0,
                "decoded": p.decoded if p else 0,
                "decode_errors": p.decode_errors if p else 0,
                "records": p.records if p else 0,
                "samples": p.samples if p else 0,
                "queued": self._queued,
                "encode_errors": self._encode_errors,
                "state_updates": p.state_updates if p else 0,
            },
        }
        if queue is not None:
            stats = queue.stats
            result["queue"] = {
                "items": stats.items,
                "bytes": stats.bytes,
                "payload_bytes": stats.payload_bytes,
                "max_bytes": stats.max_bytes,
                "oldest_age_s": None if stats.oldest_age is None else round(stats.oldest_age, 3),
                "dropped": {reason: queue.ledger.get(reason, 0) for reason in DROP_REASONS},
            }
        if uplink is not None:
            u = uplink.stats
            result["uplink"] = {
                "link": u.link,
                "subscribed": u.subscribed,
                "protocol": u.protocol,
                "broker": f"{cfg.mqtt.host}:{cfg.mqtt.port}",
                "batches": u.batches,
                "records": u.records,
                "bytes": u.bytes,
                "resent": u.resent,
                "refused": u.refused,
                "reconnects": u.reconnects,
                "connect_failures": u.connect_failures,
                "malformed": u.malformed,
                "last_error": u.last_error,
                "link_events": [
                    {"t": e.t, "event": e.event, "quality": dict(e.quality), "error": e.error}
                    for e in u.link_events
                ],
            }
        if self._ids is not None:
            st = self._ids.stats
            result["ids"] = {
                "frames": st.frames,
                "flagged_frames": st.flagged_frames,
                "events": self._ids_events,
                "findings": dict(st.findings),
                "rules": len(self._ids.rules),
                "rules_revision": self._ids.rules.revision,
                "rules_source": self._ids_rules_source,
                "rules_updated_at": self._ids_rules_updated_at,
            }
        if self._installer is not None:
            slots = self._installer.status()
            campaign = None if self._campaigns is None else self._campaigns.campaign
            result["ota"] = {
                "slots": slots.to_json(),
                "campaign": None
                if campaign is None
                else {
                    "campaign_id": campaign.campaign_id,
                    "correlation_id": campaign.correlation_id,
                    "step": str(campaign.step),
                    "error_code": campaign.error_code,
                    "detail": campaign.detail,
                },
            }
        if channel is not None:
            c = channel.stats
            result["commands"] = {
                "received": c.received,
                "accepted": c.accepted,
                "rejected": c.rejected,
                "failed": c.failed,
                "by_code": dict(c.by_code),
            }
        if pipeline is not None:
            result["schemes"] = {
                "active": len(pipeline.schemes),
                "ids": [s.id for s in pipeline.schemes],
                "source": self._scheme_source,
            }
        return result


def _ids_rules_text(body: bytes) -> str:
    """The rule file a ``cmd/ids-rules`` body carries: UTF-8 TOML, or that in one zstd frame
    (told apart by the frame's magic number, which no UTF-8 text starts with)."""
    limit = _MAX_IDS_RULES_BYTES
    if body[:4] == ZSTD_MAGIC:
        import zstandard

        try:
            declared = zstandard.frame_content_size(body)
            if declared > limit:
                raise CommandFailed(
                    "too_large", f"the rule file has {declared} bytes; at most {limit}"
                )
            if declared >= 0:
                body = zstandard.ZstdDecompressor().decompress(body)
            else:  # no size in the header: read one byte past the limit to know
                with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                    body = reader.read(limit + 1)
        except zstandard.ZstdError as e:
            raise CommandFailed(
                "invalid_body", f"{_IDS_RULES_SOURCE}: the zstd frame does not decompress: {e}"
            ) from None
    if len(body) > limit:
        raise CommandFailed("too_large", f"the rule file is over {limit} bytes")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandFailed(
            "invalid_body", f"{_IDS_RULES_SOURCE}: the rule file is not UTF-8 ({e})"
        ) from None


@contextlib.asynccontextmanager
async def running(service: AgentService) -> AsyncIterator[AgentService]:
    """Run *service* in a task for the duration of the block (tests, ``tbox demo``).

    Waits until it is ready (or raises what stopped its start); exiting cancels it and waits for
    its staged shutdown.
    """
    task = asyncio.create_task(service.run(), name="agent")
    ready = asyncio.create_task(service.wait_ready())
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready.cancel()
            await task  # raises what stopped it
            raise RuntimeError("the agent stopped while starting")
        yield service
    finally:
        ready.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

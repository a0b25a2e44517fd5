"""The campaign runner: one update campaign at a time, from the command to the committed slot.

:class:`CampaignRunner` drives the pure state machine of :mod:`ota.campaign` through the update
client (:class:`UpdateSource`: a verified plan, then verified downloads) and the A/B installer
(:class:`SlotInstaller`, i.e. :class:`ota.ab_installer.AbInstaller`), persisting every step in a
:class:`~ota.campaign_store.CampaignStore` and reporting it as a ``tbox.v1.OtaStatus`` through the
durable upload queue (kind :data:`~agent.uplink.OTA_STATUS_KIND`, which the uplink publishes one
message each on ``vehicles/<id>/ota/status``).

Usage (the agent's wiring; see ADR 0009)::

    runner = CampaignRunner(
        CampaignStore(state_dir / "ota"), AbInstaller(slots_root), update_client, queue,
        health_check=CommandCheck("tbox selftest", timeout_s=60),
        vehicle_id=vehicle_id, next_sequence=uplink.next_sequence, notify=uplink.notify,
    )
    async with runner:                      # power-on: boots the slots, resumes a campaign
        handlers["ota"] = runner.handle_command
        ...

Each step, in the campaign's task:

* **received** — ``source.check()`` (in a thread) gives the verified plan; the campaign picks its
  T-box image and its ECU images (:func:`~ota.campaign.choose_targets`); an image for an ECU the
  :class:`EcuUpdater` cannot flash fails the campaign (``unsupported_image_kind``).
* **downloading** — every ECU image, then the T-box image:
  ``source.download(target, dest, progress)`` into the campaign's download
  directory; progress events (``bytes_done``/``bytes_total``) at most every
  ``progress_interval_s``. After a restart the plan is fetched again and must still name the
  same image (else ``plan_changed``); the update client resumes its partial download.
* **verifying** — the download is hashed again from storage and its release counter compared
  with the committed one (``hash_mismatch``, ``downgrade``; an image that is already committed
  ends the campaign COMMITTED with nothing installed).
* **installing** — each ECU stages its image (``ecus.stage``), then
  ``installer.install`` unless the installer already holds the image (an install
  is never redone); each attempt is counted on disk before it starts, so an install cut by power
  cuts is tried :data:`~ota.campaign.MAX_INSTALL_ATTEMPTS` times at most.
* **activating** — each ECU is reset into its image (``ecus.activate``), then
  ``installer.boot()`` (the simulated reboot), the health check (run here, in a
  thread, outside the installer's lock, then recorded with ``check_health``), ``commit()``. What
  to do next is always decided from ``installer.status()``, so a resumed activation finishes
  where the installer is, and COMMITTED is reported only when the installer says so.

**All or nothing.** The first failure after an ECU staged its image (an ECU refusing or failing
its image, the T-box's install or health check, the watchdog) makes the campaign roll every ECU
back (``ecus.roll_back``, last lane first, each persisted) before it ends FAILED or ROLLED_BACK;
see :mod:`ota.campaign` and ADR 0012. A campaign resumed after a crash goes on with the sweep.

**Watchdog.** Every step runs under a time budget (:class:`StepBudgets`); the download's is the
longest time without progress. A step that overruns ends the campaign with error code
``stalled`` — FAILED before activation (the installer holds nothing bootable of it: a write the
watchdog abandoned is rolled back when it finishes), ROLLED_BACK during activation (the installer
is rolled back first). The campaign's ``deadline`` bounds every step before activation
(``deadline_passed``); an activation is never cut short by it.

**Start-up** (``async with``): ``installer.boot()`` (each agent start is a power-on of the
simulated T-box), then the persisted campaign is resumed from its step — its unsent status
events queued first — or, if it has ended, reconciled (an update it left pending is rolled back,
its downloads deleted). An unreadable state file is moved aside and any pending update rolled
back: no campaign vouches for it.

Stop by leaving the ``async with`` (cancellation): the campaign's task is cancelled; what it
persisted is resumed at the next start. Blocking work (the update client, hashing, the installer,
the health check, the state file) runs in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from agent import crashpoints
from agent.command_channel import CommandFailed
from agent.commands import VerifiedCommand
from agent.errors import TboxError
from agent.uplink import OTA_STATUS_KIND
from agent.upload_queue import QueueItem
from ota.ab_installer import sha256_from_disk
from ota.campaign import (
    ActivateEcu,
    Boot,
    Campaign,
    CheckHealth,
    Commit,
    CommitDone,
    DownloadDone,
    EcuActivated,
    EcuDownloaded,
    EcuFailed,
    EcuRolledBack,
    EcuStaged,
    EcuStaging,
    ErrorCode,
    Event,
    Failed,
    Install,
    InstallDone,
    InstallRetried,
    LanePhase,
    PlannedTarget,
    RollBackEcu,
    RolledBack,
    StageEcu,
    StatusEvent,
    Step,
    TargetRef,
    VerifyPassed,
    accept,
    activation_decision,
    choose_targets,
    error_code_for,
    find_target,
    format_deadline,
    install_decision,
    lane_action,
    leftover_rollback,
    own_reason,
    parse_request,
    progress_event,
    sent,
    stamp,
    status_message,
    transition,
    verify_decision,
)
from ota.campaign_store import CampaignStore
from ota.errors import CampaignBusyError, CampaignStateError, EcuLaneError, SlotSequenceError
from ota.health_check import HealthCheck, HealthResult
from ota.image_cache import BaseImages, ChainedBases, ImageCache, KnownImages
from ota.slot_state import Slot, SlotStatus

__all__ = [
    "STATUS_PRIORITY",
    "CampaignRunner",
    "EcuUpdater",
    "SlotInstaller",
    "StatusQueue",
    "StepBudgets",
    "UpdateSource",
]

log = logging.getLogger(__name__)

#: Queue priority of status events: the most urgent there is (0), so that a campaign's report
#: is never evicted for telemetry and never waits behind a backlog.
STATUS_PRIORITY: Final = 0

CP_EVENTS_QUEUED = crashpoints.declare(
    "campaign.events_queued",
    "a campaign step's status events are committed to the upload queue; the state file still "
    "lists them as unsent",
)
CP_PROGRESS_QUEUED = crashpoints.declare(
    "campaign.progress_queued", "a download progress event is committed to the upload queue"
)

TargetT = TypeVar("TargetT", bound=PlannedTarget)


class UpdateSource(Protocol[TargetT]):
    """The update client as a campaign uses it (blocking calls, run in worker threads)."""

    def check(self) -> Sequence[TargetT]:
        """Refresh the metadata; the verified targets assigned to this vehicle (the plan).

        Raises (any exception) when no verified plan can be had; an
        :class:`~ota.errors.OtaVerificationError` is reported as ``verification_failed``.
        """
        ...

    def download(
        self,
        target: TargetT,
        dest: Path,
        progress: Callable[[int, int], None],
        *,
        bases: BaseImages | None = None,
    ) -> Path:
        """Download *target* into the directory *dest*; the path of the verified file.

        Resumes what an earlier call (even in an earlier process) left in *dest*. Calls
        ``progress(bytes_done, bytes_total)`` from its own thread as bytes arrive.
        """
        ...


class SlotInstaller(Protocol):
    """What a campaign needs of :class:`ota.ab_installer.AbInstaller` (blocking calls)."""

    def install(
        self,
        image_path: Path,
        expected_sha256: str,
        expected_length: int,
        release_counter: int,
        *,
        version: str = "",
    ) -> SlotStatus:
        """Write and verify the inactive slot; mark it to try at the next boot."""
        ...

    def boot(self) -> SlotStatus:
        """The bootloader's part at power-on."""
        ...

    def check_health(self, check: HealthCheck) -> HealthResult:
        """Record *check*'s result for the booted update (rolls back on failure)."""
        ...

    def commit(self) -> SlotStatus:
        """Make the healthy booted update permanent."""
        ...

    def rollback(self, reason: str) -> SlotStatus:
        """Abandon the pending update for the committed slot."""
        ...

    def image_path(self, slot: Slot) -> Path:
        """The image file of *slot* (a delta's base when it is the committed one)."""
        ...

    def status(self) -> SlotStatus:
        """The slots' state now."""
        ...


class EcuUpdater(Protocol):
    """The ECUs a campaign flashes (:class:`ota.ecu_fleet.EcuFleet`); every call is idempotent
    and raises :class:`~ota.errors.EcuLaneError` with the campaign's error code."""

    def flashable(self) -> frozenset[str]:
        """The ECU ids it can flash."""
        ...

    async def runs(self, ecu_id: str, image_path: Path) -> bool:
        """Whether the ECU runs the image now."""
        ...

    async def stage(self, ecu_id: str, image_path: Path) -> bool:
        """Flash the image into the ECU's inactive bank, checked, not booted; ``True`` if the
        ECU already runs it."""
        ...

    async def activate(self, ecu_id: str, image_path: Path) -> None:
        """Reset the ECU into its staged image and verify it runs it."""
        ...

    async def roll_back(self, ecu_id: str, image_path: Path) -> None:
        """Invalidate the image in the ECU and reset it into its previous image."""
        ...


class StatusQueue(Protocol):
    """Where status events go: :class:`agent.upload_queue.UploadQueue`."""

    async def put(self, items: Iterable[QueueItem]) -> None:
        """Store *items* durably."""
        ...


@dataclass(frozen=True, slots=True)
class StepBudgets:
    """How long each step may take before the watchdog ends the campaign as ``stalled``.

    ``download_stall_s`` is the longest time a download may go without receiving a byte (its
    total time is bounded by the update client's throughput floor, not here). The defaults are
    for a vehicle on a cellular link with eMMC storage: minutes, not seconds.
    """

    checking_s: float = 300.0  # refreshing the metadata (received; resuming a download)
    download_stall_s: float = 300.0  # without download progress
    verifying_s: float = 600.0  # hashing the download back from storage
    installing_s: float = 1800.0  # writing and re-hashing the slot
    activating_s: float = 900.0  # boot, health check (its own timeout inside), commit

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"step budget {name} = {value!r} is not above 0")


@dataclass(frozen=True, slots=True)
class _Known:
    """A health check whose result is already known (it was run outside the installer's lock)."""

    result: HealthResult

    def run(self) -> HealthResult:
        return self.result


class _ExpiredError(Exception):
    """A step overran its budget or the campaign's deadline."""

    def __init__(self, code: ErrorCode, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


class _Watchdog:
    """A step's time budget: the ``asyncio.timeout`` around it, pushed back by progress."""

    def __init__(self, budget_s: float, deadline: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.budget_s = budget_s
        self.deadline = deadline  # loop time, or None
        self.timeout: asyncio.Timeout | None = None

    def when(self) -> float:
        stall = self.loop.time() + self.budget_s
        return stall if self.deadline is None else min(stall, self.deadline)

    def kick(self) -> None:
        """Progress: the budget starts again (from the event loop's thread)."""
        if self.timeout is not None:
            with contextlib.suppress(RuntimeError):  # expiring or left: nothing to push back
                self.timeout.reschedule(self.when())

    def cause(self) -> ErrorCode:
        if self.deadline is not None and self.loop.time() >= self.deadline:
            return ErrorCode.DEADLINE_PASSED
        return ErrorCode.STALLED


def _retrieve(future: asyncio.Future[Any]) -> None:
    # An abandoned install's outcome is read from the installer's state, not from its future.
    if not future.cancelled():
        future.exception()


class CampaignRunner:
    """Runs update campaigns (see the module's docstring); an async context manager."""

    def __init__(
        self,
        store: CampaignStore,
        installer: SlotInstaller,
        source: UpdateSource[Any],
        queue: StatusQueue,
        *,
        health_check: HealthCheck,
        vehicle_id: str,
        next_sequence: Callable[[], int],
        notify: Callable[[], None] = lambda: None,
        budgets: StepBudgets | None = None,
        progress_interval_s: float = 10.0,
        boot_on_start: bool = True,
        clock: Callable[[], float] = time.time,
        ecus: EcuUpdater | None = None,
        ecu_images: ImageCache | None = None,
    ) -> None:
        self._store = store
        self._installer = installer
        self._source = source
        self._queue = queue
        self._health = health_check
        self._vehicle_id = vehicle_id
        self._next_sequence = next_sequence
        self._notify = notify
        self._budgets = budgets or StepBudgets()
        self._progress_interval_s = progress_interval_s
        self._boot_on_start = boot_on_start
        self._clock = clock
        self._ecus = ecus
        self._ecu_images = ecu_images
        self._campaign: Campaign | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None
        self._submitting = asyncio.Lock()
        # The plan's targets fetched in this process, by name: download() takes the client's own
        # objects, which a campaign resumed after a restart must fetch again.
        self._live: dict[str, Any] = {}
        # Whether the attempt counted by the last transition to INSTALLING is still unused: a
        # campaign resumed in INSTALLING does not know whether its counted attempt started.
        self._unused_attempt = False
        self._progress_tail: asyncio.Task[None] | None = None
        self._progress_at = 0.0
        # An install the watchdog gave up on: its thread goes on writing; the campaign's
        # conclusion waits for it before looking for what to roll back.
        self._abandoned: asyncio.Future[SlotStatus] | None = None

    @property
    def campaign(self) -> Campaign | None:
        """The running campaign, or the last one (``None``: none on record)."""
        return self._campaign

    # --- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> CampaignRunner:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        try:
            await self._start()
        except BaseException as e:
            await self._group.__aexit__(type(e), e, e.__traceback__)
            self._group = None
            raise
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        assert self._group is not None
        for task in (self._task, self._progress_tail):
            if task is not None:
                task.cancel()
        try:
            await self._group.__aexit__(*exc_info)
        finally:
            self._group = None

    async def _start(self) -> None:
        if self._boot_on_start:
            try:
                await asyncio.to_thread(self._installer.boot)
            except TboxError as e:  # reported by each campaign that needs the installer
                log.error("ota: the slots do not boot: %s", e)
        try:
            campaign = await asyncio.to_thread(self._store.load)
        except CampaignStateError as e:
            aside = await asyncio.to_thread(self._store.move_aside)
            log.error("ota: %s; kept as %s, starting without a campaign", e, aside)
            await self._roll_back_orphan(f"the campaign state file is unreadable ({e})")
            return
        self._campaign = campaign
        if campaign is None:
            return
        if campaign.final:
            # Done before start-up returns, so that a new campaign does not have to wait for it
            # (no install can be running yet: this process started none).
            await self._run(campaign)
        else:
            self._task = self._spawn(campaign)

    def _spawn(self, campaign: Campaign) -> asyncio.Task[None]:
        assert self._group is not None, "the runner is not started"
        return self._group.create_task(
            self._run(campaign), name=f"ota-campaign-{campaign.campaign_id}"
        )

    # --- commands ------------------------------------------------------------------------------

    async def submit(self, body: bytes, *, command_id: str) -> str:
        """Start the campaign in a ``cmd/ota`` *body*; return once it is RECEIVED, persisted and
        its event queued.

        Raises :class:`~ota.errors.CampaignRequestError` for a malformed body and
        :class:`~ota.errors.CampaignBusyError` while another campaign runs. A campaign id that
        is the current (or last) campaign's is not started again: the answer says its step.
        """
        request = parse_request(body)
        async with self._submitting:
            current = self._campaign
            if current is not None and current.campaign_id == request.campaign_id:
                return f"campaign {request.campaign_id} was already received; it is {current.step}"
            if self._busy():
                assert current is not None
                raise CampaignBusyError(
                    f"campaign {request.campaign_id} not started: {current.describe()} has not "
                    "ended; one campaign runs at a time"
                )
            campaign = accept(request, command_id=command_id, now_us=self._now_us())
            await asyncio.to_thread(self._store.discard_downloads)  # the last one's leftovers
            self._live.clear()
            self._unused_attempt = False
            campaign = await self._persist(campaign)
            log.info("ota: %s", campaign.detail)
            try:
                campaign = await self._flush(campaign)  # the RECEIVED event, durably queued
            finally:
                # Persisted, so it runs whatever happened to its event (the task queues it then)
                self._task = self._spawn(campaign)
            return f"campaign {request.campaign_id} received"

    async def handle_command(self, command: VerifiedCommand) -> str:
        """The ``cmd/ota`` handler for :class:`agent.command_channel.CommandChannel`.

        A malformed body is an input error (``invalid_body``); a busy runner fails the command
        with code ``busy``. The command's id is the campaign's default correlation id.
        """
        try:
            return await self.submit(command.body, command_id=command.command_id)
        except CampaignBusyError as e:
            raise CommandFailed("busy", str(e)) from None

    async def wait_idle(self) -> Campaign | None:
        """Wait until no campaign runs; the last campaign (for tests and ``tbox ota check``)."""
        while (task := self._task) is not None and not task.done():
            await asyncio.wait({task})
        return self._campaign

    def _busy(self) -> bool:
        running = self._task is not None and not self._task.done()
        return running or (self._campaign is not None and not self._campaign.final)

    # --- the campaign's task -------------------------------------------------------------------

    async def _run(self, campaign: Campaign) -> None:
        c = campaign
        try:
            c = await self._flush(c)  # what a crash left unsent goes first
            while not c.final:
                c = await self._advance(c)
            await self._conclude(c)
        except Exception as e:
            # A fault of ours or of the store/queue (disk full, queue closed): end the campaign
            # truthfully if the installer can tell how, else leave it to resume at next start.
            log.exception("ota: %s: unexpected error", c.describe())
            try:
                await self._abort(self._campaign or c, e)
            except Exception:
                log.exception(
                    "ota: %s could not be ended; it resumes at the next start",
                    (self._campaign or c).describe(),
                )

    async def _advance(self, c: Campaign) -> Campaign:
        if c.abort is not None:
            return await self._sweep(c)
        if c.step is Step.ACTIVATING:
            return await self._activate(c)
        late = self._deadline_failure(c)
        if late is not None:
            return await self._apply(c, late)
        if c.step is Step.RECEIVED:
            return await self._plan(c)
        if c.step is Step.DOWNLOADING:
            return await self._download(c)
        if c.step is Step.VERIFYING:
            return await self._verify(c)
        assert c.step is Step.INSTALLING, c.step
        return await self._install(c)

    async def _plan(self, c: Campaign) -> Campaign:
        try:
            plan = await self._check(c)
        except Exception as e:
            return await self._apply(c, self._failure(c, e))
        flashable = self._ecus.flashable() if self._ecus is not None else frozenset[str]()
        event = choose_targets(c, [ref for ref, _ in plan], flashable)
        self._live = {ref.name: live for ref, live in plan}
        return await self._apply(c, event)

    async def _check(self, c: Campaign) -> list[tuple[TargetRef, Any]]:
        async with self._watchdog(c, "checking for updates", self._budgets.checking_s):
            plan = await asyncio.to_thread(self._source.check)
        return [(TargetRef.of(p), p) for p in plan]

    async def _download(self, c: Campaign) -> Campaign:
        for lane in c.ecus:
            if lane.phase is LanePhase.PLANNED:
                return await self._fetch(c, lane.target)
        if c.target is None:
            return await self._apply(c, DownloadDone(None))
        return await self._fetch(c, c.target)

    async def _fetch(self, c: Campaign, target: TargetRef) -> Campaign:
        """Download *target* (an ECU lane's or the T-box image) and record it."""
        progress_on = True

        def progress(done: int, total: int) -> None:  # in the update client's thread
            if progress_on:
                with contextlib.suppress(RuntimeError):  # the loop has closed
                    loop.call_soon_threadsafe(self._on_progress, c, target, dog, done, total)

        loop = asyncio.get_running_loop()
        try:
            live = self._live.get(target.name)
            if live is None or TargetRef.of(live) != target:
                plan = await self._check(c)  # resumed: the client needs fresh metadata first
                self._live = {ref.name: live for ref, live in plan}
                found = find_target(c, [ref for ref, _ in plan], target)
                if isinstance(found, Failed):
                    return await self._apply(c, found)
                live = plan[found][1]
            # One directory per lane: two ECUs' images may share a file name.
            ecu = None if target is c.target else target.lane
            dest = await asyncio.to_thread(self._store.download_dir, c.campaign_id, ecu)
            self._progress_at = time.monotonic()
            what = f"downloading {target.name}"
            async with self._watchdog(c, what, self._budgets.download_stall_s) as dog:
                bases = await asyncio.to_thread(self._bases)
                path = await asyncio.to_thread(
                    self._source.download, live, dest, progress, bases=bases
                )
        except Exception as e:
            event: Event = self._failure(c, e)
        else:
            if target is c.target:
                event = DownloadDone(str(path))
            else:
                event = EcuDownloaded(target.lane, str(path))
        finally:
            progress_on = False  # a download the watchdog abandoned reports nothing more
        return await self._apply(c, event)

    def _on_progress(
        self, c: Campaign, target: TargetRef, dog: _Watchdog, done: int, total: int
    ) -> None:
        if self._campaign is not c:  # a late call: the download has ended
            return
        dog.kick()
        now = time.monotonic()
        if now - self._progress_at < self._progress_interval_s:
            return
        self._progress_at = now
        event = progress_event(c, done, total, now_us=self._now_us(), target=target)
        item = self._item(c, replace(event, sequence=self._next_sequence()))
        previous = self._progress_tail
        assert self._group is not None
        self._progress_tail = self._group.create_task(self._put_progress(previous, item))

    async def _put_progress(self, previous: asyncio.Task[None] | None, item: QueueItem) -> None:
        if previous is not None:
            await previous  # in order: the queue's order is the sequence's
        try:
            await self._queue.put([item])
        except Exception as e:  # progress is best effort; the steps' events are not
            log.warning("ota: a download progress event was not queued: %s", e)
            return
        CP_PROGRESS_QUEUED.hit()
        self._notify()

    async def _verify(self, c: Campaign) -> Campaign:
        for lane in c.ecus:
            assert lane.download is not None
            try:
                sha256, length = await asyncio.to_thread(sha256_from_disk, Path(lane.download))
            except OSError as e:
                text = f"the download {lane.download} cannot be read: {e.strerror or e}"
                return await self._apply(c, Failed(ErrorCode.HASH_MISMATCH, text))
            t = lane.target
            if (sha256, length) != (t.sha256, t.length):
                text = (
                    f"the download {lane.download} is {length} bytes with sha256 "
                    f"{sha256[:12]}…; {t.name} is {t.length} bytes with sha256 {t.sha256[:12]}…"
                )
                return await self._apply(c, Failed(ErrorCode.HASH_MISMATCH, text))
        if c.download is None:
            return await self._apply(c, VerifyPassed())
        path = Path(c.download)
        try:
            async with self._watchdog(c, f"verifying {path}", self._budgets.verifying_s):
                sha256, length = await asyncio.to_thread(sha256_from_disk, path)
                status = await asyncio.to_thread(self._installer.status)
        except OSError as e:
            event: Event = Failed(
                ErrorCode.HASH_MISMATCH, f"the download {path} cannot be read: {e.strerror or e}"
            )
        except Exception as e:
            event = self._failure(c, e)
        else:
            event = verify_decision(c, sha256, length, status)
        return await self._apply(c, event)

    async def _install(self, c: Campaign) -> Campaign:
        action = lane_action(c)
        if isinstance(action, StageEcu):
            return await self._lane_step(c, action)
        if c.target is None:
            return await self._apply(c, InstallDone())
        target, download = c.target, c.download
        assert target is not None and download is not None
        try:
            status = await asyncio.to_thread(self._installer.status)
        except Exception as e:
            return await self._apply(c, self._failure(c, e))
        decision = install_decision(c, status)
        if not isinstance(decision, Install):
            return await self._apply(c, decision)
        if not self._unused_attempt:  # resumed: the counted attempt may have been cut short
            c = await self._apply(c, InstallRetried())
            if c.final:
                return c
        self._unused_attempt = False
        install = functools.partial(
            self._installer.install,
            Path(download),
            target.sha256,
            target.length,
            target.release_counter,
            version=target.image().version,
        )
        # Not to_thread: if the watchdog gives up on it, the write goes on in its thread, and
        # the campaign's conclusion waits for it, then rolls back what it left pending.
        future = asyncio.get_running_loop().run_in_executor(None, install)
        future.add_done_callback(_retrieve)
        try:
            async with self._watchdog(c, f"installing {target.name}", self._budgets.installing_s):
                await asyncio.shield(future)
        except Exception as e:
            if not future.done():
                self._abandoned = future
            return await self._apply(c, self._failure(c, e))
        return await self._apply(c, InstallDone())

    async def _activate(self, c: Campaign) -> Campaign:
        action = lane_action(c)
        if isinstance(action, ActivateEcu):
            return await self._lane_step(c, action)
        target = c.target
        if target is None:
            return await self._apply(c, CommitDone())
        installer = self._installer
        try:
            what = f"activating {target.name}"
            async with self._watchdog(c, what, self._budgets.activating_s, deadline=False):
                while True:
                    status = await asyncio.to_thread(installer.status)
                    match activation_decision(c, status):
                        case Boot():
                            await asyncio.to_thread(installer.boot)
                        case CheckHealth():
                            result = await asyncio.to_thread(self._health.run)
                            await asyncio.to_thread(installer.check_health, _Known(result))
                        case Commit():
                            await asyncio.to_thread(installer.commit)
                        case CommitDone() | RolledBack() as ended:
                            return await self._apply(c, ended)
        except (_ExpiredError, TboxError) as e:
            failure = self._failure(c, e)
            ending = await self._roll_back(c, failure.code, failure.reason)
            return await self._apply(c, ending)

    async def _lane_step(self, c: Campaign, action: StageEcu | ActivateEcu) -> Campaign:
        """Stage or activate one ECU lane; a failure starts the rollback of every lane."""
        assert self._ecus is not None, "a campaign with ECU lanes needs an EcuUpdater"
        lane = action.lane
        assert lane.download is not None
        path = Path(lane.download)
        event: Event
        try:
            if isinstance(action, StageEcu) and lane.phase is LanePhase.DOWNLOADED:
                what = f"reading what ECU {lane.ecu_id} runs"
                async with self._watchdog(c, what, self._budgets.installing_s):
                    unchanged = await self._ecus.runs(lane.ecu_id, path)
                # Recorded before the first byte is flashed: from then on the image is ours.
                event = EcuStaged(lane.ecu_id, True) if unchanged else EcuStaging(lane.ecu_id)
            elif isinstance(action, StageEcu):
                what = f"staging {lane.target.name} on ECU {lane.ecu_id}"
                async with self._watchdog(c, what, self._budgets.installing_s):
                    await self._ecus.stage(lane.ecu_id, path)
                event = EcuStaged(lane.ecu_id)
            else:
                what = f"activating {lane.target.name} on ECU {lane.ecu_id}"
                async with self._watchdog(c, what, self._budgets.activating_s, deadline=False):
                    await self._ecus.activate(lane.ecu_id, path)
                event = EcuActivated(lane.ecu_id)
        except EcuLaneError as e:
            event = EcuFailed(lane.ecu_id, ErrorCode(e.code), str(e))
        except _ExpiredError as e:
            event = EcuFailed(lane.ecu_id, e.code, e.text)
        except TboxError as e:
            event = EcuFailed(lane.ecu_id, ErrorCode.INTERNAL_ERROR, str(e))
        return await self._apply(c, event)

    async def _sweep(self, c: Campaign) -> Campaign:
        """Roll the next lane back; with none left, end the campaign with its abort."""
        abort = c.abort
        assert abort is not None
        action = lane_action(c)
        if isinstance(action, RollBackEcu):
            lane = action.lane
            assert self._ecus is not None and lane.download is not None
            try:
                what = f"rolling back ECU {lane.ecu_id}"
                async with self._watchdog(c, what, self._budgets.activating_s, deadline=False):
                    await self._ecus.roll_back(lane.ecu_id, Path(lane.download))
            except (_ExpiredError, TboxError) as e:  # EcuLaneError among them
                text = e.text if isinstance(e, _ExpiredError) else str(e)
                log.error("ota: %s: ECU %s: %s", c.describe(), lane.ecu_id, text)
                return await self._apply(c, EcuRolledBack(lane.ecu_id, False, text))
            return await self._apply(c, EcuRolledBack(lane.ecu_id, True))
        if c.step is not Step.ACTIVATING:
            return await self._apply(c, Failed(abort.code, abort.reason))
        if c.target is None:
            return await self._apply(c, RolledBack(abort.code, abort.reason))
        return await self._apply(c, await self._roll_back(c, abort.code, abort.reason))

    async def _roll_back(self, c: Campaign, code: ErrorCode, text: str) -> CommitDone | RolledBack:
        """Roll the campaign's update back; how activation really ended, from the installer."""
        reason = own_reason(code, f"campaign {c.campaign_id}: {text}")
        with contextlib.suppress(SlotSequenceError):  # nothing pending: the status tells why
            await asyncio.to_thread(self._installer.rollback, reason)
        status = await asyncio.to_thread(self._installer.status)
        decision = activation_decision(c, status)
        if isinstance(decision, CommitDone | RolledBack):
            return decision
        # Still pending after a rollback: never report what the installer does not say.
        raise RuntimeError(f"{c.describe()}: the update is still pending after a rollback")

    def _bases(self) -> BaseImages:
        """What a delta may patch: the committed T-box image and the ECU images flashed before."""
        committed = self._installer.status().committed
        known = KnownImages({committed.image.sha256: self._installer.image_path(committed.slot)})
        return known if self._ecu_images is None else ChainedBases(known, self._ecu_images)

    async def _conclude(self, c: Campaign) -> None:
        """An ended campaign: roll back what it left pending, keep the images its ECUs now run
        (the bases of later deltas), delete its downloads."""
        abandoned, self._abandoned = self._abandoned, None
        if abandoned is not None:
            log.warning("ota: %s: waiting for the abandoned install to end", c.describe())
            await asyncio.wait({abandoned})  # its outcome is read from the installer below
        status = await asyncio.to_thread(self._installer.status)
        reason = leftover_rollback(c, status)
        if reason is not None:
            log.warning("ota: %s: rolling back its pending update", c.describe())
            with contextlib.suppress(SlotSequenceError):  # it ended by itself meanwhile
                await asyncio.to_thread(self._installer.rollback, reason)
        if self._ecu_images is not None and c.step is Step.COMMITTED:
            for lane in c.ecus:
                if lane.phase is LanePhase.COMMITTED and lane.download is not None:
                    try:
                        await asyncio.to_thread(self._ecu_images.add, Path(lane.download))
                    except (OSError, TboxError) as e:  # only a later delta is lost
                        log.warning("ota: cannot keep %s for deltas: %s", lane.download, e)
        await asyncio.to_thread(self._store.discard_downloads)

    async def _abort(self, c: Campaign, error: Exception) -> None:
        text = f"{type(error).__name__}: {error}"
        if c.final:
            return
        if c.abort is None:
            if c.step is Step.ACTIVATING and c.target is not None:
                ending: Event = await self._roll_back(c, ErrorCode.INTERNAL_ERROR, text)
            elif c.step is Step.ACTIVATING:
                ending = RolledBack(ErrorCode.INTERNAL_ERROR, text)
            else:
                ending = Failed(ErrorCode.INTERNAL_ERROR, text)
            c = await self._apply(c, ending)
        while not c.final:  # ECU lanes to roll back first; each lane's failure is reported
            c = await self._sweep(c)
        await self._conclude(c)

    async def _roll_back_orphan(self, why: str) -> None:
        try:
            status = await asyncio.to_thread(self._installer.status)
            if status.pending is not None:
                log.warning("ota: rolling back %s: %s", status.pending.image.describe(), why)
                await asyncio.to_thread(self._installer.rollback, why)
        except TboxError as e:
            log.error("ota: cannot roll back an update no campaign vouches for: %s", e)

    # --- transitions, persisted and reported ---------------------------------------------------

    async def _apply(self, c: Campaign, event: Event) -> Campaign:
        if self._progress_tail is not None:
            await self._progress_tail  # progress events go before the step that follows
            self._progress_tail = None
        new = transition(c, event, now_us=self._now_us())
        if isinstance(event, VerifyPassed | InstallRetried):
            self._unused_attempt = True
        log.log(logging.WARNING if new.error_code else logging.INFO, "ota: %s", new.detail)
        return await self._flush(await self._persist(new))

    async def _persist(self, c: Campaign) -> Campaign:
        """Save *c*, entering its step, with its outbox's events numbered."""
        c = stamp(c, self._next_sequence)
        await asyncio.to_thread(self._store.save_step, c)
        self._campaign = c
        return c

    async def _flush(self, c: Campaign) -> Campaign:
        """Queue the outbox's events, then record that they are queued."""
        if not c.outbox:
            return c
        await self._queue.put([self._item(c, event) for event in c.outbox])
        CP_EVENTS_QUEUED.hit()
        self._notify()
        c = sent(c)
        await asyncio.to_thread(self._store.save_sent, c)
        self._campaign = c
        return c

    def _item(self, c: Campaign, event: StatusEvent) -> QueueItem:
        message = status_message(c, event, vehicle_id=self._vehicle_id).SerializeToString()
        # No expiry: a campaign's report is kept until the broker acknowledges it.
        return QueueItem(OTA_STATUS_KIND, STATUS_PRIORITY, message, self._clock())

    # --- helpers -------------------------------------------------------------------------------

    def _failure(self, c: Campaign, error: Exception) -> Failed:
        """The Failed event of *error* in *c*'s step (the activation turns it into a rollback)."""
        if isinstance(error, _ExpiredError):
            return Failed(error.code, error.text)
        if not isinstance(error, TboxError):
            log.warning("ota: %s: %s", c.describe(), error, exc_info=error)
        return Failed(error_code_for(error, c.step), str(error) or type(error).__name__)

    def _deadline_failure(self, c: Campaign) -> Failed | None:
        if c.deadline is None or self._clock() < c.deadline:
            return None
        return Failed(
            ErrorCode.DEADLINE_PASSED,
            f"its deadline {format_deadline(c.deadline)} passed before step {c.step} could start",
        )

    @contextlib.asynccontextmanager
    async def _watchdog(
        self, c: Campaign, what: str, budget_s: float, *, deadline: bool = True
    ) -> AsyncIterator[_Watchdog]:
        """Run the body under *budget_s* (and the campaign's deadline); :class:`_ExpiredError`
        if it overruns."""
        loop = asyncio.get_running_loop()
        limit = None
        if deadline and c.deadline is not None:
            limit = loop.time() + (c.deadline - self._clock())
        dog = _Watchdog(budget_s, limit)
        timeout = asyncio.timeout_at(dog.when())
        try:
            async with timeout:
                dog.timeout = timeout
                yield dog
        except TimeoutError:
            if not timeout.expired():
                raise  # the work's own timeout (a socket), not ours
            code = dog.cause()
            if code is ErrorCode.DEADLINE_PASSED:
                assert c.deadline is not None
                text = f"{what} was not done by the deadline {format_deadline(c.deadline)}"
            else:
                text = f"{what} made no progress for {budget_s:g} s (watchdog)"
            raise _ExpiredError(code, text) from None
        finally:
            dog.timeout = None

    def _now_us(self) -> int:
        return max(0, round(self._clock() * 1_000_000))

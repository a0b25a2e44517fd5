"""Simulated ECUs on a CAN bus: the thin driver around :class:`~firmware_stub.uds.UdsServer`.

:class:`EcuHost` opens one python-can bus (a bus URL, contract C7, or an open bus) and runs one
or several :class:`SimulatedEcu` on it, each with its own request/response ids, flash state
directory and faults::

    configs = [EcuConfig(EcuAddress("bms", 0x7E0, 0x7E8), trusted_key=key),
               EcuConfig(EcuAddress("vcu", 0x7E1, 0x7E9), trusted_key=key)]
    async with EcuHost("virtual://diag", configs, state_dir=Path("ecus")) as host:
        await host.wait()           # until cancelled, or the bus fails (BusError)

Threads and the event loop: can-isotp's stack is synchronous and times its frames itself
(flow control, STmin, consecutive-frame timeouts), so each ECU runs a can-isotp
``TransportLayer`` in its own threads (the library's supported threaded mode) rather than in
the loop, where every CAN frame would cost a ``call_soon_threadsafe``. One reader thread per
host receives the bus's frames and hands each to the stack of the ECU whose request id it
carries (other frames are dropped there; a bus URL also gets a receive filter); sends from the
stacks share the bus under a lock. Only complete UDS requests cross into the event loop, where
each ECU serves them one at a time: decide (pure), perform the persistence effect in a worker
thread (``asyncio.to_thread``), answer. Stopping is cancellation: ``__aexit__`` cancels the ECUs,
waits for a step in flight to finish (a block half-written by us would be a power cut we did not
ask for), stops the stacks and the reader, closes the flash files and the bus.

Response pending: erase, check and invalidate (RoutineControl FF00, FF01, FF02) answer NRC 0x78
at once and every ``pending_interval_s`` until
done; any other step answers 0x78 if it takes longer than ``pending_after_s`` (below the P2 of
50 ms the ECU announces).

Power cuts in-process (fault ``power-cut-at-block`` / ``power-cut-at``, or
:meth:`SimulatedEcu.power_cycle`): the ECU stops receiving (no flow control, no response),
forgets its volatile state and its in-memory metadata, stays off ``power_off_s`` and boots from
what was persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent.busurl import BusSpec, open_bus, parse_bus_url
from agent.errors import BusError
from firmware_stub.errors import EcuConfigError, FlashIOError, PowerCut
from firmware_stub.faults import FaultPlan, FaultState
from firmware_stub.flash import DEFAULT_BANK_SIZE, BootReport, FlashMemory
from firmware_stub.uds import (
    CheckBank,
    ClearDtcs,
    Decision,
    Effect,
    EraseBank,
    InvalidateBank,
    ServerConfig,
    ServerState,
    UdsServer,
    WriteBlock,
    WriteFingerprint,
)
from ota.ecu_flash import CheckStatus, EcuAddress

__all__ = ["EcuConfig", "EcuHost", "EcuStats", "SimulatedEcu"]

log = logging.getLogger(__name__)

_READ_TIMEOUT_S: Final = 0.05
_MAX_STANDARD_ID: Final = 0x7FF
_MAX_EXTENDED_ID: Final = 0x1FFFFFFF
_HANDSHAKE_GAP_S: Final = 0.1  # sim/socketcand.py sends a new client frames ~50 ms after rawmode


@dataclass(frozen=True, slots=True)
class EcuConfig:
    """One simulated ECU: address, UDS behaviour, flash, faults.

    *server* defaults to a :class:`ServerConfig` whose hardware id is the ECU's name.
    *factory_image*: the image a new (empty) state directory starts with in bank 0.
    """

    address: EcuAddress
    server: ServerConfig | None = None
    bank_size: int = DEFAULT_BANK_SIZE
    trusted_key: Ed25519PublicKey | None = None
    erase_time_s: float = 0.2
    check_time_s: float = 0.0
    faults: FaultPlan = field(default_factory=FaultPlan)
    factory_image: bytes | None = None
    isotp_params: Mapping[str, Any] = field(default_factory=dict)
    pending_interval_s: float = 2.0
    pending_after_s: float = 0.04

    @property
    def name(self) -> str:
        """The ECU's name (its state directory's name too)."""
        return self.address.name

    def server_config(self) -> ServerConfig:
        """The UDS server configuration in force."""
        return self.server or ServerConfig(hardware_id=self.address.name)


@dataclass
class EcuStats:
    """Counters of one simulated ECU."""

    requests: int = 0
    responses: int = 0
    pending_sent: int = 0
    dropped: int = 0
    blocks: int = 0
    power_cuts: int = 0
    boots: int = 0


class SimulatedEcu:
    """One ECU on an :class:`EcuHost`'s bus (created by the host)."""

    def __init__(
        self,
        config: EcuConfig,
        state_dir: Path,
        host: EcuHost,
        *,
        seed: int = 0,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self.config = config
        self.name = config.name
        self.address = config.address
        self.server = UdsServer(config.server_config())
        self.faults = FaultState(config.faults, seed=seed)
        self.flash = FlashMemory(
            state_dir / config.name,
            hardware_id=self.server.config.hardware_id,
            bank_size=config.bank_size,
            trusted_key=config.trusted_key,
            erase_time_s=config.erase_time_s,
            check_time_s=config.check_time_s,
            faults=self.faults,
        )
        self.state = ServerState()
        self.stats = EcuStats()
        self.boot_report: BootReport | None = None
        self.powered = threading.Event()
        self._host = host
        self._on_event = on_event
        self._requests: asyncio.Queue[bytes] = asyncio.Queue()
        self._stack: Any = None
        self._bridge: threading.Thread | None = None
        self._frames: queue.Queue[Any] = queue.Queue()
        self._running = threading.Event()
        self._serving = asyncio.Lock()

    # --- lifecycle (called by the host) --------------------------------------------------------

    def _open_blocking(self) -> None:
        fresh = self.flash.open(factory_image=self.config.factory_image)
        if fresh:
            self._event(
                "new flash state" + (" with the factory image" if self.config.factory_image else "")
            )
        self.boot_report = self._boot_blocking()
        self.stats.boots += 1

    def _boot_blocking(self) -> BootReport:
        """Boot from what is persisted; a power cut during the boot's own write (fault
        injection) is another power-on."""
        while True:
            self.flash.reload()
            try:
                return self.flash.boot()
            except PowerCut as cut:
                self.stats.power_cuts += 1
                log.info("ECU %s: power cut at %s during boot", self.name, cut.step)

    def _start_stack(self, loop: asyncio.AbstractEventLoop) -> None:
        import isotp

        address = self.address
        mode = (
            isotp.AddressingMode.Normal_29bits
            if address.extended
            else isotp.AddressingMode.Normal_11bits
        )
        params: dict[str, Any] = {
            "blocksize": 0,
            "stmin": 0,
            "max_frame_size": max(4095, self.server.config.max_block_length),
        }
        params.update(self.config.isotp_params)
        frames = self._frames

        def rxfn(timeout: float) -> Any:
            try:
                return frames.get(timeout=timeout)
            except queue.Empty:
                return None

        self._stack = isotp.TransportLayer(
            rxfn=rxfn,
            txfn=self._host._send,
            address=isotp.Address(mode, txid=address.response_id, rxid=address.request_id),
            error_handler=self._isotp_error,
            params=params,
            read_timeout=_READ_TIMEOUT_S,
        )
        self._stack.start()
        self._running.set()
        self.powered.set()
        self._bridge = threading.Thread(
            target=self._bridge_requests, args=(loop,), name=f"ecu-{self.name}", daemon=True
        )
        self._bridge.start()

    def _stop_stack(self) -> None:
        self._running.clear()
        self.powered.clear()
        if self._bridge is not None:
            self._bridge.join(2.0)
            self._bridge = None
        if self._stack is not None:
            self._stack.stop()
            self._stack = None

    def _bridge_requests(self, loop: asyncio.AbstractEventLoop) -> None:
        # One hop per UDS request (not per CAN frame) into the event loop.
        stack = self._stack
        while self._running.is_set():
            payload = stack.recv(block=True, timeout=0.1)
            if payload is not None and self.powered.is_set():
                with contextlib.suppress(RuntimeError):  # the loop is closing
                    loop.call_soon_threadsafe(self._requests.put_nowait, bytes(payload))

    def _isotp_error(self, error: Exception) -> None:
        log.debug("ECU %s: ISO-TP: %s", self.name, error)

    def _deliver(self, frame: Any) -> None:
        """A CAN frame for this ECU's request id (reader thread)."""
        if self.powered.is_set():
            self._frames.put(frame)

    # --- serving -------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer requests until cancelled."""
        loop = asyncio.get_running_loop()
        self.state = self.server.initial_state(loop.time())
        while True:
            payload = await self._requests.get()
            if not self.powered.is_set():
                continue
            async with self._serving:
                await self._process(payload, loop)

    async def power_cycle(self, off_s: float | None = None, *, reason: str = "power cycle") -> None:
        """Cut the power between two requests, stay off *off_s* (default: the fault plan's
        ``power_off_s``), boot from the persisted state."""
        async with self._serving:
            await self._power_cut(reason, off_s)

    async def _process(self, payload: bytes, loop: asyncio.AbstractEventLoop) -> None:
        self.stats.requests += 1
        before = self.state
        decision = self.server.handle(before, payload, loop.time(), self.flash.meta)
        if decision.effect is not None:
            try:
                result = await self._perform(decision)
            except PowerCut as cut:
                await self._power_cut(f"power cut at {cut.step}", None)
                return
            except FlashIOError as e:
                self._event(f"flash failure: {e}")
                decision = self.server.failed(decision, loop.time())
            else:
                decision = self.server.complete(decision, result, loop.time())
                self._describe_effect(decision.effect, result)
        self.state = decision.state
        self._describe_state(before, decision.state)
        if decision.response is not None:
            await self._respond(decision.sid, decision.response)
        if decision.reset:
            self.state = self.server.initial_state(loop.time(), previous=self.state)
            try:
                report = await asyncio.to_thread(self.flash.boot)
            except PowerCut as cut:  # the boot's own persistence step (the active bank switch)
                await self._power_cut(f"power cut at {cut.step}", None)
            else:
                self._booted(report, "reset")

    async def _perform(self, decision: Decision) -> CheckStatus | bool | None:
        effect = decision.effect
        assert effect is not None
        task = asyncio.ensure_future(asyncio.to_thread(self._apply, effect))
        interval = self.config.pending_after_s
        if decision.pending:
            self._send_pending(decision.sid)
            interval = self.config.pending_interval_s
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=interval)
                if done:
                    return task.result()
                self._send_pending(decision.sid)
                interval = self.config.pending_interval_s
        except asyncio.CancelledError:
            # Let the step finish: stopping the simulator must not look like a power cut.
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
            raise

    def _apply(self, effect: Effect) -> CheckStatus | bool | None:
        flash = self.flash
        if isinstance(effect, WriteBlock):
            flash.write_block(effect.bank, effect.offset, effect.data, effect.length)
            self.stats.blocks += 1
        elif isinstance(effect, EraseBank):
            flash.erase(effect.bank)
        elif isinstance(effect, CheckBank):
            return flash.check(effect.bank, record_dtc=effect.record_dtc)
        elif isinstance(effect, InvalidateBank):
            return flash.invalidate(effect.bank)
        elif isinstance(effect, WriteFingerprint):
            flash.write_fingerprint(effect.data)
        elif isinstance(effect, ClearDtcs):
            flash.clear_dtcs(effect.code)
        return None

    def _send_pending(self, sid: int) -> None:
        self.stats.pending_sent += 1
        self._send(UdsServer.pending_response(sid))

    async def _respond(self, sid: int, response: bytes) -> None:
        if self.faults.drop_response(sid):
            self.stats.dropped += 1
            self._event(f"fault: dropped the response to service 0x{sid:02X}")
            return
        delay = self.config.faults.delay_s
        if delay > 0:
            await asyncio.sleep(delay)
        self.stats.responses += 1
        self._send(response)

    def _send(self, payload: bytes) -> None:
        stack = self._stack
        if stack is not None and self.powered.is_set():
            stack.send(payload)

    async def _power_cut(self, reason: str, off_s: float | None) -> None:
        self.stats.power_cuts += 1
        off = self.config.faults.power_off_s if off_s is None else off_s
        self._event(f"{reason}: off for {off:g} s")
        self.powered.clear()
        stack = self._stack
        if stack is not None:
            # Forget a request or response half-way through the stack, as the ECU's RAM would.
            await asyncio.to_thread(stack.stop_receiving)
            await asyncio.to_thread(stack.stop_sending)
        with contextlib.suppress(queue.Empty):
            while True:
                self._frames.get_nowait()
        while not self._requests.empty():
            self._requests.get_nowait()
        await asyncio.sleep(off)
        loop = asyncio.get_running_loop()
        self.state = self.server.initial_state(loop.time())

        report = await asyncio.to_thread(self._boot_blocking)
        self.powered.set()
        self._booted(report, "power on")

    # --- events --------------------------------------------------------------------------------

    def _booted(self, report: BootReport, why: str) -> None:
        self.boot_report = report
        self.stats.boots += 1
        if report.active is None:
            text = f"{why}: no valid bank, bootloader only"
        else:
            text = f"{why}: running bank {report.active}, version {report.version}"
        if report.rejected:
            text += f" (bank {', '.join(map(str, report.rejected))} failed verification)"
        for bank in report.crashed:
            version = self.flash.meta.banks[bank].version
            text += f" (bank {bank}, version {version}, crashed at start: invalid now)"
        self._event(text)

    def _describe_effect(self, effect: Effect | None, result: CheckStatus | bool | None) -> None:
        if isinstance(effect, EraseBank):
            self._event(f"erased bank {effect.bank}")
        elif isinstance(effect, CheckBank):
            assert isinstance(result, CheckStatus)
            record = self.flash.meta.banks[effect.bank]
            if result is CheckStatus.OK:
                self._event(f"check bank {effect.bank}: version {record.version} is valid")
            else:
                self._event(f"check bank {effect.bank}: refused: {result.description}")
        elif isinstance(effect, InvalidateBank):
            record = self.flash.meta.banks[effect.bank]
            if result:
                self._event(f"invalidated bank {effect.bank} (version {record.version})")
            else:
                self._event(
                    f"invalidate bank {effect.bank}: refused: the other bank does not verify"
                )
        elif isinstance(effect, WriteBlock) and effect.offset == 0:
            self._event(f"download into bank {effect.bank}: {effect.length} bytes")

    def _describe_state(self, before: ServerState, after: ServerState) -> None:
        if after.session is not before.session:
            self._event(f"session {after.session.name.lower()}")
        if after.unlocked and not before.unlocked:
            self._event("security access granted")
        if after.locked_until > before.locked_until:
            self._event("security access locked: too many wrong keys")
        download = after.download
        if download is not None and before.download is None and download.address > 0:
            self._event(f"download resumes at byte {download.address} of {download.length}")

    def _event(self, text: str) -> None:
        log.info("ECU %s: %s", self.name, text)
        if self._on_event is not None:
            self._on_event(self.name, text)


class EcuHost:
    """One bus, several simulated ECUs (see the module docstring).

    *bus*: a bus URL, a :class:`~agent.busurl.BusSpec` (opened and closed by the host, with a
    receive filter for the ECUs' request ids) or an open python-can bus (stays the caller's; the
    host reads it exclusively). *state_dir*: one subdirectory per ECU. *on_event*: called in the
    event loop with (ECU name, text) for what a bench operator wants to see.
    """

    def __init__(
        self,
        bus: str | BusSpec | Any,
        ecus: Sequence[EcuConfig],
        *,
        state_dir: Path,
        on_event: Callable[[str, str], None] | None = None,
        seed: int = 0,
    ) -> None:
        if not ecus:
            raise EcuConfigError("give at least one ECU")
        _check_unique(ecus)
        self._spec: BusSpec | None = (
            parse_bus_url(bus)
            if isinstance(bus, str)
            else (bus if isinstance(bus, BusSpec) else None)
        )
        self._bus: Any = None if self._spec is not None else bus
        self.state_dir = state_dir
        self.ecus: dict[str, SimulatedEcu] = {
            config.name: SimulatedEcu(config, state_dir, self, seed=seed + i, on_event=on_event)
            for i, config in enumerate(ecus)
        }
        self._by_id = {(e.address.request_id, e.address.extended): e for e in self.ecus.values()}
        self._send_lock = threading.Lock()
        self._reading = threading.Event()
        self._reader: threading.Thread | None = None
        self._failure: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self.send_errors = 0

    async def __aenter__(self) -> EcuHost:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._failure = loop.create_future()
        try:
            if self._spec is not None:
                self._bus = await asyncio.to_thread(open_bus, self._spec, self._filters())
            for ecu in self.ecus.values():
                await asyncio.to_thread(ecu._open_blocking)
            for ecu in self.ecus.values():
                await asyncio.to_thread(ecu._start_stack, loop)
            self._reading.set()
            self._reader = threading.Thread(target=self._read, name="ecu-host-reader", daemon=True)
            self._reader.start()
            self._tasks = [
                asyncio.create_task(ecu.serve(), name=f"ecu {ecu.name}")
                for ecu in self.ecus.values()
            ]
            if self._spec is not None and self._spec.interface == "socketcand":
                await asyncio.sleep(_HANDSHAKE_GAP_S)
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def wait(self) -> None:
        """Until cancelled; raises :class:`~agent.errors.BusError` if the bus fails."""
        assert self._failure is not None, "use 'async with EcuHost(…)'"
        await asyncio.shield(self._failure)

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for ecu in self.ecus.values():
            await asyncio.to_thread(ecu._stop_stack)
        self._reading.clear()
        if self._reader is not None:
            await asyncio.to_thread(self._reader.join, 2.0)
            self._reader = None
        for ecu in self.ecus.values():
            ecu.flash.close()
        if self._spec is not None and self._bus is not None:
            bus, self._bus = self._bus, None
            await asyncio.to_thread(bus.shutdown)
        if self._failure is not None and not self._failure.done():
            self._failure.cancel()

    def _filters(self) -> list[dict[str, Any]]:
        return [
            {
                "can_id": e.address.request_id,
                "can_mask": _MAX_EXTENDED_ID if e.address.extended else _MAX_STANDARD_ID,
                "extended": e.address.extended,
            }
            for e in self.ecus.values()
        ]

    def _read(self) -> None:
        import isotp

        bus = self._bus
        by_id = self._by_id
        while self._reading.is_set():
            try:
                msg = bus.recv(_READ_TIMEOUT_S)
            except Exception as e:  # python-can raises what its backend raises
                self._fail(BusError(f"simulated ECUs: the bus failed: {e}"))
                return
            if msg is None or msg.is_error_frame or msg.is_remote_frame:
                continue
            ecu = by_id.get((msg.arbitration_id, bool(msg.is_extended_id)))
            if ecu is not None:
                ecu._deliver(
                    isotp.CanMessage(
                        arbitration_id=msg.arbitration_id,
                        data=bytes(msg.data),
                        extended_id=msg.is_extended_id,
                        is_fd=msg.is_fd,
                    )
                )

    def _send(self, frame: Any) -> None:
        """can-isotp's txfn (the ECUs' stack threads): one frame to the bus."""
        import can

        msg = can.Message(
            arbitration_id=frame.arbitration_id,
            data=frame.data,
            is_extended_id=frame.is_extended_id,
            is_fd=frame.is_fd,
            bitrate_switch=frame.bitrate_switch,
        )
        try:
            with self._send_lock:
                self._bus.send(msg, timeout=1.0)
        except Exception as e:  # a lost frame is what the receiving tester's timeouts are for
            self.send_errors += 1
            log.debug("simulated ECUs: send failed: %s", e)

    def _fail(self, error: BaseException) -> None:
        loop, failure = self._loop, self._failure
        if loop is None or failure is None:
            return

        def set_failure() -> None:
            if not failure.done():
                failure.set_exception(error)

        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(set_failure)


def _check_unique(ecus: Sequence[EcuConfig]) -> None:
    names: set[str] = set()
    ids: dict[tuple[int, bool], str] = {}
    for config in ecus:
        address = config.address
        if address.name in names:
            raise EcuConfigError(f"two ECUs are named {address.name!r}")
        names.add(address.name)
        for can_id in (address.request_id, address.response_id):
            key = (can_id, address.extended)
            if key in ids:
                raise EcuConfigError(
                    f"ECUs {ids[key]!r} and {address.name!r} share the CAN id 0x{can_id:X}"
                )
            ids[key] = address.name

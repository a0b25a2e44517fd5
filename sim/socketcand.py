"""A socketcand-protocol server: the simulator's CAN buses over TCP, across processes.

python-can's ``socketcand`` interface (``can.Bus(interface="socketcand", channel="can0",
host=…, port=…)``, or the bus URL ``socketcand://HOST:PORT/can0``) connects to it as to a real
socketcand daemon in raw mode::

    server: < hi >             client: < open can0 >
    server: < ok >             client: < rawmode >
    server: < ok >
    server: < frame 123 1700000000.000000 0102030405060708 >   (… one per frame)
    client: < send 123 8 1 2 3 4 5 6 7 8 >                     (frames the client transmits)

Ids go out as 3 hex digits (11-bit) or 8 (29-bit): the client tells them apart by text length.
Error frames go out as socketcand does (``< error <class> <time> >``); remote frames cannot be
carried by socketcand's raw mode and are counted as unsupported; CAN FD frames go out as plain
frames with up to 64 data bytes (the protocol has no FD flag; python-can's client reads them).

Design decisions:

* **Handshake gap.** python-can's client reads each handshake reply with a single ``recv(256)`` and
  compares it exactly, so the last ``< ok >`` must not share a TCP segment with the first frames.
  Replies go out with ``TCP_NODELAY`` and a client receives frames only ``handshake_delay``
  seconds (default 50 ms) after its ``< ok >`` to ``rawmode``; frames published before that are
  not sent to it, as a node that joins a bus misses what went before.
* **Batching.** :meth:`SocketcandServer.publish` formats each frame once and writes each client a
  single joined chunk per call.
* **Slow clients.** With ``lossless=True`` (for "as fast as possible" runs) ``publish`` waits on
  every client's ``drain()``, so the slowest client paces the producer and nobody loses frames; a
  client that accepts nothing for ``stall_timeout`` seconds is disconnected. With
  ``lossless=False`` (real-time runs) ``publish`` never waits: a client whose unsent backlog
  exceeds ``max_backlog`` bytes, or that stays above the write high-water mark for more than
  ``max_lag`` seconds, is disconnected with a warning and counted in ``clients_dropped``, so one
  stuck client never holds up the bus for the others.
* **Bad input.** Unknown commands get ``< error unknown command >``, a bad ``send`` gets
  socketcand's ``< Syntax error in send command >``, an unknown channel ``< error could not open
  bus >`` and the connection is closed (as socketcand does). Nothing a client sends can stop the
  server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import can

from agent.errors import BusError, UsageError

__all__ = ["FrameSubscription", "SocketcandServer", "SocketcandStats", "format_frames"]

log = logging.getLogger(__name__)

_HIGH_WATER: Final = 256 * 1024  # transport buffer above which a client counts as behind
_REALTIME_SNDBUF: Final = 256 * 1024  # kernel send buffer per client in real-time mode
_CLOSE_DRAIN_S: Final = 5.0  # at most this long to flush lossless clients when closing
_MAX_COMMAND: Final = 4096  # longest "< … >" command accepted before it counts as garbage
_HEXDIGITS: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(slots=True)
class SocketcandStats:
    """Counters of one :class:`SocketcandServer`.

    ``frames_published``: frames handed to :meth:`~SocketcandServer.publish`, per channel;
    ``frames_sent``: frames written to clients, per channel (a frame sent to two clients counts
    twice); ``frames_received``: frames clients sent, per channel. ``clients_total`` counts every
    connection (probes included); ``clients_served`` those that reached raw mode on a channel.
    """

    clients: int = 0
    clients_total: int = 0
    clients_served: int = 0
    clients_dropped: int = 0
    frames_published: dict[str, int] = field(default_factory=dict)
    frames_sent: dict[str, int] = field(default_factory=dict)
    frames_received: dict[str, int] = field(default_factory=dict)
    frames_unroutable: int = 0
    frames_unsupported: int = 0
    malformed_commands: int = 0


class _Client:
    """One TCP connection and its protocol state."""

    __slots__ = (
        "activation",
        "behind_since",
        "channel",
        "closed",
        "peer",
        "raw",
        "task",
        "writer",
    )

    def __init__(self, writer: asyncio.StreamWriter, peer: str) -> None:
        self.writer = writer
        self.peer = peer
        self.channel: str | None = None
        self.raw = False
        self.closed = False
        self.behind_since: float | None = None
        self.activation: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None

    def buffered(self) -> int:
        return self.writer.transport.get_write_buffer_size()


class FrameSubscription:
    """Frames that socketcand clients send, as an async iterator (see
    :meth:`SocketcandServer.received`). Holds at most ``maxsize`` unread frames; more are dropped
    and counted in ``dropped``. Iteration ends when the server closes; :meth:`get` then raises
    :class:`EOFError`. Close it (or use ``with``) to stop receiving.
    """

    def __init__(self, server: SocketcandServer, maxsize: int) -> None:
        self._server = server
        # None marks the end: the server closed.
        self._queue: asyncio.Queue[can.Message | None] = asyncio.Queue(maxsize + 1)
        self._maxsize = maxsize
        self._ended = False
        self.dropped = 0

    def _offer(self, msg: can.Message) -> None:
        if self._queue.qsize() >= self._maxsize:
            self.dropped += 1
            return
        self._queue.put_nowait(msg)

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(None)  # the spare slot is kept for this

    def get_nowait(self) -> list[can.Message]:
        """Every frame waiting now (possibly none), without blocking."""
        frames = []
        while not self._queue.empty():
            msg = self._queue.get_nowait()
            if msg is None:
                self._queue.put_nowait(None)  # keep the end mark for the next reader
                break
            frames.append(msg)
        return frames

    async def get(self) -> can.Message:
        """The next frame a client sends; :class:`EOFError` once the server has closed."""
        msg = await self._queue.get()
        if msg is None:
            self._queue.put_nowait(None)
            raise EOFError("the socketcand server has closed")
        return msg

    def __aiter__(self) -> FrameSubscription:
        return self

    async def __anext__(self) -> can.Message:
        try:
            return await self.get()
        except EOFError:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop receiving frames."""
        self._server._unsubscribe(self)

    def __enter__(self) -> FrameSubscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _format_frame(msg: can.Message) -> str | None:
    """One frame in socketcand's raw-mode text; None for what raw mode cannot carry."""
    if msg.is_remote_frame:
        return None
    if msg.is_error_frame:
        return f"< error {msg.arbitration_id & 0x1FFFFFFF:03X} {msg.timestamp:.6f} >"
    data = bytes(msg.data[: msg.dlc] if msg.dlc < len(msg.data) else msg.data)
    if msg.is_extended_id:
        return f"< frame {msg.arbitration_id:08X} {msg.timestamp:.6f} {data.hex().upper()} >"
    return f"< frame {msg.arbitration_id:03X} {msg.timestamp:.6f} {data.hex().upper()} >"


def format_frames(frames: Sequence[can.Message]) -> str:
    """*frames* in socketcand's raw-mode text, joined (remote frames are left out)."""
    parts = [_format_frame(m) for m in frames]
    return "".join(p for p in parts if p is not None)


class SocketcandServer:
    """A socketcand server in raw mode for the channels it is given.

    Use as an async context manager; :attr:`port` is the bound port (useful when 0 was asked)::

        async with SocketcandServer("127.0.0.1", 0, ["can0"]) as server:
            await server.publish(frames)          # to every client of each frame's channel
            async for frame in server.received(): # frames clients send
                ...

    It is also a frame sink for :class:`sim.runner.SimulationRunner` (:meth:`send_frames`).
    A frame's ``channel`` picks the clients; a frame without a channel goes to the only channel
    when there is just one. See the module docstring for the slow-client policy.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        channels: Sequence[str] = ("can0",),
        *,
        lossless: bool = True,
        max_lag: float = 2.0,
        max_backlog: int = 8 * 1024 * 1024,
        stall_timeout: float = 30.0,
        handshake_delay: float = 0.05,
    ) -> None:
        if not channels:
            raise UsageError("a socketcand server needs at least one channel")
        if not 0 <= port <= 65535:
            raise UsageError(f"port {port} is out of range 0..65535")
        self.host = host
        self._requested_port = port
        self.channels: tuple[str, ...] = tuple(dict.fromkeys(channels))
        self.lossless = lossless
        self.max_lag = max_lag
        self.max_backlog = max_backlog
        self.stall_timeout = stall_timeout
        self.handshake_delay = handshake_delay
        self.stats = SocketcandStats(
            frames_published=dict.fromkeys(self.channels, 0),
            frames_sent=dict.fromkeys(self.channels, 0),
            frames_received=dict.fromkeys(self.channels, 0),
        )
        self._port = 0
        self._server: asyncio.Server | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._clients: set[_Client] = set()
        # Clients in raw mode past their handshake gap, per channel: the ones frames go to.
        self._active: dict[str, list[_Client]] = {ch: [] for ch in self.channels}
        self._subscriptions: list[FrameSubscription] = []
        self._changed = asyncio.Event()
        self._closing = False

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def address(self) -> str:
        """``HOST:PORT`` the server listens on."""
        return f"{self.host}:{self._port}"

    async def __aenter__(self) -> SocketcandServer:
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        try:
            self._server = await asyncio.start_server(
                self._on_connect, self.host, self._requested_port, reuse_address=True
            )
        except OSError as e:
            await self._tasks.__aexit__(None, None, None)
            raise BusError(
                f"cannot listen for socketcand clients on {self.host}:{self._requested_port}: "
                f"{e.strerror or e}"
            ) from e
        self._port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop listening, disconnect every client and wait for their tasks."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
        if self.lossless:
            # Lossless means the last frames too: let clients take what is still buffered.
            pending = [c for c in self._clients if not c.closed and c.buffered()]
            if pending:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(self.stall_timeout, _CLOSE_DRAIN_S)):
                        await asyncio.gather(*(self._flush(c) for c in pending))
        for client in list(self._clients):
            self._disconnect(client, abort=False)
            if client.task is not None:
                client.task.cancel()
        for subscription in self._subscriptions:
            subscription._end()
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
        if self._server is not None:
            await self._server.wait_closed()

    # --- publishing --------------------------------------------------------------------------

    def clients(self, channel: str | None = None) -> int:
        """Clients receiving frames now (in raw mode, handshake done), on *channel* or all."""
        if channel is not None:
            return len(self._active.get(channel, ()))
        return sum(len(v) for v in self._active.values())

    async def wait_for_clients(self, count: int = 1, *, channel: str | None = None) -> None:
        """Wait until at least *count* clients receive frames (on *channel*, or on any)."""
        while self.clients(channel) < count:
            self._changed.clear()
            await self._changed.wait()

    async def send_frames(self, frames: Sequence[can.Message]) -> None:
        """Frame-sink interface of the simulation runner: the same as :meth:`publish`."""
        await self.publish(frames)

    async def publish(self, frames: Sequence[can.Message]) -> None:
        """Send *frames* to every client that opened each frame's channel.

        With ``lossless`` this waits until every client has taken its share (back-pressure);
        otherwise it never waits and disconnects clients that fall too far behind.
        """
        if not frames:
            return
        stats = self.stats
        single = self.channels[0] if len(self.channels) == 1 else None
        by_channel: dict[str, list[str]] = {}
        for msg in frames:
            channel = msg.channel
            if channel is None and single is not None:
                channel = single
            if not isinstance(channel, str):
                channel = str(channel)
            lines = by_channel.get(channel)
            if lines is None:
                if channel not in self._active:
                    stats.frames_unroutable += 1
                    continue
                lines = by_channel[channel] = []
            # Inline fast path of _format_frame: this loop is the server's hot spot.
            if msg.is_remote_frame or msg.is_error_frame or msg.dlc < len(msg.data):
                text = _format_frame(msg)
                if text is None:
                    stats.frames_unsupported += 1
                    continue
                lines.append(text)
            elif msg.is_extended_id:
                lines.append(
                    f"< frame {msg.arbitration_id:08X} {msg.timestamp:.6f} "
                    f"{msg.data.hex().upper()} >"
                )
            else:
                lines.append(
                    f"< frame {msg.arbitration_id:03X} {msg.timestamp:.6f} "
                    f"{msg.data.hex().upper()} >"
                )
        for channel, lines in by_channel.items():
            stats.frames_published[channel] += len(lines)
            clients = self._active[channel]
            if not clients or not lines:
                continue
            payload = "".join(lines).encode("ascii")
            for client in clients:
                client.writer.write(payload)
            stats.frames_sent[channel] += len(lines) * len(clients)
        await self._after_write()

    async def _after_write(self) -> None:
        behind = [c for c in self._clients if not c.closed and c.buffered() > _HIGH_WATER]
        if self.lossless:
            if behind:
                await asyncio.gather(*(self._drain(c) for c in behind))
            return
        now = time.monotonic()
        for client in self._clients:
            if client not in behind:
                client.behind_since = None
        for client in behind:
            backlog = client.buffered()
            if backlog > self.max_backlog:
                self._drop(client, f"{backlog} bytes behind")
            elif client.behind_since is None:
                client.behind_since = now
            elif now - client.behind_since > self.max_lag:
                self._drop(client, f"more than {self.max_lag:g} s behind")

    async def _drain(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(self.stall_timeout):
                await client.writer.drain()
        except TimeoutError:
            self._drop(client, f"took no data for {self.stall_timeout:g} s")
        except (ConnectionError, OSError):
            self._disconnect(client, abort=True)

    async def _flush(self, client: _Client) -> None:
        # drain() returns at the low-water mark; closing wants the buffer empty, so lower it.
        client.writer.transport.set_write_buffer_limits(high=0, low=0)
        await self._drain(client)

    def _drop(self, client: _Client, why: str) -> None:
        log.warning(
            "socketcand: client %s on %s is %s; disconnected", client.peer, client.channel, why
        )
        self.stats.clients_dropped += 1
        self._disconnect(client, abort=True)

    # --- frames from clients -----------------------------------------------------------------

    def received(self, maxsize: int = 100_000) -> FrameSubscription:
        """Subscribe to the frames clients send (from now on); iterate the result asynchronously."""
        subscription = FrameSubscription(self, maxsize)
        self._subscriptions.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: FrameSubscription) -> None:
        with contextlib.suppress(ValueError):
            self._subscriptions.remove(subscription)

    def _deliver(self, sender: _Client, msg: can.Message) -> None:
        channel = sender.channel
        assert channel is not None
        self.stats.frames_received[channel] += 1
        others = [c for c in self._active[channel] if c is not sender]
        if others:
            text = _format_frame(msg)
            if text is not None:
                payload = text.encode("ascii")
                for client in others:
                    client.writer.write(payload)
                self.stats.frames_sent[channel] += len(others)
        for subscription in self._subscriptions:
            subscription._offer(msg)

    # --- connections -------------------------------------------------------------------------

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
        if self._closing or self._tasks is None:
            writer.transport.abort()
            return
        client = _Client(writer, peer)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                # Replies must leave at once and alone (see "Handshake gap" above).
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if not self.lossless:
                    # Real time: a small kernel buffer keeps the backlog where we can measure
                    # it (Linux lets a send buffer grow to 4 MB, ~20 s of a busy bus).
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _REALTIME_SNDBUF)
        writer.transport.set_write_buffer_limits(high=_HIGH_WATER)
        self._clients.add(client)
        self.stats.clients = len(self._clients)
        self.stats.clients_total += 1
        try:
            client.task = self._tasks.create_task(self._serve(client, reader))
        except RuntimeError:  # the task group is shutting down
            self._disconnect(client, abort=True)

    async def _serve(self, client: _Client, reader: asyncio.StreamReader) -> None:
        try:
            client.writer.write(b"< hi >")
            buffer = b""
            while not client.closed:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
                buffer = self._handle_commands(client, buffer)
        except (ConnectionError, OSError):
            pass  # the client went away: nothing to report
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug must cost one connection, not the server
            log.exception("socketcand: client %s failed", client.peer)
        finally:
            self._disconnect(client, abort=False)

    def _handle_commands(self, client: _Client, buffer: bytes) -> bytes:
        """Act on every complete ``< … >`` command in *buffer*; return the unconsumed rest."""
        pos = 0  # walk by index: slicing per command would copy the buffer once per command
        size = len(buffer)
        while pos < size and not client.closed:
            start = buffer.find(b"<", pos)
            if start < 0:
                if buffer[pos:].strip():
                    self.stats.malformed_commands += 1
                return b""
            end = buffer.find(b">", start)
            if end < 0:
                if size - start > _MAX_COMMAND:
                    self.stats.malformed_commands += 1
                    self._reply(client, "< error command too long >")
                    return b""
                return buffer[start:]
            if start > pos and buffer[pos:start].strip():
                self.stats.malformed_commands += 1
            command = buffer[start + 1 : end].decode("ascii", "replace").split()
            pos = end + 1
            self._command(client, command)
        return b""

    def _command(self, client: _Client, words: list[str]) -> None:
        verb = words[0] if words else ""
        if verb == "send" and client.channel is not None:
            msg = _parse_send(words)
            if msg is None:
                self.stats.malformed_commands += 1
                self._reply(client, "< Syntax error in send command >")
                return
            msg.channel = client.channel
            self._deliver(client, msg)
        elif verb == "open" and client.channel is None:
            if len(words) == 2 and words[1] in self._active:
                client.channel = words[1]
                self._reply(client, "< ok >")
            else:
                self.stats.malformed_commands += 1
                self._reply(client, "< error could not open bus >")
                self._disconnect(client, abort=False)
        elif verb == "rawmode" and client.channel is not None:
            self._reply(client, "< ok >")
            if not client.raw:
                client.raw = True
                loop = asyncio.get_running_loop()
                client.activation = loop.call_later(self.handshake_delay, self._activate, client)
        elif verb == "bcmode" and client.channel is not None:
            self._deactivate(client)
            self._reply(client, "< ok >")
        elif verb == "echo":
            self._reply(client, "< echo >")
        else:
            self.stats.malformed_commands += 1
            self._reply(client, "< error unknown command >")

    def _reply(self, client: _Client, text: str) -> None:
        if not client.closed:
            client.writer.write(text.encode("ascii"))

    def _activate(self, client: _Client) -> None:
        client.activation = None
        if client.closed or not client.raw or client.channel is None:
            return
        active = self._active[client.channel]
        if client not in active:
            active.append(client)
            self.stats.clients_served += 1
        self._changed.set()

    def _deactivate(self, client: _Client) -> None:
        client.raw = False
        if client.activation is not None:
            client.activation.cancel()
            client.activation = None
        if client.channel is not None:
            with contextlib.suppress(ValueError):
                self._active[client.channel].remove(client)
        self._changed.set()

    def _disconnect(self, client: _Client, *, abort: bool) -> None:
        if client.closed:
            return
        self._deactivate(client)
        client.closed = True
        self._clients.discard(client)
        self.stats.clients = len(self._clients)
        transport = client.writer.transport
        if abort:
            transport.abort()  # drop the backlog: the client is too slow to ever take it
        else:
            transport.close()


def _parse_send(words: list[str]) -> can.Message | None:
    """``send <id> <dlc> <byte> …`` as python-can's client and socketcand write it, or None.

    The id is extended if it has more than 3 digits or is above 0x7FF (socketcand's rule). The
    length is decimal in socketcand and hex in python-can's client: either reading that matches
    the number of data bytes is accepted.
    """
    if len(words) < 3:
        return None
    id_text, dlc_text, byte_texts = words[1], words[2], words[3:]
    if not _HEXDIGITS.issuperset(id_text) or not 1 <= len(id_text) <= 8:
        return None
    if not dlc_text.isalnum() or not _HEXDIGITS.issuperset(dlc_text):
        return None
    count = len(byte_texts)
    if count > 64 or count not in (int(dlc_text, 16), _int_or(dlc_text, -1)):
        return None
    if any(len(b) > 2 or not _HEXDIGITS.issuperset(b) for b in byte_texts):
        return None
    can_id = int(id_text, 16)
    extended = len(id_text) > 3 or can_id > 0x7FF
    if can_id > 0x1FFFFFFF:
        return None
    return can.Message(
        timestamp=time.time(),
        arbitration_id=can_id,
        is_extended_id=extended,
        dlc=count,
        data=bytearray(int(b, 16) for b in byte_texts),
        is_fd=count > 8,
        is_rx=True,
        check=False,
    )


def _int_or(text: str, default: int) -> int:
    return int(text) if text.isdigit() else default

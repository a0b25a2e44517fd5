"""The socketcand server against python-can's real ``socketcand`` client, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from sim.record import format_candump_line
from sim.socketcand import SocketcandServer, format_frames
from tests.sim_server import start_sim_server, stop_sim_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _quiet_client() -> Iterator[None]:
    # python-can's client logs a warning whenever TCP splits a frame; thousands at speed.
    logger = logging.getLogger("can.interfaces.socketcand")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def _client(port: int, channel: str = "can0") -> Any:
    return can.Bus(interface="socketcand", channel=channel, host="127.0.0.1", port=port)


def _recv_n(bus: Any, count: int, timeout: float = 5.0) -> list[can.Message]:
    frames: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(min(0.5, left))
        if msg is not None:
            frames.append(msg)
    return frames


def _msg(can_id: int, data: bytes, *, ext: bool = False, t: float = 1_700_000_000.0) -> can.Message:
    return can.Message(
        timestamp=t, arbitration_id=can_id, is_extended_id=ext, data=data, channel="can0"
    )


async def test_handshake_and_frames_to_client() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0"]) as server:
        assert server.port > 0
        bus = await asyncio.to_thread(_client, server.port)
        try:
            await asyncio.wait_for(server.wait_for_clients(1), 5)
            sent = [
                _msg(0x123, b"\x01\x02\x03\x04\x05\x06\x07\x08", t=1_700_000_000.123456),
                _msg(0x1ABCDEF, b"\xaa", ext=True),
                _msg(0x005, b"\x00\x01", ext=True),  # extended although small: 8 digits
                _msg(0x7FF, b""),
            ]
            await server.publish(sent)
            got = await asyncio.to_thread(_recv_n, bus, len(sent))
        finally:
            await asyncio.to_thread(bus.shutdown)
    assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in got] == [
        (0x123, False, bytes(range(1, 9))),
        (0x1ABCDEF, True, b"\xaa"),
        (0x005, True, b"\x00\x01"),
        (0x7FF, False, b""),
    ]
    assert got[0].timestamp == pytest.approx(1_700_000_000.123456, abs=1e-6)
    assert server.stats.frames_sent["can0"] == 4
    assert server.stats.clients_total == 1


async def test_frames_from_clients_reach_subscribers_and_other_clients() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0", "can1"]) as server:
        sender = await asyncio.to_thread(_client, server.port)
        listener = await asyncio.to_thread(_client, server.port)
        elsewhere = await asyncio.to_thread(_client, server.port, "can1")
        try:
            await asyncio.wait_for(server.wait_for_clients(3), 5)
            with server.received() as subscription:
                frames = [
                    can.Message(arbitration_id=0x321, is_extended_id=False, data=b"\x11\x22"),
                    can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x02\x3e"),
                    can.Message(arbitration_id=0x010, is_extended_id=True, data=b""),
                ]
                for frame in frames:
                    await asyncio.to_thread(sender.send, frame)
                received = [await asyncio.wait_for(subscription.get(), 5) for _ in frames]
            relayed = await asyncio.to_thread(_recv_n, listener, 3)
            nothing = await asyncio.to_thread(_recv_n, elsewhere, 1, 0.3)
            echoed = await asyncio.to_thread(_recv_n, sender, 1, 0.3)
        finally:
            for bus in (sender, listener, elsewhere):
                await asyncio.to_thread(bus.shutdown)
    for got in (received, relayed):
        assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in got] == [
            (0x321, False, b"\x11\x22"),
            (0x18DAF110, True, b"\x02\x3e"),
            (0x010, True, b""),
        ]
    assert all(m.channel == "can0" for m in received)
    assert nothing == [] and echoed == []  # other channel; the sender does not hear itself
    assert server.stats.frames_received == {"can0": 3, "can1": 0}


async def test_client_disconnects_at_any_point() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0"]) as server:
        # Connect and vanish before, during and after the handshake.
        for script in (b"", b"< open can0 >", b"< open can0 >< rawmode >", b"< open ca"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            await reader.readexactly(6)  # "< hi >"
            writer.write(script)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
        stays = await asyncio.to_thread(_client, server.port)
        leaves = await asyncio.to_thread(_client, server.port)
        try:
            await asyncio.wait_for(server.wait_for_clients(2), 5)
            await asyncio.to_thread(leaves.shutdown)
            for i in range(200):
                await server.publish([_msg(0x100 + i % 16, bytes([i % 256]) * 8)])
            got = await asyncio.to_thread(_recv_n, stays, 200)
        finally:
            await asyncio.to_thread(stays.shutdown)
        await _until(lambda: server.stats.clients == 0)
    assert len(got) == 200
    assert server.stats.clients_total == 6


async def _until(condition: Any, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def _talk(port: int, text: bytes, expect: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        hello = await reader.readexactly(6)
        assert hello == b"< hi >"
        writer.write(text)
        data = b""
        async with asyncio.timeout(5):
            while data.count(b">") < expect:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
        return data
    finally:
        writer.close()


async def test_malformed_input_is_answered_and_survived() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0"], handshake_delay=0.01) as server:
        replies = await _talk(
            server.port,
            b"garbage < bogus > < open can0 > < rawmode > < send 12G 1 00 > < send 123 2 01 >"
            b"< send 123 1 100 > < echo > < send 123 0 >",
            expect=7,
        )
        assert replies == (
            b"< error unknown command >< ok >< ok >< Syntax error in send command >"
            b"< Syntax error in send command >< Syntax error in send command >< echo >"
        )
        # An unknown channel is refused and the connection closed, as socketcand does.
        refused = await _talk(server.port, b"< open nope >", expect=1)
        assert refused == b"< error could not open bus >"
        # An endless command without '>' is cut off.
        too_long = await _talk(server.port, b"< " + b"x" * 10_000, expect=1)
        assert too_long == b"< error command too long >"
        assert server.stats.malformed_commands >= 6
        assert server.stats.frames_received["can0"] == 1  # "< send 123 0 >" is valid
        # Still serving.
        bus = await asyncio.to_thread(_client, server.port)
        try:
            await asyncio.wait_for(server.wait_for_clients(1), 5)
            await server.publish([_msg(0x42, b"\x42")])
            got = await asyncio.to_thread(_recv_n, bus, 1)
        finally:
            await asyncio.to_thread(bus.shutdown)
        assert [m.arbitration_id for m in got] == [0x42]


async def test_100k_frames_without_loss_with_back_pressure() -> None:
    count = 100_000
    frames = [
        _msg(i % 0x7FF, (i % 1_000_000).to_bytes(4, "big") + b"\x00\x11\x22\x33", t=1e9 + i * 1e-4)
        for i in range(count)
    ]
    async with SocketcandServer("127.0.0.1", 0, ["can0"], lossless=True) as server:
        bus = await asyncio.to_thread(_client, server.port)
        try:
            await asyncio.wait_for(server.wait_for_clients(1), 5)
            receiving = asyncio.ensure_future(asyncio.to_thread(_recv_n, bus, count, 30.0))
            for start in range(0, count, 2_000):  # as fast as the client takes them
                await server.publish(frames[start : start + 2_000])
            got = await receiving
        finally:
            await asyncio.to_thread(bus.shutdown)
    assert len(got) == count
    assert [int.from_bytes(m.data[:4], "big") for m in got] == list(range(count))
    assert server.stats.clients_dropped == 0


async def _stuck_client(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that completes the handshake and then never reads again."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    await reader.readexactly(6)
    writer.write(b"< open can0 >< rawmode >")
    await reader.readexactly(12)
    transport = writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    return reader, writer


async def test_real_time_mode_drops_a_client_that_falls_behind() -> None:
    # ~25k frames/s for ~1.2 s: easy for a python-can client, too much for one that reads nothing
    # (its 256 KiB kernel buffer plus the 512 KiB backlog allowed fill in about a second).
    count, per_tick = 30_000, 150
    async with SocketcandServer(
        "127.0.0.1", 0, ["can0"], lossless=False, max_backlog=512 * 1024, max_lag=1.0
    ) as server:
        _, stuck = await _stuck_client(server.port)
        good = await asyncio.to_thread(_client, server.port)
        try:
            await asyncio.wait_for(server.wait_for_clients(2), 5)
            receiving = asyncio.ensure_future(asyncio.to_thread(_recv_n, good, count, 20.0))
            started = time.monotonic()
            for i in range(0, count, per_tick):
                batch = [_msg(0x100, (i + j).to_bytes(8, "big")) for j in range(per_tick)]
                await server.publish(batch)
                await asyncio.sleep(0.005)
            publishing = time.monotonic() - started
            got = await receiving
        finally:
            await asyncio.to_thread(good.shutdown)
            stuck.close()
    assert server.stats.clients_dropped == 1
    assert len(got) == count  # the good client lost nothing
    assert publishing < 10  # publish never waited for the stuck client


async def test_lossless_mode_drops_a_stalled_client_after_timeout() -> None:
    async with SocketcandServer(
        "127.0.0.1", 0, ["can0"], lossless=True, stall_timeout=0.5
    ) as server:
        _, stuck = await _stuck_client(server.port)
        await asyncio.wait_for(server.wait_for_clients(1), 5)
        started = time.monotonic()
        for i in range(0, 100_000, 1_000):
            await server.publish([_msg(0x100, (i + j).to_bytes(8, "big")) for j in range(1_000)])
        elapsed = time.monotonic() - started
        stuck.close()
    assert server.stats.clients_dropped == 1
    assert elapsed < 10


async def test_subscription_ends_when_the_server_closes() -> None:
    server = SocketcandServer("127.0.0.1", 0, ["can0"])
    async with server:
        subscription = server.received(maxsize=2)
        await _talk(
            server.port,
            b"< open can0 >< rawmode >< send 000 0 >< send 001 0 >< send 002 0 >< send 003 0 >"
            b"< echo >",
            expect=3,
        )
    frames = [m async for m in subscription]
    assert [m.arbitration_id for m in frames] == [0, 1]
    assert subscription.dropped == 2
    with pytest.raises(EOFError):
        await subscription.get()


async def test_unroutable_and_remote_frames_are_counted() -> None:
    async with SocketcandServer("127.0.0.1", 0, ["can0"]) as server:
        remote = can.Message(arbitration_id=0x10, is_remote_frame=True, channel="can0")
        other = can.Message(arbitration_id=0x10, channel="can7")
        unnamed = can.Message(arbitration_id=0x10, channel=None)
        await server.publish([remote, other, unnamed])
    assert server.stats.frames_unsupported == 1
    assert server.stats.frames_unroutable == 1
    assert server.stats.frames_published["can0"] == 1  # the unnamed one: the only channel


def test_formatting_matches_socketcand() -> None:
    frames = [_msg(i % 0x7FF, bytes([i % 256]) * 8, t=1_700_000_000.5) for i in range(2_000)]
    text = format_frames(frames)
    assert text.startswith("< frame 000 1700000000.500000 0000000000000000 >< frame 001 ")
    ext = format_frames([_msg(0x1F, b"\xab", ext=True)])
    assert ext == "< frame 0000001F 1700000000.000000 AB >"
    err = can.Message(timestamp=1.5, arbitration_id=0x4, is_error_frame=True)
    assert format_frames([err]) == "< error 004 1.500000 >"


# --- across processes: `tbox sim serve` ---------------------------------------------------------


def test_serve_replay_to_client_in_another_process(tmp_path: Path) -> None:
    count = 20_000
    log = tmp_path / "drive.log"
    with log.open("w") as f:
        for i in range(count):
            can_id, ext = (0x18FEF100 + i % 4, True) if i % 10 == 0 else (0x100 + i % 0x600, False)
            msg = can.Message(
                timestamp=1_600_000_000 + i * 1e-4,
                arbitration_id=can_id,
                is_extended_id=ext,
                data=i.to_bytes(4, "big"),
                channel="can0",
            )
            f.write(format_candump_line(msg))
    proc, port = start_sim_server(
        tmp_path, "--replay", str(log), "--speed", "0", "--wait-clients", "1", "--quiet"
    )
    try:
        bus = _client(port)
        try:
            got = _recv_n(bus, count, timeout=30)
            bus.send(can.Message(arbitration_id=0x7E0, is_extended_id=False, data=b"\x02\x10"))
        finally:
            bus.shutdown()
        _, err = proc.communicate(timeout=20)
    finally:
        stop_sim_server(proc)
    assert proc.returncode == 0, err
    assert re.search(r"socketcand listening on 127\.0\.0\.1:(\d+)", err)
    assert len(got) == count
    assert [int.from_bytes(m.data, "big") for m in got] == list(range(count))
    assert all(m.is_extended_id == (i % 10 == 0) for i, m in enumerate(got))
    assert got[0].timestamp > 1_700_000_000  # rewritten to the time of the run


def test_serve_stops_on_sigterm_with_status_0(tmp_path: Path) -> None:
    import signal

    log = tmp_path / "tiny.log"
    log.write_text("(1600000000.000000) can0 123#00\n(1600000000.100000) can0 123#01\n")
    proc, port = start_sim_server(tmp_path, "--replay", str(log), "--loop")
    try:
        bus = _client(port)
        try:
            got = _recv_n(bus, 3, timeout=5)
        finally:
            bus.shutdown()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        stop_sim_server(proc)
    assert proc.returncode == 0, err
    assert len(got) == 3
    assert [bytes(m.data) for m in got][:2] in ([b"\x00", b"\x01"], [b"\x01", b"\x00"])

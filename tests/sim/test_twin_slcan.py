"""SlcanTwin against python-can's own slcan driver and raw pyserial; the Lawicel parser under
Hypothesis. The far side of the twin is a python-can ``virtual`` bus in the same process."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import can
import pytest
import serial
from can.util import len2dlc
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import BusError
from sim.slcan_twin import LawicelInterpreter, SlcanTwin, format_frame, parse_frame

TIMEOUT = 10.0
_channels = itertools.count()


def _channel() -> str:
    return f"slcan-twin-test-{time.monotonic_ns()}-{next(_channels)}"


def _same(a: can.Message, b: can.Message) -> bool:
    return (
        a.arbitration_id == b.arbitration_id
        and a.is_extended_id == b.is_extended_id
        and a.is_remote_frame == b.is_remote_frame
        and a.is_fd == b.is_fd
        and a.bitrate_switch == b.bitrate_switch
        and a.dlc == b.dlc
        and (a.is_remote_frame or bytes(a.data) == bytes(b.data))
    )


async def _recv(bus: Any, count: int) -> list[can.Message]:
    def read() -> list[can.Message]:
        got: list[can.Message] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < count and (left := deadline - time.monotonic()) > 0:
            msg = bus.recv(min(left, 0.5))
            if msg is not None:
                got.append(msg)
        return got

    return await asyncio.to_thread(read)


FRAMES = [
    can.Message(arbitration_id=0x123, is_extended_id=False, data=b"\x01\x02"),
    can.Message(arbitration_id=0x7FF, is_extended_id=False, data=bytes(range(8))),
    can.Message(arbitration_id=0x000, is_extended_id=False, data=b""),
    can.Message(arbitration_id=0x1ABCDEF0, is_extended_id=True, data=b"\xde\xad\xbe\xef"),
    can.Message(arbitration_id=0x18DAF110, is_extended_id=True, data=b"\x02\x10\x03"),
    can.Message(arbitration_id=0x321, is_extended_id=False, is_remote_frame=True, dlc=4),
    can.Message(arbitration_id=0x1FFFFFFF, is_extended_id=True, is_remote_frame=True, dlc=8),
]


async def test_python_can_slcan_driver_talks_to_it_both_ways() -> None:
    channel = _channel()
    async with SlcanTwin(f"virtual://{channel}") as adapter:
        far = can.Bus(interface="virtual", channel=channel)
        # Exactly what a user writes (the driver sleeps 2 s after opening the port).
        host: Any = await asyncio.to_thread(
            can.Bus, interface="slcan", channel=adapter.path, bitrate=500000
        )
        try:
            # The driver's "O" may still be on its way through the pty when its constructor
            # returns; wait for the twin to have read it (a deadline, not a timing assertion).
            async with asyncio.timeout(TIMEOUT):
                while not adapter.interpreter.is_open:  # noqa: ASYNC110 - no event to await
                    await asyncio.sleep(0.01)
            assert adapter.interpreter.bitrate == 500000
            for msg in FRAMES:
                await asyncio.to_thread(host.send, msg)
            on_bus = await _recv(far, len(FRAMES))
            for msg in FRAMES:
                far.send(msg)
            at_host = await _recv(host, len(FRAMES))
            assert await asyncio.to_thread(host.get_version, TIMEOUT) == (10, 13)
            assert await asyncio.to_thread(host.get_serial_number, TIMEOUT) == "SIM1"
        finally:
            await asyncio.to_thread(host.shutdown)
            far.shutdown()
    assert len(on_bus) == len(at_host) == len(FRAMES)
    for sent, got in zip(FRAMES, on_bus, strict=True):
        assert _same(sent, got), (sent, got)
    for sent, got in zip(FRAMES, at_host, strict=True):
        assert _same(sent, got), (sent, got)
    assert (adapter.frames.to_bus, adapter.frames.to_host) == (len(FRAMES), len(FRAMES))
    assert not adapter.interpreter.is_open  # the driver's shutdown closed the channel


def _open(path: str) -> serial.Serial:
    return serial.Serial(path, baudrate=115200, timeout=TIMEOUT)


async def _answer(port: serial.Serial, command: bytes, starting: bytes = b"") -> bytes:
    """Send *command* and read its answer: the next piece up to a \\r or BEL that starts
    with *starting* (earlier pieces, such as frame lines, are passed over)."""
    port.write(command)

    def read() -> bytes:
        data = b""
        while not (data.endswith((b"\r", b"\a")) and data.startswith(starting)):
            if data.endswith((b"\r", b"\a")):
                data = b""
            chunk = port.read(1)
            assert chunk, f"no answer to {command!r} within {TIMEOUT} s; got {data!r}"
            data += chunk
        return data

    return await asyncio.to_thread(read)


async def test_lawicel_commands_answer_like_an_adapter() -> None:
    channel = _channel()
    async with SlcanTwin(f"virtual://{channel}", serial_number="A1B2") as adapter:
        far = can.Bus(interface="virtual", channel=channel)
        port = _open(adapter.path)
        try:
            assert await _answer(port, b"\r") == b"\r"  # hosts flush with empty commands
            assert await _answer(port, b"V\r") == b"V1013\r"
            assert await _answer(port, b"N\r") == b"NA1B2\r"
            assert await _answer(port, b"C\r") == b"\a"  # not open
            assert await _answer(port, b"F\r") == b"\a"  # only while open
            assert await _answer(port, b"t1232AABB\r") == b"\a"  # closed: nothing is sent
            assert await _answer(port, b"S9\r") == b"\a"
            assert await _answer(port, b"S4\r") == b"\r"
            assert adapter.interpreter.bitrate == 125000
            assert await _answer(port, b"s031C\r") == b"\r"
            assert await _answer(port, b"M00000000\r") == b"\r"
            assert await _answer(port, b"m\r") == b"\a"
            assert await _answer(port, b"Y2\r") == b"\r"
            assert await _answer(port, b"Z1\r") == b"\r"
            assert await _answer(port, b"O\r") == b"\r"
            assert await _answer(port, b"O\r") == b"\a"  # already open
            assert await _answer(port, b"S6\r") == b"\a"  # only while closed
            assert await _answer(port, b"t1232AABB\r") == b"z\r"
            assert await _answer(port, b"T123456780\r") == b"Z\r"
            assert await _answer(port, b"t12\r") == b"\a"
            assert await _answer(port, b"t8000\r") == b"\a"  # 11-bit ids end at 7FF
            assert await _answer(port, b"t1232AAB\r") == b"\a"  # data shorter than its DLC
            assert await _answer(port, b"t1239" + b"00" * 9 + b"\r") == b"\a"  # DLC 9: FD only
            assert await _answer(port, b"d1239" + b"11" * 12 + b"\r") == b"z\r"
            assert await _answer(port, b"B0000ABCDF" + b"22" * 64 + b"\r") == b"Z\r"
            assert await _answer(port, b"\xff\xfe\r") == b"\a"
            assert await _answer(port, b"X" * 500 + b"\r") == b"\a"

            on_bus = await _recv(far, 4)
            assert [(m.arbitration_id, bytes(m.data), m.is_fd) for m in on_bus] == [
                (0x123, b"\xaa\xbb", False),
                (0x12345678, b"", False),
                (0x123, b"\x11" * 12, True),
                (0xABCD, b"\x22" * 64, True),
            ]
            assert on_bus[3].bitrate_switch and on_bus[3].is_extended_id

            # Bus → host with timestamps (Z1): four hex digits of milliseconds after the data.
            far.send(can.Message(arbitration_id=0x42, is_extended_id=False, data=b"\x99"))
            line = await _answer(port, b"")
            assert line[:7] == b"t042199" and len(line) == 12 and line.endswith(b"\r")
            assert 0 <= int(line[7:11], 16) < 60000
            far.send(
                can.Message(arbitration_id=0x42, is_extended_id=False, is_fd=True, data=bytes(20))
            )
            line = await _answer(port, b"")
            assert line.startswith(b"d042B" + b"00" * 20) and len(line) == 5 + 40 + 4 + 1

            assert await _answer(port, b"C\r") == b"\r"
            assert await _answer(port, b"L\r") == b"\r"  # listen-only
            assert await _answer(port, b"t1230\r") == b"\a"  # listening does not send
            assert await _answer(port, b"F\r") == b"F00\r"
            assert await _answer(port, b"C\r") == b"\r"
        finally:
            port.close()
            far.shutdown()


async def test_bus_frames_while_closed_are_dropped_and_counted() -> None:
    channel = _channel()
    async with SlcanTwin(f"virtual://{channel}") as adapter:
        far = can.Bus(interface="virtual", channel=channel)
        port = _open(adapter.path)
        try:
            for i in range(5):
                far.send(can.Message(arbitration_id=i, is_extended_id=False))
            await _wait_for(lambda: adapter.frames.closed == 5)
            assert await _answer(port, b"O\r") == b"\r"
            far.send(can.Message(arbitration_id=0x55, is_extended_id=False))
            assert await _answer(port, b"") == b"t0550\r"  # only what came after O
        finally:
            port.close()
            far.shutdown()


async def test_a_host_that_does_not_read_loses_frames_and_sees_the_overrun_flag() -> None:
    channel = _channel()
    async with SlcanTwin(f"virtual://{channel}", max_pending=4096) as adapter:
        far = can.Bus(interface="virtual", channel=channel)
        port = _open(adapter.path)
        try:
            assert await _answer(port, b"O\r") == b"\r"
            for i in range(3000):  # ~ 70 kB, far more than the pty and 4 kB pending hold
                far.send(can.Message(arbitration_id=0x100, is_extended_id=False, data=bytes(8)))
                if i % 500 == 0:
                    await asyncio.sleep(0)
            await _wait_for(lambda: adapter.frames.to_host + adapter.frames.lost == 3000)
            assert adapter.frames.lost > 0
            assert adapter.stats.dropped_writes == adapter.frames.lost
            port.reset_input_buffer()  # what was queued; the twin's pending lines still follow
            assert await _answer(port, b"F\r", starting=b"F") == b"F08\r"  # data overrun
            assert await _answer(port, b"F\r", starting=b"F") == b"F00\r"  # cleared by reading
        finally:
            port.close()
            far.shutdown()


async def test_power_cycle_closes_the_channel() -> None:
    channel = _channel()
    async with SlcanTwin(f"virtual://{channel}") as adapter:
        port = _open(adapter.path)
        assert await _answer(port, b"O\r") == b"\r"
        port.close()
        await adapter.unplug(0.1)
        assert not adapter.interpreter.is_open
        port = _open(adapter.path)
        try:
            assert await _answer(port, b"O\r") == b"\r"
        finally:
            port.close()


async def test_a_bus_that_fails_in_use_ends_the_twin_with_a_bus_error() -> None:
    with pytest.raises(BaseExceptionGroup) as info:
        async with SlcanTwin(f"virtual://{_channel()}") as adapter:
            # What a dying adapter driver does: the bus object fails under the reader.
            adapter._sink.bus.shutdown()
            await asyncio.sleep(TIMEOUT)  # cancelled by the failure
    assert info.group_contains(BusError, match="failed")


async def test_a_bus_that_cannot_be_opened_is_explained() -> None:
    with pytest.raises(BusError, match="cannot open bus"):
        async with SlcanTwin("socketcand://127.0.0.1:1/can0"):
            pass


async def _wait_for(condition: Any) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- the Lawicel parser under Hypothesis -------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=1000), opened=st.booleans())
def test_every_command_gets_exactly_one_answer(data: bytes, opened: bool) -> None:
    sent: list[can.Message] = []

    def transmit(msg: can.Message) -> bool:
        sent.append(msg)
        return True

    adapter = LawicelInterpreter(transmit)
    if opened:
        adapter.feed(b"O\r")
    out = adapter.feed(data)
    assert out.count(b"\r") + out.count(b"\a") == data.count(b"\r")
    assert out.isascii()
    assert all(isinstance(msg, can.Message) for msg in sent)


def _python_can_command(msg: can.Message) -> str:
    """What python-can's slcan driver writes for *msg* (can/interfaces/slcan.py, send)."""
    ident = f"{msg.arbitration_id:08X}" if msg.is_extended_id else f"{msg.arbitration_id:03X}"
    if msg.is_remote_frame:
        return f"{'R' if msg.is_extended_id else 'r'}{ident}{msg.dlc:d}"
    if msg.is_fd:
        kind = "B" if msg.bitrate_switch else "D"
        kind = kind if msg.is_extended_id else kind.lower()
        return f"{kind}{ident}{len2dlc(msg.dlc):X}{msg.data.hex().upper()}"
    return f"{'T' if msg.is_extended_id else 't'}{ident}{msg.dlc:d}{msg.data.hex().upper()}"


@st.composite
def frames(draw: st.DrawFn) -> can.Message:
    extended = draw(st.booleans())
    can_id = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
    kind = draw(st.sampled_from(["data", "remote", "fd"]))
    if kind == "remote":
        return can.Message(
            arbitration_id=can_id,
            is_extended_id=extended,
            is_remote_frame=True,
            dlc=draw(st.integers(0, 8)),
        )
    if kind == "fd":
        length = draw(st.sampled_from([0, 1, 5, 8, 12, 16, 20, 24, 32, 48, 64]))
        return can.Message(
            arbitration_id=can_id,
            is_extended_id=extended,
            is_fd=True,
            bitrate_switch=draw(st.booleans()),
            data=draw(st.binary(min_size=length, max_size=length)),
        )
    return can.Message(
        arbitration_id=can_id, is_extended_id=extended, data=draw(st.binary(max_size=8))
    )


@settings(max_examples=500, deadline=None)
@given(msg=frames())
def test_frames_round_trip_through_both_directions(msg: can.Message) -> None:
    parsed = parse_frame(_python_can_command(msg))
    assert parsed is not None and _same(parsed, msg)
    line = format_frame(msg)
    assert line is not None and line.endswith(b"\r")
    back = parse_frame(line[:-1].decode())
    assert back is not None and _same(back, msg)


def test_frames_slcan_cannot_carry_are_not_formatted() -> None:
    assert format_frame(can.Message(is_error_frame=True)) is None
    assert format_frame(can.Message(arbitration_id=0x800, is_extended_id=False)) is None

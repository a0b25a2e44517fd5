"""SerialLink and SerialDevice through real pseudo-terminals: lines, silence, loss, reopening.

The test plays the device on the pty's master side. Devices are opened through a symlink the test
owns, never through ``/dev/pts/N`` itself: pty numbers are reused at once by other processes,
and a retry loop reopening a stale number would read someone else's terminal.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import tty
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.errors import BusError, UsageError
from agent.serial_device import (
    MAX_LINE_BYTES,
    PortSilentError,
    ReceivedLine,
    SerialDevice,
    SerialLink,
    SerialPortError,
    StateChange,
)

#: Reopen quickly in tests; the delays themselves are Backoff's business.
FAST = Backoff(initial=0.01, maximum=0.05, jitter=0.0)
#: A safety net for waits, not a timing assertion: on a loaded machine things take long.
PATIENCE = 30.0

_names = itertools.count()


class Pty:
    """A pseudo-terminal whose slave is reachable as the symlink *link*; the test writes the
    device's output to the master side."""

    def __init__(self, link: Path) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.link = link
        temporary = link.with_name(f".{link.name}.{next(_names)}")
        temporary.symlink_to(os.ttyname(self.slave))
        temporary.replace(link)  # atomic: re-points an existing link
        self.closed = False

    def write(self, data: bytes) -> None:
        """Send *data* as the device."""
        os.write(self.master, data)

    def unplug(self) -> None:
        """The device goes away: its path first (so nothing reopens a reused pty number),
        then the pty itself."""
        if self.link.is_symlink() and str(self.link.readlink()) == os.ttyname(self.slave):
            self.link.unlink()
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.master)
            os.close(self.slave)


def pty_factory(tmp_path: Path) -> Iterator[Callable[[], Pty]]:
    """For a fixture: make ptys on one symlink path (``tmp_path / "tty"``), close them after."""
    made: list[Pty] = []

    def make() -> Pty:
        made.append(Pty(tmp_path / "tty"))
        return made[-1]

    yield make
    for pty in made:
        pty.close()


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[Callable[[], Pty]]:
    """Make ptys on one symlink path (``tmp_path / "tty"``); all closed after the test."""
    yield from pty_factory(tmp_path)


async def next_item(
    stream: AsyncIterator[object], want: Callable[[object], bool], seen: list[object] | None = None
) -> object:
    """The first item of *stream* for which *want* is true (others go to *seen*)."""
    async with asyncio.timeout(PATIENCE):
        while True:
            item = await anext(stream)
            if want(item):
                return item
            if seen is not None:
                seen.append(item)


async def until(condition: Callable[[], bool]) -> None:
    """Wait until *condition* holds (bounded by PATIENCE)."""
    async with asyncio.timeout(PATIENCE):
        while not condition():  # noqa: ASYNC110 - counters have no event to await
            await asyncio.sleep(0.01)


def state_is(state: str) -> Callable[[object], bool]:
    """A predicate: a StateChange into *state*."""
    return lambda item: isinstance(item, StateChange) and item.state == state


class Pacer:
    """Writes a line to a pty again and again (a device streaming), until stopped."""

    def __init__(self, pty: Pty, line: bytes, period: float = 0.02) -> None:
        self.pty, self.line, self.period = pty, line, period
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Pacer:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while not self.pty.closed:
            self.pty.write(self.line)
            await asyncio.sleep(self.period)


# --- SerialLink --------------------------------------------------------------------------------


async def test_lines_split_across_reads_and_at_cr_or_lf(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=9600) as link:
        pty.write(b"$GPGGA,1,2")
        await asyncio.sleep(0.05)  # let the half line arrive on its own
        pty.write(b",3*00\r\nAT+CSQ\r\r\n\r\nOK\r\n")
        lines = [await link.readline() for _ in range(3)]
        assert [line.data for line in lines] == [b"$GPGGA,1,2,3*00", b"AT+CSQ", b"OK"]
        assert all(isinstance(line, ReceivedLine) and line.time > 0 for line in lines)
        assert link.bytes_received == len(b"$GPGGA,1,2,3*00\r\nAT+CSQ\r\r\n\r\nOK\r\n")


async def test_a_run_without_line_ends_is_cut_into_bounded_pieces(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=9600) as link:
        pty.write(b"x" * (MAX_LINE_BYTES * 2 + 10) + b"\n")
        pieces = [(await link.readline()).data for _ in range(3)]
    assert [len(p) for p in pieces] == [MAX_LINE_BYTES, MAX_LINE_BYTES, 10]


async def test_silence_raises_port_silent_but_bytes_without_a_line_end_do_not(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=9600) as link:
        with pytest.raises(PortSilentError, match=str(pty.link)):
            await link.readline(idle_timeout=0.05)
        # A trickle of bytes keeps the port "talking" though no line is complete yet.
        # (1.5 s of bytes 0.05 s apart under a 1 s idle timeout; silence is judged when the
        # loop runs again, after it has read what came during a stall, so a stall does not
        # count as silence.)
        reader = asyncio.create_task(link.readline(idle_timeout=1.0))
        for _ in range(30):
            pty.write(b"a")
            await asyncio.sleep(0.05)
        pty.write(b"\n")
        assert (await reader).data == b"a" * 30


async def test_discard_input_forgets_what_was_not_read(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=9600) as link:
        pty.write(b"old\r\nhalf")
        await until(lambda: link.bytes_received >= 9)
        link.discard_input()
        pty.write(b"new\r\n")
        assert (await link.readline()).data == b"new"


async def test_write_reaches_the_device(ptys: Callable[[], Pty]) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=115200) as link:
        link.write(b"AT+CSQ\r")
        got = b""
        async with asyncio.timeout(PATIENCE):
            while not got.endswith(b"\r"):
                await asyncio.sleep(0.01)
                got += await asyncio.to_thread(os.read, pty.master, 100)
        assert got == b"AT+CSQ\r"


async def test_hang_up_is_a_port_error_naming_the_port(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with SerialLink(str(pty.link), baudrate=9600) as link:
        pty.write(b"last words\n")
        assert (await link.readline()).data == b"last words"
        pty.unplug()
        with pytest.raises(SerialPortError, match=str(pty.link)):
            await link.readline()
        with pytest.raises(SerialPortError):
            link.write(b"AT\r")


async def test_opening_a_missing_port_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "ttyUSB9"
    with pytest.raises(SerialPortError, match="ttyUSB9") as caught:
        async with SerialLink(str(missing), baudrate=9600):
            pass
    assert isinstance(caught.value, BusError)
    assert caught.value.__cause__ is not None


async def test_opening_something_that_is_no_terminal_fails_cleanly(tmp_path: Path) -> None:
    plain = tmp_path / "file"
    plain.write_text("not a tty")
    with pytest.raises(SerialPortError, match="file"):
        async with SerialLink(str(plain), baudrate=9600):
            pass


# --- SerialDevice ------------------------------------------------------------------------------


class Echo(SerialDevice[bytes]):
    """The smallest device: every line is an item; silent after 0.2 s."""

    async def _session(self, link: SerialLink) -> None:
        while True:
            self._emit((await link.readline(idle_timeout=0.2)).data)


async def test_items_state_changes_silence_and_reopening(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with Echo(str(pty.link), baudrate=9600, device="echo", backoff=FAST) as echo:
        stream = aiter(echo)
        async with asyncio.timeout(PATIENCE):
            await echo.wait_open()
        assert echo.is_open
        pty.write(b"one\n")
        assert await next_item(stream, lambda i: isinstance(i, bytes)) == b"one"
        # Nothing more: silent, port closed and reopened until bytes come again.
        change = await next_item(stream, state_is("silent"))
        assert isinstance(change, StateChange)
        assert change.previous == "starting" and str(pty.link) in change.reason
        async with Pacer(pty, b"again\n"):
            assert await next_item(stream, lambda i: i == b"again") == b"again"
        assert echo.reopens >= 1
        assert "sent nothing" in echo.last_error


async def test_port_lost_and_back_through_a_re_pointed_symlink(
    ptys: Callable[[], Pty],
) -> None:
    first = ptys()
    async with Echo(str(first.link), baudrate=9600, device="echo", backoff=FAST) as echo:
        stream = aiter(echo)
        first.write(b"hello\n")
        async with asyncio.timeout(PATIENCE):
            await echo.wait_open()
        first.write(b"hello\n")
        await next_item(stream, lambda i: i == b"hello")
        first.unplug()
        lost = await next_item(stream, state_is("port_lost"))
        assert isinstance(lost, StateChange) and str(first.link) in lost.reason
        second = ptys()  # the same path, now another pty (a re-enumerated USB adapter)
        async with Pacer(second, b"back\n"):
            await next_item(stream, lambda i: i == b"back")
        assert echo.reopens >= 1


async def test_a_port_missing_at_start_is_retried_until_it_appears(
    tmp_path: Path, ptys: Callable[[], Pty]
) -> None:
    path = tmp_path / "tty"
    async with Echo(str(path), baudrate=9600, device="echo", backoff=FAST) as echo:
        stream = aiter(echo)
        change = await next_item(stream, state_is("port_lost"))
        assert isinstance(change, StateChange) and "tty" in change.reason
        pty = ptys()
        async with Pacer(pty, b"late\n"):
            await next_item(stream, lambda i: i == b"late")
        assert echo.reopens == 0  # never open before: this is the first open


async def test_a_slow_consumer_loses_the_oldest_items_counted(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with Echo(
        str(pty.link), baudrate=9600, device="echo", backoff=FAST, max_pending=2
    ) as echo:
        async with asyncio.timeout(PATIENCE):
            await echo.wait_open()
        pty.write(b"1\n2\n3\n4\n5\n")
        await until(lambda: echo.dropped >= 3)
        stream = aiter(echo)
        assert [await anext(stream), await anext(stream)] == [b"4", b"5"]


async def test_iterating_before_entering_is_an_error() -> None:
    echo = Echo("/dev/null", baudrate=9600, device="echo")
    with pytest.raises(RuntimeError, match="async with"):
        await anext(aiter(echo))


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="baud rate"):
        Echo("/dev/ttyS0", baudrate=0, device="echo")
    with pytest.raises(UsageError, match="port"):
        Echo("", baudrate=9600, device="echo")

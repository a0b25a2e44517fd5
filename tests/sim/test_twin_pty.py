"""PtyTwin through real pseudo-terminals and pyserial: raw bytes, the link, unplugging, drops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import serial

from sim.errors import SimError
from sim.pty_twin import PtyTwin, TwinConfigError, TwinError

TIMEOUT = 10.0


class UpperEcho(PtyTwin):
    """Answers every byte it is sent, upper-cased; counts power-ups."""

    def __init__(self, *, link: Path | None = None, max_pending: int = 64 * 1024) -> None:
        super().__init__(link=link, max_pending=max_pending)
        self.power_ups = 0

    def on_bytes(self, data: bytes) -> None:
        self.send(data.upper())

    def on_power_up(self) -> None:
        self.power_ups += 1


def _open(path: str | Path) -> serial.Serial:
    return serial.Serial(str(path), baudrate=115200, timeout=TIMEOUT)


async def _read(port: serial.Serial, size: int) -> bytes:
    data: bytes = await asyncio.to_thread(port.read, size)
    return data


async def test_bytes_pass_unchanged_both_ways() -> None:
    # Raw mode: CR, LF, NUL and 8-bit bytes are neither translated nor echoed.
    payload = bytes(range(256)).replace(b"a", b"").replace(b"z", b"") + b"\r\n\r"
    async with UpperEcho() as twin:
        assert twin.path.startswith("/dev/pts/")
        assert twin.plugged
        port = _open(twin.path)
        try:
            port.write(payload)
            echoed = await _read(port, len(payload))
        finally:
            port.close()
    assert echoed == payload.upper()
    assert twin.stats.bytes_in == len(payload)
    assert twin.stats.bytes_out == len(payload)
    assert twin.stats.dropped_bytes == 0
    assert twin.power_ups == 1
    assert not twin.plugged


async def test_link_follows_the_device_through_an_unplug(tmp_path: Path) -> None:
    link = tmp_path / "dev0"
    async with UpperEcho(link=link) as twin:
        assert link.is_symlink() and str(link.readlink()) == twin.path
        port = _open(link)
        port.write(b"abc")
        assert await _read(port, 3) == b"ABC"

        unplug = asyncio.create_task(twin.unplug(1.0))
        await asyncio.sleep(0)
        assert not link.exists() and not link.is_symlink()
        with pytest.raises(serial.SerialException):
            await _read(port, 1)  # the device is gone: the host's read fails
        port.close()
        await asyncio.wait_for(unplug, TIMEOUT)

        assert twin.plugged
        assert str(link.readlink()) == twin.path
        assert twin.power_ups == 2
        assert twin.stats.unplugs == 1
        port = _open(link)  # "the same" device again
        try:
            port.write(b"xyz")
            assert await _read(port, 3) == b"XYZ"
        finally:
            port.close()
    assert not link.is_symlink()


async def test_a_stale_link_is_replaced_and_a_real_file_refused(tmp_path: Path) -> None:
    stale = tmp_path / "stale"
    stale.symlink_to("/dev/pts/nonexistent")
    async with UpperEcho(link=stale) as twin:
        assert str(stale.readlink()) == twin.path
    assert not stale.is_symlink()

    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(TwinConfigError, match="no symlink"):
        async with UpperEcho(link=regular):
            pass
    assert regular.read_text() == "keep me"

    with pytest.raises(TwinConfigError, match="No such file"):
        async with UpperEcho(link=tmp_path / "missing" / "dev0"):
            pass


async def test_link_of_someone_else_is_left_alone(tmp_path: Path) -> None:
    link = tmp_path / "dev0"
    async with UpperEcho(link=link):
        # Another process re-pointed the link: exiting must not remove theirs.
        other = tmp_path / ".other"
        other.symlink_to("/dev/null")
        other.replace(link)
    assert str(link.readlink()) == "/dev/null"


async def test_send_never_blocks_and_drops_whole_writes_when_the_host_does_not_read() -> None:
    lines = [f"line {i:06d} ".encode() + b"x" * 80 + b"\n" for i in range(4000)]
    async with UpperEcho(max_pending=16 * 1024) as twin:
        port = _open(twin.path)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            accepted = [twin.send(line) for line in lines]
            assert loop.time() - started < 5.0  # generous: it must simply not wait for the host
            assert not all(accepted)
            assert twin.stats.dropped_writes == accepted.count(False)
            assert twin.stats.dropped_bytes == sum(
                len(line) for line, ok in zip(lines, accepted, strict=True) if not ok
            )
            expected = b"".join(line for line, ok in zip(lines, accepted, strict=True) if ok)
            # The host now reads: the pending bytes follow, lines whole and in order.
            received = await _read(port, len(expected))
        finally:
            port.close()
    assert received == expected
    assert twin.stats.bytes_out == len(expected)


async def test_sends_while_unplugged_are_dropped_and_counted() -> None:
    async with UpperEcho() as twin:
        unplug = asyncio.create_task(twin.unplug(0.2))
        await asyncio.sleep(0)
        assert twin.send(b"lost") is False
        await asyncio.wait_for(unplug, TIMEOUT)
        assert twin.send(b"kept") is True
    assert twin.stats.dropped_bytes == 4
    assert twin.stats.dropped_writes == 1


async def test_misuse_is_explained() -> None:
    twin = UpperEcho()
    with pytest.raises(TwinError, match="async with"):
        _ = twin.path
    with pytest.raises(TwinError, match="async with"):
        await twin.unplug(1.0)
    with pytest.raises(TwinConfigError):
        UpperEcho(max_pending=0)
    async with twin:
        with pytest.raises(TwinConfigError, match="negative"):
            await twin.unplug(-1.0)


class Failing(PtyTwin):
    async def serve(self) -> None:
        await asyncio.sleep(0.05)
        raise SimError("the device broke")


async def test_a_failing_serve_ends_the_twin_with_its_error(tmp_path: Path) -> None:
    link = tmp_path / "dev0"
    with pytest.raises(BaseExceptionGroup) as info:
        async with Failing(link=link):
            await asyncio.sleep(TIMEOUT)  # cancelled when serve() fails
    assert info.group_contains(SimError, match="the device broke")
    assert not link.is_symlink()


def _open_descriptors() -> int:
    return len(list(Path("/proc/self/fd").iterdir()))


async def test_no_descriptors_leak_across_unplugs() -> None:
    before = _open_descriptors()
    async with UpperEcho() as twin:
        for _ in range(5):
            await twin.unplug(0.0)
    assert _open_descriptors() == before

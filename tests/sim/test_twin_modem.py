"""ModemTwin through real pseudo-terminals and pyserial; the AT interpreter under Hypothesis."""

from __future__ import annotations

import asyncio
import itertools
import re

import pytest
import serial
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.modem_twin import (
    MAX_LINE,
    AtCommandInterpreter,
    LinkStep,
    ModemLink,
    ModemTwin,
    link_schedule,
)
from sim.pty_twin import TwinConfigError

TIMEOUT = 10.0
FINAL = re.compile(rb"\r\n(OK|ERROR|\+CME ERROR: [^\r]*)\r\n$")


def _open(path: str) -> serial.Serial:
    return serial.Serial(path, baudrate=115200, timeout=TIMEOUT)


async def _until(port: serial.Serial, pattern: re.Pattern[bytes]) -> bytes:
    """Read until what was read matches *pattern* at its end (or fail after TIMEOUT)."""

    def read() -> bytes:
        data = b""
        while not pattern.search(data):
            chunk = port.read(1)
            assert chunk, f"no answer within {TIMEOUT} s; got {data!r}"
            data += chunk
        return data

    return await asyncio.to_thread(read)


async def _at(port: serial.Serial, command: bytes) -> bytes:
    port.write(command)
    return await _until(port, FINAL)


async def test_basic_commands_echo_and_identification() -> None:
    async with ModemTwin() as modem:
        port = _open(modem.path)
        try:
            assert await _at(port, b"AT\r") == b"AT\r\r\nOK\r\n"  # echo is on at power-up
            assert await _at(port, b"ATE0\r") == b"ATE0\r\r\nOK\r\n"
            assert await _at(port, b"AT\r") == b"\r\nOK\r\n"
            assert await _at(port, b"ATI\r") == (
                b"\r\ntbox-sim\r\nTBOX-LTE1\r\nRevision: TBOX-LTE1_1.0.0\r\n\r\nOK\r\n"
            )
            assert await _at(port, b"AT+CGMI\r") == b"\r\ntbox-sim\r\n\r\nOK\r\n"
            assert await _at(port, b"at+cgmm\r") == b"\r\nTBOX-LTE1\r\n\r\nOK\r\n"
            assert await _at(port, b"AT+CSQ\r") == b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n"
            assert await _at(port, b"AT+CSQ=?\r") == b"\r\n+CSQ: (0-31,99),(0-7,99)\r\n\r\nOK\r\n"
            assert await _at(port, b"AT+CREG?;+CEREG?;+COPS?\r") == (
                b'\r\n+CREG: 0,1\r\n\r\n+CEREG: 0,1\r\n\r\n+COPS: 0,0,"TBOX SIM",7\r\n\r\nOK\r\n'
            )
            assert await _at(port, b"AT+CREG=2\r") == b"\r\nOK\r\n"
            assert await _at(port, b"AT+CREG?\r") == (
                b'\r\n+CREG: 2,1,"1A2B","01C2D3E4",7\r\n\r\nOK\r\n'
            )
            assert await _at(port, b"ATE1\r") == b"\r\nOK\r\n"
            assert await _at(port, b"AT\r\n") == b"AT\r\r\nOK\r\n"  # the LF is echoed later
            assert await _at(port, b"ATZ\r") == b"\nATZ\r\r\nOK\r\n"
        finally:
            port.close()


async def test_unknown_commands_and_error_modes() -> None:
    async with ModemTwin() as modem:
        port = _open(modem.path)
        try:
            await _at(port, b"ATE0\r")
            assert await _at(port, b"AT+FOO\r") == b"\r\nERROR\r\n"
            assert await _at(port, b"ATQ7\r") == b"\r\nERROR\r\n"
            assert await _at(port, b"AT+CMEE=1\r") == b"\r\nOK\r\n"
            assert await _at(port, b"AT+FOO\r") == b"\r\n+CME ERROR: 4\r\n"
            assert await _at(port, b"AT+CREG=7\r") == b"\r\n+CME ERROR: 50\r\n"
            assert await _at(port, b"AT+CMEE=2\r") == b"\r\nOK\r\n"
            assert await _at(port, b"AT+FOO\r") == b"\r\n+CME ERROR: operation not supported\r\n"
            assert await _at(port, b"AT+CMEE?\r") == b"\r\n+CMEE: 2\r\n\r\nOK\r\n"
            # An error stops the line: +CSQ after the failing command is not answered.
            assert await _at(port, b"AT+FOO;+CSQ\r") == (
                b"\r\n+CME ERROR: operation not supported\r\n"
            )
        finally:
            port.close()


async def test_garbage_and_partial_lines_are_tolerated() -> None:
    async with ModemTwin() as modem:
        port = _open(modem.path)
        try:
            await _at(port, b"ATE0\r")
            # Noise without "AT" gets no answer; the command after it does.
            port.write(b"\x00\xff\xfe\x1b[2J noise \r\n\r")
            assert await _at(port, b"AT+CSQ\r") == b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n"
            # A command in pieces, with noise before "AT" and a typo corrected by backspace.
            for piece in (b"\x13zz", b"A", b"T+CS", b"X\x08", b"Q", b"\r"):
                port.write(piece)
                await asyncio.sleep(0.01)
            assert await _until(port, FINAL) == b"\r\n+CSQ: 24,99\r\n\r\nOK\r\n"
            # An over-long line is refused as a whole, and the modem carries on.
            assert await _at(port, b"AT+" + b"C" * (MAX_LINE + 50) + b"\r") == b"\r\nERROR\r\n"
            assert await _at(port, b"AT\r") == b"\r\nOK\r\n"
        finally:
            port.close()
        assert modem.interpreter.commands == 5


async def test_the_link_degrades_drops_and_recovers_on_schedule() -> None:
    schedule = link_schedule(degrade_at=2.0, drop_at=3.0, recover_at=4.0)
    async with ModemTwin(schedule=schedule) as modem:
        port = _open(modem.path)
        try:
            # Unsolicited reports on (well before the first step), then wait for the reports.
            assert await _at(port, b"ATE0;+CREG=1;+CEREG=1\r") == b"ATE0;+CREG=1;+CEREG=1\r" + (
                b"\r\nOK\r\n"
            )
            reports = await _until(port, re.compile(rb"\+CEREG: 1\r\n$"))
            assert reports == (
                b"\r\n+CEREG: 0\r\n"  # degraded: fallen back to UTRAN, so not on EPS
                b"\r\n+CREG: 2\r\n\r\n+CEREG: 2\r\n"  # dropped: searching
                b"\r\n+CREG: 1\r\n\r\n+CEREG: 1\r\n"  # recovered
            )
            assert await _at(port, b"AT+CSQ;+COPS?\r") == (
                b'\r\n+CSQ: 24,99\r\n\r\n+COPS: 0,0,"TBOX SIM",7\r\n\r\nOK\r\n'
            )
        finally:
            port.close()
    assert modem.network == ModemLink()


async def test_answers_follow_the_network_state() -> None:
    async with ModemTwin(network=ModemLink(operator="Telia")) as modem:
        port = _open(modem.path)
        try:
            await _at(port, b"ATE0\r")
            modem.set_network(modem.network.degraded())
            assert await _at(port, b"AT+CSQ;+COPS?;+CEREG?\r") == (
                b'\r\n+CSQ: 5,4\r\n\r\n+COPS: 0,0,"Telia",2\r\n\r\n+CEREG: 0,0\r\n\r\nOK\r\n'
            )
            modem.set_network(modem.network.dropped())
            assert await _at(port, b"AT+CSQ;+COPS?;+CREG?\r") == (
                b"\r\n+CSQ: 99,99\r\n\r\n+COPS: 0\r\n\r\n+CREG: 0,2\r\n\r\nOK\r\n"
            )
        finally:
            port.close()


async def test_a_power_cycle_restores_defaults() -> None:
    async with ModemTwin() as modem:
        port = _open(modem.path)
        await _at(port, b"ATE0;+CMEE=1\r")
        port.close()
        await modem.unplug(0.1)
        port = _open(modem.path)
        try:
            assert await _at(port, b"AT+FOO\r") == b"AT+FOO\r\r\nERROR\r\n"
        finally:
            port.close()


def test_link_schedule_and_bad_link_values() -> None:
    good = ModemLink(operator="X")
    assert link_schedule(recover_at=9, drop_at=5) == (
        LinkStep(5, ModemLink().dropped()),
        LinkStep(9, ModemLink()),
    )
    assert link_schedule(degrade_at=1, good=good)[0].link == good.degraded()
    for bad in (
        {"rssi": 32},
        {"ber": 8},
        {"stat": 6},
        {"act": 9},
        {"operator": 'a"b'},
    ):
        with pytest.raises(TwinConfigError):
            ModemLink(**bad)
    with pytest.raises(TwinConfigError):
        LinkStep(-1, good)


# --- the interpreter under Hypothesis ----------------------------------------------------------

COMMANDS = [
    "AT",
    "ATE0",
    "ATE1",
    "ATI",
    "ATZ",
    "AT+CSQ",
    "AT+CSQ=?",
    "AT+CREG?",
    "AT+CREG=1",
    "AT+CEREG=2",
    "AT+COPS?",
    "AT+CMEE=2",
    "AT+CMEE=1",
    "AT+FOO",
    'AT+COPS=1,0,"x;y"',
    "ATE0+CSQ;+CREG?",
    "noise",
    "",
]


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_any_bytes_in_any_chunks_give_the_same_answers(data: bytes, cuts: list[int]) -> None:
    whole = AtCommandInterpreter()
    expected = whole.feed(data)
    pieces = AtCommandInterpreter()
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    got = b"".join(pieces.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    assert got == expected


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=2000))
def test_without_echo_the_answers_are_well_formed(data: bytes) -> None:
    modem = AtCommandInterpreter()
    modem.feed(b"ATE0\r")
    # Without E, Z and & no command can turn the echo back on.
    out = modem.feed(bytes(b for b in data if b not in b"EeZz&"))
    assert out.isascii()
    # Nothing but "\r\n<text>\r\n" blocks.
    assert re.fullmatch(rb"(\r\n[\x20-\x7e]*(\r\n[\x20-\x7e]+)*\r\n)*", out), out


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.tuples(st.sampled_from(COMMANDS), st.text("aT+=?;,0123xyz ", max_size=8)),
        max_size=20,
    )
)
def test_every_command_line_gets_one_final_result(lines: list[tuple[str, str]]) -> None:
    modem = AtCommandInterpreter()
    texts = [command + suffix for command, suffix in lines]
    out = modem.feed(b"".join(t.encode() + b"\r" for t in texts))
    finals = re.findall(rb"\r\n(?:OK|ERROR|\+CME ERROR: [^\r]*)\r\n", out)
    assert len(finals) == sum("AT" in t.upper() for t in texts)

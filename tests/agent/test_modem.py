"""Modem: AT response parsing (3GPP TS 27.007; hypothesis for garbage) and the monitor on ptys."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import BusError, InputError, UsageError
from agent.modem import (
    MODEM_BUS,
    MODEM_MESSAGE,
    MODEM_SIGNALS,
    AtCommandError,
    AtResponseError,
    LinkQuality,
    ModemMonitor,
    ModemUpdate,
    NetworkOperator,
    Registration,
    SignalQuality,
    access_technology_name,
    is_final_result,
    parse_cops,
    parse_csq,
    parse_registration,
    registration_name,
    response_lines,
    rssi_dbm,
)
from agent.schemes.model import SignalRef
from agent.serial_device import StateChange
from tests.agent.test_serial_device import FAST, PATIENCE, Pty, next_item, pty_factory, state_is


@pytest.fixture
def ptys(tmp_path: Path) -> Iterator[Callable[[], Pty]]:
    """Make ptys on one symlink path; all closed after the test."""
    yield from pty_factory(tmp_path)


# --- parsing -----------------------------------------------------------------------------------


def test_signal_names_are_valid_signal_refs() -> None:
    for name in MODEM_SIGNALS:
        ref = SignalRef.parse(f"{MODEM_BUS}:{MODEM_MESSAGE}.{name}")
        assert (ref.bus, ref.message, ref.signal) == (MODEM_BUS, MODEM_MESSAGE, name)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("\r\n+CSQ: 20,99\r\n\r\nOK\r\n", SignalQuality(20, -73, None)),
        ("AT+CSQ\r\r\n+CSQ: 20,99\r\n\r\nOK\r\n", SignalQuality(20, -73, None)),  # echo on
        ("+CSQ: 0,0\r\nOK", SignalQuality(0, -113, 0)),
        ("+CSQ: 31,7\nOK\n", SignalQuality(31, -51, 7)),
        ("+CSQ:99,99\rOK\r", SignalQuality(99, None, None)),  # no space, CR only
        ("+CSQ: 100,99\r\nOK", SignalQuality(100, -116, None)),  # TD-SCDMA range
        ("+CSQ: 191,99\r\nOK", SignalQuality(191, -25, None)),
        ("+CSQ: 199,99\r\nOK", SignalQuality(199, None, None)),
        # Unsolicited codes among the answer (an SMS arrived, the cell changed).
        (
            '\r\n+CMTI: "SM",3\r\n\r\n+CSQ: 14,2\r\n+CREG: 1\r\n\r\nOK\r\n',
            SignalQuality(14, -85, 2),
        ),
    ],
)
def test_csq(response: str, expected: SignalQuality) -> None:
    assert parse_csq(response) == expected


@pytest.mark.parametrize(
    ("response", "error"),
    [
        ("+CSQ: 32,99\r\nOK", AtResponseError),
        ("+CSQ: 20,8\r\nOK", AtResponseError),
        ("+CSQ: 20\r\nOK", AtResponseError),
        ("+CSQ: -1,99\r\nOK", AtResponseError),
        ("+CSQ: twenty,99\r\nOK", AtResponseError),
        ("+CSQ: 20,99", AtResponseError),  # no final result code
        ("OK", AtResponseError),  # no +CSQ line
        ("", AtResponseError),
        ("ERROR", AtCommandError),
        ("+CME ERROR: 100", AtCommandError),
    ],
)
def test_csq_errors(response: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_csq(response)


def test_command_errors_carry_code_and_meaning() -> None:
    with pytest.raises(AtCommandError) as caught:
        parse_cops("AT+COPS?\r\r\n+CME ERROR: 30\r\n")
    assert caught.value.code == 30 and caught.value.command == "AT+COPS?"
    assert "no network service" in str(caught.value) and "AT+COPS?" in str(caught.value)
    assert isinstance(caught.value, BusError)
    with pytest.raises(AtCommandError) as caught:
        parse_cops("\r\n+CME ERROR: SIM not inserted\r\n")  # AT+CMEE=2 style
    assert caught.value.code is None and "SIM not inserted" in str(caught.value)
    with pytest.raises(AtCommandError) as caught:
        parse_csq("\r\nERROR\r\n")
    assert caught.value.code is None and caught.value.text == "ERROR"


@pytest.mark.parametrize(
    ("response", "command", "stat", "name", "registered"),
    [
        ("+CREG: 0,1\r\nOK", "AT+CREG?", 1, "home", True),
        ("AT+CREG?\r\r\n+CREG: 0,5\r\n\r\nOK\r\n", "AT+CREG?", 5, "roaming", True),
        ('+CREG: 2,1,"00C3","0000A13B",7\r\nOK', "AT+CREG?", 1, "home", True),
        ("+CREG: 0,2\r\nOK", "AT+CREG?", 2, "searching", False),
        ("+CREG: 0,3\r\nOK", "AT+CREG?", 3, "denied", False),
        ("+CREG: 0,0\r\nOK", "AT+CREG?", 0, "not_registered", False),
        ("+CREG: 0,4\r\nOK", "AT+CREG?", 4, "unknown", False),
        ("+CEREG: 0,1\r\nOK", "AT+CEREG?", 1, "home", True),
        ('+CEREG: 4,5,"1A2B","01A2D001",7,,,"00000110"\r\nOK', "AT+CEREG?", 5, "roaming", True),
        ("+CEREG: 0,8\r\nOK", "AT+CEREG?", 8, "emergency_only", False),
        ("+CEREG: 0,6\r\nOK", "AT+CEREG?", 6, "home_sms_only", True),
        ("+CEREG: 0,42\r\nOK", "AT+CEREG?", 42, "stat_42", False),
        # A URC (+CREG: <stat>, or with a quoted lac) among the read response is not it.
        ("\r\n+CREG: 1\r\n\r\n+CREG: 0,2\r\n\r\nOK\r\n", "AT+CREG?", 2, "searching", False),
        ('+CREG: 1,"00C3","0000A13B",7\r\n+CREG: 2,3\r\nOK', "AT+CREG?", 3, "denied", False),
        ("+CREG: 1,5\r\n+CEREG: 1\r\nOK", "AT+CREG?", 5, "roaming", True),
    ],
)
def test_registration(response: str, command: str, stat: int, name: str, registered: bool) -> None:
    assert parse_registration(response, command) == Registration(stat, name, registered)


@pytest.mark.parametrize(
    "response",
    ["+CREG: 1\r\nOK", '+CREG: 1,"00C3","0000A13B",7\r\nOK', "+CREG: x,1\r\nOK", "OK", "+CREG: 0,"],
)
def test_registration_without_a_read_response(response: str) -> None:
    with pytest.raises(AtResponseError):
        parse_registration(response)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ('+COPS: 0,0,"Vodafone.de",7\r\nOK', NetworkOperator(0, "Vodafone.de", "E-UTRAN")),
        ('AT+COPS?\r\r\n+COPS: 0,2,"26202",2\r\n\r\nOK\r\n', NetworkOperator(0, "26202", "UTRAN")),
        ('+COPS: 1,0,"T-Mobile, DE",0\r\nOK', NetworkOperator(1, "T-Mobile, DE", "GSM")),
        ('+COPS: 0,1,"TDG"\r\nOK', NetworkOperator(0, "TDG", None)),  # no AcT (old modems)
        ('+COPS: 0,0,"Telia",13\r\nOK', NetworkOperator(0, "Telia", "E-UTRA-NR DC")),
        ('+COPS: 0,0,"X",42\r\nOK', NetworkOperator(0, "X", "AcT 42")),
        ("+COPS: 0\r\nOK", NetworkOperator(0, None, None)),  # searching, nothing selected
        ("+COPS: 2\r\nOK", NetworkOperator(2, None, None)),  # deregistered
        ('+COPS: 0,0,"",7\r\nOK', NetworkOperator(0, None, "E-UTRAN")),
    ],
)
def test_cops(response: str, expected: NetworkOperator) -> None:
    assert parse_cops(response) == expected


@pytest.mark.parametrize(
    "response",
    [
        "+COPS: banana\r\nOK",
        '+COPS: 0,0,"unterminated\r\nOK',
        '+COPS: 0,0,"A"junk,7\r\nOK',
        '+COPS: 0,0,"A",7,1\r\nOK',
        "OK",
    ],
)
def test_cops_garbage(response: str) -> None:
    with pytest.raises(AtResponseError):
        parse_cops(response)


def test_names_and_units() -> None:
    assert [rssi_dbm(r) for r in (0, 1, 2, 30, 31)] == [-113, -111, -109, -53, -51]
    assert rssi_dbm(99) is None
    with pytest.raises(ValueError, match="32"):
        rssi_dbm(32)
    assert registration_name(1) == "home" and registration_name(5) == "roaming"
    assert [access_technology_name(a) for a in (0, 2, 7, 11)] == [
        "GSM",
        "UTRAN",
        "E-UTRAN",
        "NR 5GCN",
    ]
    assert is_final_result("OK") and is_final_result("+CME ERROR: 3") and is_final_result("ERROR")
    assert not is_final_result("+CSQ: 20,99") and not is_final_result("AT+CSQ")
    assert response_lines("ATE0", "ATE0\r\r\nOK\r\n") == ()


def test_link_quality_combines_cs_and_eps_registration() -> None:
    csq = SignalQuality(20, -73, None)
    lte_only = LinkQuality.from_answers(
        1.0,
        csq,
        Registration(0, "not_registered", False),
        Registration(1, "home", True),
        NetworkOperator(0, "Vodafone.de", "E-UTRAN"),
    )
    assert (lte_only.registered, lte_only.registration) == (True, "home")
    assert (lte_only.creg, lte_only.cereg) == (0, 1)
    assert lte_only.signals() == {
        "csq": 20,
        "rssi_dbm": -73,
        "registered": 1,
        "registration": "home",
        "operator": "Vodafone.de",
        "access_technology": "E-UTRAN",
    }
    gsm_only = LinkQuality.from_answers(2.0, None, Registration(5, "roaming", True), None, None)
    assert gsm_only.signals() == {"registered": 1, "registration": "roaming"}
    nowhere = LinkQuality.from_answers(
        3.0, None, Registration(2, "searching", False), Registration(3, "denied", False), None
    )
    assert (nowhere.registered, nowhere.registration) == (False, "denied")  # EPS speaks first
    assert LinkQuality.from_answers(4.0, None, None, None, None).signals() == {}


_URCS = st.sampled_from(
    [
        "",
        "RING",
        '+CMTI: "SM",3',
        "+CREG: 1",
        '+CREG: 1,"00C3","0000A13B",7',
        "+CEREG: 5",
        "+CPIN: READY",
    ]
)


@given(
    rssi=st.integers(0, 31),
    ber=st.sampled_from([*range(8), 99]),
    before=st.lists(_URCS, max_size=4),
    after=st.lists(_URCS, max_size=4),
    echo=st.booleans(),
    ending=st.sampled_from(["\r\n", "\r", "\n"]),
)
def test_csq_is_found_among_echo_and_unsolicited_codes(
    rssi: int, ber: int, before: list[str], after: list[str], echo: bool, ending: str
) -> None:
    lines = [*(["AT+CSQ"] if echo else []), *before, f"+CSQ: {rssi},{ber}", *after, "OK"]
    parsed = parse_csq(ending.join(lines) + ending)
    assert parsed == SignalQuality(rssi, -113 + 2 * rssi, None if ber == 99 else ber)


@given(
    n=st.integers(0, 5),
    stat=st.integers(0, 11),
    urcs=st.lists(_URCS, max_size=4),
)
def test_creg_is_found_among_unsolicited_codes(n: int, stat: int, urcs: list[str]) -> None:
    response = "\r\n".join([*urcs, f"+CREG: {n},{stat}", *urcs, "OK"])
    assert parse_registration(response).stat == stat


_AT_LINES = st.one_of(
    st.text(max_size=30),
    _URCS,
    st.sampled_from(["OK", "ERROR", "+CME ERROR: 30", "+CME ERROR: ²", "+CSQ: ", "+CSQ: 1,2,3"]),
    st.builds(
        "{}: {}".format,
        st.sampled_from(["+CSQ", "+CREG", "+CEREG", "+COPS"]),
        st.text(alphabet='0123456789,"ab \x00é', max_size=20),
    ),
)


@given(st.lists(_AT_LINES, max_size=8), st.sampled_from(["\r\n", "\r", "\n", ""]))
def test_garbage_answers_raise_only_at_errors(lines: list[str], ending: str) -> None:
    """Whatever a broken modem sends, parsers return a result or raise the two AT errors."""
    response = ending.join(lines)
    for parse in (
        parse_csq,
        parse_registration,
        lambda r: parse_registration(r, "AT+CEREG?"),
        parse_cops,
    ):
        try:
            parse(response)
        except (AtResponseError, AtCommandError) as e:
            assert isinstance(e, InputError | BusError)


@given(st.text(max_size=200))
def test_any_text_raises_only_at_errors(text: str) -> None:
    for parse in (parse_csq, parse_registration, parse_cops):
        with contextlib.suppress(AtResponseError, AtCommandError):
            parse(text)


# --- the monitor, on a pty ---------------------------------------------------------------------

Answer = Callable[[str], bytes | None]

STANDARD: dict[str, bytes] = {
    "ATE0": b"\r\nOK\r\n",
    "AT+CMEE=1": b"\r\nOK\r\n",
    "AT+CSQ": b"\r\n+CSQ: 20,99\r\n\r\nOK\r\n",
    "AT+CREG?": b"\r\n+CREG: 0,1\r\n\r\nOK\r\n",
    "AT+CEREG?": b"\r\n+CEREG: 0,1\r\n\r\nOK\r\n",
    "AT+COPS?": b'\r\n+COPS: 0,0,"Vodafone.de",7\r\n\r\nOK\r\n',
}


def standard(command: str) -> bytes | None:
    return STANDARD.get(command, b"\r\nERROR\r\n")


class FakeModem:
    """Plays a modem on a pty's master side: echo on until ``ATE0``, answers from *answer*
    (``None``: no answer at all)."""

    def __init__(self, pty: Pty, answer: Answer = standard) -> None:
        self.pty = pty
        self.answer = answer
        self.echo = True
        self.commands: list[str] = []
        self._buffer = b""

    async def __aenter__(self) -> FakeModem:
        asyncio.get_running_loop().add_reader(self.pty.master, self._on_readable)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        asyncio.get_running_loop().remove_reader(self.pty.master)

    def _on_readable(self) -> None:
        try:
            self._buffer += os.read(self.pty.master, 1024)
        except OSError:
            return
        *commands, self._buffer = self._buffer.split(b"\r")
        for raw in commands:
            command = raw.strip().decode()
            self.commands.append(command)
            if self.echo:
                self.pty.write(raw + b"\r")
            if command == "ATE0":
                self.echo = False
            response = self.answer(command)
            if response is not None:
                self.pty.write(response)


def monitor(pty: Pty, response_timeout_s: float = 5.0) -> ModemMonitor:
    return ModemMonitor(
        str(pty.link),
        poll_interval_s=0.05,
        response_timeout_s=response_timeout_s,
        backoff=FAST,
    )


def is_update(item: object) -> bool:
    return isinstance(item, ModemUpdate)


async def test_polls_and_publishes_link_quality(ptys: Callable[[], Pty]) -> None:
    pty = ptys()
    async with FakeModem(pty) as fake, monitor(pty) as modem:
        nothing_yet = modem.latest
        assert nothing_yet is None
        stream = aiter(modem)
        seen: list[object] = []
        first = await next_item(stream, is_update, seen)
        assert isinstance(first, ModemUpdate)
        assert first.signals == {
            "csq": 20,
            "rssi_dbm": -73,
            "registered": 1,
            "registration": "home",
            "operator": "Vodafone.de",
            "access_technology": "E-UTRAN",
        }
        assert [i.state for i in seen if isinstance(i, StateChange)] == ["ok"]
        latest = modem.latest
        assert latest is not None and latest.time == first.time
        assert (latest.creg, latest.cereg, latest.ber) == (1, 1, None)
        await next_item(stream, is_update)  # a second poll: no second ATE0
        assert fake.commands[:6] == [
            "ATE0",
            "AT+CMEE=1",
            "AT+CSQ",
            "AT+CREG?",
            "AT+CEREG?",
            "AT+COPS?",
        ]
        assert fake.commands[6:10] == fake.commands[2:6]
        assert fake.commands.count("ATE0") == 1
        health = modem.health
        assert health.state == "ok" and health.polls >= 2 and health.commands >= 10
        assert (health.timeouts, health.errors, health.garbage, health.reopens) == (0, 0, 0, 0)


async def test_errors_garbage_urcs_and_timeouts_are_counted(ptys: Callable[[], Pty]) -> None:
    answers = {
        **STANDARD,
        "AT+CSQ": b'\r\n+CMTI: "SM",3\r\n\r\n+CSQ: 31,0\r\n\r\nOK\r\n',
        "AT+CREG?": b"\r\n+CREG: 1\r\n\r\n+CREG: 0,5\r\n\r\nOK\r\n",
        "AT+CEREG?": b"\r\n+CME ERROR: 4\r\n",  # a 2G/3G modem: no EPS
        "AT+COPS?": None,  # never answered
    }
    pty = ptys()
    async with FakeModem(pty, answers.get) as fake, monitor(pty, response_timeout_s=2.0) as modem:
        update = await next_item(aiter(modem), is_update)
        assert isinstance(update, ModemUpdate)
        assert update.signals == {
            "csq": 31,
            "rssi_dbm": -51,
            "ber": 0,
            "registered": 1,
            "registration": "roaming",
        }
        health = modem.health
        assert (health.timeouts, health.errors) == (1, 1)
        assert "AT+COPS?" in health.last_error and str(pty.link) in health.last_error
        assert health.state == "ok"
        assert "AT+CEREG?" in fake.commands


async def test_garbage_answers_are_counted_not_fatal(ptys: Callable[[], Pty]) -> None:
    answers = {
        **STANDARD,
        "AT+CSQ": b"\r\n+CSQ: 77,77\r\n\r\nOK\r\n",
        "AT+COPS?": b"\r\n\xff\xfe+COPS: \x00\x01\r\nOK\r\n",
    }
    pty = ptys()
    async with FakeModem(pty, answers.get), monitor(pty) as modem:
        update = await next_item(aiter(modem), is_update)
        assert isinstance(update, ModemUpdate)
        assert update.signals == {"registered": 1, "registration": "home"}
        assert modem.health.garbage == 2 and modem.health.errors == 0


async def test_an_unresponsive_modem_is_reopened_and_recovers(ptys: Callable[[], Pty]) -> None:
    answering = False

    def answer(command: str) -> bytes | None:
        return standard(command) if answering else None

    pty = ptys()
    async with FakeModem(pty, answer) as fake, monitor(pty, response_timeout_s=0.2) as modem:
        stream = aiter(modem)
        change = await next_item(stream, state_is("unresponsive"))
        assert isinstance(change, StateChange) and "answered none" in change.reason
        assert modem.latest is None and modem.health.timeouts >= 4
        answering = True
        await next_item(stream, state_is("ok"))
        assert modem.health.reopens >= 1
        assert fake.commands.count("ATE0") >= 2  # set up again after reopening


async def test_port_lost_then_back(ptys: Callable[[], Pty]) -> None:
    first = ptys()
    async with monitor(first) as modem:
        stream = aiter(modem)
        async with FakeModem(first):
            await next_item(stream, is_update)
        before = modem.latest
        first.unplug()
        lost = await next_item(stream, state_is("port_lost"))
        assert isinstance(lost, StateChange) and str(first.link) in lost.reason
        assert modem.latest is before  # the last known link quality stays, with its time
        second = ptys()
        async with FakeModem(second) as fake:
            back = await next_item(stream, state_is("ok"))
            await next_item(stream, is_update)
        assert isinstance(back, StateChange) and back.previous == "port_lost"
        assert fake.commands[0] == "ATE0"
        assert modem.health.reopens == 1


async def test_a_port_vanishing_mid_command_is_port_lost_not_a_timeout(
    ptys: Callable[[], Pty],
) -> None:
    pty = ptys()
    async with monitor(pty, response_timeout_s=PATIENCE) as modem:
        stream = aiter(modem)
        async with asyncio.timeout(PATIENCE):
            await modem.wait_open()
        pty.unplug()  # while the monitor waits for the answer to ATE0
        await next_item(stream, state_is("port_lost"))


def test_bad_settings_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="poll_interval_s"):
        ModemMonitor("/dev/ttyUSB2", poll_interval_s=0)
    with pytest.raises(UsageError, match="response_timeout_s"):
        ModemMonitor("/dev/ttyUSB2", response_timeout_s=-1)

"""The cellular modem's link quality, polled over its AT port, as signals.

Usage::

    async with ModemMonitor("/dev/ttyUSB2", poll_interval_s=10.0) as modem:
        async for item in modem:
            if isinstance(item, ModemUpdate):
                publish(MODEM_BUS, MODEM_MESSAGE, item.time, item.signals)
            else:  # StateChange: "ok" | "unresponsive" | "port_lost"
                log.warning("modem %s: %s", item.state, item.reason)
        ...
        modem.latest  # LinkQuality of the last poll (e.g. recorded at each MQTT reconnect)
        modem.health  # ModemHealth: state and counters

After opening the port the monitor sends ``ATE0`` (no echo) and ``AT+CMEE=1`` (numeric error
codes), then every ``poll_interval_s`` asks ``AT+CSQ``, ``AT+CREG?``, ``AT+CEREG?`` and
``AT+COPS?``. The signals (:data:`MODEM_SIGNALS`) are published as message ``MODEM`` on the pseudo
bus ``modem``: ``modem:MODEM.rssi_dbm``. An update holds what that poll learnt; a command that
timed out, failed or was answered with garbage is counted and its signals left out.

The response parsers (3GPP TS 27.007) are pure functions of the response text —
:func:`parse_csq`, :func:`parse_registration`, :func:`parse_cops` — raising
:class:`AtCommandError` when the modem answered with an error and :class:`AtResponseError` when
the answer is not what the command gives. Echoed commands, blank lines and unsolicited result
codes (``+CREG: 1``) among the response are skipped.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, TypeVar

from agent.backoff import Backoff
from agent.errors import BusError, InputError, UsageError
from agent.serial_device import PortSilentError, SerialDevice, SerialLink, StateChange

__all__ = [
    "MODEM_BUS",
    "MODEM_MESSAGE",
    "MODEM_SIGNALS",
    "AtCommandError",
    "AtResponseError",
    "LinkQuality",
    "ModemHealth",
    "ModemMonitor",
    "ModemUpdate",
    "NetworkOperator",
    "Registration",
    "SignalQuality",
    "StateChange",
    "access_technology_name",
    "is_final_result",
    "parse_cops",
    "parse_csq",
    "parse_registration",
    "registration_name",
    "response_lines",
    "rssi_dbm",
]

#: The pseudo-bus and message name modem signals are published under.
MODEM_BUS: Final = "modem"
MODEM_MESSAGE: Final = "MODEM"
#: Every signal a modem update may carry, with its unit.
MODEM_SIGNALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "rssi_dbm": "dBm",  # received signal strength; left out when the modem does not know
        "ber": "",  # bit error rate as RXQUAL 0..7; left out when unknown (99)
        "csq": "",  # the raw AT+CSQ <rssi> (0..31, 99 unknown)
        "registered": "",  # 1 registered (home, roaming…) on the CS or EPS network, else 0
        "registration": "",  # home | roaming | searching | denied | not_registered | …
        "operator": "",  # as AT+COPS? gives it (a name or an MCC+MNC)
        "access_technology": "",  # GSM | UTRAN | E-UTRAN | NR 5GCN | …
    }
)

_FINAL_CODES: Final = frozenset({"OK", "ERROR", "NO CARRIER", "NO DIALTONE", "BUSY", "NO ANSWER"})
_ERROR_PREFIXES: Final = ("+CME ERROR:", "+CMS ERROR:")
_LINE_END: Final = re.compile(r"[\r\n]+")
_FIELD: Final = re.compile(r'\s*("[^"]*"|[^,"]*?)\s*(,|\Z)')

#: <stat> of +CREG/+CGREG/+CEREG (27.007 §7.2, §10.1.22) → name.
_REGISTRATION: Final = {
    0: "not_registered",
    1: "home",
    2: "searching",
    3: "denied",
    4: "unknown",
    5: "roaming",
    6: "home_sms_only",
    7: "roaming_sms_only",
    8: "emergency_only",
    9: "home_csfb_not_preferred",
    10: "roaming_csfb_not_preferred",
    11: "rlos_only",
}
_REGISTERED: Final = frozenset({1, 5, 6, 7, 9, 10})

#: <AcT> of +COPS/+CREG (27.007 §7.3) → name.
_ACCESS_TECHNOLOGY: Final = {
    0: "GSM",
    1: "GSM Compact",
    2: "UTRAN",
    3: "GSM EGPRS",
    4: "UTRAN HSDPA",
    5: "UTRAN HSUPA",
    6: "UTRAN HSDPA+HSUPA",
    7: "E-UTRAN",
    8: "EC-GSM-IoT",
    9: "E-UTRAN NB-S1",
    10: "E-UTRA 5GCN",
    11: "NR 5GCN",
    12: "NG-RAN",
    13: "E-UTRA-NR DC",
}

#: The +CME ERROR codes (27.007 §9.2) a T-box meets in the field, for messages.
_CME_ERRORS: Final = {
    0: "phone failure",
    3: "operation not allowed",
    4: "operation not supported",
    5: "PH-SIM PIN required",
    10: "SIM not inserted",
    11: "SIM PIN required",
    12: "SIM PUK required",
    13: "SIM failure",
    14: "SIM busy",
    15: "SIM wrong",
    16: "incorrect password",
    30: "no network service",
    31: "network timeout",
    32: "network not allowed, emergency calls only",
    100: "unknown",
}

ModemSignals = Mapping[str, int | str]
_T = TypeVar("_T")


class AtResponseError(InputError):
    """A modem's answer is malformed or lacks what the command should give."""


class AtCommandError(BusError):
    """The modem answered a command with an error (``ERROR``, ``+CME ERROR: <n>``…).

    ``command`` is the command, ``code`` the numeric CME/CMS error if there was one, ``text`` the
    error line.
    """

    def __init__(self, command: str, text: str, code: int | None = None) -> None:
        self.command = command
        self.text = text
        self.code = code
        meaning = _CME_ERRORS.get(code) if code is not None and text.startswith("+CME") else None
        super().__init__(
            f"the modem refused {command}: {text}" + (f" ({meaning})" if meaning else "")
        )


@dataclass(frozen=True, slots=True)
class SignalQuality:
    """``AT+CSQ``: raw ``csq`` (<rssi>), its ``rssi_dbm`` and ``ber`` (``None``: unknown)."""

    csq: int
    rssi_dbm: int | None
    ber: int | None


@dataclass(frozen=True, slots=True)
class Registration:
    """``AT+CREG?`` / ``AT+CEREG?``: <stat>, its name, and whether that is a registration."""

    stat: int
    name: str
    registered: bool


@dataclass(frozen=True, slots=True)
class NetworkOperator:
    """``AT+COPS?``: selection mode, operator (``None`` if none selected) and technology."""

    mode: int
    operator: str | None
    access_technology: str | None


@dataclass(frozen=True, slots=True)
class LinkQuality:
    """The cellular link as one poll found it, at ``time`` (``time.time()``).

    A field is ``None`` when that poll did not learn it (the command failed or the modem does
    not know). ``registered`` and ``registration`` combine CS (``creg``) and EPS (``cereg``)
    registration: registered on either counts (an LTE-only modem is "not registered" on CS).
    """

    time: float
    csq: int | None = None
    rssi_dbm: int | None = None
    ber: int | None = None
    registered: bool | None = None
    registration: str | None = None
    operator: str | None = None
    access_technology: str | None = None
    creg: int | None = None
    cereg: int | None = None

    @classmethod
    def from_answers(
        cls,
        time: float,
        quality: SignalQuality | None,
        creg: Registration | None,
        cereg: Registration | None,
        operator: NetworkOperator | None,
    ) -> LinkQuality:
        """Combine one poll's parsed answers (``None`` for a command that failed)."""
        known = [r for r in (cereg, creg) if r is not None]
        chosen = next((r for r in known if r.registered), known[0] if known else None)
        return cls(
            time=time,
            csq=quality.csq if quality else None,
            rssi_dbm=quality.rssi_dbm if quality else None,
            ber=quality.ber if quality else None,
            registered=chosen.registered if chosen else None,
            registration=chosen.name if chosen else None,
            operator=operator.operator if operator else None,
            access_technology=operator.access_technology if operator else None,
            creg=creg.stat if creg else None,
            cereg=cereg.stat if cereg else None,
        )

    def signals(self) -> dict[str, int | str]:
        """The known fields as signals (names as in :data:`MODEM_SIGNALS`)."""
        values: dict[str, int | str | bool | None] = {
            "csq": self.csq,
            "rssi_dbm": self.rssi_dbm,
            "ber": self.ber,
            "registered": self.registered,
            "registration": self.registration,
            "operator": self.operator,
            "access_technology": self.access_technology,
        }
        return {
            name: int(value) if isinstance(value, bool) else value
            for name, value in values.items()
            if value is not None
        }


@dataclass(frozen=True, slots=True)
class ModemUpdate:
    """Signals from one poll, at ``time`` (``time.time()`` when the poll ended)."""

    time: float
    signals: ModemSignals


@dataclass(frozen=True, slots=True)
class ModemHealth:
    """A snapshot of the modem monitor's health.

    ``state``: ``"starting"``, ``"ok"`` (the last poll got answers), ``"unresponsive"`` (a whole
    poll went unanswered; the port is being reopened) or ``"port_lost"`` (the port failed or
    cannot be opened; retrying); ``since`` is when it began. Counters: ``polls`` (completed),
    ``commands`` (sent), ``timeouts`` (no final result code in time), ``errors`` (answered
    ``ERROR``/``+CME ERROR``), ``garbage`` (answers that did not parse), ``reopens``,
    ``dropped`` (items the consumer was too slow for). ``last_error`` describes the last
    problem.
    """

    port: str
    state: str
    since: float
    polls: int
    commands: int
    timeouts: int
    errors: int
    garbage: int
    reopens: int
    dropped: int
    last_error: str


def is_final_result(line: str) -> bool:
    """True if *line* ends a command's response (``OK``, ``ERROR``, ``+CME ERROR: …``…)."""
    line = line.strip()
    return line in _FINAL_CODES or line.startswith(_ERROR_PREFIXES)


def response_lines(command: str, response: str) -> tuple[str, ...]:
    """The information lines of *command*'s *response* (``+CSQ: 20,99`` for ``AT+CSQ``).

    *response* is everything the modem sent after the command, up to and including the final
    result code. Echo, blank lines and other commands' unsolicited codes are skipped. Raises
    :class:`AtCommandError` if the final result is an error and :class:`AtResponseError` if
    there is none.
    """
    prefix = _response_prefix(command)
    lines: list[str] = []
    for raw in _LINE_END.split(response):
        line = raw.strip()
        if is_final_result(line):
            if line == "OK":
                return tuple(lines)
            raise AtCommandError(command, line, _error_code(line))
        if prefix is not None and line.startswith(prefix):
            lines.append(line[len(prefix) :].strip())
    raise AtResponseError(f"the modem's answer to {command} has no final result code (OK/ERROR)")


def _response_prefix(command: str) -> str | None:
    """``AT+CREG?`` → ``+CREG:``; ``None`` for a basic command (``ATE0``) that has none."""
    m = re.match(r"AT([+&%$#^][A-Z0-9]+)", command.strip().upper())
    return f"{m.group(1)}:" if m else None


def _error_code(line: str) -> int | None:
    _, _, code = line.partition(":")
    code = code.strip()
    return int(code) if code.isascii() and code.isdigit() and len(code) <= 6 else None


def _fields(text: str, command: str) -> list[str]:
    """Comma-separated fields; quoted ones keep their quotes (a quote marks a string)."""
    fields: list[str] = []
    position = 0
    while True:
        m = _FIELD.match(text, position)
        if m is None:
            raise AtResponseError(f"malformed answer to {command}: {text[:80]!r}")
        fields.append(m.group(1))
        if not m.group(2):  # the end of the text, not a comma
            return fields
        position = m.end()


def _integer(field: str, command: str) -> int:
    if not (field.isascii() and field.isdigit()) or len(field) > 6:
        raise AtResponseError(f"answer to {command} has {field!r} where a number belongs")
    return int(field)


def _text(field: str) -> str:
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def rssi_dbm(rssi: int) -> int | None:
    """``AT+CSQ`` <rssi> in dBm: 0..31 → -113..-51, 100..191 (TD-SCDMA) → -116..-25;
    ``None`` for 99 and 199 ("not known"). Raises ValueError for other values."""
    if 0 <= rssi <= 31:
        return -113 + 2 * rssi
    if 100 <= rssi <= 191:
        return rssi - 216
    if rssi in (99, 199):
        return None
    raise ValueError(f"{rssi} is not an AT+CSQ rssi value")


def registration_name(stat: int) -> str:
    """The name of a +CREG/+CEREG <stat> (``1`` → ``"home"``; unknown codes ``"stat_<n>"``)."""
    return _REGISTRATION.get(stat, f"stat_{stat}")


def access_technology_name(act: int) -> str:
    """The name of an <AcT> (``7`` → ``"E-UTRAN"``; unknown codes ``"AcT <n>"``)."""
    return _ACCESS_TECHNOLOGY.get(act, f"AcT {act}")


def parse_csq(response: str) -> SignalQuality:
    """Parse the response to ``AT+CSQ`` (``+CSQ: <rssi>,<ber>``)."""
    lines = response_lines("AT+CSQ", response)
    if not lines:
        raise AtResponseError("the modem's answer to AT+CSQ has no +CSQ line")
    fields = _fields(lines[-1], "AT+CSQ")
    if len(fields) != 2:
        raise AtResponseError(f"answer to AT+CSQ has {len(fields)} fields, not 2: {lines[-1]!r}")
    rssi, ber = (_integer(f, "AT+CSQ") for f in fields)
    try:
        dbm = rssi_dbm(rssi)
    except ValueError as e:
        raise AtResponseError(f"answer to AT+CSQ: {e}") from e
    if not (0 <= ber <= 7 or ber == 99):
        raise AtResponseError(f"answer to AT+CSQ: {ber} is not a bit error rate (0..7, 99)")
    return SignalQuality(csq=rssi, rssi_dbm=dbm, ber=None if ber == 99 else ber)


def parse_registration(response: str, command: str = "AT+CREG?") -> Registration:
    """Parse the response to ``AT+CREG?``, ``AT+CGREG?`` or ``AT+CEREG?`` (named by *command*).

    The read response is ``+CREG: <n>,<stat>[,…]``. An unsolicited ``+CREG: <stat>[,"<lac>"…]``
    among it (its second field, if any, is a quoted string) is skipped.
    """
    candidates = [_fields(line, command) for line in response_lines(command, response)]
    answers = [f for f in candidates if len(f) >= 2 and not f[1].startswith('"')]
    if not answers:
        raise AtResponseError(f"the modem's answer to {command} has no <n>,<stat> line")
    _integer(answers[-1][0], command)
    stat = _integer(answers[-1][1], command)
    return Registration(stat=stat, name=registration_name(stat), registered=stat in _REGISTERED)


def parse_cops(response: str) -> NetworkOperator:
    """Parse the response to ``AT+COPS?`` (``+COPS: <mode>[,<format>,<oper>[,<AcT>]]``)."""
    lines = response_lines("AT+COPS?", response)
    if not lines:
        raise AtResponseError("the modem's answer to AT+COPS? has no +COPS line")
    fields = _fields(lines[-1], "AT+COPS?")
    if len(fields) > 4:
        raise AtResponseError(f"answer to AT+COPS? has {len(fields)} fields: {lines[-1]!r}")
    mode = _integer(fields[0], "AT+COPS?")
    if len(fields) >= 2 and fields[1]:
        _integer(fields[1], "AT+COPS?")
    operator = _text(fields[2]) if len(fields) >= 3 and _text(fields[2]) else None
    act = _integer(fields[3], "AT+COPS?") if len(fields) == 4 and fields[3] else None
    return NetworkOperator(
        mode=mode,
        operator=operator,
        access_technology=None if act is None else access_technology_name(act),
    )


def _parse_cereg(response: str) -> Registration:
    return parse_registration(response, "AT+CEREG?")


class ModemMonitor(SerialDevice[ModemUpdate]):
    """A cellular modem's AT port, polled for link quality, as an async stream.

    ``async for`` yields a :class:`ModemUpdate` per poll and
    :class:`~agent.serial_device.StateChange` items (states as in :class:`ModemHealth`). Each
    command waits at most ``response_timeout_s`` for its final result code; timeouts, errors and
    garbage are counted, never fatal. A poll with no answer at all marks the modem
    ``"unresponsive"`` and reopens the port; a failed or vanished port is reopened with
    ``backoff``; after each open ``ATE0`` and ``AT+CMEE=1`` are sent again (a modem that reset
    has echo on again).
    """

    silent_state = "unresponsive"

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        poll_interval_s: float = 10.0,
        response_timeout_s: float = 3.0,
        backoff: Backoff | None = None,
        max_pending: int = 256,
    ) -> None:
        super().__init__(
            port, baudrate=baudrate, device="modem", backoff=backoff, max_pending=max_pending
        )
        if not (math.isfinite(poll_interval_s) and poll_interval_s > 0):
            raise UsageError(f"poll_interval_s of modem port {port} must be a number > 0")
        if not (math.isfinite(response_timeout_s) and response_timeout_s > 0):
            raise UsageError(f"response_timeout_s of modem port {port} must be a number > 0")
        self.poll_interval_s = poll_interval_s
        self.response_timeout_s = response_timeout_s
        self._latest: LinkQuality | None = None
        self._polls = 0
        self._commands = 0
        self._timeouts = 0
        self._errors = 0
        self._garbage = 0

    @property
    def latest(self) -> LinkQuality | None:
        """The link as the last answered poll found it (``None`` before the first); kept
        while the modem is unresponsive or its port lost — check its ``time``."""
        return self._latest

    @property
    def health(self) -> ModemHealth:
        """The monitor's state and counters now."""
        return ModemHealth(
            port=self.port,
            state=self.state,
            since=self.state_since,
            polls=self._polls,
            commands=self._commands,
            timeouts=self._timeouts,
            errors=self._errors,
            garbage=self._garbage,
            reopens=self.reopens,
            dropped=self.dropped,
            last_error=self.last_error,
        )

    async def _session(self, link: SerialLink) -> None:
        for command in ("ATE0", "AT+CMEE=1"):
            await self._query(link, command, functools.partial(response_lines, command))
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self._poll(link)
            await asyncio.sleep(max(0.0, self.poll_interval_s - (loop.time() - started)))

    async def _poll(self, link: SerialLink) -> None:
        timeouts_before = self._timeouts
        csq = await self._query(link, "AT+CSQ", parse_csq)
        creg = await self._query(link, "AT+CREG?", parse_registration)
        cereg = await self._query(link, "AT+CEREG?", _parse_cereg)
        cops = await self._query(link, "AT+COPS?", parse_cops)
        self._polls += 1
        if self._timeouts - timeouts_before == 4:
            raise PortSilentError(
                f"modem on {self.port} answered none of 4 commands within "
                f"{self.response_timeout_s:g} s each"
            )
        quality = LinkQuality.from_answers(time.time(), csq, creg, cereg, cops)
        self._latest = quality
        self._set_state("ok", f"modem on {self.port} answers")
        self._emit(ModemUpdate(quality.time, quality.signals()))

    async def _query(self, link: SerialLink, command: str, parse: Callable[[str], _T]) -> _T | None:
        """Ask *command* and *parse* the answer; ``None`` (counted) if that failed."""
        response = await self._ask(link, command)
        if response is None:
            return None
        try:
            return parse(response)
        except AtCommandError as e:
            self._errors += 1
            self.last_error = f"modem on {self.port}: {e}"
        except AtResponseError as e:
            self._garbage += 1
            self.last_error = f"modem on {self.port}: {e}"
        return None

    async def _ask(self, link: SerialLink, command: str) -> str | None:
        """Send *command*; its whole response up to the final result code, or ``None`` (counted)
        if none came within the response timeout."""
        self._commands += 1
        # Whatever arrived since the last command (unsolicited codes, the late answer to a
        # command that timed out) would be taken for this command's answer.
        link.discard_input()
        link.write(command.encode("ascii") + b"\r")
        lines: list[str] = []
        try:
            async with asyncio.timeout(self.response_timeout_s):
                while True:
                    line = (await link.readline()).data.decode("utf-8", errors="replace")
                    lines.append(line)
                    if is_final_result(line):
                        return "\r\n".join(lines)
        except TimeoutError:
            self._timeouts += 1
            self.last_error = (
                f"modem on {self.port} did not answer {command} within "
                f"{self.response_timeout_s:g} s"
            )
            return None

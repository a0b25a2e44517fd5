"""A simulated cellular modem's AT command port on a pseudo-terminal, with a scriptable link.

::

    schedule = link_schedule(degrade_at=20, drop_at=40, recover_at=60)
    async with ModemTwin(schedule=schedule, link="/tmp/modem0") as modem:
        ...   # a host sends "AT+CSQ\\r" and reads "\\r\\n+CSQ: 24,0\\r\\n\\r\\nOK\\r\\n"

Commands (V.250 syntax: ``AT`` then one or more commands, extended ones separated by ``;``;
case-insensitive; spaces ignored; backspace edits; a line ends with ``\\r`` and ``\\n`` is ignored):
``AT``, ``ATE0``/``ATE1`` (echo, on by default), ``ATI``, ``ATZ``/``AT&F`` (defaults),
``AT+CGMI``, ``AT+CGMM``, ``AT+CGMR``, ``AT+CGSN``, ``AT+CPIN?``, ``AT+CSQ`` (``+CSQ:
<rssi>,<ber>``, 3GPP TS 27.007: rssi 0–31 or 99 unknown, ber 0–7 or 99), ``AT+CREG?`` /
``AT+CEREG?`` (``+CREG: <n>,<stat>``; ``=<n>`` with n 0–2 turns on unsolicited ``+CREG:``
reports, n 2 adds location and AcT), ``AT+COPS?`` (``+COPS: 0,0,"<operator>",<AcT>``, AcT 0 GSM,
2 UTRAN, 7 E-UTRAN; ``+COPS: 0`` when not registered), ``AT+CMEE=<n>`` and the ``=?`` / ``?``
forms of these. Results are verbose (``\\r\\nOK\\r\\n``); an unknown command or bad parameter
answers ``ERROR``, or ``+CME ERROR: 4`` / ``50`` (``AT+CMEE=1``) or the text (``AT+CMEE=2``).

What the host sends is untrusted: characters before ``AT`` are ignored (as V.250 asks), lines
without ``AT`` get no answer, over-long lines (512) answer ``ERROR``, and any bytes, in any
chunks, give the same answers. ``+CEREG`` reports registration only on E-UTRAN (AcT 7).

The network side is a :class:`ModemLink` (rssi, ber, registration status, operator, AcT) that a
schedule of :class:`LinkStep` changes at set seconds after start (:func:`link_schedule`: degrade,
drop, recover), so runs are reproducible; :meth:`ModemTwin.set_network` changes it at once.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

from sim.pty_twin import DEFAULT_MAX_PENDING, PtyTwin, TwinConfigError

__all__ = [
    "AtCommandInterpreter",
    "LinkStep",
    "ModemIdentity",
    "ModemLink",
    "ModemTwin",
    "link_schedule",
]

MAX_LINE: Final = 512
# 3GPP TS 27.007 §9.2 +CME ERROR codes used here.
_CME_NOT_SUPPORTED: Final = 4
_CME_BAD_PARAMETERS: Final = 50
_CME_TEXT: Final = {
    _CME_NOT_SUPPORTED: "operation not supported",
    _CME_BAD_PARAMETERS: "incorrect parameters",
}
_REGISTERED: Final = frozenset({1, 5})  # home, roaming
_LAC: Final = "1A2B"
_CELL_ID: Final = "01C2D3E4"
_TAC: Final = "3C4D"
_EUTRAN_CELL_ID: Final = "0A1B2C3D"
_EUTRAN: Final = 7
_BACKSPACE: Final = 0x08


@dataclass(frozen=True, slots=True)
class ModemLink:
    """The radio link as the modem reports it (3GPP TS 27.007 values).

    ``rssi`` 0–31 (−113 dBm + 2·rssi) or 99 unknown; ``ber`` 0–7 or 99; ``stat`` 0 not registered,
    1 home, 2 searching, 3 denied, 4 unknown, 5 roaming; ``operator`` the long name; ``act`` the
    access technology 0–7 (0 GSM, 2 UTRAN, 7 E-UTRAN).
    """

    rssi: int = 24
    ber: int = 99
    stat: int = 1
    operator: str = "TBOX SIM"
    act: int = _EUTRAN

    def __post_init__(self) -> None:
        if not (0 <= self.rssi <= 31 or self.rssi == 99):
            raise TwinConfigError(f"rssi must be 0–31 or 99 (unknown), got {self.rssi}")
        if not (0 <= self.ber <= 7 or self.ber == 99):
            raise TwinConfigError(f"ber must be 0–7 or 99 (unknown), got {self.ber}")
        if not 0 <= self.stat <= 5:
            raise TwinConfigError(f"registration status must be 0–5, got {self.stat}")
        if not 0 <= self.act <= 7:
            raise TwinConfigError(f"access technology must be 0–7, got {self.act}")
        if '"' in self.operator or not self.operator.isprintable():
            raise TwinConfigError(f"operator name {self.operator!r}: printable, without quotes")

    @property
    def registered(self) -> bool:
        """True when registered (home or roaming)."""
        return self.stat in _REGISTERED

    def degraded(self) -> ModemLink:
        """This link weakened: low signal, bit errors, fallen back to UTRAN (3G)."""
        return replace(self, rssi=5, ber=4, act=2)

    def dropped(self) -> ModemLink:
        """This link lost: no signal, searching for a network."""
        return replace(self, rssi=99, ber=99, stat=2)


@dataclass(frozen=True, slots=True)
class LinkStep:
    """At ``at_s`` seconds after the modem started, the link becomes ``link``."""

    at_s: float
    link: ModemLink

    def __post_init__(self) -> None:
        if not 0 <= self.at_s < math.inf:
            raise TwinConfigError(f"link step time must be a number ≥ 0, got {self.at_s}")


def link_schedule(
    *,
    degrade_at: float | None = None,
    drop_at: float | None = None,
    recover_at: float | None = None,
    good: ModemLink | None = None,
) -> tuple[LinkStep, ...]:
    """Steps that degrade, drop and recover *good* (default :class:`ModemLink`) at the given
    seconds after start, in time order; leave out a time to skip that step."""
    good = good or ModemLink()
    steps = [
        LinkStep(at, link)
        for at, link in (
            (degrade_at, good.degraded()),
            (drop_at, good.dropped()),
            (recover_at, good),
        )
        if at is not None
    ]
    return tuple(sorted(steps, key=lambda step: step.at_s))


@dataclass(frozen=True, slots=True)
class ModemIdentity:
    """What ``ATI``, ``+CGMI``, ``+CGMM``, ``+CGMR`` and ``+CGSN`` answer."""

    manufacturer: str = "tbox-sim"
    model: str = "TBOX-LTE1"
    revision: str = "TBOX-LTE1_1.0.0"
    imei: str = "356938035643809"


class _CommandError(Exception):
    """A command failed with a +CME ERROR code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


@dataclass(slots=True)
class _Settings:
    """What ``ATZ`` resets."""

    echo: bool = True
    cmee: int = 0
    creg: int = 0
    cereg: int = 0


class AtCommandInterpreter:
    """The modem's command processor, without I/O: :meth:`feed` takes the host's bytes and
    returns what the modem answers (echo included); :meth:`set_network` returns the unsolicited
    reports a change of link causes. ``commands`` counts the command lines answered."""

    def __init__(
        self, network: ModemLink | None = None, identity: ModemIdentity | None = None
    ) -> None:
        self.network = network or ModemLink()
        self.identity = identity or ModemIdentity()
        self.settings = _Settings()
        self.commands = 0
        self._line = bytearray()
        self._overflow = False
        i = self.identity
        self._handlers: dict[str, Callable[[str], list[str]]] = {
            "E": self._echo,
            "I": self._information,
            "Z": self._reset_command,
            "&F": self._reset_command,
            "+CGMI": _constant(i.manufacturer),
            "+GMI": _constant(i.manufacturer),
            "+CGMM": _constant(i.model),
            "+GMM": _constant(i.model),
            "+CGMR": _constant(i.revision),
            "+GMR": _constant(i.revision),
            "+CGSN": _constant(i.imei),
            "+GSN": _constant(i.imei),
            "+CPIN": self._cpin,
            "+CSQ": self._csq,
            "+CREG": self._creg,
            "+CEREG": self._cereg,
            "+COPS": self._cops,
            "+CMEE": self._cmee,
        }

    def reset(self) -> None:
        """Power-on state: defaults, an empty line buffer."""
        self.settings = _Settings()
        self._line.clear()
        self._overflow = False

    def feed(self, data: bytes) -> bytes:
        """Process *data* from the host; return the echo and the answers to complete lines."""
        out = bytearray()
        for byte in data:
            if self.settings.echo:
                out.append(byte)
            if byte == 0x0D:
                out += self._end_of_line()
            elif byte == _BACKSPACE:
                if self._line:
                    self._line.pop()
            elif byte < 0x20 or byte == 0x7F:
                continue  # line feeds and other control characters are ignored
            elif len(self._line) >= MAX_LINE:
                self._overflow = True
            else:
                self._line.append(byte)
        return bytes(out)

    def set_network(self, link: ModemLink) -> bytes:
        """Make *link* the network state; return the +CREG/+CEREG reports it causes."""
        before, self.network = self.network, link
        out = bytearray()
        s = self.settings
        if s.creg and self._creg_report(before, s.creg) != self._creg_report(link, s.creg):
            out += _info([f"+CREG: {self._creg_report(link, s.creg)}"])
        if s.cereg and self._cereg_report(before, s.cereg) != self._cereg_report(link, s.cereg):
            out += _info([f"+CEREG: {self._cereg_report(link, s.cereg)}"])
        return bytes(out)

    # --- lines ------------------------------------------------------------------------------

    def _end_of_line(self) -> bytes:
        text = self._line.decode("latin-1")
        overflow = self._overflow
        self._line.clear()
        self._overflow = False
        start = text.upper().find("AT")
        if start < 0:
            return b""  # not a command line: noise on the wire
        self.commands += 1
        if overflow:
            return self._error(_CME_NOT_SUPPORTED)
        body = text[start + 2 :].replace(" ", "")
        out = bytearray()
        try:
            for name, suffix in _split(body):
                out += _info(self._execute(name, suffix))
        except _CommandError as e:
            return self._error(e.code)
        return bytes(out) + b"\r\nOK\r\n"

    def _error(self, code: int) -> bytes:
        mode = self.settings.cmee
        if mode == 1:
            return f"\r\n+CME ERROR: {code}\r\n".encode("ascii")
        if mode == 2:
            return f"\r\n+CME ERROR: {_CME_TEXT[code]}\r\n".encode("ascii")
        return b"\r\nERROR\r\n"

    # --- commands ---------------------------------------------------------------------------

    def _execute(self, name: str, suffix: str) -> list[str]:
        handler = self._handlers.get(name)
        if handler is None:
            raise _CommandError(_CME_NOT_SUPPORTED)
        return handler(suffix)

    def _echo(self, suffix: str) -> list[str]:
        self.settings.echo = _basic_number(suffix, 1) == 1
        return []

    def _information(self, suffix: str) -> list[str]:
        _basic_number(suffix, 0)
        i = self.identity
        return [f"{i.manufacturer}\r\n{i.model}\r\nRevision: {i.revision}"]

    def _reset_command(self, suffix: str) -> list[str]:
        _basic_number(suffix, 0)
        self.settings = _Settings()
        return []

    def _cpin(self, suffix: str) -> list[str]:
        if suffix == "?":
            return ["+CPIN: READY"]
        if suffix == "=?":
            return []
        raise _CommandError(_CME_BAD_PARAMETERS)

    def _csq(self, suffix: str) -> list[str]:
        if suffix == "":
            return [f"+CSQ: {self.network.rssi},{self.network.ber}"]
        if suffix == "=?":
            return ["+CSQ: (0-31,99),(0-7,99)"]
        raise _CommandError(_CME_BAD_PARAMETERS)

    def _creg(self, suffix: str) -> list[str]:
        if suffix == "?":
            n = self.settings.creg
            return [f"+CREG: {n},{self._creg_report(self.network, n)}"]
        if suffix == "=?":
            return ["+CREG: (0-2)"]
        self.settings.creg = _set_number(suffix, 2)
        return []

    def _cereg(self, suffix: str) -> list[str]:
        if suffix == "?":
            n = self.settings.cereg
            return [f"+CEREG: {n},{self._cereg_report(self.network, n)}"]
        if suffix == "=?":
            return ["+CEREG: (0-2)"]
        self.settings.cereg = _set_number(suffix, 2)
        return []

    def _cops(self, suffix: str) -> list[str]:
        link = self.network
        if suffix == "?":
            if not link.registered:
                return ["+COPS: 0"]
            return [f'+COPS: 0,0,"{link.operator}",{link.act}']
        if suffix == "=?":
            return [
                f'+COPS: (2,"{link.operator}","{link.operator}","00101",{link.act}),,(0-4),(0-2)'
            ]
        if _set_number(suffix, 4) == 0:  # automatic selection: what the modem does anyway
            return []
        raise _CommandError(_CME_NOT_SUPPORTED)

    def _cmee(self, suffix: str) -> list[str]:
        if suffix == "?":
            return [f"+CMEE: {self.settings.cmee}"]
        if suffix == "=?":
            return ["+CMEE: (0-2)"]
        self.settings.cmee = _set_number(suffix, 2)
        return []

    @staticmethod
    def _creg_report(link: ModemLink, n: int) -> str:
        """``<stat>[,<lac>,<ci>,<AcT>]`` for +CREG (the part after ``<n>,`` in a read)."""
        if n == 2 and link.registered:
            return f'{link.stat},"{_LAC}","{_CELL_ID}",{link.act}'
        return str(link.stat)

    @staticmethod
    def _cereg_report(link: ModemLink, n: int) -> str:
        """Like :meth:`_creg_report` for EPS: registered only on E-UTRAN."""
        stat = link.stat if link.act == _EUTRAN or not link.registered else 0
        if n == 2 and stat in _REGISTERED:
            return f'{stat},"{_TAC}","{_EUTRAN_CELL_ID}",{link.act}'
        return str(stat)


def _split(body: str) -> list[tuple[str, str]]:
    """``E0+CSQ;+CREG?`` → ``[("E", "0"), ("+CSQ", ""), ("+CREG", "?")]``, names upper-cased."""
    commands: list[tuple[str, str]] = []
    i = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == ";":
            i += 1
        elif c == "+":
            j = i + 1
            while j < n and (body[j].isalnum() or body[j] in "!%-./:_"):
                j += 1
            name = body[i:j].upper()
            k = j
            quoted = False
            while k < n and (quoted or body[k] != ";"):
                quoted ^= body[k] == '"'
                k += 1
            if name == "+":
                raise _CommandError(_CME_NOT_SUPPORTED)
            commands.append((name, body[j:k]))
            i = k
        elif c.isalpha() or c == "&":
            j = i + 2 if c == "&" else i + 1
            name = body[i:j].upper()
            k = j
            while k < n and body[k].isdigit():
                k += 1
            commands.append((name, body[j:k]))
            i = k
        else:
            raise _CommandError(_CME_NOT_SUPPORTED)
    return commands


def _basic_number(suffix: str, default: int) -> int:
    """The number after a basic command (``E1`` → 1); *default* when none; only 0 or 1."""
    if suffix == "":
        return default
    if suffix in ("0", "1"):
        return int(suffix)
    raise _CommandError(_CME_BAD_PARAMETERS)


def _set_number(suffix: str, highest: int) -> int:
    """The value of ``=<n>`` with 0 ≤ n ≤ *highest*."""
    value = suffix[1:]
    if not suffix.startswith("=") or not value.isdigit() or not value.isascii():
        raise _CommandError(_CME_BAD_PARAMETERS)
    number = int(value)
    if number > highest:
        raise _CommandError(_CME_BAD_PARAMETERS)
    return number


def _constant(text: str) -> Callable[[str], list[str]]:
    def answer(suffix: str) -> list[str]:
        if suffix == "":
            return [text]
        if suffix == "=?":
            return []
        raise _CommandError(_CME_BAD_PARAMETERS)

    return answer


def _info(lines: Sequence[str]) -> bytes:
    return b"".join(f"\r\n{line}\r\n".encode("ascii", "replace") for line in lines)


class ModemTwin(PtyTwin):
    """A cellular modem's AT port on a pty (see the module docstring).

    * *network*: the link at start (default: registered on E-UTRAN, rssi 24).
    * *schedule*: :class:`LinkStep` objects applied at their times after start.
    * *identity*: what the identification commands answer.
    * *link*, *max_pending*: as for :class:`~sim.pty_twin.PtyTwin` (*link* is the device
      symlink, not the radio link).
    """

    def __init__(
        self,
        *,
        network: ModemLink | None = None,
        schedule: Sequence[LinkStep] = (),
        identity: ModemIdentity | None = None,
        link: str | os.PathLike[str] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        super().__init__(link=link, max_pending=max_pending)
        self.interpreter = AtCommandInterpreter(
            network=network or ModemLink(), identity=identity or ModemIdentity()
        )
        self.schedule = tuple(sorted(schedule, key=lambda step: step.at_s))

    @property
    def network(self) -> ModemLink:
        """The link as the modem reports it now."""
        return self.interpreter.network

    def set_network(self, link: ModemLink) -> None:
        """Change the link now, sending the unsolicited reports the host asked for."""
        self.send(self.interpreter.set_network(link))

    def on_bytes(self, data: bytes) -> None:
        """Answer the host."""
        self.send(self.interpreter.feed(data))

    def on_power_up(self) -> None:
        """A modem powers up with its defaults (echo on, no reports)."""
        self.interpreter.reset()

    async def serve(self) -> None:
        """Apply the schedule's steps at their times."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in self.schedule:
            await asyncio.sleep(max(start + step.at_s - loop.time(), 0.0))
            self.set_network(step.link)

"""The GNSS receiver: NMEA sentences from a serial port become signals like any CAN signal.

Usage::

    async with GnssReceiver("/dev/ttyUSB1", baudrate=9600) as gnss:
        async for item in gnss:
            if isinstance(item, GnssUpdate):
                publish(GNSS_BUS, GNSS_MESSAGE, item.time, item.signals)
            else:  # StateChange: "ok" | "no_fix" | "silent" | "port_lost"
                log.warning("GNSS %s: %s", item.state, item.reason)
        ...
        gnss.health  # GnssHealth: state and counters, for status pages

The signals (see :data:`GNSS_SIGNALS` for units) are published as message ``GNSS`` on the pseudo
bus ``gnss``, so schemes name them ``gnss:GNSS.latitude``, ``GNSS.speed`` or just ``latitude``.
Each :class:`GnssUpdate` holds only what its sentence carried (RMC, GGA, GSA or VTG; other
sentences are counted but give no signals). A sentence saying there is no valid fix gives
``fix = 0`` and never a position, speed, heading, altitude, DOP or time.

Parsing is :func:`parse_sentence` (pure: bytes in, :class:`NmeaSentence` out or an
:class:`NmeaError` raised) on top of pynmeagps; :class:`GnssReceiver` is the driver, built on
:class:`agent.serial_device.SerialDevice`.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from pynmeagps import VALCKSUM, NMEAReader, calc_checksum

from agent.backoff import Backoff
from agent.errors import InputError, UsageError
from agent.serial_device import SerialDevice, SerialLink, StateChange

__all__ = [
    "GNSS_BUS",
    "GNSS_MESSAGE",
    "GNSS_SIGNALS",
    "GnssHealth",
    "GnssReceiver",
    "GnssUpdate",
    "NmeaChecksumError",
    "NmeaError",
    "NmeaGarbageError",
    "NmeaSentence",
    "NmeaTruncatedError",
    "StateChange",
    "parse_sentence",
]

#: The pseudo-bus and message name GNSS signals are published under.
GNSS_BUS: Final = "gnss"
GNSS_MESSAGE: Final = "GNSS"
#: Every signal a GNSS update may carry, with its unit.
GNSS_SIGNALS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "latitude": "deg",  # WGS84, north positive
        "longitude": "deg",  # WGS84, east positive
        "altitude": "m",  # above mean sea level (GGA)
        "speed": "km/h",  # over ground
        "heading": "deg",  # course over ground, true north, 0..360
        "fix_quality": "",  # GGA quality: 0 none, 1 GPS, 2 DGPS, 4 RTK fixed, 6 estimated…
        "fix": "",  # 1 valid fix, 0 none
        "satellites": "",  # satellites used (GGA)
        "hdop": "",
        "pdop": "",
        "vdop": "",
        "utc": "s",  # the receiver's UTC (RMC date and time) as POSIX seconds
    }
)

_KNOTS_TO_KMH: Final = 1.852
_HEADER: Final = re.compile(r"[A-Z][A-Z0-9]{2,9}")
_HEX: Final = frozenset(b"0123456789ABCDEFabcdef")

Signals = Mapping[str, float | int]


class NmeaError(InputError):
    """A line from a GNSS receiver is not a usable NMEA sentence."""


class NmeaChecksumError(NmeaError):
    """A complete sentence whose checksum does not match (noise on the line)."""


class NmeaTruncatedError(NmeaError):
    """Part of a sentence: its start or end was lost (port opened mid-sentence, bytes dropped)."""


class NmeaGarbageError(NmeaError):
    """Bytes that are no NMEA sentence at all (noise, wrong baud rate, binary protocol)."""


@dataclass(frozen=True, slots=True)
class NmeaSentence:
    """A parsed sentence: talker (``GP``, ``GN``…), kind (``RMC``…) and the signals it gave."""

    talker: str
    kind: str
    signals: Signals


@dataclass(frozen=True, slots=True)
class GnssUpdate:
    """Signals from one sentence, received at ``time`` (``time.time()``, the clock CAN frames
    use here). ``sentence`` is the sentence kind (``"RMC"``…) they came from."""

    time: float
    signals: Signals
    sentence: str


@dataclass(frozen=True, slots=True)
class GnssHealth:
    """A snapshot of a receiver's health.

    ``state``: ``"starting"`` (port open, nothing read yet), ``"ok"`` (a valid fix within
    ``fix_timeout_s``), ``"no_fix"``, ``"silent"`` (no bytes for ``silence_timeout_s``; the port
    is being reopened) or ``"port_lost"`` (the port failed or cannot be opened; retrying).
    ``since`` is when that state began. Counters: ``sentences`` (valid, any kind),
    ``bad_checksum``, ``garbage``, ``truncated`` (lines skipped), ``reopens``, ``dropped``
    (updates the consumer was too slow for). ``last_fix_time`` is the receipt time of the last
    sentence with a valid fix. ``last_error`` is the last port problem, ``last_rejected`` the
    last skipped line and why.
    """

    port: str
    state: str
    since: float
    sentences: int
    bad_checksum: int
    garbage: int
    truncated: int
    reopens: int
    dropped: int
    last_fix_time: float | None
    last_error: str
    last_rejected: str


def parse_sentence(line: bytes) -> NmeaSentence:
    """Parse one NMEA 0183 line (without or with its CR LF) into signals.

    Raises :class:`NmeaTruncatedError` for a fragment of a sentence,
    :class:`NmeaChecksumError` for a complete sentence with a wrong checksum and
    :class:`NmeaGarbageError` for anything else that is not a sentence. A valid sentence of a
    kind without signals (GSV, TXT, proprietary ones) gives empty ``signals``.
    """
    line = line.strip(b" \r\n")
    shown = _shown(line)
    if not line:
        raise NmeaGarbageError("empty line")
    if any(b < 0x20 or b > 0x7E for b in line):
        raise NmeaGarbageError(f"not printable ASCII: {shown}")
    star = line.find(b"*")
    checksum = line[star + 1 :] if star >= 0 else b""
    if not line.startswith(b"$") or b"$" in line[1:]:
        if b"$" in line or (len(checksum) == 2 and set(checksum) <= _HEX):
            raise NmeaTruncatedError(f"part of a sentence: {shown}")
        raise NmeaGarbageError(f"not an NMEA sentence: {shown}")
    if star < 0 or (len(checksum) < 2 and set(checksum) <= _HEX):
        raise NmeaTruncatedError(f"sentence cut off before its checksum: {shown}")
    if len(checksum) != 2 or not set(checksum) <= _HEX:
        raise NmeaGarbageError(f"malformed checksum field: {shown}")
    body = line[1:star].decode("ascii")
    if calc_checksum(body) != checksum.decode("ascii").upper():
        raise NmeaChecksumError(f"checksum mismatch: {shown}")
    header = body.split(",", 1)[0]
    if not _HEADER.fullmatch(header):
        raise NmeaGarbageError(f"malformed sentence header {header!r}: {shown}")
    try:
        message = NMEAReader.parse(line, validate=VALCKSUM)
    except Exception as e:
        # Not only its own NMEA*Error: on odd fields pynmeagps also lets IndexError, ValueError
        # and the like escape (found by the property tests). Input from a wire must not crash
        # the receiver, whatever the library does with it.
        raise NmeaGarbageError(f"unreadable {header} sentence ({e}): {shown}") from e
    talker = header[:1] if header.startswith("P") else header[:2]
    if message is None:  # well formed, of a kind pynmeagps does not know
        return NmeaSentence(talker, header[len(talker) :], {})
    kind: str = message.msgID
    extract = _EXTRACTORS.get(kind)
    return NmeaSentence(talker, kind, extract(message) if extract else {})


def _shown(line: bytes) -> str:
    """*line* for a message: printable, and short enough for a log line."""
    text = repr(line[:100])
    return text + "…" if len(line) > 100 else text


def _number(message: Any, name: str) -> float | None:
    # pynmeagps leaves fields it could not convert (empty, malformed) as strings.
    value = getattr(message, name, None)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _integer(message: Any, name: str) -> int | None:
    value = getattr(message, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _put(
    signals: dict[str, float | int], name: str, value: float | None, lo: float, hi: float
) -> None:
    # A field outside its physical range is corrupt even under a good checksum: left out.
    if value is not None and lo <= value <= hi:
        signals[name] = value


def _position(message: Any, signals: dict[str, float | int]) -> None:
    latitude, longitude = _number(message, "lat"), _number(message, "lon")
    # Both or neither: half a position is no position.
    if latitude is None or longitude is None:
        return
    if abs(latitude) <= 90 and abs(longitude) <= 180:
        signals["latitude"] = latitude
        signals["longitude"] = longitude


def _rmc(message: Any) -> Signals:
    signals: dict[str, float | int] = {}
    status = getattr(message, "status", "")
    # NMEA 2.3+ adds a mode; "N" (no fix) under status "A" is contradictory: trust the mode.
    if status == "V" or (status == "A" and getattr(message, "posMode", "") == "N"):
        signals["fix"] = 0
        return signals
    if status != "A":
        return signals  # no status at all: this sentence says nothing we can trust
    signals["fix"] = 1
    _position(message, signals)
    knots = _number(message, "spd")
    _put(signals, "speed", None if knots is None else knots * _KNOTS_TO_KMH, 0.0, 2000.0)
    _put(signals, "heading", _number(message, "cog"), 0.0, 360.0)
    date, clock = getattr(message, "date", None), getattr(message, "time", None)
    if isinstance(date, dt.date) and isinstance(clock, dt.time):
        if date.year < 1980:
            # Two-digit years: pynmeagps reads 69..99 as 1969..1999, but no GNSS date precedes
            # the GPS epoch (1980); 69..79 are 2069..2079.
            date = date.replace(year=date.year + 100)
        stamp = dt.datetime.combine(date, clock, tzinfo=dt.UTC)
        signals["utc"] = stamp.timestamp()
    return signals


def _gga(message: Any) -> Signals:
    signals: dict[str, float | int] = {}
    quality = _integer(message, "quality")
    if quality is None or quality < 0:
        return signals
    signals["fix_quality"] = quality
    # NMEA: 0 is "fix not available"; every other quality (GPS, DGPS, RTK, estimated…) is one.
    signals["fix"] = int(quality != 0)
    satellites = _integer(message, "numSV")
    if satellites is not None and satellites >= 0:
        signals["satellites"] = satellites
    if quality != 0:
        _position(message, signals)
        _put(signals, "altitude", _number(message, "alt"), -1e5, 1e6)
        _put(signals, "hdop", _number(message, "HDOP"), 0.0, 1e3)
    return signals


def _gsa(message: Any) -> Signals:
    signals: dict[str, float | int] = {}
    mode = _integer(message, "navMode")  # 1 no fix, 2 2D, 3 3D
    if mode not in (1, 2, 3):
        return signals
    signals["fix"] = int(mode != 1)
    if mode != 1:
        for field, name in (("PDOP", "pdop"), ("HDOP", "hdop"), ("VDOP", "vdop")):
            _put(signals, name, _number(message, field), 0.0, 1e3)
    return signals


def _vtg(message: Any) -> Signals:
    signals: dict[str, float | int] = {}
    mode = getattr(message, "posMode", "")  # absent before NMEA 2.3
    if mode == "N":
        signals["fix"] = 0
        return signals
    if isinstance(mode, str) and len(mode) == 1 and mode.isalpha():
        signals["fix"] = 1
    kmh = _number(message, "sogk")
    if kmh is None:
        knots = _number(message, "sogn")
        kmh = None if knots is None else knots * _KNOTS_TO_KMH
    _put(signals, "speed", kmh, 0.0, 2000.0)
    _put(signals, "heading", _number(message, "cogt"), 0.0, 360.0)
    return signals


_EXTRACTORS: Final = {"RMC": _rmc, "GGA": _gga, "GSA": _gsa, "VTG": _vtg}


class GnssReceiver(SerialDevice[GnssUpdate]):
    """An NMEA GNSS receiver on a serial port, as an async stream of :class:`GnssUpdate`.

    ``async for`` yields :class:`GnssUpdate` and :class:`~agent.serial_device.StateChange`
    items (states as in :class:`GnssHealth`). Garbage, truncated lines and bad checksums are
    counted and skipped. No bytes for ``silence_timeout_s`` means state ``"silent"`` and the
    port is reopened; a port that fails or vanishes (unplugged USB, a re-pointed symlink) is
    reopened with ``backoff`` until it returns. The state is ``"ok"`` while the last sentence
    that told whether there is a fix said yes and did so within ``fix_timeout_s``.
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 9600,
        silence_timeout_s: float = 5.0,
        fix_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        max_pending: int = 256,
    ) -> None:
        super().__init__(
            port,
            baudrate=baudrate,
            device="GNSS receiver",
            backoff=backoff,
            max_pending=max_pending,
        )
        if not (math.isfinite(silence_timeout_s) and silence_timeout_s > 0):
            raise UsageError(f"silence_timeout_s of GNSS port {port} must be a number > 0")
        if not (math.isfinite(fix_timeout_s) and fix_timeout_s > 0):
            raise UsageError(f"fix_timeout_s of GNSS port {port} must be a number > 0")
        self.silence_timeout_s = silence_timeout_s
        self.fix_timeout_s = fix_timeout_s
        self._sentences = 0
        self._bad_checksum = 0
        self._garbage = 0
        self._truncated = 0
        self._has_fix = False
        self._last_fix: float | None = None
        self._last_rejected = ""

    @property
    def health(self) -> GnssHealth:
        """The receiver's state and counters now."""
        return GnssHealth(
            port=self.port,
            state=self.state,
            since=self.state_since,
            sentences=self._sentences,
            bad_checksum=self._bad_checksum,
            garbage=self._garbage,
            truncated=self._truncated,
            reopens=self.reopens,
            dropped=self.dropped,
            last_fix_time=self._last_fix,
            last_error=self.last_error,
            last_rejected=self._last_rejected,
        )

    async def _session(self, link: SerialLink) -> None:
        while True:
            line = await link.readline(idle_timeout=self.silence_timeout_s)
            self._take(line.time, line.data)

    def _take(self, received: float, data: bytes) -> None:
        try:
            sentence = parse_sentence(data)
        except NmeaError as e:
            if isinstance(e, NmeaChecksumError):
                self._bad_checksum += 1
            elif isinstance(e, NmeaTruncatedError):
                self._truncated += 1
            else:
                self._garbage += 1
            self._last_rejected = str(e)
            self._judge(received)
            return
        self._sentences += 1
        fix = sentence.signals.get("fix")
        if fix is not None:
            self._has_fix = fix == 1
            if self._has_fix:
                self._last_fix = received
        self._judge(received)
        if sentence.signals:
            self._emit(GnssUpdate(received, sentence.signals, sentence.kind))

    def _judge(self, now: float) -> None:
        # Any line, even garbage, proves the receiver talks: it is not silent.
        if self._has_fix and self._last_fix is not None:
            if now - self._last_fix <= self.fix_timeout_s:
                self._set_state("ok", f"GNSS receiver on {self.port} has a valid fix")
                return
            reason = f"no valid fix reported for {now - self._last_fix:.0f} s"
        else:
            reason = "the receiver reports no valid fix"
        self._set_state("no_fix", f"GNSS receiver on {self.port}: {reason}")

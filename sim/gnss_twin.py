"""A simulated GNSS receiver on a pseudo-terminal: NMEA 0183 RMC, VTG, GGA and GSA sentences.

Standalone, it drives its own vehicle through a scenario::

    async with GnssTwin.standalone("city", seed=1, speed=1.0, link="/tmp/gnss0") as gnss:
        print(gnss.path)      # open with pyserial and read NMEA lines
        await asyncio.sleep(60)

Beside the CAN traffic it reads the very :class:`~sim.vehicle.VehicleModel` the
:class:`~sim.traffic.TrafficGenerator` steps, so that the GNSS speed and the CAN speed agree::

    generator = TrafficGenerator(buses, model)
    async with GnssTwin(generator.model) as gnss, SimulationRunner(generator, sinks) as runner:
        await runner.run()

Each epoch (``rate_hz`` times a second, 1–10 Hz) emits RMC, VTG, GGA and GSA (u-blox order)
with the talker ``GN`` or ``GP``, built with pynmeagps. Position, course and altitude come from
the source's ``latitude_deg``, ``longitude_deg``, ``heading_deg``, ``altitude_m`` and
``speed_kph``; ``gnss_fix`` (0 none, 1 2D, 2 3D, 3 DGPS), ``gnss_satellites`` and ``gnss_hdop``
are used when the source has them. UTC time and date come from *clock* (inject one in tests).

Faults (:class:`GnssFaults`), all deterministic for a *seed*: each sentence may be replaced by a
garbage line (random bytes, no ``$``), cut short (no checksum; ended with CRLF as when a receiver
resets mid-sentence) or sent with a wrong checksum; during ``no_fix`` windows the receiver has no
fix (RMC status ``V``, GGA quality 0, no position); during ``silent`` windows it sends nothing.
Windows are in seconds since the twin started, counted in epochs (epoch *n* is at
``n / rate_hz``), so the same settings give the same output on a loaded machine.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from pynmeagps import GET, NMEAMessage

from sim.pty_twin import DEFAULT_MAX_PENDING, PtyTwin, TwinConfigError
from sim.scenario import Scenario, load_scenario
from sim.vehicle import VehicleModel

__all__ = ["GnssFaults", "GnssTwin", "Interval", "PositionSource", "parse_interval"]

MAX_RATE_HZ: Final = 10.0
_KPH_PER_KNOT: Final = 1.852
# PRNs reported as used in GSA, first gnss_satellites of them (at most 12 fit).
_PRNS: Final = (2, 5, 7, 9, 13, 15, 18, 20, 24, 27, 29, 30)
_GARBAGE_BYTES: Final = bytes(b for b in range(256) if b not in b"$\r\n")


class PositionSource(Protocol):
    """Where the receiver is: ``values()`` maps ``latitude_deg``, ``longitude_deg``,
    ``heading_deg``, ``altitude_m`` and ``speed_kph`` (and optionally ``gnss_fix``,
    ``gnss_satellites``, ``gnss_hdop``) to numbers, as :meth:`VehicleModel.values` does."""

    def values(self) -> Mapping[str, float]:
        """The current quantities."""
        ...


@dataclass(frozen=True, slots=True)
class Interval:
    """Seconds ``[start_s, end_s)`` since the twin started."""

    start_s: float
    end_s: float

    def __post_init__(self) -> None:
        if not (0 <= self.start_s < self.end_s) or math.isinf(self.end_s):
            raise TwinConfigError(
                f"time window {self.start_s:g}-{self.end_s:g}: write START-END in seconds "
                "with 0 ≤ START < END"
            )

    def __contains__(self, t: float) -> bool:
        return self.start_s <= t < self.end_s


def parse_interval(text: str) -> Interval:
    """``"10-20"`` (seconds) as an :class:`Interval`; :class:`TwinConfigError` if malformed."""
    start, sep, end = text.partition("-")
    try:
        if not sep:
            raise ValueError
        return Interval(float(start), float(end))
    except ValueError:
        raise TwinConfigError(
            f"time window {text!r}: write START-END in seconds, e.g. 10-20"
        ) from None


@dataclass(frozen=True, slots=True)
class GnssFaults:
    """What goes wrong, and when (see the module docstring).

    ``garbage``, ``truncated`` and ``bad_checksum`` are probabilities per sentence (their sum at
    most 1); ``no_fix`` and ``silent`` are time windows.
    """

    garbage: float = 0.0
    truncated: float = 0.0
    bad_checksum: float = 0.0
    no_fix: tuple[Interval, ...] = ()
    silent: tuple[Interval, ...] = ()

    def __post_init__(self) -> None:
        for name in ("garbage", "truncated", "bad_checksum"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise TwinConfigError(f"{name} probability must be between 0 and 1, got {p}")
        total = self.garbage + self.truncated + self.bad_checksum
        if total > 1.0 + 1e-9:
            raise TwinConfigError(
                f"garbage + truncated + bad_checksum probabilities add up to {total:g}; "
                "they are shares of the sentences, so at most 1"
            )


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class GnssTwin(PtyTwin):
    """A GNSS receiver's serial port (see the module docstring).

    * *source*: what :meth:`PositionSource.values` says; read, never stepped (use
      :meth:`standalone` for a twin that drives its own vehicle).
    * *rate_hz*: epochs per second, 0 < rate ≤ 10; *talker*: ``"GN"`` or ``"GP"``.
    * *faults*, *seed*: injected faults and the seed that makes them reproducible.
    * *clock*: returns the current UTC time (an aware or naive-UTC datetime).
    * *link*, *max_pending*: as for :class:`~sim.pty_twin.PtyTwin`.
    """

    def __init__(
        self,
        source: PositionSource,
        *,
        rate_hz: float = 1.0,
        talker: Literal["GN", "GP"] = "GN",
        faults: GnssFaults | None = None,
        seed: int = 0,
        clock: Callable[[], dt.datetime] = _utc_now,
        link: str | os.PathLike[str] | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        super().__init__(link=link, max_pending=max_pending)
        if not 0 < rate_hz <= MAX_RATE_HZ:
            raise TwinConfigError(f"rate must be above 0 and at most 10 Hz, got {rate_hz:g}")
        if talker not in ("GN", "GP"):
            raise TwinConfigError(f"talker must be GN or GP, got {talker!r}")
        self.source = source
        self.rate_hz = rate_hz
        self.talker = talker
        self.faults = faults or GnssFaults()
        self.seed = seed
        self.clock = clock
        self.epochs = 0  # epochs elapsed (silent ones included)
        self.sentences = 0  # sentence slots sent, faulty ones included
        self._rng = random.Random(f"gnss:{seed}")
        self._drive: tuple[VehicleModel, float] | None = None

    @classmethod
    def standalone(
        cls,
        scenario: str | os.PathLike[str] | Scenario = "city",
        *,
        seed: int = 0,
        speed: float = 1.0,
        **options: Any,
    ) -> GnssTwin:
        """A twin that drives its own :class:`VehicleModel` through *scenario* (a packaged name,
        a TOML file or a :class:`Scenario`), *speed* times faster than real time. The model is
        stepped by ``speed / rate_hz`` seconds per epoch, so its path is reproducible. Other
        keyword arguments are the constructor's."""
        if not 0 < speed < math.inf:
            raise TwinConfigError(f"speed must be a positive number, got {speed:g}")
        if not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario)
        model = VehicleModel(scenario, seed=seed)
        twin = cls(model, seed=seed, **options)
        twin._drive = (model, speed)
        return twin

    async def serve(self) -> None:
        """Emit one epoch of sentences every ``1 / rate_hz`` seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        period = 1.0 / self.rate_hz
        while True:
            self.send_epoch()
            # Epoch n leaves at start + n·period; a late loop catches up instead of drifting.
            delay = start + self.epochs * period - loop.time()
            await asyncio.sleep(max(delay, 0.0))

    def send_epoch(self) -> None:
        """Send the sentences of the next epoch now (what :meth:`serve` does each period); a
        standalone twin first drives its vehicle on to the epoch's time."""
        if self._drive is not None and self.epochs > 0:
            model, speed = self._drive
            model.step(speed / self.rate_hz)
        t = self.epochs / self.rate_hz
        self.epochs += 1
        if any(t in window for window in self.faults.silent):
            return
        values = self.source.values()
        fix = not any(t in window for window in self.faults.no_fix)
        lines = [self._with_faults(s) for s in self.epoch_sentences(values, self.clock(), fix)]
        self.sentences += len(lines)
        self.send(b"".join(lines))

    def epoch_sentences(
        self, values: Mapping[str, float], now: dt.datetime, fix: bool = True
    ) -> list[bytes]:
        """The epoch's RMC, VTG, GGA and GSA sentences for *values* at UTC *now*, unfaulted."""
        if now.tzinfo is not None:
            now = now.astimezone(dt.UTC)
        when = now.time().replace(tzinfo=None, microsecond=now.microsecond // 10_000 * 10_000)
        quality = int(values.get("gnss_fix", 2.0))
        if not fix:
            quality = 0
        talker = self.talker
        if quality == 0:
            return [_serialize(m) for m in _no_fix_messages(talker, when, now.date())]
        lat = values["latitude_deg"]
        lon = values["longitude_deg"]
        kph = max(values["speed_kph"], 0.0)
        course = round(values["heading_deg"] % 360.0, 2)
        satellites = max(0, min(int(values.get("gnss_satellites", 10.0)), 99))
        hdop = round(values.get("gnss_hdop", 0.9), 1)
        vdop = round(hdop * 1.4, 1)
        pdop = round(math.hypot(hdop, vdop), 1)
        mode = "D" if quality >= 3 else "A"
        svids = {f"svid_{i + 1:02d}": (_PRNS[i] if i < satellites else "") for i in range(12)}
        rmc = NMEAMessage(
            talker,
            "RMC",
            GET,
            time=when,
            status="A",
            lat=lat,
            lon=lon,
            spd=round(kph / _KPH_PER_KNOT, 3),
            cog=course,
            date=now.date(),
            mv="",
            mvEW="",
            posMode=mode,
            navStatus="V",
        )
        vtg = NMEAMessage(
            talker,
            "VTG",
            GET,
            cogt=course,
            cogtUnit="T",
            cogm="",
            cogmUnit="M",
            sogn=round(kph / _KPH_PER_KNOT, 3),
            sognUnit="N",
            sogk=round(kph, 2),
            sogkUnit="K",
            posMode=mode,
        )
        gga = NMEAMessage(
            talker,
            "GGA",
            GET,
            time=when,
            lat=lat,
            lon=lon,
            quality=2 if quality >= 3 else 1,
            numSV=satellites,
            HDOP=hdop,
            alt=round(values["altitude_m"], 1),
            altUnit="M",
            sep=0.0,
            sepUnit="M",
            diffAge="",
            diffStation="",
        )
        gsa = NMEAMessage(
            talker,
            "GSA",
            GET,
            opMode="A",
            navMode=2 if quality == 1 else 3,
            **svids,
            PDOP=pdop,
            HDOP=hdop,
            VDOP=vdop,
            systemId=1,
        )
        return [_serialize(m) for m in (rmc, vtg, gga, gsa)]

    def _with_faults(self, sentence: bytes) -> bytes:
        faults = self.faults
        rng = self._rng
        u = rng.random()
        if u < faults.garbage:
            length = rng.randint(8, 80)
            return bytes(rng.choices(_GARBAGE_BYTES, k=length)) + b"\r\n"
        u -= faults.garbage
        if u < faults.truncated:
            # Cut before the checksum's '*', so that no checksum survives.
            star = sentence.rindex(b"*")
            return sentence[: rng.randint(1, star)] + b"\r\n"
        u -= faults.truncated
        if u < faults.bad_checksum:
            star = sentence.rindex(b"*")
            good = int(sentence[star + 1 : star + 3], 16)
            bad = good ^ rng.randint(1, 255)
            return sentence[: star + 1] + f"{bad:02X}".encode("ascii") + b"\r\n"
        return sentence


def _no_fix_messages(talker: str, when: dt.time, date: dt.date) -> Iterable[NMEAMessage]:
    empty_svids = {f"svid_{i:02d}": "" for i in range(1, 13)}
    yield NMEAMessage(
        talker,
        "RMC",
        GET,
        time=when,
        status="V",
        lat="",
        NS="",
        lon="",
        EW="",
        spd="",
        cog="",
        date=date,
        mv="",
        mvEW="",
        posMode="N",
        navStatus="V",
    )
    yield NMEAMessage(
        talker,
        "VTG",
        GET,
        cogt="",
        cogtUnit="T",
        cogm="",
        cogmUnit="M",
        sogn="",
        sognUnit="N",
        sogk="",
        sogkUnit="K",
        posMode="N",
    )
    yield NMEAMessage(
        talker,
        "GGA",
        GET,
        time=when,
        lat="",
        NS="",
        lon="",
        EW="",
        quality=0,
        numSV=0,
        HDOP="",
        alt="",
        altUnit="",
        sep="",
        sepUnit="",
        diffAge="",
        diffStation="",
    )
    yield NMEAMessage(
        talker,
        "GSA",
        GET,
        opMode="A",
        navMode=1,
        **empty_svids,
        PDOP=99.99,
        HDOP=99.99,
        VDOP=99.99,
        systemId=1,
    )


def _serialize(message: NMEAMessage) -> bytes:
    data: bytes = message.serialize()
    return data

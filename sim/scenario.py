"""Driving scenarios for the virtual vehicle: a small TOML format, loaded and validated once.

A scenario is a list of *phases* played one after another (and repeated if ``loop = true``).
Each phase lasts ``duration_s`` seconds and sets *targets*; the physics in :mod:`sim.vehicle`
moves the vehicle towards them within its limits (a phase that asks for 100 km/h from a stop
reaches it only if it is long enough). Anything a phase does not mention takes its default, not
the previous phase's value, so every phase reads on its own. After the last phase of a scenario
without ``loop`` the vehicle holds that phase's targets for ever.

Format (every key optional unless marked *required*)::

    name = "city"                       # defaults to the file name
    description = "Stop-and-go commute"
    loop = true                         # repeat the phases (default false)

    [initial]                           # conditions at t = 0
    soc_pct = 78.0                      # battery state of charge, 0–100 (default 80)
    soh_pct = 96.0                      # battery state of health, 50–100 (default 96)
    battery_temp_c = 24.0               # -30–60 (default 25)
    ambient_c = 17.0                    # outside air, -40–50 (default 20)
    cabin_c = 17.0                      # -40–70 (default: ambient_c)
    odometer_km = 12480.0               # ≥ 0 (default 0)
    latitude_deg = 48.137               # start of the GNSS track (default Munich)
    longitude_deg = 11.575
    heading_deg = 90.0                  # 0 = north, clockwise (default 0)
    vin = "TBXEV5M20R0000001"           # 17 characters, no I, O or Q

    [[phase]]                           # one table per phase, in order
    name = "pull away"                  # free text, shown in status views
    duration_s = 25                     # required, 0 < d ≤ 86400
    target_speed_kph = 40               # 0–250 (default 0; ≤ 30 in reverse)
    accel_limit_mps2 = 1.8              # 0.1–6 (default 2.0)
    decel_limit_mps2 = 2.5              # 0.1–10 (default 3.0)
    gear = "D"                          # "P", "R", "N", "D" (default: D to drive, else stay)
    drive_mode = "normal"               # "eco", "normal", "sport", "snow"
    grade_pct = 0.0                     # road slope, -20–20 (uphill positive)
    doors_open = ["fl"]                 # any of "fl", "fr", "rl", "rr", "trunk", "hood"
    locked = false                      # default: auto-lock above 15 km/h, unlock when a door opens
    lights = "low"                      # "off", "parking", "low", "high"
    indicator = "left"                  # "off", "left", "right", "hazard" (default: from turn)
    wipers = "off"                      # "off", "interval", "low", "high"
    belts = ["driver"]                  # fastened: "driver", "passenger", "rl", "rm", "rr"
    turn = { steering_deg = 90 }        # steering-wheel angle, -720–720, positive = left
    charging = { power_kw = 50, target_soc_pct = 90 }   # 0.5–350 kW; AC up to 22 kW
    hvac = { setpoint_c = 21, fan = 3, ac = true }      # 15–30.5 °C, fan 0–7 (default: off)
    acc = { set_speed_kph = 120, lead_distance_m = 60, time_gap = 2 }  # adaptive cruise on
    lane_keep = true                    # lane keeping assist active
    aeb = false                         # automatic emergency braking event in this phase

With ``acc`` and no ``target_speed_kph`` the target is the set speed. A ``charging`` phase brakes
to a stop first, then engages P, plugs in and charges with a taper above 80 % until
``target_soc_pct`` (default 100).

Unknown keys, wrong types and out-of-range values are errors (:class:`sim.errors.ScenarioError`)
that name the file, the key (``phase[3].target_speed_kph``) and, where it can be found, the line.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from agent.errors import describe_toml_error
from agent.errors import kind_of_value as _kind
from agent.toml_lines import line_of, split_dotted_key
from sim.errors import ScenarioError

__all__ = [
    "DOORS",
    "DRIVE_MODES",
    "GEARS",
    "INDICATORS",
    "LIGHTS",
    "SEATS",
    "WIPERS",
    "Acc",
    "Charging",
    "Hvac",
    "InitialConditions",
    "Phase",
    "Scenario",
    "Turn",
    "available_scenarios",
    "load_scenario",
    "parse_scenario",
]

#: Gear letters and the numbers the model and the DBC use for them.
GEARS: Mapping[str, int] = {"P": 0, "R": 1, "N": 2, "D": 3}
DOORS = ("fl", "fr", "rl", "rr", "trunk", "hood")
SEATS = ("driver", "passenger", "rl", "rm", "rr")
LIGHTS = ("off", "parking", "low", "high")
INDICATORS = ("off", "left", "right", "hazard")
WIPERS = ("off", "interval", "low", "high")
DRIVE_MODES = ("eco", "normal", "sport", "snow")

_VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
_MAX_PHASE_S = 86_400.0


@dataclass(frozen=True)
class Turn:
    """Hold the steering wheel at ``steering_deg`` (positive = left) for the phase."""

    steering_deg: float


@dataclass(frozen=True)
class Charging:
    """Charge at up to ``power_kw`` (DC above 22 kW) until ``target_soc_pct``."""

    power_kw: float
    target_soc_pct: float = 100.0


@dataclass(frozen=True)
class Hvac:
    """Climate control on: cabin towards ``setpoint_c`` with fan level ``fan`` (0–7)."""

    setpoint_c: float = 21.0
    fan: int = 3
    ac: bool = True


@dataclass(frozen=True)
class Acc:
    """Adaptive cruise control engaged; ``lead_distance_m`` ``None`` means no lead vehicle."""

    set_speed_kph: float
    lead_distance_m: float | None = None
    time_gap: int = 2


@dataclass(frozen=True)
class Phase:
    """One stretch of a scenario: targets held for ``duration_s`` seconds."""

    duration_s: float
    name: str = ""
    target_speed_kph: float = 0.0
    accel_limit_mps2: float = 2.0
    decel_limit_mps2: float = 3.0
    gear: str | None = None
    drive_mode: str = "normal"
    grade_pct: float = 0.0
    doors_open: frozenset[str] = frozenset()
    locked: bool | None = None
    lights: str = "off"
    indicator: str | None = None
    wipers: str = "off"
    belts: frozenset[str] = frozenset({"driver"})
    turn: Turn | None = None
    charging: Charging | None = None
    hvac: Hvac | None = None
    acc: Acc | None = None
    lane_keep: bool = False
    aeb: bool = False


@dataclass(frozen=True)
class InitialConditions:
    """The vehicle's state at t = 0."""

    soc_pct: float = 80.0
    soh_pct: float = 96.0
    battery_temp_c: float = 25.0
    ambient_c: float = 20.0
    cabin_c: float | None = None
    odometer_km: float = 0.0
    latitude_deg: float = 48.137
    longitude_deg: float = 11.575
    heading_deg: float = 0.0
    vin: str = "TBXEV5M20R0000001"


@dataclass(frozen=True)
class Scenario:
    """A validated scenario: phases, initial conditions and whether it repeats."""

    name: str
    phases: tuple[Phase, ...]
    initial: InitialConditions = field(default_factory=InitialConditions)
    loop: bool = False
    description: str = ""
    source: str = "<string>"

    @property
    def duration_s(self) -> float:
        """Length of one pass through all phases."""
        return sum(p.duration_s for p in self.phases)

    def phase_at(self, t: float) -> tuple[int, Phase, float]:
        """The phase active at time *t*: ``(index, phase, seconds into the phase)``.

        Past the end of a non-looping scenario the last phase stays active (its elapsed time
        keeps growing).
        """
        total = self.duration_s
        if self.loop and t >= total:
            t = math.fmod(t, total)
        start = 0.0
        for i, phase in enumerate(self.phases):
            if t < start + phase.duration_s:
                return i, phase, max(0.0, t - start)
            start += phase.duration_s
        last = len(self.phases) - 1
        return last, self.phases[last], t - (start - self.phases[last].duration_s)


# ---------------------------------------------------------------------------------------------
# Loading


def available_scenarios() -> list[str]:
    """Names of the scenarios shipped with the package (``city``, ``highway``, …)."""
    folder = resources.files("sim") / "scenarios"
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_scenario(name_or_path: str | os.PathLike[str]) -> Scenario:
    """Load a scenario by packaged name (``"city"``) or from a TOML file path.

    A bare name (no path separator, no ``.toml`` suffix) loads ``sim/scenarios/<name>.toml`` from
    the installed package; anything else is read as a file. Raises :class:`ScenarioError`.
    """
    text_name = os.fspath(name_or_path)
    is_path = (
        isinstance(name_or_path, os.PathLike)
        or "/" in text_name
        or os.sep in text_name
        or text_name.endswith(".toml")
    )
    if not is_path:
        resource = resources.files("sim") / "scenarios" / f"{text_name}.toml"
        if not text_name or not resource.is_file():
            names = ", ".join(available_scenarios())
            raise ScenarioError(
                text_name, None, f"no packaged scenario of that name (available: {names})"
            )
        return parse_scenario(resource.read_text(encoding="utf-8"), source=str(resource))
    try:
        text = Path(text_name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(text_name, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ScenarioError(text_name, None, f"cannot read the file: {e}") from None
    return parse_scenario(text, source=text_name)


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Parse and validate scenario TOML *text*; *source* names it in error messages."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise ScenarioError(source, None, f"TOML syntax error: {problem}", line=line) from None
    return _Builder(text, source).scenario(data)


class _Builder:
    """Validates the parsed TOML and builds the frozen dataclasses, naming keys in errors."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    # -- error helpers ------------------------------------------------------------------------

    def fail(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(self.source, key, problem, line=_locate(self.text, key))

    def table(self, value: object, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a table, not {_kind(value)}")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                raise self.fail(where, f"unknown key (expected one of: {', '.join(allowed)})")
        return value

    def number(
        self,
        tbl: Mapping[str, Any],
        key: str,
        path: str,
        default: float,
        lo: float,
        hi: float,
        *,
        lo_open: bool = False,
    ) -> float:
        if key not in tbl:
            return default
        value = tbl[key]
        full = f"{path}.{key}" if path else key
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(full, f"must be a number, not {_kind(value)}")
        v = float(value)
        if not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo):
            bracket = "(" if lo_open else "["
            raise self.fail(full, f"{value} is out of range {bracket}{lo:g}, {hi:g}]")
        return v

    def boolean(self, tbl: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
        if key not in tbl:
            return default
        value = tbl[key]
        if not isinstance(value, bool):
            raise self.fail(
                f"{path}.{key}" if path else key,
                f"must be true or false, not {_kind(value)}",
            )
        return value

    def string(self, tbl: Mapping[str, Any], key: str, path: str, default: str) -> str:
        if key not in tbl:
            return default
        value = tbl[key]
        if not isinstance(value, str):
            raise self.fail(
                f"{path}.{key}" if path else key, f"must be a string, not {_kind(value)}"
            )
        return value

    def choice(
        self,
        tbl: Mapping[str, Any],
        key: str,
        path: str,
        default: str | None,
        options: tuple[str, ...],
    ) -> str | None:
        if key not in tbl:
            return default
        value = self.string(tbl, key, path, "")
        if value not in options:
            raise self.fail(
                f"{path}.{key}", f"{value!r} is not one of {', '.join(repr(o) for o in options)}"
            )
        return value

    def names(
        self,
        tbl: Mapping[str, Any],
        key: str,
        path: str,
        default: frozenset[str],
        options: tuple[str, ...],
    ) -> frozenset[str]:
        if key not in tbl:
            return default
        value = tbl[key]
        full = f"{path}.{key}"
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(full, f"must be a list of strings, not {_kind(value)}")
        for v in value:
            if v not in options:
                raise self.fail(full, f"{v!r} is not one of {', '.join(repr(o) for o in options)}")
        return frozenset(value)

    # -- the schema ---------------------------------------------------------------------------

    def scenario(self, data: dict[str, Any]) -> Scenario:
        self.table(data, "", ("name", "description", "loop", "initial", "phase"))
        default_name = Path(self.source).stem if self.source != "<string>" else "scenario"
        name = self.string(data, "name", "", default_name)
        description = self.string(data, "description", "", "")
        loop = self.boolean(data, "loop", "", False)
        initial = self.initial(data.get("initial", {}))
        raw_phases = data.get("phase")
        if raw_phases is None:
            raise self.fail("phase", "a scenario needs at least one [[phase]]")
        if not isinstance(raw_phases, list) or not raw_phases:
            raise self.fail(
                "phase", "must be an array of tables ([[phase]]) with at least one entry"
            )
        phases = tuple(self.phase(p, i) for i, p in enumerate(raw_phases))
        return Scenario(
            name=name,
            phases=phases,
            initial=initial,
            loop=loop,
            description=description,
            source=self.source,
        )

    def initial(self, value: object) -> InitialConditions:
        p = "initial"
        tbl = self.table(
            value,
            p,
            (
                "soc_pct",
                "soh_pct",
                "battery_temp_c",
                "ambient_c",
                "cabin_c",
                "odometer_km",
                "latitude_deg",
                "longitude_deg",
                "heading_deg",
                "vin",
            ),
        )
        d = InitialConditions()
        vin = self.string(tbl, "vin", p, d.vin)
        if not _VIN_RE.fullmatch(vin):
            raise self.fail(f"{p}.vin", "must be 17 characters of A–Z and 0–9 without I, O or Q")
        ambient = self.number(tbl, "ambient_c", p, d.ambient_c, -40, 50)
        return InitialConditions(
            soc_pct=self.number(tbl, "soc_pct", p, d.soc_pct, 0, 100),
            soh_pct=self.number(tbl, "soh_pct", p, d.soh_pct, 50, 100),
            battery_temp_c=self.number(tbl, "battery_temp_c", p, d.battery_temp_c, -30, 60),
            ambient_c=ambient,
            cabin_c=self.number(tbl, "cabin_c", p, ambient, -40, 70),
            odometer_km=self.number(tbl, "odometer_km", p, d.odometer_km, 0, 1_000_000),
            latitude_deg=self.number(tbl, "latitude_deg", p, d.latitude_deg, -85, 85),
            longitude_deg=self.number(tbl, "longitude_deg", p, d.longitude_deg, -180, 180),
            heading_deg=self.number(tbl, "heading_deg", p, d.heading_deg, 0, 360),
            vin=vin,
        )

    def phase(self, value: object, index: int) -> Phase:
        p = f"phase[{index}]"
        tbl = self.table(
            value,
            p,
            (
                "name",
                "duration_s",
                "target_speed_kph",
                "accel_limit_mps2",
                "decel_limit_mps2",
                "gear",
                "drive_mode",
                "grade_pct",
                "doors_open",
                "locked",
                "lights",
                "indicator",
                "wipers",
                "belts",
                "turn",
                "charging",
                "hvac",
                "acc",
                "lane_keep",
                "aeb",
            ),
        )
        d = Phase(duration_s=1.0)
        if "duration_s" not in tbl:
            raise self.fail(f"{p}.duration_s", "is required")
        duration = self.number(tbl, "duration_s", p, 0.0, 0.0, _MAX_PHASE_S, lo_open=True)
        gear = self.choice(tbl, "gear", p, None, tuple(GEARS))

        acc: Acc | None = None
        if "acc" in tbl:
            ap = f"{p}.acc"
            at = self.table(tbl["acc"], ap, ("set_speed_kph", "lead_distance_m", "time_gap"))
            if "set_speed_kph" not in at:
                raise self.fail(f"{ap}.set_speed_kph", "is required")
            lead = self.number(at, "lead_distance_m", ap, -1.0, 0.0, 200.0)
            acc = Acc(
                set_speed_kph=self.number(at, "set_speed_kph", ap, 0.0, 30.0, 180.0),
                lead_distance_m=None if lead < 0 else lead,
                time_gap=int(self.number(at, "time_gap", ap, 2, 1, 4)),
            )

        speed_default = acc.set_speed_kph if acc is not None else 0.0
        target = self.number(tbl, "target_speed_kph", p, speed_default, 0.0, 250.0)
        if gear == "R" and target > 30.0:
            raise self.fail(f"{p}.target_speed_kph", f"{target:g} is too fast for reverse (≤ 30)")
        if gear in ("P", "N") and target > 0.0:
            raise self.fail(f"{p}.target_speed_kph", f"must be 0 in gear {gear}")

        turn: Turn | None = None
        if "turn" in tbl:
            tp = f"{p}.turn"
            tt = self.table(tbl["turn"], tp, ("steering_deg",))
            if "steering_deg" not in tt:
                raise self.fail(f"{tp}.steering_deg", "is required")
            turn = Turn(self.number(tt, "steering_deg", tp, 0.0, -720.0, 720.0))

        charging: Charging | None = None
        if "charging" in tbl:
            cp = f"{p}.charging"
            ct = self.table(tbl["charging"], cp, ("power_kw", "target_soc_pct"))
            if "power_kw" not in ct:
                raise self.fail(f"{cp}.power_kw", "is required")
            charging = Charging(
                power_kw=self.number(ct, "power_kw", cp, 0.0, 0.5, 350.0),
                target_soc_pct=self.number(ct, "target_soc_pct", cp, 100.0, 1.0, 100.0),
            )
            if target > 0.0:
                raise self.fail(f"{p}.target_speed_kph", "must be 0 while charging")
            if gear not in (None, "P"):
                raise self.fail(f"{p}.gear", "must be 'P' while charging")

        hvac: Hvac | None = None
        if "hvac" in tbl:
            hp = f"{p}.hvac"
            ht = self.table(tbl["hvac"], hp, ("setpoint_c", "fan", "ac"))
            hd = Hvac()
            fan = self.number(ht, "fan", hp, hd.fan, 0, 7)
            if fan != int(fan):
                raise self.fail(f"{hp}.fan", "must be a whole number 0–7")
            hvac = Hvac(
                setpoint_c=self.number(ht, "setpoint_c", hp, hd.setpoint_c, 15.0, 30.5),
                fan=int(fan),
                ac=self.boolean(ht, "ac", hp, hd.ac),
            )

        locked: bool | None = None
        if "locked" in tbl:
            locked = self.boolean(tbl, "locked", p, False)

        return Phase(
            duration_s=duration,
            name=self.string(tbl, "name", p, ""),
            target_speed_kph=target,
            accel_limit_mps2=self.number(tbl, "accel_limit_mps2", p, d.accel_limit_mps2, 0.1, 6.0),
            decel_limit_mps2=self.number(tbl, "decel_limit_mps2", p, d.decel_limit_mps2, 0.1, 10.0),
            gear=gear,
            drive_mode=self.choice(tbl, "drive_mode", p, d.drive_mode, DRIVE_MODES) or d.drive_mode,
            grade_pct=self.number(tbl, "grade_pct", p, 0.0, -20.0, 20.0),
            doors_open=self.names(tbl, "doors_open", p, frozenset(), DOORS),
            locked=locked,
            lights=self.choice(tbl, "lights", p, d.lights, LIGHTS) or d.lights,
            indicator=self.choice(tbl, "indicator", p, None, INDICATORS),
            wipers=self.choice(tbl, "wipers", p, d.wipers, WIPERS) or d.wipers,
            belts=self.names(tbl, "belts", p, d.belts, SEATS),
            turn=turn,
            charging=charging,
            hvac=hvac,
            acc=acc,
            lane_keep=self.boolean(tbl, "lane_keep", p, False),
            aeb=self.boolean(tbl, "aeb", p, False),
        )


def _locate(text: str, key: str) -> int | None:
    """Best-effort 1-based line of a dotted key such as ``phase[2].turn.steering_deg``.

    The line assigning the key or, in an inline table, the key holding it; never the header of
    its ``[[phase]]`` or ``[initial]`` table, where a missing key is not. ``None`` when unsure.
    """
    path = split_dotted_key(key)
    if len(path) > 1 and isinstance(path[1], int):
        table_depth = 2
    elif len(path) > 1 and path[0] == "initial":
        table_depth = 1
    else:
        table_depth = 0
    return line_of(text, path, min_depth=table_depth + 1)

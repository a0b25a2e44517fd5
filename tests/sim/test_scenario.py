"""Scenario files: the packaged ones load, and errors name the file, the key and the line."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import TboxError
from sim import Scenario, ScenarioError, SimError, load_scenario
from sim.scenario import available_scenarios, parse_scenario

MINIMAL = """
name = "mini"
[[phase]]
duration_s = 10
target_speed_kph = 30
"""


def test_packaged_scenarios_load() -> None:
    assert set(available_scenarios()) >= {"city", "highway", "charging"}
    city = load_scenario("city")
    assert isinstance(city, Scenario)
    assert city.loop and city.name == "city"
    assert len(city.phases) >= 8
    assert any(p.turn is not None for p in city.phases)
    assert any("fl" in p.doors_open for p in city.phases)
    highway = load_scenario("highway")
    assert any(p.acc is not None for p in highway.phases)
    assert max(p.target_speed_kph for p in highway.phases) >= 120
    charging = load_scenario("charging")
    assert not charging.loop
    chg = [p.charging for p in charging.phases if p.charging is not None]
    assert chg and chg[0].power_kw == 150 and chg[0].target_soc_pct == 90
    assert charging.initial.soc_pct == 18


def test_load_from_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(MINIMAL, encoding="utf-8")
    s = load_scenario(str(path))
    assert s.name == "mini" and s.source == str(path)
    assert s.phases[0].target_speed_kph == 30
    assert load_scenario(path).phases == s.phases  # os.PathLike too
    # Defaults: every phase stands on its own.
    p = s.phases[0]
    assert p.gear is None and p.lights == "off" and p.belts == frozenset({"driver"})
    assert p.accel_limit_mps2 == 2.0 and p.decel_limit_mps2 == 3.0


def test_frozen() -> None:
    s = parse_scenario(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.loop = True  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.phases[0].duration_s = 1  # type: ignore[misc]


def test_phase_at() -> None:
    s = parse_scenario(
        """
loop = true
[[phase]]
duration_s = 10
[[phase]]
duration_s = 5
target_speed_kph = 20
"""
    )
    assert s.duration_s == 15
    assert s.phase_at(0)[0] == 0
    assert s.phase_at(9.99)[0] == 0
    index, phase, elapsed = s.phase_at(12)
    assert index == 1 and phase.target_speed_kph == 20 and elapsed == pytest.approx(2)
    assert s.phase_at(15)[0] == 0  # loops
    assert s.phase_at(31)[0] == 0
    once = dataclasses.replace(s, loop=False)
    index, _, elapsed = once.phase_at(100)
    assert index == 1 and elapsed == pytest.approx(90)  # the last phase holds


def test_errors_are_sim_errors() -> None:
    assert issubclass(ScenarioError, SimError)
    assert issubclass(SimError, TboxError)  # the command line reports them in one line


@pytest.mark.parametrize(
    ("text", "key", "problem", "line"),
    [
        (
            "[[phase]]\nduration_s = 5\ntarget_speed = 30\n",
            "phase[0].target_speed",
            "unknown key",
            3,
        ),
        (
            MINIMAL + "\n[[phase]]\nduration_s = 3\ntarget_speed_kph = 400\n",
            "phase[1].target_speed_kph",
            "400 is out of range",
            9,
        ),
        ("[[phase]]\nduration_s = 0\n", "phase[0].duration_s", "out of range (0", 2),
        ("[[phase]]\ntarget_speed_kph = 5\n", "phase[0].duration_s", "is required", None),
        (
            "[[phase]]\nduration_s = 5\nlights = 'bright'\n",
            "phase[0].lights",
            "'bright' is not one of",
            3,
        ),
        (
            "[[phase]]\nduration_s = 5\ndoors_open = ['fl', 'boot']\n",
            "phase[0].doors_open",
            "'boot' is not one of",
            3,
        ),
        (
            "[[phase]]\nduration_s = 5\nturn = { steering_deg = 900 }\n",
            "phase[0].turn.steering_deg",
            "900 is out of range",
            3,
        ),
        (
            "[[phase]]\nduration_s = 5\ntarget_speed_kph = 'fast'\n",
            "phase[0].target_speed_kph",
            "must be a number, not a string",
            3,
        ),
        (
            "[[phase]]\nduration_s = 5\ntarget_speed_kph = 10\ncharging = { power_kw = 11 }\n",
            "phase[0].target_speed_kph",
            "must be 0 while charging",
            3,
        ),
        (
            "[initial]\nsoc_pct = 120\n[[phase]]\nduration_s = 5\n",
            "initial.soc_pct",
            "120 is out of range [0, 100]",
            2,
        ),
        (
            "[initial]\nvin = 'IOQ'\n[[phase]]\nduration_s = 5\n",
            "initial.vin",
            "17 characters",
            2,
        ),
        ("loop = 1\n[[phase]]\nduration_s = 5\n", "loop", "must be true or false", 1),
        ("name = 'x'\n", "phase", "at least one [[phase]]", None),
        (
            "[[phase]]\nduration_s = 5\ngear = 'R'\ntarget_speed_kph = 50\n",
            "phase[0].target_speed_kph",
            "too fast for reverse",
            4,
        ),
    ],
)
def test_errors_name_file_key_and_line(
    tmp_path: Path, text: str, key: str, problem: str, line: int | None
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    err = info.value
    assert err.source == str(path)
    assert err.key == key
    assert problem in err.problem
    assert err.line == line
    message = str(err)
    assert message.startswith(str(path) + (f":{line}: " if line else ": "))
    assert key in message and problem in message


def test_syntax_error_has_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[[phase]]\nduration_s = 5\ntarget_speed_kph = = 3\n", encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_scenario(str(path))
    assert info.value.line == 3
    assert info.value.key is None
    assert str(info.value).startswith(f"{path}:3: TOML syntax error:")


def test_missing_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(str(tmp_path / "nope.toml"))
    with pytest.raises(ScenarioError, match=r"no packaged scenario.*city.*highway"):
        load_scenario("moon-landing")


# --- untrusted text: anything parses or fails with ScenarioError -------------------------------

_KEYS = st.sampled_from(
    ["duration_s", "target_speed_kph", "gear", "lights", "doors_open", "charging", "turn", "x"]
)
_VALUES = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=3),
    st.just({"power_kw": 50}),
    st.just({"steering_deg": "left"}),
)


def _toml_value(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)
    return str(value)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.dictionaries(_KEYS, _VALUES, max_size=5), max_size=4), st.booleans())
def test_generated_scenarios_load_or_raise_scenario_error(
    phases: list[dict[str, object]], loop: bool
) -> None:
    text = f"loop = {str(loop).lower()}\n" + "".join(
        "[[phase]]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in phase.items())
        for phase in phases
    )
    try:
        scenario = parse_scenario(text, "gen.toml")
    except ScenarioError as e:
        assert "gen.toml" in str(e)
        return
    assert all(p.duration_s > 0 for p in scenario.phases)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_loads_or_raises_scenario_error(text: str) -> None:
    try:
        parse_scenario(text, "any.toml")
    except ScenarioError as e:
        assert "any.toml" in str(e)

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.schemes import Condition, SchemeError, SchemeEvaluator, parse_expression, parse_schemes
from agent.schemes.errors import ExpressionError
from agent.schemes.geofence import EARTH_RADIUS_M, Geofence, GeofenceError, parse_geofence

DEPOT = Geofence("depot", center=(48.1374, 11.5755), radius_m=300.0)
SQUARE = parse_geofence(
    {"id": "sq", "polygon": [[48.0, 11.0], [48.0, 11.1], [48.1, 11.1], [48.1, 11.0]]}
)


def metres_north(lat: float, metres: float) -> float:
    return lat + math.degrees(metres / EARTH_RADIUS_M)


def test_circle_uses_great_circle_distance() -> None:
    assert DEPOT.contains(48.1374, 11.5755)
    assert DEPOT.contains(metres_north(48.1374, 299.0), 11.5755)
    assert not DEPOT.contains(metres_north(48.1374, 301.0), 11.5755)


def test_polygon_even_odd_in_either_direction() -> None:
    reverse = Geofence("r", vertices=tuple(reversed(SQUARE.vertices)))
    for area in (SQUARE, reverse):
        assert area.contains(48.05, 11.05)
        assert not area.contains(48.05, 11.15)
        assert not area.contains(48.15, 11.05)
    # A concave "U": the notch is outside.
    u = parse_geofence(
        {"id": "u", "polygon": [[0, 0], [0, 3], [3, 3], [3, 2], [1, 2], [1, 1], [3, 1], [3, 0]]}
    )
    assert u.contains(0.5, 1.5) and u.contains(2, 0.5) and u.contains(2, 2.5)
    assert not u.contains(2, 1.5)


@pytest.mark.parametrize(
    ("table", "key", "words"),
    [
        ({"circle": {"lat": 1, "lon": 2, "radius_m": 3}}, "id", "required"),
        ({"id": "a"}, None, "exactly one of"),
        ({"id": "a", "circle": {"lat": 91, "lon": 2, "radius_m": 3}}, "circle.lat", "range"),
        ({"id": "a", "circle": {"lat": 1, "lon": 2, "radius_m": 0}}, "circle.radius_m", "more"),
        ({"id": "a", "circle": {"lat": 1, "lon": 2}}, "circle.radius_m", "required"),
        ({"id": "a", "polygon": [[0, 0], [1, 1]]}, "polygon", "3 to"),
        ({"id": "a", "polygon": [[0, 0], [1, 1], [2, "x"]]}, "polygon[2]", "number"),
        ({"id": "a", "polygon": [[0, 0], [1, 1], [2, 2]]}, "polygon", "no area"),
        ({"id": "a", "polygon": [[0, -170], [1, 170], [2, 0]]}, "polygon", "180"),
        ({"id": "a", "circle": {}, "colour": 1}, "colour", "unknown key"),
    ],
)
def test_bad_geofences_name_the_key(table: dict[str, object], key: str | None, words: str) -> None:
    with pytest.raises(GeofenceError) as info:
        parse_geofence(table)
    assert info.value.key == key
    assert words in info.value.problem


_KEYS = st.sampled_from(["id", "circle", "polygon", "lat", "lon", "radius_m"])
_JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda c: st.lists(c) | st.dictionaries(_KEYS, c),
    max_leaves=20,
)


@given(_JSONISH)
def test_untrusted_tables_raise_only_geofence_errors(table: object) -> None:
    try:
        fence = parse_geofence(table)
    except GeofenceError:
        return
    fence.contains(0.0, 0.0)


def test_inside_parses_with_default_and_explicit_position() -> None:
    e = parse_expression('inside("depot")')
    assert e.zones == {"depot"}
    assert e.signals == {"gnss:GNSS.latitude", "gnss:GNSS.longitude"}
    e = parse_expression('not inside("depot", TBOX.Lat, TBOX.Lon) and SPEED > 5')
    assert e.signals == {"TBOX.Lat", "TBOX.Lon", "SPEED"}
    for text, col, words in [
        ("inside(depot)", 8, "geofence id as a string"),
        ('inside("depot", LAT)', 20, "',' and the longitude"),
        ('inside("depot", 1, 2)', 17, "latitude signal"),
        ('inside("depot") + 1 > 0', 1, ""),
    ]:
        with pytest.raises(ExpressionError) as info:
            parse_expression(text)
        assert info.value.column == col, text
        assert words in str(info.value)


SCHEMES = """
[[scheme]]
id = "enter"
kind = "condition"
condition = 'inside("depot")'

[[scheme]]
id = "leave-square"
kind = "condition"
condition = 'not inside("sq", T.LAT, T.LON)'

[[geofence]]
id = "depot"
circle = { lat = 48.1374, lon = 11.5755, radius_m = 300 }

[[geofence]]
id = "sq"
polygon = [[48.0, 11.0], [48.0, 11.1], [48.1, 11.1], [48.1, 11.0]]
"""


def test_schemes_trigger_on_entering_and_leaving() -> None:
    enter, leave = parse_schemes(SCHEMES)
    assert isinstance(enter.collection, Condition)
    assert enter.collection.geofences == (DEPOT,)
    ev = SchemeEvaluator((enter, leave))
    out = []
    route = [
        (48.13, 11.50),
        (48.1374, 11.5755),
        (48.1375, 11.5756),
        (48.2, 11.6),
        (48.1374, 11.5755),
    ]
    for k, (lat, lon) in enumerate(route):
        t = float(k)
        out += ev.feed(t, "gnss", "GNSS", {"latitude": lat, "longitude": lon})
    assert [(r.scheme_id, r.trigger_time) for r in out] == [("enter", 1.0), ("enter", 4.0)]
    out = []
    for k, lat in enumerate([48.05, 48.05, 48.2, 48.05, 48.3]):
        out += ev.feed(10.0 + k, "can0", "T", {"LAT": lat, "LON": 11.05})
    assert [(r.scheme_id, r.trigger_time) for r in out] == [
        ("leave-square", 12.0),
        ("leave-square", 14.0),
    ]


def test_unknown_geofence_and_bad_table_errors_have_lines() -> None:
    text = SCHEMES.replace('inside("depot")', 'inside("dpot")')
    with pytest.raises(SchemeError) as info:
        parse_schemes(text, "s.toml")
    assert "s.toml:5: scheme[0].condition" in str(info.value)
    assert "no such geofence (declared: depot, sq)" in str(info.value)
    text = SCHEMES.replace("[48.1, 11.0]]", '[48.1, "x"]]')
    with pytest.raises(SchemeError) as info:
        parse_schemes(text, "s.toml")
    assert "s.toml:18: geofence[1].polygon: polygon[3]: must be a number" in str(info.value)
    text = SCHEMES + '\n[[geofence]]\nid = "sq"\ncircle = { lat = 1, lon = 1, radius_m = 1 }\n'
    with pytest.raises(SchemeError) as info:
        parse_schemes(text, "s.toml")
    assert "s.toml:21: geofence[2].id: 'sq' is declared twice" in str(info.value)

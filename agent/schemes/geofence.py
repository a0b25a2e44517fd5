"""Geofences: named areas that a condition tests the vehicle's position against.

A scheme document declares them next to its schemes, and conditions use them with
``inside("<id>")`` (see :mod:`agent.schemes.expression`)::

    [[geofence]]
    id = "depot"
    circle = { lat = 48.1374, lon = 11.5755, radius_m = 300 }

    [[geofence]]
    id = "old-town"
    polygon = [[48.139, 11.570], [48.139, 11.582], [48.133, 11.582], [48.133, 11.570]]

* ``circle``: a centre in degrees (WGS 84) and a radius in metres (great-circle distance on a
  sphere of the Earth's mean radius, which is within 0.5 % everywhere).
* ``polygon``: 3 to 1,000 vertices ``[lat, lon]`` in degrees, in order (either direction; the
  last joins the first). The test is even-odd ray casting in the latitude/longitude plane: exact
  for the edges as drawn on a plate carrée map, which for areas of a few kilometres is what one
  means. A polygon must not cross the ±180° meridian (split it in two).

A point exactly on a polygon's edge or a circle's rim may fall either way. :func:`parse_geofence`
validates a decoded table; :class:`Geofence` is the frozen model. Nothing here does I/O.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from agent.errors import kind_of_value as _kind

__all__ = ["EARTH_RADIUS_M", "MAX_VERTICES", "Geofence", "GeofenceError", "parse_geofence"]

#: The mean Earth radius (IUGG), in metres.
EARTH_RADIUS_M: Final = 6_371_008.8
#: Most vertices one polygon may have.
MAX_VERTICES: Final = 1000

_ID_RE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class GeofenceError(ValueError):
    """A geofence table is malformed: ``key`` is the offending key (None for the table)."""

    def __init__(self, key: str | None, problem: str) -> None:
        super().__init__(problem)
        self.key = key
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Geofence:
    """A named circle (``center`` + ``radius_m``) or polygon (``vertices``), in degrees."""

    id: str
    center: tuple[float, float] | None = None
    radius_m: float = 0.0
    vertices: tuple[tuple[float, float], ...] = ()

    def contains(self, lat: float, lon: float) -> bool:
        """Whether the position (degrees) is inside."""
        if self.center is not None:
            return _distance_m(self.center, (lat, lon)) <= self.radius_m
        inside = False
        vertices = self.vertices
        lat_j, lon_j = vertices[-1]
        for lat_i, lon_i in vertices:
            # Even-odd rule: count edges crossed by a ray from the point towards +longitude.
            if (lat_i > lat) != (lat_j > lat):
                crossing = lon_i + (lat - lat_i) * (lon_j - lon_i) / (lat_j - lat_i)
                if lon < crossing:
                    inside = not inside
            lat_j, lon_j = lat_i, lon_i
        return inside


def _distance_m(a: tuple[float, float], b: tuple[float, float]) -> float:
    # Haversine: well conditioned for the short distances geofences are about.
    lat1, lon1 = math.radians(a[0]), math.radians(a[1])
    lat2, lon2 = math.radians(b[0]), math.radians(b[1])
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _degrees(value: object, key: str, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GeofenceError(key, f"must be a number of degrees, not {_kind(value)}")
    if not (math.isfinite(value) and -limit <= value <= limit):
        raise GeofenceError(key, f"{value!r} is out of range (−{limit:g} … {limit:g})")
    return float(value)


def parse_geofence(table: object) -> Geofence:
    """Validate one decoded ``[[geofence]]`` table; raises :class:`GeofenceError`."""
    if not isinstance(table, Mapping):
        raise GeofenceError(None, f"must be a table, not {_kind(table)}")
    for key in table:
        if key not in ("id", "circle", "polygon", "description"):
            raise GeofenceError(
                str(key), "unknown key (expected one of: id, circle, polygon, description)"
            )
    fence_id = table.get("id")
    if fence_id is None:
        raise GeofenceError("id", "is required")
    if not isinstance(fence_id, str) or not _ID_RE.fullmatch(fence_id):
        raise GeofenceError("id", f"{fence_id!r} must be 1–64 characters of A-Z a-z 0-9 _ . : -")
    if not isinstance(table.get("description", ""), str):
        raise GeofenceError("description", "must be a string")
    if ("circle" in table) == ("polygon" in table):
        raise GeofenceError(None, "needs exactly one of circle = {…} or polygon = [[lat, lon], …]")
    if "circle" in table:
        return _circle(fence_id, table["circle"])
    return _polygon(fence_id, table["polygon"])


def _circle(fence_id: str, circle: Any) -> Geofence:
    if not isinstance(circle, Mapping):
        raise GeofenceError("circle", "must be a table { lat = …, lon = …, radius_m = … }")
    for key in circle:
        if key not in ("lat", "lon", "radius_m"):
            raise GeofenceError(f"circle.{key}", "unknown key (expected lat, lon, radius_m)")
    for key in ("lat", "lon", "radius_m"):
        if key not in circle:
            raise GeofenceError(f"circle.{key}", "is required")
    lat = _degrees(circle["lat"], "circle.lat", 90.0)
    lon = _degrees(circle["lon"], "circle.lon", 180.0)
    radius = circle["radius_m"]
    if isinstance(radius, bool) or not isinstance(radius, int | float):
        raise GeofenceError("circle.radius_m", f"must be a number of metres, not {_kind(radius)}")
    if not (math.isfinite(radius) and 0 < radius <= 20_000_000):
        raise GeofenceError("circle.radius_m", f"{radius!r} must be more than 0 m (and finite)")
    return Geofence(fence_id, center=(lat, lon), radius_m=float(radius))


def _polygon(fence_id: str, polygon: Any) -> Geofence:
    if not isinstance(polygon, list) or not 3 <= len(polygon) <= MAX_VERTICES:
        raise GeofenceError("polygon", f"must be a list of 3 to {MAX_VERTICES} vertices [lat, lon]")
    vertices: list[tuple[float, float]] = []
    for n, vertex in enumerate(polygon):
        key = f"polygon[{n}]"
        if not isinstance(vertex, list) or len(vertex) != 2:
            raise GeofenceError(key, f"must be a pair [lat, lon], not {vertex!r}")
        vertices.append((_degrees(vertex[0], key, 90.0), _degrees(vertex[1], key, 180.0)))
    lons = [lon for _, lon in vertices]
    if max(lons) - min(lons) > 180.0:
        raise GeofenceError("polygon", "spans more than 180° of longitude: split it at ±180°")
    following = vertices[1:] + vertices[:1]
    area2 = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(vertices, following, strict=True))
    if area2 == 0.0:
        raise GeofenceError("polygon", "has no area (its vertices are on one line)")
    return Geofence(fence_id, vertices=tuple(vertices))

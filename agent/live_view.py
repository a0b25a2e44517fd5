"""The live view behind ``tbox monitor``: latest values per message and signal, rates per id.

:class:`LiveView` is a pure model fed with frames and their decoded signals; rates come from the
frames' own timestamps (bus time), so a log read at full speed shows the rates it was recorded
with. :meth:`LiveView.render` turns it into a rich table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table
from rich.text import Text

# Rates are measured over windows of this much bus time; shorter windows flicker.
_RATE_WINDOW_S = 1.0


@dataclass(slots=True)
class IdStats:
    """What the view knows about one CAN id on one bus."""

    bus: str
    frame_id: int
    message: str = ""
    count: int = 0
    first_t: float = 0.0
    last_t: float = 0.0
    rate_hz: float = 0.0
    last_data: bytes = b""
    signals: dict[str, Any] = field(default_factory=dict)
    _window_t: float = 0.0
    _window_count: int = 0

    def update(self, t: float, data: bytes) -> None:
        """Count one frame seen at bus time *t*."""
        if self.count == 0:
            self.first_t = self._window_t = t
        self.count += 1
        self.last_t = t
        self.last_data = data
        span = t - self._window_t
        if span >= _RATE_WINDOW_S:
            self.rate_hz = (self.count - self._window_count) / span
            self._window_t, self._window_count = t, self.count
        elif self._window_count == 0 and t > self.first_t:
            # Before the first full window: the average so far.
            self.rate_hz = (self.count - 1) / (t - self.first_t)


class LiveView:
    """Latest decoded values and rates per (bus, id), sorted for display."""

    def __init__(self, units: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._ids: dict[tuple[str, int], IdStats] = {}
        self._units = units or {}
        self.frames = 0
        self.decoded = 0
        self.failed = 0

    def add(
        self,
        bus: str,
        frame_id: int,
        t: float,
        data: bytes,
        decoded: tuple[str, Mapping[str, Any]] | None,
    ) -> None:
        """Record one frame and, if it decoded, its message name and signal values."""
        key = (bus, frame_id)
        stats = self._ids.get(key)
        if stats is None:
            stats = self._ids[key] = IdStats(bus, frame_id)
        stats.update(t, bytes(data))
        self.frames += 1
        if decoded is not None:
            self.decoded += 1
            stats.message = decoded[0]
            stats.signals.update(decoded[1])

    @property
    def ids(self) -> list[IdStats]:
        """Every id seen, by bus then id."""
        return [self._ids[k] for k in sorted(self._ids)]

    def render(self, *, title: str = "", max_signals: int = 12) -> Table:
        """A rich table: one row per id, its latest signal values in the last column."""
        table = Table(title=title or None, expand=True, show_lines=False, title_justify="left")
        table.add_column("bus", no_wrap=True)
        table.add_column("id", justify="right", no_wrap=True)
        table.add_column("message", no_wrap=True)
        table.add_column("count", justify="right", no_wrap=True)
        table.add_column("Hz", justify="right", no_wrap=True)
        table.add_column("signals / data", ratio=1, overflow="fold")
        for s in self.ids:
            id_text = f"{s.frame_id:08X}" if s.frame_id > 0x7FF else f"{s.frame_id:03X}"
            table.add_row(
                s.bus,
                id_text,
                s.message or Text("?", style="dim"),
                str(s.count),
                f"{s.rate_hz:.1f}",
                self._signals_text(s, max_signals),
            )
        return table

    def _signals_text(self, s: IdStats, max_signals: int) -> Text:
        if not s.signals:
            return Text(s.last_data.hex(" "), style="dim")
        units = self._units.get(s.message, {})
        parts = []
        for name, value in list(s.signals.items())[:max_signals]:
            unit = units.get(name, "")
            parts.append(f"{name}={format_value(value)}{(' ' + unit) if unit else ''}")
        more = len(s.signals) - max_signals
        if more > 0:
            parts.append(f"(+{more})")
        return Text("  ".join(parts))


def format_value(value: Any) -> str:
    """A compact text for a signal value: ints as they are, floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def units_of(databases: list[Any]) -> dict[str, dict[str, str]]:
    """Signal units per message name, from cantools databases."""
    units: dict[str, dict[str, str]] = {}
    for db in databases:
        for message in db.messages:
            units[message.name] = {sig.name: sig.unit for sig in message.signals if sig.unit}
    return units

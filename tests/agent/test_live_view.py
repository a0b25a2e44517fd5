"""The live view model behind `tbox monitor`."""

from __future__ import annotations

import pytest
from rich.console import Console

from agent.live_view import LiveView, format_value


def test_rate_follows_bus_time_not_wall_time() -> None:
    view = LiveView()
    for i in range(501):  # 50 Hz for 10 s of bus time, fed instantly
        view.add("can0", 0x123, 1000.0 + i * 0.02, b"\x01", ("SPEED", {"SPEED": i}))
    (stats,) = view.ids
    assert stats.count == 501
    assert stats.rate_hz == pytest.approx(50.0, rel=0.02)
    assert stats.signals == {"SPEED": 500}
    assert stats.message == "SPEED"


def test_rate_before_first_window_is_the_running_average() -> None:
    view = LiveView()
    for i in range(5):
        view.add("can0", 1, i * 0.1, b"", None)
    assert view.ids[0].rate_hz == pytest.approx(10.0)


def test_undecoded_ids_show_their_data_and_buses_sort_apart() -> None:
    view = LiveView(units={"M": {"A": "km/h"}})
    view.add("can1", 0x10, 0.0, b"\xde\xad", None)
    view.add("can0", 0x18DAF110, 0.0, b"\x01", ("M", {"A": 1.5, "B": 2}))
    assert [(s.bus, s.frame_id) for s in view.ids] == [("can0", 0x18DAF110), ("can1", 0x10)]
    console = Console(width=200, record=True)
    console.print(view.render(title="t"))
    text = console.export_text()
    assert "18DAF110" in text and "A=1.5 km/h" in text and "B=2" in text
    assert "de ad" in text and "010" in text
    assert view.frames == 2 and view.decoded == 1


def test_many_signals_are_elided() -> None:
    view = LiveView()
    view.add("can0", 1, 0.0, b"", ("M", {f"S{i}": i for i in range(20)}))
    console = Console(width=400, record=True)
    console.print(view.render(max_signals=3))
    assert "(+17)" in console.export_text()


@pytest.mark.parametrize(
    ("value", "text"), [(1, "1"), (0.1 + 0.2, "0.3"), (123456789.0, "1.23457e+08"), ("ON", "ON")]
)
def test_format_value(value: object, text: str) -> None:
    assert format_value(value) == text

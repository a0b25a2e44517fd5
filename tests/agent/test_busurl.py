"""Bus URLs (contract C7)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.busurl import open_bus, parse_bus_url
from agent.errors import BusError, UsageError


@pytest.mark.parametrize(
    ("url", "interface", "channel", "name"),
    [
        ("socketcan://can0", "socketcan", "can0", "can0"),
        ("virtual://sim", "virtual", "sim", "sim"),
        ("socketcand://127.0.0.1:29536/can0", "socketcand", "can0", "can0"),
        ("slcan:///dev/ttyUSB0?bitrate=500000", "slcan", "/dev/ttyUSB0", "ttyUSB0"),
        ("pcan://PCAN_USBBUS1?bitrate=250000&name=body", "pcan", "PCAN_USBBUS1", "body"),
        ("kvaser://0", "kvaser", "0", "0"),
    ],
)
def test_parses_every_documented_form(url: str, interface: str, channel: str, name: str) -> None:
    spec = parse_bus_url(url)
    assert (spec.interface, spec.channel, spec.name) == (interface, channel, name)
    assert spec.url == url


def test_common_options_are_typed_and_the_rest_pass_through() -> None:
    spec = parse_bus_url(
        "socketcan://can1?fd=true&data_bitrate=2000000&bitrate=500000&receive_own_messages=1&x=abc"
    )
    assert spec.fd is True
    assert spec.bitrate == 500_000
    assert spec.data_bitrate == 2_000_000
    assert dict(spec.extra) == {"receive_own_messages": True, "x": "abc"}


def test_socketcand_carries_host_and_port() -> None:
    spec = parse_bus_url("socketcand://localhost:1234/vcan0")
    assert (spec.host, spec.port, spec.channel) == ("localhost", 1234, "vcan0")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("can0", "no scheme"),
        ("socketcand://host/can0", "HOST:PORT"),
        ("socketcand://host:1234", "HOST:PORT"),
        ("socketcand://host:notaport/can0", "port"),
        ("socketcan://", "no channel"),
        ("socketcan://can0?bitrate=fast", "bitrate='fast'"),
        ("socketcan://can0?bitrate=-5", "positive"),
        ("socketcan://can0?fd=maybe", "fd='maybe'"),
        ("socketcan://can0?bitrate=1&bitrate=2", "2 times"),
    ],
)
def test_bad_urls_name_the_fault(url: str, fragment: str) -> None:
    with pytest.raises(UsageError) as excinfo:
        parse_bus_url(url)
    assert fragment in str(excinfo.value)
    assert url in str(excinfo.value)


@given(st.text(max_size=80))
def test_any_text_parses_or_raises_usage_error(text: str) -> None:
    try:
        spec = parse_bus_url(text)
    except UsageError:
        return
    assert spec.interface and spec.channel


def test_open_virtual_bus_round_trip() -> None:
    import can

    spec = parse_bus_url("virtual://busurl-test")
    rx = open_bus(spec)
    tx = open_bus(spec)
    try:
        tx.send(can.Message(arbitration_id=0x123, data=b"\x01\x02"))
        msg = rx.recv(1.0)
        assert msg is not None and msg.arbitration_id == 0x123
    finally:
        rx.shutdown()
        tx.shutdown()


def test_open_unknown_interface_is_a_bus_error() -> None:
    with pytest.raises(BusError, match="nosuchiface://x"):
        open_bus(parse_bus_url("nosuchiface://x"))


def test_socketcand_refused_fails_fast() -> None:
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(BusError, match=r"refused|cannot"):
        open_bus(parse_bus_url(f"socketcand://127.0.0.1:{port}/can0"))
    # python-can alone retries for 10 s; the agent must notice at once and back off itself.
    assert time.monotonic() - start < 5

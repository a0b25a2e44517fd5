"""Bus URLs (contract C7): one string names a CAN bus and how to open it.

``socketcan://can0``, ``virtual://<name>``, ``socketcand://HOST:PORT/<channel>``,
``slcan:///dev/ttyUSB0?bitrate=500000`` and ``<python-can interface>://<channel>?<key>=<value>…``.
Options common to all: ``bitrate``, ``fd``, ``data_bitrate``; ``name`` overrides the bus name that
frames carry (by default the channel, e.g. ``can0``). Every other query key is passed to the
python-can interface, with numbers and booleans converted.

Parsing is pure (:func:`parse_bus_url`); :func:`open_bus` is the one place that touches python-can.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.errors import BusError, UsageError

_BOOL_TRUE = {"1", "true", "yes", "on"}
_BOOL_FALSE = {"0", "false", "no", "off"}
_COMMON_KEYS = {"bitrate", "fd", "data_bitrate", "name"}


@dataclass(frozen=True, slots=True)
class BusSpec:
    """A parsed bus URL: which python-can interface, which channel, which options."""

    url: str
    interface: str
    channel: str
    name: str
    bitrate: int | None = None
    fd: bool = False
    data_bitrate: int | None = None
    host: str | None = None
    port: int | None = None
    extra: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    @property
    def is_virtual(self) -> bool:
        """True for the in-process python-can ``virtual`` bus."""
        return self.interface == "virtual"


def _convert(value: str) -> str | int | float | bool:
    low = value.lower()
    if low in _BOOL_TRUE:
        return True
    if low in _BOOL_FALSE:
        return False
    try:
        return int(value, 0)
    except ValueError:
        pass
    try:
        return float(value)
    except ValueError:
        return value


def _int_option(url: str, key: str, value: str) -> int:
    try:
        number = int(value, 0)
    except ValueError:
        raise UsageError(f"bus URL {url!r}: {key}={value!r} is not a whole number") from None
    if number <= 0:
        raise UsageError(f"bus URL {url!r}: {key} must be positive, got {number}")
    return number


def parse_bus_url(url: str) -> BusSpec:
    """Parse a bus URL (C7) into a :class:`BusSpec`; raise :class:`UsageError` naming the fault."""
    if "://" not in url:
        raise UsageError(
            f"bus URL {url!r} has no scheme: write e.g. socketcan://can0, virtual://sim, "
            "socketcand://127.0.0.1:29536/can0 or slcan:///dev/ttyUSB0?bitrate=500000"
        )
    parts = urllib.parse.urlsplit(url)
    interface = parts.scheme.lower()
    if not interface:
        raise UsageError(f"bus URL {url!r} has an empty scheme (the python-can interface)")
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    options: dict[str, str] = {}
    for key, values in query.items():
        if len(values) != 1:
            raise UsageError(f"bus URL {url!r}: option {key!r} is given {len(values)} times")
        options[key] = values[0]

    host: str | None = None
    port: int | None = None
    if interface == "socketcand":
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            raise UsageError(f"bus URL {url!r}: the port is not a number") from None
        channel = parts.path.lstrip("/")
        if not host or port is None or not channel:
            raise UsageError(
                f"bus URL {url!r}: socketcand needs HOST:PORT and a channel, "
                "e.g. socketcand://127.0.0.1:29536/can0"
            )
    elif parts.netloc and parts.path:
        # e.g. pcan://PCAN_USBBUS1/… is unusual; keep netloc+path as the channel.
        channel = parts.netloc + parts.path
    else:
        # socketcan://can0 puts the channel in netloc; slcan:///dev/ttyUSB0 in path.
        channel = parts.netloc or parts.path
    if not channel:
        raise UsageError(f"bus URL {url!r} names no channel")

    bitrate = _int_option(url, "bitrate", options["bitrate"]) if "bitrate" in options else None
    data_bitrate = (
        _int_option(url, "data_bitrate", options["data_bitrate"])
        if "data_bitrate" in options
        else None
    )
    fd = False
    if "fd" in options:
        converted = _convert(options["fd"])
        if not isinstance(converted, bool):
            raise UsageError(f"bus URL {url!r}: fd={options['fd']!r} is not true or false")
        fd = converted
    default_name = channel.rsplit("/", 1)[-1] if interface in {"slcan", "serial"} else channel
    name = options.get("name") or default_name
    extra = {k: _convert(v) for k, v in options.items() if k not in _COMMON_KEYS}
    return BusSpec(
        url=url,
        interface=interface,
        channel=channel,
        name=name,
        bitrate=bitrate,
        fd=fd,
        data_bitrate=data_bitrate,
        host=host,
        port=port,
        extra=extra,
    )


def _probe_tcp(spec: BusSpec) -> None:
    # python-can's socketcand client retries a refused connection in a tight loop for 10 s,
    # logging each attempt; a quick probe lets the caller's own backoff take over instead.
    import socket

    assert spec.host is not None and spec.port is not None
    try:
        with socket.create_connection((spec.host, spec.port), timeout=2.0):
            pass
    except OSError as e:
        raise BusError(f"cannot open bus {spec.url}: {e.strerror or e}") from e


def open_bus(spec: BusSpec, can_filters: Sequence[Mapping[str, int | bool]] | None = None) -> Any:
    """Open the python-can bus a :class:`BusSpec` names; wrap any failure in :class:`BusError`.

    Returns a ``can.BusABC``; typed ``Any`` because python-can's constructor is dynamically typed.
    """
    import can

    kwargs: dict[str, Any] = dict(spec.extra)
    if spec.bitrate is not None:
        kwargs["bitrate"] = spec.bitrate
    if spec.fd:
        kwargs["fd"] = True
    if spec.data_bitrate is not None:
        kwargs["data_bitrate"] = spec.data_bitrate
    if spec.interface == "socketcand":
        kwargs["host"] = spec.host
        kwargs["port"] = spec.port
        _probe_tcp(spec)
    if spec.interface == "virtual":
        # The virtual bus would otherwise deliver our own sends back to us.
        kwargs.setdefault("receive_own_messages", False)
    try:
        return can.Bus(
            interface=spec.interface,
            channel=spec.channel,
            can_filters=list(can_filters) if can_filters else None,
            **kwargs,
        )
    except (can.CanError, OSError, ValueError, TypeError, ImportError, TimeoutError) as e:
        raise BusError(f"cannot open bus {spec.url}: {e}") from e
    except Exception as e:  # python-can drivers raise whatever their backend raises
        raise BusError(f"cannot open bus {spec.url}: {type(e).__name__}: {e}") from e

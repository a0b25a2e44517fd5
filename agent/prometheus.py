"""The agent's status snapshot as Prometheus text exposition (format version 0.0.4).

:func:`render_prometheus` is a pure function of the snapshot that
:class:`agent.status_endpoint.StatusEndpoint` serves on ``GET /metrics``. Every metric is named
``tbox_…``; counters end in ``_total``. The snapshot is produced by another module and may grow
or lose keys over time, so anything missing or of an unexpected type is skipped rather than
failing the whole scrape.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

__all__ = ["CONTENT_TYPE", "escape_label_value", "render_prometheus"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_Kind = Literal["counter", "gauge"]
_Labels = tuple[tuple[str, str], ...]


def escape_label_value(value: str) -> str:
    r"""*value* escaped for a label value between double quotes (``\\``, ``\"`` and ``\n``)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: object) -> int | float | None:
    """*value* as a sample value, or ``None`` when it is not a number (then it is skipped)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None


def _format_value(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


@dataclass
class _Family:
    name: str
    kind: _Kind
    help: str
    samples: list[tuple[_Labels, int | float]] = field(default_factory=list)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            if labels:
                inside = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels)
                yield f"{self.name}{{{inside}}} {_format_value(value)}"
            else:
                yield f"{self.name} {_format_value(value)}"


class _Exposition:
    """Families in the order they were first declared; a family without samples is left out."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}

    def add(
        self, name: str, kind: _Kind, help_text: str, value: object, labels: _Labels = ()
    ) -> None:
        number = _number(value)
        if number is None:
            return
        family = self._families.get(name)
        if family is None:
            family = self._families[name] = _Family(name, kind, help_text)
        family.samples.append((labels, number))

    def render(self) -> str:
        lines = [line for family in self._families.values() for line in family.render()]
        return "".join(f"{line}\n" for line in lines)


def _section(snapshot: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = snapshot.get(key)
    return value if isinstance(value, Mapping) else {}


# (snapshot key, metric name, kind, help) for the flat sections.
_PIPELINE: Final[tuple[tuple[str, str, _Kind, str], ...]] = (
    ("frames", "tbox_pipeline_frames_total", "counter", "CAN frames that entered the pipeline."),
    ("decoded", "tbox_pipeline_decoded_total", "counter", "Frames decoded with a DBC."),
    (
        "decode_errors",
        "tbox_pipeline_decode_errors_total",
        "counter",
        "Frames whose decoding failed.",
    ),
    (
        "encode_errors",
        "tbox_pipeline_encode_errors_total",
        "counter",
        "Records that could not be encoded for the upload queue.",
    ),
    ("records", "tbox_records_total", "counter", "Telemetry records built by the schemes."),
    ("samples", "tbox_samples_total", "counter", "Signal samples in the records built."),
    ("queued", "tbox_queued_records_total", "counter", "Records put into the upload queue."),
    ("state_updates", "tbox_state_updates_total", "counter", "Vehicle state updates published."),
)
_QUEUE: Final[tuple[tuple[str, str, _Kind, str], ...]] = (
    ("items", "tbox_queue_items", "gauge", "Items waiting in the upload queue."),
    ("bytes", "tbox_queue_bytes", "gauge", "Bytes the upload queue takes on disk."),
    ("payload_bytes", "tbox_queue_payload_bytes", "gauge", "Payload bytes of the queued items."),
    ("max_bytes", "tbox_queue_max_bytes", "gauge", "The upload queue's size cap in bytes."),
    # null when the queue is empty; _number() skips None, which leaves the metric out
    (
        "oldest_age_s",
        "tbox_queue_oldest_age_seconds",
        "gauge",
        "Age of the oldest queued item in seconds.",
    ),
)
_DEVICE_COUNTERS: Final = (
    ("reopens", "tbox_device_reopens_total", "Times a serial device's port was reopened."),
    ("sentences", "tbox_gnss_sentences_total", "Valid NMEA sentences received."),
    ("bad_checksum", "tbox_gnss_bad_checksum_total", "NMEA lines with a wrong checksum."),
    ("garbage", "tbox_device_garbage_total", "Lines or answers from a device that did not parse."),
    ("polls", "tbox_modem_polls_total", "Modem status polls completed."),
    ("timeouts", "tbox_modem_timeouts_total", "AT commands the modem did not answer in time."),
)
_UPLINK: Final[tuple[tuple[str, str, _Kind, str], ...]] = (
    ("batches", "tbox_uplink_batches_total", "counter", "Batches acknowledged by the broker."),
    ("records", "tbox_uplink_records_total", "counter", "Records delivered to the broker."),
    ("bytes", "tbox_uplink_bytes_total", "counter", "Payload bytes delivered to the broker."),
    (
        "resent",
        "tbox_uplink_resent_batches_total",
        "counter",
        "Batches published again after a lost acknowledgement.",
    ),
    ("reconnects", "tbox_uplink_reconnects_total", "counter", "Reconnections to the broker."),
    (
        "connect_failures",
        "tbox_uplink_connect_failures_total",
        "counter",
        "Failed attempts to connect to the broker.",
    ),
    (
        "malformed",
        "tbox_uplink_malformed_total",
        "counter",
        "Queued items dropped as unreadable by the uplink.",
    ),
)
_BUS: Final[tuple[tuple[str, str, _Kind, str], ...]] = (
    ("frames", "tbox_bus_frames_total", "counter", "CAN frames received per bus."),
    ("filtered", "tbox_bus_filtered_total", "counter", "CAN frames filtered out per bus."),
    ("errors", "tbox_bus_errors_total", "counter", "Bus errors per bus."),
    ("reopens", "tbox_bus_reopens_total", "counter", "Times a bus was reopened after an error."),
)
_COMMAND_OUTCOMES: Final = ("accepted", "rejected", "failed")


def render_prometheus(snapshot: Mapping[str, Any]) -> str:
    """The status *snapshot* as Prometheus text exposition; ``""`` if nothing in it is known.

    Missing sections and keys, and values of the wrong type, are skipped.
    """
    out = _Exposition()

    info = tuple(
        (key, str(snapshot[key]))
        for key in ("vehicle_id", "version")
        if isinstance(snapshot.get(key), str | int)
    )
    if info:
        out.add("tbox_info", "gauge", "The agent's vehicle and version; always 1.", 1, info)
    out.add(
        "tbox_uptime_seconds", "gauge", "Seconds since the agent started.", snapshot.get("uptime_s")
    )
    out.add(
        "tbox_start_time_seconds",
        "gauge",
        "Unix time the agent started at.",
        snapshot.get("started"),
    )

    buses = _section(snapshot, "buses")
    for bus, stats in buses.items():
        if isinstance(stats, Mapping):
            labels = (("bus", str(bus)),)
            out.add("tbox_bus_open", "gauge", "1 if the bus is open.", stats.get("open"), labels)
            for key, name, kind, help_text in _BUS:
                out.add(name, kind, help_text, stats.get(key), labels)

    pipeline = _section(snapshot, "pipeline")
    for key, name, kind, help_text in _PIPELINE:
        out.add(name, kind, help_text, pipeline.get(key))

    queue = _section(snapshot, "queue")
    for key, name, kind, help_text in _QUEUE:
        out.add(name, kind, help_text, queue.get(key))
    for reason, count in _section(queue, "dropped").items():
        out.add(
            "tbox_queue_dropped_total",
            "counter",
            "Queued items dropped, by reason.",
            count,
            (("reason", str(reason)),),
        )

    uplink = _section(snapshot, "uplink")
    link = uplink.get("link")
    if isinstance(link, str):
        out.add(
            "tbox_uplink_connected",
            "gauge",
            "1 while the broker connection is up.",
            link == "connected",
        )
    for key, name, kind, help_text in _UPLINK:
        out.add(name, kind, help_text, uplink.get(key))

    devices = _section(snapshot, "devices")
    for device_name, device in devices.items():
        if not isinstance(device, Mapping):
            continue
        labels = (("device", str(device_name)),)
        state = device.get("state")
        if isinstance(state, str):
            out.add(
                "tbox_device_ok",
                "gauge",
                "1 while a serial device is healthy.",
                state == "ok",
                labels,
            )
        for key, name, help_text in _DEVICE_COUNTERS:
            out.add(name, "counter", help_text, device.get(key), labels)
    gnss_values = _section(_section(devices, "gnss"), "values")
    out.add(
        "tbox_gnss_fix",
        "gauge",
        "1 while the GNSS receiver has a valid fix.",
        gnss_values.get("fix"),
    )
    out.add(
        "tbox_gnss_satellites",
        "gauge",
        "Satellites the GNSS fix uses.",
        gnss_values.get("satellites"),
    )
    modem_values = _section(_section(devices, "modem"), "values")
    out.add(
        "tbox_modem_rssi_dbm",
        "gauge",
        "Cellular signal strength in dBm.",
        modem_values.get("rssi_dbm"),
    )
    out.add(
        "tbox_modem_registered",
        "gauge",
        "1 while the modem is registered on a network.",
        modem_values.get("registered"),
    )

    commands = _section(snapshot, "commands")
    out.add(
        "tbox_commands_received_total",
        "counter",
        "Commands received from the backend.",
        commands.get("received"),
    )
    for outcome in _COMMAND_OUTCOMES:
        out.add(
            "tbox_commands_total",
            "counter",
            "Commands handled, by outcome.",
            commands.get(outcome),
            (("outcome", outcome),),
        )
    for code, count in _section(commands, "by_code").items():
        out.add(
            "tbox_commands_rejected_total",
            "counter",
            "Commands rejected or failed, by result code.",
            count,
            (("code", str(code)),),
        )

    schemes = _section(snapshot, "schemes")
    out.add("tbox_schemes_active", "gauge", "Collection schemes active.", schemes.get("active"))

    return out.render()

"""``tbox check-config FILE [--json]``: validate an agent configuration without running the agent.

Loads the file exactly as ``tbox run --config FILE`` would (every key, every file it names, the
scheme files and the trusted public keys) and prints a one-paragraph summary, or with ``--json``
the parsed configuration. A problem is reported in one line naming file, line and key (exit 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any

from agent.config import AgentConfig


def register(subparsers: Any) -> None:
    """Add ``tbox check-config``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "check-config",
        help="validate an agent configuration file",
        description=(
            "Load and validate an agent configuration file as `tbox run --config FILE` would: "
            "every key, the files it names, the scheme files and the trusted public keys. "
            "Prints a summary (or, with --json, the parsed configuration) and exits 0; on the "
            "first problem prints it in one line, naming file, line and key, and exits 1."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="the configuration file (TOML)")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the parsed configuration as one JSON object (paths as strings; the MQTT "
        'password as "<redacted>")',
    )
    parser.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from agent.config import load_config

    config = load_config(args.file)
    if args.json:
        print(json.dumps(config_as_json(config), indent=2))
    else:
        print(textwrap.fill(summary(config), width=100, break_long_words=False))
    return 0


def config_as_json(config: AgentConfig) -> dict[str, Any]:
    """*config* as JSON-ready data: paths as strings, the password redacted, keys by id."""
    data = _jsonable(config)
    assert isinstance(data, dict)
    data["uses_tls"] = config.uplink_config().uses_tls
    if config.mqtt.password is not None:
        # The configuration is shown to people and pasted into tickets; the secret is not.
        data["mqtt"]["password"] = "<redacted>"
    data["commands"]["trusted_keys"] = {
        key_id: str(path) for key_id, path in config.commands.trusted_keys
    }
    prometheus = config.status.prometheus
    data["status"]["prometheus"] = None if prometheus is None else _host_port(*prometheus)
    return data


def summary(config: AgentConfig) -> str:
    """One paragraph saying what *config* makes the agent do."""
    from agent.schemes import load_schemes

    buses = "; ".join(
        f"bus {bus.name} ({bus.spec.url}) decoded with {', '.join(map(str, bus.dbc))}"
        for bus in config.buses
    )
    # The loader has validated them already; counting needs them loaded once more.
    count = sum(len(load_schemes(path)) for path in config.schemes.files)
    files = len(config.schemes.files)
    schemes = f"{count} scheme{'' if count == 1 else 's'} from {files} file" + (
        "" if files == 1 else "s"
    )
    pushed = "pushed schemes accepted" if config.schemes.accept_pushed else "pushed schemes refused"
    m = config.mqtt
    tls = "TLS" if config.uplink_config().uses_tls else "no TLS"
    protocol = "MQTT 5" if m.mqtt5 else "MQTT 3.1.1"
    queue = config.queue
    prometheus = (
        "Prometheus metrics off"
        if config.status.prometheus is None
        else f"Prometheus metrics on {_host_port(*config.status.prometheus)}"
    )
    return (
        f"{config.source}: OK. Vehicle {config.vehicle_id}, state in {config.state_dir}; "
        f"{buses}; {schemes} ({pushed}); broker {_host_port(m.host, m.port)} with {tls}, "
        f"{protocol}; queue {queue.path} capped at {_bytes_text(queue.max_bytes)}; status "
        f"socket {config.status.socket}; {prometheus}."
    )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bytes_text(n: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n:,} bytes"


def _jsonable(value: object) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value

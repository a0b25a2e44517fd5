"""Loading the agent's TOML configuration file into an :class:`~agent.config.model.AgentConfig`.

The file is read and checked once, at start-up (and by ``tbox check-config``): every key is
validated, every file it names must exist, scheme files and public keys are loaded, so that a
configuration that loads is one the agent can run with. Every problem is a
:class:`~agent.config.errors.ConfigError` naming the file, the line, the dotted key and what is
wrong::

    agent.toml:12: mqtt.keepalive_s: 45 is above the maximum of 20 (a longer keepalive notices
    a dead link too late)

Unknown keys are errors (with a suggestion when one is close). Relative paths are relative to the
configuration file's directory. Sizes are bytes or strings with a unit (``"256MiB"``,
``"1 GiB"``, ``"500 MB"``); durations are seconds or strings such as ``"7d"``, ``"12h"``,
``"1h30m"``, ``"45s"``, ``"250ms"``. Every key, its type and default: README.md,
"Configuration".
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import tomllib
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

from agent.config.errors import ConfigError
from agent.config.model import (
    DEFAULT_STATE_DIR,
    AgentConfig,
    BusConfig,
    CommandsConfig,
    EcuFlashConfig,
    GnssConfig,
    IdsConfig,
    ModemConfig,
    MqttConfig,
    OtaConfig,
    QueueConfig,
    SchemesConfig,
    ShutdownConfig,
    StateConfig,
    StatusConfig,
)
from agent.errors import TboxError, describe_toml_error
from agent.errors import kind_of_value as _kind
from agent.toml_lines import KeyPath, dotted_key, item_line, line_of
from agent.uplink import MAX_KEEPALIVE_S

__all__ = ["load_config", "parse_config"]

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
DAY: Final = 86400.0

#: Every section and the keys it takes, in the order they are documented.
SECTIONS: Final[Mapping[str, tuple[str, ...]]] = {
    "vehicle": ("id", "state_dir"),
    "bus": ("url", "dbc"),
    "schemes": ("files", "accept_pushed"),
    "state": ("signals", "min_interval_ms"),
    "queue": ("path", "max_bytes", "ttl_s"),
    "mqtt": (
        "host",
        "port",
        "client_id",
        "username",
        "password",
        "password_file",
        "keepalive_s",
        "tls",
        "ca_file",
        "cert_file",
        "key_file",
        "mqtt5",
        "batch_max_bytes",
        "backoff_initial_s",
        "backoff_max_s",
        "session_expiry_s",
    ),
    "commands": ("trusted_keys", "max_bytes", "max_skew_s", "max_lifetime_s"),
    "status": ("socket", "prometheus"),
    "shutdown": ("stage_timeout_s",),
    "gnss": ("port", "baudrate", "silence_timeout_s", "fix_timeout_s"),
    "modem": ("port", "baudrate", "poll_interval_s", "response_timeout_s"),
    "ota": (
        "director_url",
        "image_url",
        "hardware_id",
        "director_root",
        "image_root",
        "ecus",
        "slots_dir",
        "health_check",
        "health_timeout_s",
        "max_boot_attempts",
        "boot_on_start",
        "min_bytes_per_s",
        "max_target_bytes",
        "download_stall_s",
    ),
    "ids": ("rules", "keys", "idsm_instance_id"),
}
_ECU_FLASH_KEYS: Final = (
    "hardware_id",
    "bus",
    "request_id",
    "response_id",
    "secret_file",
    "algorithm",
    "security_level",
)
_GNSS_DEFAULTS: Final = GnssConfig(port="-")
_MODEM_DEFAULTS: Final = ModemConfig(port="-")
_OTA_DEFAULTS: Final = OtaConfig("http://-", "http://-", "-", Path("-"), Path("-"))
# The rates serial ports are commonly set to; anything else is most likely a typo.
_BAUDRATES: Final = (4800, 9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)

_VEHICLE_ID_RE: Final = re.compile(r"[^\s/+#]{1,64}")
_SIZE_RE: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_SIZE_UNITS: Final = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": 1024 * GIB,
}
_DURATION_RE: Final = re.compile(r"\s*(?:(?:\d+(?:\.\d*)?|\.\d+)\s*(?:ms|s|m|h|d)\s*)+")
_DURATION_PART_RE: Final = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY}
# sun_path of struct sockaddr_un holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH_BYTES: Final = 107
_MAX_KEEPALIVE_S: Final = MAX_KEEPALIVE_S


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    """Load and validate the configuration file at *path*; raises :class:`ConfigError`.

    Relative paths in the file are resolved against the file's directory.
    """
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(name, None, "file not found") from None
    except IsADirectoryError:
        raise ConfigError(name, None, "is a directory, not a configuration file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ConfigError(name, None, f"cannot read the file: {e}") from None
    return parse_config(text, source=name, base_dir=Path(name).absolute().parent)


def parse_config(text: str, source: str, base_dir: Path) -> AgentConfig:
    """Parse and validate configuration TOML *text*; raises :class:`ConfigError`.

    *source* names the text in error messages; relative paths are resolved against *base_dir*
    (made absolute first).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise ConfigError(source, None, f"TOML syntax error: {problem}", line=line) from None
    return _Builder(text, source, base_dir.absolute()).config(data)


# ------------------------------------------------------------------------------------------------
# Words for values in messages


def _size_text(n: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n:,} bytes"


def _seconds_text(seconds: float) -> str:
    for unit, factor in (("d", DAY), ("h", 3600.0)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:g} {unit}"
    return f"{seconds:g} s"


def _as_written(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def _unknown_key(key: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown key (did you mean {close[0]!r}?)"
    return f"unknown key (expected one of: {', '.join(allowed)})"


def _file_problem(path: Path) -> str | None:
    """Why *path* is not a readable-looking regular file, or None if it is one."""
    try:
        if path.is_file():
            return None
        if path.exists():
            return f"{path} is not a regular file"
    except (OSError, ValueError) as e:
        return f"cannot check {path}: {e}"
    return f"{path} does not exist"


def _listen_address(text: str) -> tuple[str, int] | str:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → (host, port), or the problem with it."""
    example = 'must be "HOST:PORT" on a loopback address, e.g. "127.0.0.1:9100"'
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return f"{text!r} {example}"
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            return f"{text!r} {example}"
    if not host:
        return f"{text!r} names no host; it {example}"
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        return f"{text!r}: the port must be a number 1–65535"
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return (
                f"{host!r} is not a loopback address (127.0.0.0/8, ::1 or localhost): the "
                "metrics endpoint has no authentication, so it must not be reachable from "
                "the network"
            )
    return host, int(port_text)


# ------------------------------------------------------------------------------------------------
# The builder


class _Builder:
    """Validates one parsed document and builds the frozen configuration, naming keys in errors."""

    def __init__(self, text: str, source: str, base_dir: Path) -> None:
        self.text = text
        self.source = source
        self.base_dir = base_dir

    def fail(self, path: KeyPath, problem: str, *, item: int | None = None) -> NoReturn:
        """Raise the error of the value at *path* (of its element *item* if given)."""
        if item is None:
            line = line_of(self.text, path)
            key = dotted_key(path)
        else:
            line = item_line(self.text, path, item)
            key = dotted_key((*path, item))
        raise ConfigError(self.source, key or None, problem, line=line)

    # -- the document -------------------------------------------------------------------------

    def config(self, data: Mapping[str, Any]) -> AgentConfig:
        for key in data:
            if key not in SECTIONS:
                self.fail((key,), _unknown_key(key, tuple(SECTIONS)))
        vehicle_id, state_dir = self.vehicle(data)
        buses = self.buses(data)
        schemes = self.schemes(data)
        state = self.state(data)
        queue = self.queue(data, state_dir)
        mqtt = self.mqtt(data)
        commands = self.commands(data)
        status = self.status(data, state_dir)
        shutdown = self.shutdown(data)
        gnss = self.gnss(data)
        modem = self.modem(data)
        ota = self.ota(data, buses)
        ids = self.ids(data)
        config = AgentConfig(
            vehicle_id=vehicle_id,
            state_dir=state_dir,
            buses=buses,
            queue=queue,
            status=status,
            mqtt=mqtt,
            schemes=schemes,
            state=state,
            commands=commands,
            shutdown=shutdown,
            gnss=gnss,
            modem=modem,
            ota=ota,
            ids=ids,
            source=self.source,
        )
        try:
            config.uplink_config()
        except ValueError as e:
            # Everything UplinkConfig checks is checked above; this keeps it that way.
            self.fail(("mqtt",), str(e))
        return config

    def section(self, data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            self.fail((name,), f"must be a table ([{name}]), not {_kind(value)}")
        self.known_keys((name,), value, SECTIONS[name])
        return value

    def known_keys(self, at: KeyPath, tbl: Mapping[str, Any], allowed: Sequence[str]) -> None:
        for key in tbl:
            if key not in allowed:
                self.fail((*at, key), _unknown_key(key, allowed))

    # -- sections -----------------------------------------------------------------------------

    def vehicle(self, data: Mapping[str, Any]) -> tuple[str, Path]:
        at: KeyPath = ("vehicle",)
        tbl = self.section(data, "vehicle")
        if "id" not in tbl:
            self.fail(
                (*at, "id"),
                'is required: the id the vehicle has in MQTT topics, e.g. id = "VIN1234567"',
            )
        vehicle_id = tbl["id"]
        if not isinstance(vehicle_id, str):
            self.fail((*at, "id"), f"must be a string, not {_kind(vehicle_id)}")
        if not (_VEHICLE_ID_RE.fullmatch(vehicle_id) and vehicle_id.isprintable()):
            self.fail(
                (*at, "id"),
                f"{vehicle_id!r} must be 1–64 printable characters without whitespace or "
                "/ + # (it is a level of MQTT topics)",
            )
        state_dir = self.path(tbl, at, "state_dir")
        return vehicle_id, DEFAULT_STATE_DIR if state_dir is None else state_dir

    def buses(self, data: Mapping[str, Any]) -> tuple[BusConfig, ...]:
        from agent.busurl import parse_bus_url
        from can_dbc import SAMPLE_VEHICLE_DBC

        example = 'e.g. [[bus]] with url = "socketcan://can0"'
        if "bus" not in data:
            self.fail(("bus",), f"is required: at least one [[bus]], {example}")
        raw = data["bus"]
        if not isinstance(raw, list):
            self.fail(("bus",), f"must be an array of tables ([[bus]]), not {_kind(raw)}")
        if not raw:
            self.fail(("bus",), f"must have at least one [[bus]], {example}")
        buses: list[BusConfig] = []
        names: dict[str, int] = {}
        for i, tbl in enumerate(raw):
            at: KeyPath = ("bus", i)
            if not isinstance(tbl, dict):
                self.fail(at, f"must be a table, not {_kind(tbl)}")
            self.known_keys(at, tbl, SECTIONS["bus"])
            url = self.string(tbl, at, "url")
            if url is None:
                self.fail((*at, "url"), f"is required: the bus URL, {example}")
            try:
                spec = parse_bus_url(url)
            except (TboxError, ValueError) as e:
                self.fail((*at, "url"), str(e))
            if spec.name in names:
                self.fail(
                    (*at, "url"),
                    f"bus name {spec.name!r} is already bus[{names[spec.name]}]'s: two buses "
                    "need different names (add ?name=… to one URL)",
                )
            names[spec.name] = i
            dbc: tuple[Path, ...] = (SAMPLE_VEHICLE_DBC,)
            if "dbc" in tbl:
                dbc = self.file_list(tbl, at, "dbc", what="DBC file", single=True)
                if not dbc:
                    self.fail((*at, "dbc"), "must name at least one DBC file")
            buses.append(BusConfig(spec=spec, dbc=dbc))
        return tuple(buses)

    def schemes(self, data: Mapping[str, Any]) -> SchemesConfig:
        from agent.schemes import SchemeError, load_schemes

        at: KeyPath = ("schemes",)
        tbl = self.section(data, "schemes")
        files = self.file_list(tbl, at, "files", what="scheme file")
        where: dict[str, Path] = {}
        for i, path in enumerate(files):
            try:
                schemes = load_schemes(path)
            except SchemeError as e:
                self.fail((*at, "files"), str(e), item=i)
            for scheme in schemes:
                if scheme.id in where:
                    self.fail(
                        (*at, "files"),
                        f"{path}: scheme id {scheme.id!r} is also in {where[scheme.id]} (ids "
                        "must be unique across all scheme files)",
                        item=i,
                    )
                where[scheme.id] = path
        return SchemesConfig(
            files=files,
            accept_pushed=self.boolean(tbl, at, "accept_pushed", SchemesConfig().accept_pushed),
        )

    def state(self, data: Mapping[str, Any]) -> StateConfig:
        from agent.schemes import SignalRef

        at: KeyPath = ("state",)
        tbl = self.section(data, "state")
        names = self.string_list(tbl, at, "signals", what="signal names")
        seen: set[str] = set()
        for i, name in enumerate(names):
            try:
                SignalRef.parse(name)
            except ValueError as e:
                self.fail((*at, "signals"), str(e), item=i)
            if name in seen:
                self.fail((*at, "signals"), f"{name!r} is listed twice", item=i)
            seen.add(name)
        return StateConfig(
            signals=names,
            min_interval_ms=self.integer(
                tbl, at, "min_interval_ms", StateConfig().min_interval_ms, 0, 86_400_000
            ),
        )

    def queue(self, data: Mapping[str, Any], state_dir: Path) -> QueueConfig:
        at: KeyPath = ("queue",)
        tbl = self.section(data, "queue")
        path = self.path(tbl, at, "path")
        d = QueueConfig(path=state_dir / "queue.db" if path is None else path)
        return QueueConfig(
            path=d.path,
            max_bytes=self.size(tbl, at, "max_bytes", d.max_bytes, MIB, None),
            ttl_s=self.duration(tbl, at, "ttl_s", d.ttl_s, zero=False),
        )

    def mqtt(self, data: Mapping[str, Any]) -> MqttConfig:
        at: KeyPath = ("mqtt",)
        tbl = self.section(data, "mqtt")
        d = MqttConfig()
        host = self.string(tbl, at, "host")
        if host is not None and (not host or any(c.isspace() for c in host)):
            self.fail((*at, "host"), f"{host!r} is not a host name or address")

        files = {
            key: self.existing_file(tbl, at, key) for key in ("ca_file", "cert_file", "key_file")
        }
        given = [key for key, path in files.items() if path is not None]
        if "tls" in tbl:
            tls = self.boolean(tbl, at, "tls", d.tls)
            if given and not tls:
                self.fail(
                    (*at, "tls"),
                    f"is false, but {' and '.join(given)} can only be used with TLS: set "
                    "tls = true or remove them",
                )
        else:
            tls = bool(given)
        if (files["cert_file"] is None) != (files["key_file"] is None):
            has, lacks = ("cert_file", "key_file")
            if files["cert_file"] is None:
                has, lacks = lacks, has
            self.fail(
                (*at, has),
                f"needs {lacks} too: a client certificate goes with its private key",
            )

        if "password" in tbl and "password_file" in tbl:
            self.fail(
                (*at, "password_file"),
                "and password are mutually exclusive: give the password in one place",
            )
        password = self.string(tbl, at, "password")
        password_file = self.existing_file(tbl, at, "password_file")
        if password_file is not None:
            password = self.read_secret((*at, "password_file"), password_file)

        client_id = self.string(tbl, at, "client_id")
        if client_id == "":
            self.fail((*at, "client_id"), "must not be empty (leave it out for the default)")
        backoff_initial = self.duration(
            tbl, at, "backoff_initial_s", d.backoff_initial_s, zero=False, hi=3600.0
        )
        backoff_max = self.duration(
            tbl,
            at,
            "backoff_max_s",
            d.backoff_max_s,
            zero=False,
            hi=3600.0,
            why="a longer wait keeps a vehicle offline long after its link is back",
        )
        if backoff_initial > backoff_max:
            key = "backoff_initial_s" if "backoff_initial_s" in tbl else "backoff_max_s"
            self.fail(
                (*at, key),
                f"backoff_initial_s ({_seconds_text(backoff_initial)}) is above backoff_max_s "
                f"({_seconds_text(backoff_max)})",
            )
        return MqttConfig(
            host=d.host if host is None else host,
            port=self.integer(tbl, at, "port", 8883 if tls else 1883, 1, 65535),
            client_id=client_id,
            username=self.string(tbl, at, "username"),
            password=password,
            keepalive_s=self.integer(
                tbl,
                at,
                "keepalive_s",
                d.keepalive_s,
                1,
                _MAX_KEEPALIVE_S,
                why="a longer keepalive notices a dead link too late",
            ),
            tls=tls,
            ca_file=files["ca_file"],
            cert_file=files["cert_file"],
            key_file=files["key_file"],
            mqtt5=self.boolean(tbl, at, "mqtt5", d.mqtt5),
            batch_max_bytes=self.size(
                tbl, at, "batch_max_bytes", d.batch_max_bytes, 4 * KIB, 16 * MIB
            ),
            backoff_initial_s=backoff_initial,
            backoff_max_s=backoff_max,
            session_expiry_s=self.duration(
                tbl,
                at,
                "session_expiry_s",
                d.session_expiry_s,
                zero=True,
                hi=30 * DAY,
                why="a broker should not keep commands for a vehicle gone that long",
            ),
        )

    def commands(self, data: Mapping[str, Any]) -> CommandsConfig:
        from agent.commands import load_public_key

        at: KeyPath = ("commands",)
        tbl = self.section(data, "commands")
        d = CommandsConfig()
        raw = tbl.get("trusted_keys", {})
        if not isinstance(raw, dict):
            self.fail(
                (*at, "trusted_keys"),
                f"must be a table of key id = public key file, not {_kind(raw)}",
            )
        keys: list[tuple[str, Path]] = []
        for key_id in raw:
            here: KeyPath = (*at, "trusted_keys", key_id)
            if not key_id or not key_id.isprintable():
                self.fail(here, "a key id must be non-empty and printable")
            path = self.path(raw, (*at, "trusted_keys"), key_id)
            assert path is not None  # the key is present
            try:
                load_public_key(path)
            except TboxError as e:
                self.fail(here, str(e))
            keys.append((key_id, path))
        return CommandsConfig(
            trusted_keys=tuple(keys),
            max_bytes=self.size(tbl, at, "max_bytes", d.max_bytes, KIB, MIB),
            max_skew_s=self.duration(tbl, at, "max_skew_s", d.max_skew_s, zero=True, hi=DAY),
            max_lifetime_s=self.duration(
                tbl, at, "max_lifetime_s", d.max_lifetime_s, zero=False, hi=30 * DAY
            ),
        )

    def status(self, data: Mapping[str, Any], state_dir: Path) -> StatusConfig:
        at: KeyPath = ("status",)
        tbl = self.section(data, "status")
        socket = self.path(tbl, at, "socket")
        if socket is None:
            socket = state_dir / "status.sock"
        size = len(os.fsencode(socket))
        if size > _MAX_SOCKET_PATH_BYTES:
            key = "socket" if "socket" in tbl else None
            self.fail(
                (*at, key) if key else ("vehicle", "state_dir"),
                f"the status socket {socket} is {size} bytes long; a unix socket path can "
                f"have at most {_MAX_SOCKET_PATH_BYTES}",
            )
        prometheus: tuple[str, int] | None = None
        text = self.string(tbl, at, "prometheus")
        if text is not None:
            parsed = _listen_address(text)
            if isinstance(parsed, str):
                self.fail((*at, "prometheus"), parsed)
            prometheus = parsed
        return StatusConfig(socket=socket, prometheus=prometheus)

    def shutdown(self, data: Mapping[str, Any]) -> ShutdownConfig:
        at: KeyPath = ("shutdown",)
        tbl = self.section(data, "shutdown")
        return ShutdownConfig(
            stage_timeout_s=self.duration(
                tbl,
                at,
                "stage_timeout_s",
                ShutdownConfig().stage_timeout_s,
                zero=False,
                hi=120.0,
                why="a stuck stage would hold up the service manager's stop",
            )
        )

    def serial_port(self, tbl: Mapping[str, Any], at: KeyPath, example: str) -> tuple[str, int]:
        """``port`` (required; it need not exist yet: USB devices come and go) and ``baudrate``."""
        port = self.string(tbl, at, "port")
        if port is None or not port.strip():
            self.fail((*at, "port"), f"is required: the device's serial port, e.g. {example}")
        default = _GNSS_DEFAULTS.baudrate if at == ("gnss",) else _MODEM_DEFAULTS.baudrate
        baudrate = self.integer(tbl, at, "baudrate", default, 50, 4_000_000)
        if baudrate not in _BAUDRATES:
            rates = ", ".join(map(str, _BAUDRATES))
            self.fail((*at, "baudrate"), f"{baudrate} is not a standard rate ({rates})")
        return port, baudrate

    def gnss(self, data: Mapping[str, Any]) -> GnssConfig | None:
        if "gnss" not in data:
            return None
        at: KeyPath = ("gnss",)
        tbl = self.section(data, "gnss")
        port, baudrate = self.serial_port(tbl, at, 'port = "/dev/ttyACM0"')
        return GnssConfig(
            port=port,
            baudrate=baudrate,
            silence_timeout_s=self.duration(
                tbl,
                at,
                "silence_timeout_s",
                _GNSS_DEFAULTS.silence_timeout_s,
                zero=False,
                hi=3600.0,
            ),
            fix_timeout_s=self.duration(
                tbl, at, "fix_timeout_s", _GNSS_DEFAULTS.fix_timeout_s, zero=False, hi=86400.0
            ),
        )

    def modem(self, data: Mapping[str, Any]) -> ModemConfig | None:
        if "modem" not in data:
            return None
        at: KeyPath = ("modem",)
        tbl = self.section(data, "modem")
        port, baudrate = self.serial_port(tbl, at, 'port = "/dev/ttyUSB2"')
        poll = self.duration(
            tbl, at, "poll_interval_s", _MODEM_DEFAULTS.poll_interval_s, zero=False, hi=3600.0
        )
        timeout = self.duration(
            tbl,
            at,
            "response_timeout_s",
            _MODEM_DEFAULTS.response_timeout_s,
            zero=False,
            hi=poll,
            why="a poll must end before the next begins",
        )
        return ModemConfig(
            port=port, baudrate=baudrate, poll_interval_s=poll, response_timeout_s=timeout
        )

    def ota(self, data: Mapping[str, Any], buses: Sequence[BusConfig]) -> OtaConfig | None:
        if "ota" not in data:
            return None
        from ota.target_info import identifier_problem

        at: KeyPath = ("ota",)
        tbl = self.section(data, "ota")
        urls: list[str] = []
        for key in ("director_url", "image_url"):
            url = self.string(tbl, at, key)
            if url is None:
                self.fail((*at, key), "is required: the repository's http(s) base URL")
            try:
                parts = urllib.parse.urlsplit(url)
            except ValueError as e:  # e.g. an unclosed IPv6 bracket
                self.fail((*at, key), f"{url!r} is not a URL ({e})")
            if parts.scheme not in ("http", "https") or not parts.netloc:
                self.fail((*at, key), f"{url!r} is not an http:// or https:// URL")
            urls.append(url)
        hardware = self.string(tbl, at, "hardware_id")
        if hardware is None:
            self.fail((*at, "hardware_id"), "is required: the T-box's hardware id in the targets")
        if (problem := identifier_problem(hardware)) is not None:
            self.fail((*at, "hardware_id"), problem)
        roots: list[Path] = []
        for key in ("director_root", "image_root"):
            root = self.existing_file(tbl, at, key)
            if root is None:
                self.fail((*at, key), "is required: the root metadata the vehicle trusts")
            roots.append(root)
        table = tbl.get("ecus", {})
        if not isinstance(table, dict):
            self.fail((*at, "ecus"), f"must be a table of ECU id = hardware id, not {_kind(table)}")
        ecus: dict[str, str] = {}
        flash: dict[str, EcuFlashConfig] = {}
        for ecu, value in table.items():
            if (problem := identifier_problem(ecu)) is not None:
                self.fail((*at, "ecus", ecu), problem)
            if isinstance(value, dict):
                ecus[ecu], flash[ecu] = self.ecu_flash(value, (*at, "ecus", ecu), buses)
            else:
                if (problem := identifier_problem(value)) is not None:
                    self.fail((*at, "ecus", ecu), problem)
                ecus[ecu] = value
        command = self.string(tbl, at, "health_check")
        if command is not None and not command.strip():
            self.fail((*at, "health_check"), "is empty: give a command, or leave the key out")
        d = _OTA_DEFAULTS
        return OtaConfig(
            director_url=urls[0],
            image_url=urls[1],
            hardware_id=hardware,
            director_root=roots[0],
            image_root=roots[1],
            ecus=tuple(sorted(ecus.items())),
            flash=tuple(sorted(flash.items())),
            slots_dir=self.path(tbl, at, "slots_dir"),
            health_check=command,
            health_timeout_s=self.duration(
                tbl, at, "health_timeout_s", d.health_timeout_s, zero=False, hi=3600.0
            ),
            max_boot_attempts=self.integer(tbl, at, "max_boot_attempts", 3, 1, 100),
            boot_on_start=self.boolean(tbl, at, "boot_on_start", True),
            min_bytes_per_s=float(self.integer(tbl, at, "min_bytes_per_s", 1024, 0, 10**9)),
            max_target_bytes=self.size(
                tbl, at, "max_target_bytes", d.max_target_bytes, MIB, 64 * GIB
            ),
            download_stall_s=self.duration(
                tbl, at, "download_stall_s", d.download_stall_s, zero=False, hi=DAY
            ),
        )

    def ecu_flash(
        self, tbl: Mapping[str, Any], at: KeyPath, buses: Sequence[BusConfig]
    ) -> tuple[str, EcuFlashConfig]:
        """``[ota.ecus.<id>]``: the ECU's hardware id and how to flash it."""
        from ota.ecu_flash import SeedKeyAlgorithm
        from ota.target_info import identifier_problem

        for key in tbl:
            if key not in _ECU_FLASH_KEYS:
                self.fail((*at, key), _unknown_key(key, _ECU_FLASH_KEYS))
        hardware = self.string(tbl, at, "hardware_id")
        if hardware is None:
            self.fail((*at, "hardware_id"), "is required: the ECU's hardware id in the targets")
        if (problem := identifier_problem(hardware)) is not None:
            self.fail((*at, "hardware_id"), problem)
        names = {bus.name: bus for bus in buses}
        bus_name = self.string(tbl, at, "bus")
        if bus_name is None or bus_name not in names:
            known = ", ".join(names) or "none"
            self.fail((*at, "bus"), f"must name a [[bus]] (configured: {known})")
        ids = []
        for key in ("request_id", "response_id"):
            if key not in tbl:
                self.fail((*at, key), "is required: the ECU's ISO-TP CAN id, e.g. 0x7E0")
            ids.append(self.integer(tbl, at, key, 0, 0, 0x1FFFFFFF))
        if ids[0] == ids[1]:
            self.fail((*at, "response_id"), "must differ from request_id")
        secret = None
        secret_path = self.existing_file(tbl, at, "secret_file")
        if secret_path is not None:
            try:
                secret = secret_path.read_bytes().rstrip(b"\r\n")
            except OSError as e:
                self.fail((*at, "secret_file"), f"cannot be read: {e.strerror or e}")
            if not secret:
                self.fail((*at, "secret_file"), f"{secret_path} is empty")
        algorithm = self.string(tbl, at, "algorithm") or SeedKeyAlgorithm.HMAC_SHA256.value
        if algorithm not in SeedKeyAlgorithm.__members__.values():
            choices = ", ".join(a.value for a in SeedKeyAlgorithm)
            self.fail((*at, "algorithm"), f"{algorithm!r} is none of {choices}")
        level = self.integer(tbl, at, "security_level", 1, 1, 0x7D)
        if level % 2 != 1:
            self.fail((*at, "security_level"), f"{level} must be odd (the requestSeed level)")
        return hardware, EcuFlashConfig(
            bus=names[bus_name].spec,
            request_id=ids[0],
            response_id=ids[1],
            secret=secret,
            algorithm=algorithm,
            security_level=level,
        )

    def ids(self, data: Mapping[str, Any]) -> IdsConfig | None:
        if "ids" not in data:
            return None
        at: KeyPath = ("ids",)
        tbl = self.section(data, "ids")
        rules = self.existing_file(tbl, at, "rules")
        if rules is None:
            self.fail((*at, "rules"), "is required: a rule file (tbox ids learn writes one)")
        keys = self.existing_file(tbl, at, "keys")
        # Loaded here so that a rule file that does not parse stops the start (and check-config).
        from security.keys import load_keys
        from security.rulefile import load_rules

        for key, path, load in (("rules", rules, load_rules), ("keys", keys, load_keys)):
            if path is None:
                continue
            try:
                load(path)
            except TboxError as e:
                self.fail((*at, key), str(e))
        return IdsConfig(
            rules=rules,
            keys=keys,
            idsm_instance_id=self.integer(tbl, at, "idsm_instance_id", 1, 0, 1023),
        )

    # -- values -------------------------------------------------------------------------------

    def string(self, tbl: Mapping[str, Any], at: KeyPath, key: str) -> str | None:
        if key not in tbl:
            return None
        value = tbl[key]
        if not isinstance(value, str):
            self.fail((*at, key), f"must be a string, not {_kind(value)}")
        return value

    def boolean(self, tbl: Mapping[str, Any], at: KeyPath, key: str, default: bool) -> bool:
        value = tbl.get(key, default)
        if not isinstance(value, bool):
            self.fail((*at, key), f"must be true or false, not {_kind(value)}")
        return value

    def check_range(
        self,
        path: KeyPath,
        value: object,
        number: float,
        lo: float,
        hi: float | None,
        *,
        show: Callable[[Any], str],
        lo_open: bool = False,
        why: str = "",
    ) -> None:
        written = _as_written(value)
        if lo_open and number <= lo:
            problem = f"{written} must be more than {show(lo)}"
        elif number < lo:
            problem = f"{written} is below the minimum of {show(lo)}"
        elif hi is not None and number > hi:
            problem = f"{written} is above the maximum of {show(hi)}" + (f" ({why})" if why else "")
        else:
            return
        self.fail(path, problem)

    def integer(
        self,
        tbl: Mapping[str, Any],
        at: KeyPath,
        key: str,
        default: int,
        lo: int,
        hi: int,
        *,
        why: str = "",
    ) -> int:
        if key not in tbl:
            return default
        value = tbl[key]
        if isinstance(value, bool) or not isinstance(value, int):
            what = repr(value) if isinstance(value, float) else _kind(value)
            self.fail((*at, key), f"must be a whole number, not {what}")
        self.check_range((*at, key), value, value, lo, hi, show=str, why=why)
        return value

    def size(
        self,
        tbl: Mapping[str, Any],
        at: KeyPath,
        key: str,
        default: int,
        lo: int,
        hi: int | None,
    ) -> int:
        if key not in tbl:
            return default
        value = tbl[key]
        path = (*at, key)
        example = 'bytes, or a string with a unit such as "256MiB", "1 GiB" or "500 MB"'
        if isinstance(value, bool) or not isinstance(value, int | str):
            self.fail(path, f"must be a number of {example}, not {_kind(value)}")
        if isinstance(value, str):
            m = _SIZE_RE.fullmatch(value)
            unit = m.group(2).lower() if m else ""
            if m is None or unit not in _SIZE_UNITS:
                self.fail(path, f"{value!r} is not a size: give {example}")
            exact = float(m.group(1)) * _SIZE_UNITS[unit]
            if not exact.is_integer():
                self.fail(path, f"{value!r} is not a whole number of bytes")
            number = int(exact)
        else:
            number = value
        self.check_range(path, value, number, lo, hi, show=_size_text)
        return number

    def duration(
        self,
        tbl: Mapping[str, Any],
        at: KeyPath,
        key: str,
        default: float,
        *,
        zero: bool,
        hi: float | None = None,
        why: str = "",
    ) -> float:
        """Seconds as a number or a string with units; > 0 (≥ 0 with *zero*), at most *hi*."""
        if key not in tbl:
            return default
        value = tbl[key]
        path = (*at, key)
        example = 'seconds, or a string such as "7d", "12h", "30m", "45s" or "1h30m"'
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            self.fail(path, f"must be a number of {example}, not {_kind(value)}")
        if isinstance(value, str):
            if not _DURATION_RE.fullmatch(value):
                self.fail(path, f"{value!r} is not a duration: give {example}")
            number = sum(
                float(amount) * _DURATION_UNITS[unit]
                for amount, unit in _DURATION_PART_RE.findall(value)
            )
        else:
            number = float(value)
        if not math.isfinite(number):
            self.fail(path, f"{_as_written(value)} is not a finite number of seconds")
        self.check_range(
            path, value, number, 0.0, hi, show=_seconds_text, lo_open=not zero, why=why
        )
        return number

    def path(self, tbl: Mapping[str, Any], at: KeyPath, key: str) -> Path | None:
        """A path string, relative to the configuration file's directory; None if absent."""
        value = self.string(tbl, at, key)
        if value is None:
            return None
        return self.resolve((*at, key), value)

    def resolve(self, path: KeyPath, value: str, *, item: int | None = None) -> Path:
        if not value or "\0" in value:
            self.fail(path, f"{value!r} is not a path", item=item)
        p = Path(value)
        return p if p.is_absolute() else self.base_dir / p

    def existing_file(self, tbl: Mapping[str, Any], at: KeyPath, key: str) -> Path | None:
        path = self.path(tbl, at, key)
        if path is not None and (problem := _file_problem(path)) is not None:
            self.fail((*at, key), problem)
        return path

    def string_list(
        self, tbl: Mapping[str, Any], at: KeyPath, key: str, *, what: str
    ) -> tuple[str, ...]:
        value = tbl.get(key, [])
        if not isinstance(value, list):
            self.fail((*at, key), f"must be an array of {what}, not {_kind(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail((*at, key), f"must be a string, not {_kind(item)}", item=i)
        return tuple(value)

    def file_list(
        self, tbl: Mapping[str, Any], at: KeyPath, key: str, *, what: str, single: bool = False
    ) -> tuple[Path, ...]:
        """Paths of existing files; with *single*, one path may be given as a plain string."""
        if single and isinstance(tbl.get(key), str):
            path = self.resolve((*at, key), tbl[key])
            if (problem := _file_problem(path)) is not None:
                self.fail((*at, key), f"{what} {problem}")
            return (path,)
        names = self.string_list(tbl, at, key, what=f"{what} paths")
        files: list[Path] = []
        for i, name in enumerate(names):
            path = self.resolve((*at, key), name, item=i)
            if (problem := _file_problem(path)) is not None:
                self.fail((*at, key), f"{what} {problem}", item=i)
            files.append(path)
        return tuple(files)

    def read_secret(self, at: KeyPath, path: Path) -> str:
        try:
            secret = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.fail(at, f"cannot read {path}: {e}")
        # Editors and `echo` end the file with a newline that is not part of the password.
        secret = secret.rstrip("\r\n")
        if not secret:
            self.fail(at, f"{path} is empty")
        return secret

"""The configuration loader: defaults, every key's validation, paths, units, and the example.

Every error must name the file, the line and the dotted key, so each case below checks all three.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.config import (
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_STATE_DIR,
    AgentConfig,
    ConfigError,
    GnssConfig,
    ModemConfig,
    load_config,
    parse_config,
)
from agent.config.loader import SECTIONS
from agent.errors import InputError, LocatedInputError, TboxError
from can_dbc import SAMPLE_VEHICLE_DBC

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = REPO / "examples"

BASE = """\
[vehicle]
id = "TBX-1"

[[bus]]
url = "virtual://tbox"
"""  # 5 lines: what follows starts on line 6

OTA = """\
[ota]
director_url = "http://d/"
image_url = "http://i/"
hardware_id = "hw"
director_root = "director-root.json"
image_root = "image-root.json"
"""  # lines 6-11: an [ota.ecus.*] table that follows starts on line 12

BAD_SCHEMES = '[[scheme]]\nid = "x"\nkind = "periodic"\nperiod_ms = 5\nsignals = ["A"]\n'


def _public_key_pem() -> bytes:
    return (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _populate(folder: Path) -> Path:
    """The files the cases refer to, next to where the configuration would be."""
    (folder / "schemes.toml").write_text(
        '[[scheme]]\nid = "p"\nkind = "periodic"\nperiod_ms = 100\nsignals = ["A"]\n'
    )
    (folder / "more-schemes.toml").write_text(
        '[[scheme]]\nid = "q"\nkind = "on_change"\nsignals = ["B"]\n'
    )
    (folder / "bad-schemes.toml").write_text(BAD_SCHEMES)
    shutil.copy(SAMPLE_VEHICLE_DBC, folder / "a.dbc")
    for name in ("ca.pem", "client.pem", "client.key"):
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\n")
    (folder / "password.txt").write_text("s3cret\n")
    (folder / "password-crlf.txt").write_text("pass word\r\n")
    (folder / "empty.txt").write_text("\n")
    for name in ("director-root.json", "image-root.json"):
        (folder / name).write_text("{}\n")
    (folder / "backend.pub").write_bytes(_public_key_pem())
    (folder / "bad.pub").write_text("not a key\n")
    (folder / "bad.toml").write_text("[[rule]]\nid = 5\n")
    (folder / "sub").mkdir()
    return folder


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return _populate(tmp_path)


def _load(text: str, base_dir: Path) -> AgentConfig:
    return parse_config(text, "agent.toml", base_dir)


def _error(text: str, base_dir: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(text, base_dir)
    return info.value


# ------------------------------------------------------------------------------------------------
# Defaults


def test_a_minimal_file_takes_every_default(base: Path) -> None:
    config = _load(BASE, base)
    assert config.vehicle_id == "TBX-1"
    assert config.source == "agent.toml"
    assert config.state_dir == DEFAULT_STATE_DIR == Path("/var/lib/tbox")
    (bus,) = config.buses
    assert (bus.name, bus.spec.interface, bus.dbc) == ("tbox", "virtual", (SAMPLE_VEHICLE_DBC,))
    assert config.schemes.files == () and config.schemes.accept_pushed is True
    assert config.state.signals == () and config.state.min_interval_ms == 1000
    assert config.queue.path == Path("/var/lib/tbox/queue.db")
    assert config.queue.max_bytes == DEFAULT_QUEUE_MAX_BYTES == 256 * 1024 * 1024
    assert config.queue.ttl_s == 7 * 86400
    m = config.mqtt
    assert (m.host, m.port, m.tls, m.keepalive_s, m.mqtt5) == ("localhost", 1883, False, 15, True)
    assert (m.client_id, m.username, m.password) == (None, None, None)
    assert (m.ca_file, m.cert_file, m.key_file) == (None, None, None)
    assert (m.batch_max_bytes, m.backoff_initial_s, m.backoff_max_s) == (128 * 1024, 0.5, 30.0)
    c = config.commands
    assert (c.trusted_keys, c.max_bytes, c.max_skew_s, c.max_lifetime_s) == (
        (),
        16 * 1024,
        300.0,
        7 * 86400.0,
    )
    assert config.status.socket == Path("/var/lib/tbox/status.sock")
    assert config.status.prometheus is None
    assert config.shutdown.stage_timeout_s == 5.0
    uplink = config.uplink_config()
    assert (uplink.vehicle_id, uplink.sequence_file) == ("TBX-1", Path("/var/lib/tbox/sequence"))


def test_state_dir_moves_the_derived_paths(base: Path) -> None:
    config = _load(BASE.replace('id = "TBX-1"', 'id = "TBX-1"\nstate_dir = "state"'), base)
    assert config.state_dir == base / "state"
    assert config.queue.path == base / "state" / "queue.db"
    assert config.status.socket == base / "state" / "status.sock"
    assert config.sequence_file == base / "state" / "sequence"


def test_tls_sets_the_default_port_and_files_imply_tls(base: Path) -> None:
    assert _load(BASE + "[mqtt]\ntls = true\n", base).mqtt.port == 8883
    assert _load(BASE + "[mqtt]\ntls = true\nport = 8884\n", base).mqtt.port == 8884
    config = _load(BASE + '[mqtt]\nca_file = "ca.pem"\n', base)
    assert (config.mqtt.tls, config.mqtt.port, config.mqtt.ca_file) == (True, 8883, base / "ca.pem")
    config = _load(BASE + '[mqtt]\ncert_file = "client.pem"\nkey_file = "client.key"\n', base)
    assert config.mqtt.tls and config.uplink_config().uses_tls
    assert (config.mqtt.cert_file, config.mqtt.key_file) == (
        base / "client.pem",
        base / "client.key",
    )


# ------------------------------------------------------------------------------------------------
# Paths


def test_relative_paths_are_relative_to_the_file(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace('url = "virtual://tbox"', 'url = "virtual://tbox"\ndbc = "../a.dbc"') + (
        '[schemes]\nfiles = ["../schemes.toml", "' + str(base / "more-schemes.toml") + '"]\n'
        '[queue]\npath = "q/queue.db"\n'
        '[status]\nsocket = "/run/tbox/status.sock"\n'
    )
    (base / "sub" / "agent.toml").write_text(text)
    monkeypatch.chdir(base / "sub")
    config = load_config("agent.toml")  # relative to the working directory, made absolute
    assert config.source == "agent.toml"
    assert config.buses[0].dbc == (base / "sub" / ".." / "a.dbc",)
    assert config.schemes.files == (
        base / "sub" / ".." / "schemes.toml",
        base / "more-schemes.toml",
    )
    assert config.queue.path == base / "sub" / "q" / "queue.db"
    assert config.status.socket == Path("/run/tbox/status.sock")
    assert all(p.is_absolute() for p in (*config.buses[0].dbc, *config.schemes.files))


def test_parse_config_makes_a_relative_base_absolute(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(base)
    config = parse_config(BASE + '[queue]\npath = "queue.db"\n', "x.toml", Path())
    assert config.queue.path == base / "queue.db"


def test_dbc_lists_and_the_sample_default(base: Path) -> None:
    text = BASE + '[[bus]]\nurl = "socketcan://can1"\ndbc = ["a.dbc", "a.dbc"]\n'
    one, two = _load(text, base).buses
    assert one.dbc == (SAMPLE_VEHICLE_DBC,)
    assert (two.name, two.dbc) == ("can1", (base / "a.dbc", base / "a.dbc"))


def test_password_file_is_read_without_its_newline(base: Path) -> None:
    config = _load(BASE + '[mqtt]\nusername = "u"\npassword_file = "password.txt"\n', base)
    assert (config.mqtt.username, config.mqtt.password) == ("u", "s3cret")
    config = _load(BASE + '[mqtt]\npassword_file = "password-crlf.txt"\n', base)
    assert config.mqtt.password == "pass word"
    assert _load(BASE + '[mqtt]\npassword = "inline"\n', base).mqtt.password == "inline"


def test_trusted_keys_are_loaded(base: Path) -> None:
    text = BASE + '[commands.trusted_keys]\nbackend = "backend.pub"\n"ops.v2" = "backend.pub"\n'
    config = _load(text, base)
    assert config.commands.trusted_keys == (
        ("backend", base / "backend.pub"),
        ("ops.v2", base / "backend.pub"),
    )


def test_schemes_and_state_signals(base: Path) -> None:
    text = BASE + (
        '[schemes]\nfiles = ["schemes.toml", "more-schemes.toml"]\naccept_pushed = false\n'
        '[state]\nsignals = ["A", "MSG.B", "can0:MSG.C"]\nmin_interval_ms = 0\n'
    )
    config = _load(text, base)
    assert config.schemes.files == (base / "schemes.toml", base / "more-schemes.toml")
    assert config.schemes.accept_pushed is False
    assert config.state.signals == ("A", "MSG.B", "can0:MSG.C")
    assert config.state.min_interval_ms == 0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"127.0.0.1:9100"', ("127.0.0.1", 9100)),
        ('"127.8.9.10:1"', ("127.8.9.10", 1)),
        ('"localhost:65535"', ("localhost", 65535)),
        ('"[::1]:9100"', ("::1", 9100)),
    ],
)
def test_prometheus_on_loopback(base: Path, text: str, expected: tuple[str, int]) -> None:
    assert _load(BASE + f"[status]\nprometheus = {text}\n", base).status.prometheus == expected


# ------------------------------------------------------------------------------------------------
# Units


@pytest.mark.parametrize(
    ("value", "size"),
    [
        ("268435456", 256 * 2**20),
        ('"256MiB"', 256 * 2**20),
        ('"1 GiB"', 2**30),
        ('"500 MB"', 500_000_000),
        ('"2 mib"', 2 * 2**20),
        ('"1.5GiB"', 3 * 2**29),
        ('"1048576"', 2**20),
        ('" 4 TB "', 4 * 10**12),
    ],
)
def test_sizes_take_units(base: Path, value: str, size: int) -> None:
    assert _load(BASE + f"[queue]\nmax_bytes = {value}\n", base).queue.max_bytes == size


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3600", 3600.0),
        ("0.25", 0.25),
        ('"7d"', 7 * 86400.0),
        ('"12h"', 12 * 3600.0),
        ('"30m"', 1800.0),
        ('"45s"', 45.0),
        ('"250ms"', 0.25),
        ('"1h30m"', 5400.0),
        ('"1d 12h"', 1.5 * 86400),
        ('"1.5h"', 5400.0),
    ],
)
def test_durations_take_units(base: Path, value: str, seconds: float) -> None:
    assert _load(BASE + f"[queue]\nttl_s = {value}\n", base).queue.ttl_s == seconds


def test_largest_batches_still_make_an_uplink_config(base: Path) -> None:
    config = _load(BASE + '[mqtt]\nbatch_max_bytes = "16MiB"\n', base)
    uplink = config.uplink_config()
    assert uplink.batch_max_bytes == 16 * 2**20 <= uplink.take_max_bytes


# ------------------------------------------------------------------------------------------------
# Errors: (what to append to BASE, line, key, fragment of the problem)

ERRORS: list[tuple[str, int | None, str | None, str]] = [
    # unknown keys, with suggestions
    ('[mqt]\nhost = "x"\n', 6, "mqt", "unknown key (did you mean 'mqtt'?)"),
    ('color = "red"\n', 6, "bus[0].color", "unknown key (expected one of: url, dbc)"),
    ("[mqtt]\nkeepalive = 10\n", 7, "mqtt.keepalive", "did you mean 'keepalive_s'?"),
    ('[vehicle.extra]\nx = 1\n', 6, "vehicle.extra", "unknown key"),
    ('[[bus]]\nurl = "virtual://b"\nbitrate = 500\n', 8, "bus[1].bitrate", "unknown key"),
    ('[state]\nsignal = ["A"]\n', 7, "state.signal", "did you mean 'signals'?"),
    # syntax
    ("[mqtt]\nport = = 1\n", 7, None, "TOML syntax error: "),
    ("[vehicle]\n", 6, None, "TOML syntax error: "),
    # [[bus]]
    ('[[bus]]\nurl = "virtual://tbox"\n', 7, "bus[1].url", "bus name 'tbox' is already bus[0]'s"),
    ('[[bus]]\nurl = "can0"\n', 7, "bus[1].url", "has no scheme"),
    ('[[bus]]\nurl = "socketcan://can0?bitrate=fast"\n', 7, "bus[1].url", "not a whole number"),
    ('[[bus]]\nurl = "socketcand://[::1/x"\n', 7, "bus[1].url", "IPv6"),
    ('[[bus]]\nurl = 5\n', 7, "bus[1].url", "must be a string, not a number"),
    ('[[bus]]\ndbc = "a.dbc"\n', 6, "bus[1].url", "is required"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = "missing.dbc"\n', 8, "bus[1].dbc",
     "DBC file {base}/missing.dbc does not exist"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = [\n  "a.dbc",\n  "missing.dbc",\n]\n', 10,
     "bus[1].dbc[1]", "missing.dbc does not exist"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = []\n', 8, "bus[1].dbc", "at least one DBC file"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = "sub"\n', 8, "bus[1].dbc", "is not a regular file"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = [1]\n', 8, "bus[1].dbc[0]", "must be a string"),
    ('[[bus]]\nurl = "virtual://b"\ndbc = ""\n', 8, "bus[1].dbc", "'' is not a path"),
    # [schemes]
    ('[schemes]\nfiles = ["missing.toml"]\n', 7, "schemes.files[0]",
     "scheme file {base}/missing.toml does not exist"),
    ('[schemes]\nfiles = "schemes.toml"\n', 7, "schemes.files",
     "must be an array of scheme file paths, not a string"),
    ('[schemes]\nfiles = [\n  "schemes.toml",\n  "bad-schemes.toml",\n]\n', 9, "schemes.files[1]",
     "{base}/bad-schemes.toml:4: scheme[0].period_ms: 5 is out of range"),
    ('[schemes]\nfiles = ["schemes.toml", "schemes.toml"]\n', 7, "schemes.files[1]",
     "scheme id 'p' is also in {base}/schemes.toml"),
    ("[schemes]\naccept_pushed = 1\n", 7, "schemes.accept_pushed", "must be true or false"),
    # [state]
    ('[state]\nsignals = ["A..B"]\n', 7, "state.signals[0]", "'A..B' is not a signal name"),
    ('[state]\nsignals = [\n  "A",\n  "A",\n]\n', 9, "state.signals[1]", "'A' is listed twice"),
    ("[state]\nsignals = [1]\n", 7, "state.signals[0]", "must be a string, not a number"),
    ('[state]\nsignals = "A"\n', 7, "state.signals", "must be an array of signal names"),
    ("[state]\nmin_interval_ms = -1\n", 7, "state.min_interval_ms", "-1 is below the minimum of 0"),
    ("[state]\nmin_interval_ms = 0.5\n", 7, "state.min_interval_ms",
     "must be a whole number, not 0.5"),
    # [queue]
    ('[queue]\nmax_bytes = "512KiB"\n', 7, "queue.max_bytes",
     "'512KiB' is below the minimum of 1 MiB"),
    ("[queue]\nmax_bytes = 1000\n", 7, "queue.max_bytes", "1000 is below the minimum of 1 MiB"),
    ("[queue]\nmax_bytes = 1.5e9\n", 7, "queue.max_bytes", "must be a number of bytes"),
    ('[queue]\nmax_bytes = "lots"\n', 7, "queue.max_bytes", "'lots' is not a size"),
    ('[queue]\nmax_bytes = "2 MiBs"\n', 7, "queue.max_bytes", "is not a size"),
    ('[queue]\nmax_bytes = "1048576.5 B"\n', 7, "queue.max_bytes", "not a whole number of bytes"),
    ("[queue]\nttl_s = 0\n", 7, "queue.ttl_s", "0 must be more than 0 s"),
    ('[queue]\nttl_s = "7 days"\n', 7, "queue.ttl_s", "'7 days' is not a duration"),
    ("[queue]\nttl_s = nan\n", 7, "queue.ttl_s", "nan is not a finite number of seconds"),
    ("[queue]\nttl_s = inf\n", 7, "queue.ttl_s", "not a finite number"),
    ("[queue]\nttl_s = true\n", 7, "queue.ttl_s", "must be a number of seconds"),
    ('[queue]\npath = ""\n', 7, "queue.path", "'' is not a path"),
    ('[queue]\npath = "a\\u0000b"\n', 7, "queue.path", "is not a path"),
    # [mqtt]
    ("[mqtt]\nkeepalive_s = 45\n", 7, "mqtt.keepalive_s",
     "45 is above the maximum of 20 (a longer keepalive notices a dead link too late)"),
    ("[mqtt]\nkeepalive_s = 0\n", 7, "mqtt.keepalive_s", "0 is below the minimum of 1"),
    ("[mqtt]\nkeepalive_s = 1.5\n", 7, "mqtt.keepalive_s", "must be a whole number, not 1.5"),
    ("[mqtt]\nport = 0\n", 7, "mqtt.port", "0 is below the minimum of 1"),
    ("[mqtt]\nport = 65536\n", 7, "mqtt.port", "65536 is above the maximum of 65535"),
    ('[mqtt]\nport = "1883"\n', 7, "mqtt.port", "must be a whole number, not a string"),
    ('[mqtt]\nhost = ""\n', 7, "mqtt.host", "'' is not a host name or address"),
    ('[mqtt]\nhost = "a b"\n', 7, "mqtt.host", "is not a host name"),
    ("[mqtt]\nhost = 1\n", 7, "mqtt.host", "must be a string, not a number"),
    ('[mqtt]\nclient_id = ""\n', 7, "mqtt.client_id", "must not be empty"),
    ("[mqtt]\nusername = true\n", 7, "mqtt.username", "must be a string, not a boolean"),
    ('[mqtt]\nmqtt5 = "yes"\n', 7, "mqtt.mqtt5", "must be true or false, not a string"),
    ('[mqtt]\ntls = "yes"\n', 7, "mqtt.tls", "must be true or false"),
    ('[mqtt]\ntls = false\nca_file = "ca.pem"\n', 7, "mqtt.tls",
     "is false, but ca_file can only be used with TLS"),
    ('[mqtt]\ncert_file = "client.pem"\n', 7, "mqtt.cert_file", "needs key_file too"),
    ('[mqtt]\nkey_file = "client.key"\n', 7, "mqtt.key_file", "needs cert_file too"),
    ('[mqtt]\nca_file = "missing.pem"\n', 7, "mqtt.ca_file", "{base}/missing.pem does not exist"),
    ('[mqtt]\npassword = "x"\npassword_file = "password.txt"\n', 8, "mqtt.password_file",
     "mutually exclusive"),
    ('[mqtt]\npassword_file = "empty.txt"\n', 7, "mqtt.password_file", "is empty"),
    ('[mqtt]\npassword_file = "nope.txt"\n', 7, "mqtt.password_file", "does not exist"),
    ('[mqtt]\nbatch_max_bytes = "2KiB"\n', 7, "mqtt.batch_max_bytes",
     "'2KiB' is below the minimum of 4 KiB"),
    ('[mqtt]\nbatch_max_bytes = "17MiB"\n', 7, "mqtt.batch_max_bytes",
     "'17MiB' is above the maximum of 16 MiB"),
    ("[mqtt]\nbackoff_initial_s = 10\nbackoff_max_s = 5\n", 7, "mqtt.backoff_initial_s",
     "backoff_initial_s (10 s) is above backoff_max_s (5 s)"),
    ("[mqtt]\nbackoff_initial_s = 60\n", 7, "mqtt.backoff_initial_s", "is above backoff_max_s"),
    ("[mqtt]\nbackoff_max_s = 0.1\n", 7, "mqtt.backoff_max_s", "is above backoff_max_s (0.1 s)"),
    ("[mqtt]\nbackoff_max_s = 0\n", 7, "mqtt.backoff_max_s", "0 must be more than 0 s"),
    ('[mqtt]\nbackoff_max_s = "2h"\n', 7, "mqtt.backoff_max_s",
     "'2h' is above the maximum of 1 h (a longer wait keeps a vehicle offline"),
    # [commands]
    ('[commands]\ntrusted_keys = { ops = "missing.pub" }\n', 7, "commands.trusted_keys.ops",
     "public key file {base}/missing.pub does not exist"),
    ('[commands.trusted_keys]\nops = "bad.pub"\n', 7, "commands.trusted_keys.ops",
     "not an Ed25519 public key"),
    ('[commands.trusted_keys]\n"ops.v1" = 5\n', 7, 'commands.trusted_keys."ops.v1"',
     "must be a string, not a number"),
    ('[commands.trusted_keys]\n"" = "backend.pub"\n', 7, 'commands.trusted_keys.""',
     "a key id must be non-empty"),
    ('[commands]\ntrusted_keys = ["backend.pub"]\n', 7, "commands.trusted_keys",
     "must be a table of key id = public key file, not an array"),
    ('[commands]\nmax_bytes = "2MiB"\n', 7, "commands.max_bytes", "above the maximum of 1 MiB"),
    ("[commands]\nmax_bytes = 100\n", 7, "commands.max_bytes", "below the minimum of 1 KiB"),
    ('[commands]\nmax_skew_s = "2d"\n', 7, "commands.max_skew_s", "above the maximum of 1 d"),
    ("[commands]\nmax_skew_s = -1\n", 7, "commands.max_skew_s", "-1 is below the minimum of 0 s"),
    ('[commands]\nmax_lifetime_s = "31d"\n', 7, "commands.max_lifetime_s", "maximum of 30 d"),
    # [status]
    ('[status]\nprometheus = "0.0.0.0:9100"\n', 7, "status.prometheus",
     "'0.0.0.0' is not a loopback address (127.0.0.0/8, ::1 or localhost): the metrics endpoint "
     "has no authentication"),
    ('[status]\nprometheus = "metrics.example.com:9100"\n', 7, "status.prometheus",
     "not a loopback address"),
    ('[status]\nprometheus = "[::]:9100"\n', 7, "status.prometheus", "not a loopback address"),
    ('[status]\nprometheus = "9100"\n', 7, "status.prometheus", 'must be "HOST:PORT"'),
    ('[status]\nprometheus = ":9100"\n', 7, "status.prometheus", "names no host"),
    ('[status]\nprometheus = "[::1]9100"\n', 7, "status.prometheus", 'must be "HOST:PORT"'),
    ('[status]\nprometheus = "localhost:99999"\n', 7, "status.prometheus", "port must be"),
    ('[status]\nprometheus = "localhost:http"\n', 7, "status.prometheus", "port must be"),
    ("[status]\nprometheus = 9100\n", 7, "status.prometheus", "must be a string"),
    ('[status]\nsocket = "/' + "s" * 120 + '"\n', 7, "status.socket",
     "a unix socket path can have at most 107"),
    # [shutdown]
    ("[shutdown]\nstage_timeout_s = 121\n", 7, "shutdown.stage_timeout_s",
     "121 is above the maximum of 120 s"),
    ("[shutdown]\nstage_timeout_s = -1\n", 7, "shutdown.stage_timeout_s", "must be more than 0 s"),
    # [gnss], [modem]
    ("[gnss]\nbaudrate = 9600\n", 6, "gnss.port", "is required: the device's serial port"),
    ('[gnss]\nport = "/dev/x"\nbaudrate = 9601\n', 8, "gnss.baudrate", "not a standard rate"),
    ('[gnss]\nport = "/dev/x"\nfix_timeout_s = 0\n', 8, "gnss.fix_timeout_s", "more than 0"),
    ('[modem]\nport = "/dev/x"\npoll_interval_s = 5\nresponse_timeout_s = 6\n', 9,
     "modem.response_timeout_s", "a poll must end before the next begins"),
    ('[modem]\nport = ""\n', 7, "modem.port", "is required"),
    # [ids]
    ("[ids]\n", 6, "ids.rules", "is required"),
    ('[ids]\nrules = "bad.toml"\n', 7, "ids.rules", "bad.toml"),
    # [ota]
    ('[ota]\nimage_url = "http://i/"\n', 6, "ota.director_url", "is required"),
    ('[ota]\ndirector_url = "ftp://d/"\n', 7, "ota.director_url", "is not an http"),
    ('[ota]\ndirector_url = "http://d/"\nimage_url = "http://i/"\nhardware_id = "a b"\n', 9,
     "ota.hardware_id", "must be 1–64 characters"),
    ('[ota]\ndirector_url = "http://d/"\nimage_url = "http://i/"\nhardware_id = "hw"\n'
     'director_root = "nope.json"\n', 10, "ota.director_root", "does not exist"),
    (OTA + '[ota.ecus.vcu]\nhardware_id = "vcu"\nbus = "can9"\n', 14, "ota.ecus.vcu.bus",
     "must name a [[bus]] (configured: tbox)"),
    (OTA + '[ota.ecus.vcu]\nhardware_id = "vcu"\nbus = "tbox"\nrequest_id = 1\n', 12,
     "ota.ecus.vcu.response_id", "is required"),
    (OTA + '[ota.ecus.vcu]\nhardware_id = "vcu"\nbus = "tbox"\nrequest_id = 1\n'
     'response_id = 1\n', 16, "ota.ecus.vcu.response_id", "must differ"),
    (OTA + '[ota.ecus.vcu]\nhardware_id = "vcu"\nbus = "tbox"\nrequest_id = 1\n'
     'response_id = 2\nsecurity_level = 2\n', 17, "ota.ecus.vcu.security_level", "must be odd"),
    (OTA + '[ota.ecus.vcu]\nhardware_id = "vcu"\nbus = "tbox"\nrequest_id = 1\n'
     'response_id = 2\nalgorithm = "rot13"\n', 17, "ota.ecus.vcu.algorithm", "is none of"),
    (OTA + '[ota.ecus.vcu]\nhardware = "vcu"\n', 13, "ota.ecus.vcu.hardware", "unknown key"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "line", "key", "fragment"), ERRORS)
def test_errors_name_file_line_and_key(
    base: Path, extra: str, line: int | None, key: str | None, fragment: str
) -> None:
    error = _error(BASE + extra, base)
    fragment = fragment.format(base=base)
    assert (error.source, error.line, error.key) == ("agent.toml", line, key), str(error)
    assert fragment in error.problem, str(error)
    where = "agent.toml" if line is None else f"agent.toml:{line}"
    assert str(error) == (
        f"{where}: {key}: {error.problem}" if key else f"{where}: {error.problem}"
    )
    assert "\n" not in str(error)


DOCUMENT_ERRORS: list[tuple[str, int | None, str | None, str]] = [
    ("", None, "vehicle.id", "is required"),
    ('color = "red"\n' + BASE, 1, "color",
     "unknown key (expected one of: vehicle, bus, schemes, state, queue, mqtt, commands, status, "
     "shutdown, gnss, modem, ota, ids)"),
    ("[vehicle]\nstate_dir = '/x'\n", 1, "vehicle.id", "is required"),
    ("vehicle = 5\n", 1, "vehicle", "must be a table ([vehicle]), not a number"),
    ('[vehicle]\nid = "a/b"\n', 2, "vehicle.id", "'a/b' must be 1–64 printable characters"),
    ('[vehicle]\nid = "a+b"\n', 2, "vehicle.id", "without whitespace or / + #"),
    ('[vehicle]\nid = "#"\n', 2, "vehicle.id", "1–64"),
    ('[vehicle]\nid = "has space"\n', 2, "vehicle.id", "1–64"),
    ('[vehicle]\nid = "tab\\t"\n', 2, "vehicle.id", "1–64"),
    ('[vehicle]\nid = ""\n', 2, "vehicle.id", "1–64"),
    ('[vehicle]\nid = "' + "v" * 65 + '"\n', 2, "vehicle.id", "1–64"),
    ('[vehicle]\nid = "bell\\u0007"\n', 2, "vehicle.id", "printable"),
    ("[vehicle]\nid = 5\n", 2, "vehicle.id", "must be a string, not a number"),
    ('[vehicle]\nid = "V"\nstate_dir = 3\n', 3, "vehicle.state_dir", "must be a string"),
    ('[vehicle]\nid = "V"\n', None, "bus", "is required: at least one [[bus]]"),
    ("schemes = 1\n" + BASE, 1, "schemes", "must be a table ([schemes]), not a number"),
    ('bus = []\n[vehicle]\nid = "V"\n', 1, "bus", "must have at least one [[bus]]"),
    ('[vehicle]\nid = "V"\n[bus]\nurl = "virtual://x"\n', 3, "bus",
     "must be an array of tables ([[bus]]), not a table"),
    ('bus = [1]\n[vehicle]\nid = "V"\n', 1, "bus[0]", "must be a table, not a number"),
    ('bus = [{ url = "virtual://a" },\n  { url = "virtual://a" }]\n[vehicle]\nid = "V"\n', 2,
     "bus[1].url", "already bus[0]'s"),
    ('[vehicle]\nid = "V"\nstate_dir = "/' + "d" * 100 + '"\n[[bus]]\nurl = "virtual://x"\n', 3,
     "vehicle.state_dir", "the status socket /ddd"),
    ("x = \n", 1, None, "TOML syntax error: "),
    ('[vehicle]\nid = "V"\n[vehicle]\n', 3, None, "TOML syntax error: "),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "key", "fragment"), DOCUMENT_ERRORS)
def test_document_level_errors(
    base: Path, text: str, line: int | None, key: str | None, fragment: str
) -> None:
    error = _error(text, base)
    assert (error.line, error.key) == (line, key), str(error)
    assert fragment in error.problem, str(error)


def test_config_errors_are_located_input_errors() -> None:
    assert issubclass(ConfigError, LocatedInputError)
    assert issubclass(ConfigError, InputError) and issubclass(ConfigError, TboxError)


def test_file_problems_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: file not found"
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    (tmp_path / "latin1.toml").write_bytes(b'[vehicle]\nid = "\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin1\.toml: cannot read the file: .*utf-8"):
        load_config(tmp_path / "latin1.toml")
    (tmp_path / "agent.toml").write_text(BASE + "[mqtt]\nkeepalive_s = 45\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "agent.toml"))
    assert str(info.value).startswith(f"{tmp_path / 'agent.toml'}:7: mqtt.keepalive_s: 45 is")


def test_an_inconsistency_only_uplink_config_finds_is_still_a_config_error(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(self: AgentConfig) -> Any:
        raise ValueError("tls_cert_file and tls_key_file go together")

    monkeypatch.setattr(AgentConfig, "uplink_config", refuse)
    error = _error(BASE + "[mqtt]\nport = 1884\n", base)
    assert (error.key, error.line) == ("mqtt", 6)
    assert error.problem == "tls_cert_file and tls_key_file go together"


# ------------------------------------------------------------------------------------------------
# The shipped example


def test_the_example_loads() -> None:
    config = load_config(EXAMPLES / "agent.toml")
    assert config.vehicle_id == "TBXEV5M20R0000001"
    assert config.buses[0].dbc == (SAMPLE_VEHICLE_DBC,)
    assert config.schemes.files == (EXAMPLES / "schemes.toml",)
    assert (config.mqtt.port, config.mqtt.tls) == (8883, True)
    assert config.status.prometheus == ("127.0.0.1", 9464)


def test_the_example_schemes_use_sample_vehicle_signals() -> None:
    from agent.schemes import SignalRef, load_schemes
    from can_dbc import load_dbc

    database = load_dbc(SAMPLE_VEHICLE_DBC).database
    schemes = load_schemes(EXAMPLES / "schemes.toml")
    assert [s.id for s in schemes] == ["drive-1hz", "body-changes", "hard-braking"]
    config = load_config(EXAMPLES / "agent.toml")
    names = {n for s in schemes for n in s.signals_used()} | set(config.state.signals)
    for name in names:
        ref = SignalRef.parse(name)
        assert ref.message is not None, name
        message = database.get_message_by_name(ref.message)
        assert ref.signal in {signal.name for signal in message.signals}, name


def test_the_example_with_its_commented_keys_uses_every_key(tmp_path: Path) -> None:
    """Uncommented (with the files they need), the example's keys are all valid, and all there."""
    shutil.copy(EXAMPLES / "schemes.toml", tmp_path / "schemes.toml")
    (tmp_path / "mqtt-password").write_text("s3cret\n")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM\n")
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "backend-2025.pub").write_bytes(_public_key_pem())
    for name in ("director-root.json", "image-root.json"):
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "ids-rules.toml").write_text("version = 1\n")
    (tmp_path / "secoc-keys.toml").write_text("[keys]\n")
    text = (EXAMPLES / "agent.toml").read_text()
    text = re.sub(r"(?m)^password = .*\n", "", text)  # password_file replaces it
    text = re.sub(
        r"(?m)^# ((?:dbc|password_file|ca_file|cert_file|key_file|backend-2025) = )", r"\1", text
    )
    text = re.sub(
        r"(?m)^# (\[(?:gnss|modem|ota|ids)\]|(?:port|baudrate|silence_timeout_s|fix_timeout_s"
        r"|poll_interval_s|response_timeout_s|director_url|image_url|hardware_id|director_root"
        r"|image_root|ecus|slots_dir|health_check|health_timeout_s|max_boot_attempts|boot_on_start"
        r"|min_bytes_per_s|max_target_bytes|download_stall_s|rules|keys|idsm_instance_id) = )",
        r"\1",
        text,
    )
    text = text.replace("/etc/tbox/vehicle.dbc", str(SAMPLE_VEHICLE_DBC))
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    assert config.mqtt.password == "s3cret"
    assert config.mqtt.cert_file == tmp_path / "client.pem"
    assert config.commands.trusted_keys == (
        ("backend-2025", tmp_path / "keys" / "backend-2025.pub"),
    )
    assert config.buses[0].dbc == (SAMPLE_VEHICLE_DBC,)
    assert config.gnss == GnssConfig("/dev/ttyACM0", 9600, 3.0, 10.0)
    assert config.modem == ModemConfig("/dev/ttyUSB2", 115200, 10.0, 2.0)
    assert config.ota is not None and config.ota.director_root == tmp_path / "director-root.json"
    assert config.ota.max_target_bytes == 4 * 2**30 and config.ota.health_timeout_s == 60
    assert config.slots_dir == Path("/var/lib/tbox/slots")
    assert config.ids is not None and config.ids.rules == tmp_path / "ids-rules.toml"
    assert config.ota.ecus == (("bms", "bms-hw1"), ("vcu", "vcu-hw2"))
    ((ecu, flash),) = config.ota.flash
    assert (ecu, flash.bus.name, flash.request_id, flash.response_id) == (
        "vcu",
        "can0",
        0x7E1,
        0x7E9,
    )

    keys = set(re.findall(r"(?m)^([a-z_0-9]+) = ", text))
    for section, names in SECTIONS.items():
        for name in names:
            assert (
                name in keys
                or name == "password"
                or (section, name)
                == (
                    "commands",
                    "trusted_keys",
                )
            ), f"{section}.{name} is not in examples/agent.toml"
    assert "[commands.trusted_keys]" in text


def test_the_readme_documents_every_key() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Configuration (`tbox run --config`)")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end >= 0 else None]
    for table, names in SECTIONS.items():
        header = "[[bus]]" if table == "bus" else f"[{table}]"
        assert header in section, header
        for name in names:
            assert f"`{name}`" in section, f"{table}.{name} is not documented"
    assert "tbox check-config" in section and "tbox-agent.service" in section


# ------------------------------------------------------------------------------------------------
# Untrusted text: anything loads or fails with ConfigError


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _populate(tmp_path_factory.mktemp("config-files"))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300))
def test_arbitrary_text_loads_or_raises_config_error(files_dir: Path, text: str) -> None:
    try:
        parse_config(text, "any.toml", files_dir)
    except ConfigError as e:
        assert str(e).startswith("any.toml")


_STRINGS = st.sampled_from(
    [
        "",
        "a.dbc",
        "schemes.toml",
        "bad-schemes.toml",
        "backend.pub",
        "bad.pub",
        "password.txt",
        "ca.pem",
        "sub",
        "virtual://v",
        "socketcan://can0?bitrate=x",
        "socketcand://[::1/x",
        "127.0.0.1:9100",
        "[::1]:1",
        "0.0.0.0:80",
        "256MiB",
        "1.5 GiB",
        "7d",
        "1h30m",
        "A..B",
        "MSG.SIG",
        "/" + "p" * 200,
        "a\u0000b",
        "V/1",
    ]
)
# JSON escapes of these are TOML escapes too (no surrogates, no characters beyond the BMP).
_TEXT = st.text(st.characters(codec="utf-8", max_codepoint=0xFFFF), max_size=6)
_LEAVES = st.one_of(
    st.booleans(),
    st.integers(-2, 200),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    _STRINGS,
    _TEXT,
)
_VALUES = st.one_of(
    _LEAVES,
    st.lists(_LEAVES, max_size=3),
    st.dictionaries(st.sampled_from(["ops", "a.b", ""]) | _TEXT, _LEAVES, max_size=2),
)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _section(name: str) -> st.SearchStrategy[dict[str, object]]:
    """A table of the section's own keys (and one it does not know) with arbitrary values."""
    return st.dictionaries(st.sampled_from([*SECTIONS[name], "x"]), _VALUES, max_size=4)


def _with(fixed: dict[str, object]) -> Any:
    """Merge *fixed* into a generated table half of the time, to get past the required keys."""
    return lambda extra, keep: {**extra, **fixed} if keep else extra


_OTHER_SECTIONS = [name for name in SECTIONS if name not in ("vehicle", "bus")]


@settings(max_examples=300, deadline=None)
@given(
    vehicle=st.just({"id": "V1"})
    | st.builds(_with({"id": "V1"}), _section("vehicle"), st.booleans()),
    buses=st.lists(
        st.just({"url": "virtual://b0"})
        | st.integers(0, 3).flatmap(
            lambda n: st.builds(_with({"url": f"virtual://b{n}"}), _section("bus"), st.booleans())
        ),
        min_size=1,
        max_size=3,
    ),
    sections=st.lists(st.sampled_from(_OTHER_SECTIONS), unique=True, max_size=3).flatmap(
        lambda names: st.fixed_dictionaries({name: _section(name) for name in names})
    ),
)
def test_generated_documents_load_or_raise_config_error(
    files_dir: Path,
    vehicle: dict[str, object],
    buses: list[dict[str, object]],
    sections: dict[str, dict[str, object]],
) -> None:
    text = "[vehicle]\n" + "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in vehicle.items())
    for bus in buses:
        text += "[[bus]]\n" + "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in bus.items())
    for name, table in sections.items():
        text += f"[{name}]\n" + "".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in table.items())
    try:
        config = parse_config(text, "gen.toml", files_dir)
    except ConfigError as e:
        assert str(e).startswith("gen.toml")
        if e.key is not None and e.key.split(".")[0].split("[")[0] in SECTIONS:
            assert e.line is not None or e.key in {"vehicle.id", "bus"}, str(e)
        return
    config.uplink_config()  # a configuration that loads is consistent

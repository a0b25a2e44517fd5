"""The agent's configuration model: frozen dataclasses, independent of the file format.

:mod:`agent.config.loader` builds an :class:`AgentConfig` from a TOML file once, at start-up, and
validates every key; the rest of the agent only reads these objects. Paths are absolute (the
loader resolves relative ones against the configuration file's directory); times are seconds
unless a name says otherwise; sizes are bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from agent.busurl import BusSpec
from agent.telemetry_codec import DEFAULT_MAX_BYTES as DEFAULT_BATCH_MAX_BYTES
from agent.uplink import UplinkConfig

__all__ = [
    "DEFAULT_QUEUE_MAX_BYTES",
    "DEFAULT_STATE_DIR",
    "AgentConfig",
    "BusConfig",
    "CommandsConfig",
    "EcuFlashConfig",
    "GnssConfig",
    "IdsConfig",
    "ModemConfig",
    "MqttConfig",
    "OtaConfig",
    "QueueConfig",
    "SchemesConfig",
    "ShutdownConfig",
    "StateConfig",
    "StatusConfig",
]

DEFAULT_STATE_DIR: Final = Path("/var/lib/tbox")
DEFAULT_QUEUE_MAX_BYTES: Final = 256 * 1024 * 1024
# The uplink reads 1 MiB of stored records per batch by default; a larger batch cap needs at
# least as much, or UplinkConfig refuses it.
_MIN_TAKE_MAX_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BusConfig:
    """One ``[[bus]]``: a bus URL (C7) and the DBC files that decode it (later files win)."""

    spec: BusSpec
    dbc: tuple[Path, ...]

    @property
    def name(self) -> str:
        """The bus name frames carry (``can0``)."""
        return self.spec.name


@dataclass(frozen=True, slots=True)
class SchemesConfig:
    """``[schemes]``: scheme files on the vehicle, and whether ``cmd/schemes`` may replace them.

    Pushed schemes are persisted in ``<state_dir>/pushed-schemes.toml`` and, once present, are the
    active set (the files are the factory default that a pushed set replaces).
    """

    files: tuple[Path, ...] = ()
    accept_pushed: bool = True


@dataclass(frozen=True, slots=True)
class StateConfig:
    """``[state]``: signals of the retained ``state`` topic (none: no state topic) and the least
    time between two publications of one signal's change."""

    signals: tuple[str, ...] = ()
    min_interval_ms: int = 1000


@dataclass(frozen=True, slots=True)
class QueueConfig:
    """``[queue]``: the upload queue's file, its cap and how long records live in it."""

    path: Path
    max_bytes: int = DEFAULT_QUEUE_MAX_BYTES
    ttl_s: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """``[mqtt]``: the broker connection (see :class:`~agent.uplink.UplinkConfig`)."""

    host: str = "localhost"
    port: int = 1883
    client_id: str | None = None
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 15
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    mqtt5: bool = True
    batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    session_expiry_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class CommandsConfig:
    """``[commands]``: keys trusted to sign commands (key id → public key file) and limits.

    Without trusted keys the agent still subscribes and answers every command with a rejection
    (``unknown_key``), so that a backend learns why nothing happens.
    """

    trusted_keys: tuple[tuple[str, Path], ...] = ()
    max_bytes: int = 16 * 1024
    max_skew_s: float = 300.0
    max_lifetime_s: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """``[status]``: the unix socket ``tbox status`` reads, and the optional Prometheus endpoint
    (``HOST:PORT`` on a loopback address; ``None``: off)."""

    socket: Path
    prometheus: tuple[str, int] | None = None


@dataclass(frozen=True, slots=True)
class GnssConfig:
    """``[gnss]``: the GNSS receiver's NMEA serial port; its values are ``gnss:GNSS.*`` signals.

    A receiver sending nothing for ``silence_timeout_s`` is reported silent and its port reopened;
    one without a valid fix for ``fix_timeout_s`` is reported as having lost its fix.
    """

    port: str
    baudrate: int = 9600
    silence_timeout_s: float = 3.0
    fix_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class ModemConfig:
    """``[modem]``: the cellular modem's AT command port, polled every ``poll_interval_s`` for
    ``modem:MODEM.*`` signals (signal quality, registration, operator, access technology)."""

    port: str
    baudrate: int = 115200
    poll_interval_s: float = 10.0
    response_timeout_s: float = 2.0


@dataclass(frozen=True, slots=True)
class EcuFlashConfig:
    """How the agent flashes one ECU of ``[ota.ecus]`` over UDS (a table instead of a hardware id).

    ``bus`` is the bus the ECU is on (a ``[[bus]]`` name, resolved to its spec at load);
    ``request_id``/``response_id`` its ISO-TP ids; ``secret`` the SecurityAccess secret (from
    ``secret_file``; ``None``: the simulated ECUs' bench secret), ``algorithm`` and
    ``security_level`` as for ``tbox flash``.
    """

    bus: BusSpec
    request_id: int
    response_id: int
    secret: bytes | None = None
    algorithm: str = "hmac-sha256"
    security_level: int = 1


@dataclass(frozen=True, slots=True)
class OtaConfig:
    """``[ota]``: over-the-air updates of the T-box's own software (Uptane-style).

    The vehicle trusts the director and image repositories whose provisioned root metadata are
    ``director_root`` and ``image_root``; campaigns arrive as ``cmd/ota`` commands and install
    into the A/B slots under ``slots_dir`` (``None``: ``<state_dir>/slots``), which
    ``tbox ota slots provision`` prepares. ``ecus`` are the ECUs behind the T-box (ECU id,
    hardware id) that the director may assign images to; ``flash`` those of them the agent
    flashes in campaigns (all or nothing, ADR 0012). ``health_check`` is a command that must
    exit 0 on the new software before it is committed (``None``: the agent running again is the
    check).
    ``boot_on_start``: the agent plays the bootloader's part (counting boot attempts) at start,
    as on the simulated T-box; false where a real bootloader does.
    """

    director_url: str
    image_url: str
    hardware_id: str
    director_root: Path
    image_root: Path
    ecus: tuple[tuple[str, str], ...] = ()
    flash: tuple[tuple[str, EcuFlashConfig], ...] = ()
    slots_dir: Path | None = None
    health_check: str | None = None
    health_timeout_s: float = 60.0
    max_boot_attempts: int = 3
    boot_on_start: bool = True
    min_bytes_per_s: float = 1024.0
    max_target_bytes: int = 4 * 1024**3
    download_stall_s: float = 300.0


@dataclass(frozen=True, slots=True)
class IdsConfig:
    """``[ids]``: intrusion detection on every frame of every bus, with the rule file ``rules``
    (``tbox ids learn`` writes one) and, for SecOC rules, the key file ``keys``. Security events
    are queued before telemetry and published on ``events``."""

    rules: Path
    keys: Path | None = None
    idsm_instance_id: int = 1


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    """``[shutdown]``: the time each shutdown stage may take before it is cut short."""

    stage_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """The whole configuration of one agent process."""

    vehicle_id: str
    state_dir: Path
    buses: tuple[BusConfig, ...]
    queue: QueueConfig
    status: StatusConfig
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    schemes: SchemesConfig = field(default_factory=SchemesConfig)
    state: StateConfig = field(default_factory=StateConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    shutdown: ShutdownConfig = field(default_factory=ShutdownConfig)
    gnss: GnssConfig | None = None
    modem: ModemConfig | None = None
    ota: OtaConfig | None = None
    ids: IdsConfig | None = None
    source: str = "<defaults>"

    @property
    def sequence_file(self) -> Path:
        """Where the batch sequence reservation is persisted."""
        return self.state_dir / "sequence"

    @property
    def slots_dir(self) -> Path:
        """The A/B slots of ``[ota]`` (``<state_dir>/slots`` unless configured)."""
        if self.ota is not None and self.ota.slots_dir is not None:
            return self.ota.slots_dir
        return self.state_dir / "slots"

    @property
    def pushed_schemes_file(self) -> Path:
        """Where schemes received over ``cmd/schemes`` are persisted."""
        return self.state_dir / "pushed-schemes.toml"

    def uplink_config(self) -> UplinkConfig:
        """The :class:`UplinkConfig` for this configuration's broker and vehicle."""
        m = self.mqtt
        return UplinkConfig(
            host=m.host,
            port=m.port,
            vehicle_id=self.vehicle_id,
            sequence_file=self.sequence_file,
            client_id=m.client_id,
            username=m.username,
            password=m.password,
            keepalive_s=m.keepalive_s,
            tls=m.tls,
            tls_ca_file=m.ca_file,
            tls_cert_file=m.cert_file,
            tls_key_file=m.key_file,
            mqtt5=m.mqtt5,
            batch_max_bytes=m.batch_max_bytes,
            take_max_bytes=max(m.batch_max_bytes, _MIN_TAKE_MAX_BYTES),
            backoff_initial_s=m.backoff_initial_s,
            backoff_max_s=m.backoff_max_s,
            session_expiry_s=round(m.session_expiry_s),
        )

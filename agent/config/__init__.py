"""The agent's configuration: a TOML file, validated once at start-up into frozen dataclasses.

* :mod:`~agent.config.model` — :class:`AgentConfig` and its sections;
* :mod:`~agent.config.loader` — :func:`load_config` and :func:`parse_config`;
* :mod:`~agent.config.errors` — :class:`ConfigError`, naming file, line, key and problem.
"""

from agent.config.errors import ConfigError
from agent.config.loader import load_config, parse_config
from agent.config.model import (
    DEFAULT_QUEUE_MAX_BYTES,
    DEFAULT_STATE_DIR,
    AgentConfig,
    BusConfig,
    CommandsConfig,
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

__all__ = [
    "DEFAULT_QUEUE_MAX_BYTES",
    "DEFAULT_STATE_DIR",
    "AgentConfig",
    "BusConfig",
    "CommandsConfig",
    "ConfigError",
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
    "load_config",
    "parse_config",
]

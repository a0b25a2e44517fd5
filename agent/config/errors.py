"""The error of a configuration file that cannot be used."""

from __future__ import annotations

from agent.errors import LocatedInputError

__all__ = ["ConfigError"]


class ConfigError(LocatedInputError):
    """A configuration file is missing, unreadable, malformed or inconsistent.

    ``source`` is the file, ``key`` the dotted key path of the offending value (``mqtt.port``,
    ``bus[1].url``; ``None`` for document-level problems such as syntax errors), ``line`` the
    1-based line when known, and ``problem`` what is wrong in words a user can act on. ``str()``
    gives ``"agent.toml:12: mqtt.keepalive_s: 45 is above the maximum of 20 (…)"``. The command
    line reports it in one line with exit status 1.
    """

"""The agent's exception hierarchy, split by who is at fault.

* :class:`UsageError` — the user asked for something malformed (a bad bus URL, a missing file);
  the command line maps it to exit status 2.
* :class:`InputError` — data handed to us is broken (a log line, a config value); exit status 1.
* :class:`BusError` — the environment failed us (a bus that cannot be opened); exit status 1.

Every message names *what* and *where* so the user can act on it without a traceback.
"""

from __future__ import annotations


class TboxError(Exception):
    """Base class of every error the agent raises on purpose."""


class UsageError(TboxError):
    """The user's request is malformed (bad URL, option or argument)."""


class InputError(TboxError):
    """Input data is malformed (a log file, a configuration value)."""


class BusError(TboxError):
    """A CAN bus could not be opened or failed while in use."""

"""The exception hierarchy of :mod:`sim`.

* :class:`SimError` — base class of every error the simulator raises on purpose. It derives from
  :class:`agent.errors.TboxError`, so the ``tbox`` command line reports it in one line (exit
  status 1) without a traceback.
* :class:`ScenarioError` — a scenario file is missing or malformed; it names the file, the key
  (``phase[2].target_speed_kph``) and, for TOML syntax errors, the line.
"""

from __future__ import annotations

from agent.errors import LocatedInputError, TboxError


class SimError(TboxError):
    """Base class of every error :mod:`sim` raises on purpose."""


class ScenarioError(SimError, LocatedInputError):
    """A scenario could not be loaded.

    ``source`` is the file (or ``<string>``) as the caller named it, ``key`` the dotted key path
    of the offending value (``None`` for file-level problems such as syntax errors), ``line`` the
    1-based line when known, and ``problem`` what is wrong in words a user can act on. ``str()``
    gives ``"source:line: key: problem"`` with the unknown parts left out.
    """

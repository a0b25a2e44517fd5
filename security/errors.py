"""Errors of the IDS, split by who is at fault.

* :class:`RuleFileError` — a rule file (or a rule document from the command channel) is malformed.
  It names the source, the line, the key (``rule[3].messages[5].period_ms``) and the rule id.
* :class:`KeyFileError` — a SecOC key file is malformed (file, line, key).
* :class:`RuleBindingError` — a well-formed rule cannot be bound to what it needs: a message or
  signal that no DBC given for its bus has, a SecOC key that no key file holds. Which side is
  wrong (the rules or the DBC) only the user knows, so it names both.

All derive from :class:`agent.errors.InputError`: the command line reports them in one line
(exit status 1) without a traceback.
"""

from __future__ import annotations

from agent.errors import LocatedInputError

__all__ = ["KeyFileError", "RuleBindingError", "RuleFileError"]


class RuleFileError(LocatedInputError):
    """A rule document could not be loaded.

    ``source``, ``key``, ``line`` and ``problem`` as :class:`~agent.errors.LocatedInputError`
    has them; ``rule_id`` is the id of the rule concerned when it is known. ``str()`` gives
    ``"rules.toml:12: rule[3].period_ms: -3 must be > 0 and ≤ 3.6e+06 (rule 'can0.timing')"``.
    """

    def __init__(
        self,
        source: str,
        key: str | None,
        problem: str,
        *,
        line: int | None = None,
        rule_id: str | None = None,
    ) -> None:
        self.rule_id = rule_id
        if rule_id is not None:
            problem = f"{problem} (rule {rule_id!r})"
        super().__init__(source, key, problem, line=line)


class KeyFileError(LocatedInputError):
    """A SecOC key file could not be loaded (``source:line: key: problem``)."""


class RuleBindingError(LocatedInputError):
    """A rule needs a message, signal or key that the DBC files or key file given lack.

    Located at the rule in its rule file: ``"rules.toml:40: rule[7].signals[2].name: message
    SPEED has no signal FOO in the DBC files given for can0 (rule 'can0.signal-range')"``.
    """

    def __init__(
        self,
        source: str,
        key: str | None,
        problem: str,
        *,
        line: int | None = None,
        rule_id: str | None = None,
    ) -> None:
        self.rule_id = rule_id
        if rule_id is not None:
            problem = f"{problem} (rule {rule_id!r})"
        super().__init__(source, key, problem, line=line)

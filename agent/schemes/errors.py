"""Errors of collection schemes: a malformed scheme file or payload, a malformed condition.

* :class:`SchemeError` — a scheme document is missing or malformed. It names the source (a file,
  or whatever the caller calls a command payload), the key (``scheme[2].period_ms``), the line
  where it can be found, and the problem.
* :class:`ExpressionError` — a condition expression does not parse or does not make sense. It
  names the 1-based column in the expression text and what was expected there. The loader turns
  it into a :class:`SchemeError` for the ``condition`` key, so users see both the line and the
  column.

Both derive from :class:`agent.errors.InputError`: the command line reports them in one line
(exit status 1) without a traceback.
"""

from __future__ import annotations

from agent.errors import InputError, LocatedInputError

__all__ = ["ExpressionError", "SchemeError"]


class SchemeError(LocatedInputError):
    """A scheme document could not be loaded.

    ``source`` is the file (or a name the caller gave a payload), ``key`` the dotted key path of
    the offending value (``None`` for document-level problems such as TOML syntax errors),
    ``line`` the 1-based line when known, and ``problem`` what is wrong in words a user can act
    on. ``str()`` gives ``"source:line: key: problem"`` with the unknown parts left out.
    """


class ExpressionError(InputError):
    """A condition expression is malformed.

    ``column`` is 1-based in the expression text; ``problem`` says what is wrong and, where it
    helps, what was expected. ``str()`` gives ``"col 14: unknown function 'foo' (expected …)"``.
    """

    def __init__(self, column: int, problem: str) -> None:
        self.column = column
        self.problem = problem
        super().__init__(column, problem)

    def __str__(self) -> str:
        return f"col {self.column}: {self.problem}"

"""A repository's own settings: ``<repo>/repository.toml``, read by ``tbox ota repo`` commands.

Thresholds and keys are in the signed root metadata; what the tooling needs besides is here::

    # tbox ota repository settings (read by `tbox ota repo …`, not by vehicles)
    kind = "image"             # "image" (offline keys) or "director" (online keys)
    keys = "../image.keys"     # private keys, relative to this directory unless absolute

    [expires_days]             # how long each role's metadata stays valid once signed
    root = 365
    targets = 90
    snapshot = 7
    timestamp = 1

Usage::

    config = parse_config(path.read_text(), source=str(path))
    config.period("snapshot")  # timedelta(days=7)
    path.write_text(format_config(config))

:func:`parse_config` takes any text and returns a :class:`RepositoryConfig` or raises
:class:`~ota.errors.RepositoryConfigError` naming file, line and key.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Final

from agent.errors import describe_toml_error, kind_of_value
from agent.toml_lines import line_of
from ota.errors import RepositoryConfigError

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_EXPIRY_DAYS",
    "MAX_EXPIRY_DAYS",
    "ONLINE_ROLES",
    "ROLES",
    "RepositoryConfig",
    "RepositoryKind",
    "format_config",
    "parse_config",
]

#: The settings file's name inside a repository directory.
CONFIG_NAME: Final = "repository.toml"

#: TUF's top-level roles, in the order they are shown and signed.
ROLES: Final = ("root", "targets", "snapshot", "timestamp")

#: Validity of freshly signed metadata when ``repository.toml`` does not say otherwise.
DEFAULT_EXPIRY_DAYS: Final[Mapping[str, int]] = {
    "root": 365,
    "targets": 90,
    "snapshot": 7,
    "timestamp": 1,
}

#: Longest validity accepted (about 100 years): beyond it a date stops meaning anything.
MAX_EXPIRY_DAYS: Final = 36_500


class RepositoryKind(StrEnum):
    """Which of Uptane's two repositories a directory holds."""

    IMAGE = "image"
    DIRECTOR = "director"


#: Roles whose keys live online (signed by automation); the others are offline keys.
ONLINE_ROLES: Final[Mapping[RepositoryKind, frozenset[str]]] = {
    RepositoryKind.IMAGE: frozenset({"timestamp"}),
    RepositoryKind.DIRECTOR: frozenset({"targets", "snapshot", "timestamp"}),
}


@dataclass(frozen=True, slots=True)
class RepositoryConfig:
    """The settings of one repository directory."""

    kind: RepositoryKind
    keys: Path
    expires_days: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_EXPIRY_DAYS))

    def period(self, role: str) -> timedelta:
        """How long *role*'s metadata stays valid once signed."""
        return timedelta(days=self.expires_days.get(role, DEFAULT_EXPIRY_DAYS[role]))

    def periods(self) -> dict[str, timedelta]:
        """:meth:`period` of every role."""
        return {role: self.period(role) for role in ROLES}

    def is_online(self, role: str) -> bool:
        """True when *role*'s keys are online keys in this kind of repository."""
        return role in ONLINE_ROLES[self.kind]

    def keys_dir(self, repository: Path) -> Path:
        """The keys directory, with a relative :attr:`keys` taken from *repository*."""
        return (
            self.keys if self.keys.is_absolute() else Path(os.path.normpath(repository / self.keys))
        )


def parse_config(text: str, *, source: str) -> RepositoryConfig:
    """Parse a ``repository.toml`` text; *source* names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise RepositoryConfigError(source, None, problem, line=line) from e

    def fail(path: tuple[str, ...], problem: str) -> RepositoryConfigError:
        return RepositoryConfigError(
            source, ".".join(path) or None, problem, line=line_of(text, path)
        )

    for key in data:
        if key not in {"kind", "keys", "expires_days"}:
            raise fail((key,), "unknown key (known: kind, keys, expires_days)")
    if "kind" not in data:
        raise fail((), 'lacks kind = "image" or "director"')
    kind = data["kind"]
    if not isinstance(kind, str) or kind not in {k.value for k in RepositoryKind}:
        raise fail(("kind",), f'must be "image" or "director", not {kind!r}')
    if "keys" not in data:
        raise fail((), 'lacks keys = "<directory of private keys>"')
    keys = data["keys"]
    if not isinstance(keys, str) or not keys or "\0" in keys:
        raise fail(("keys",), f"must be a non-empty path string, not {kind_of_value(keys)}")
    days: dict[str, int] = dict(DEFAULT_EXPIRY_DAYS)
    table = data.get("expires_days", {})
    if not isinstance(table, dict):
        raise fail(("expires_days",), f"must be a table, not {kind_of_value(table)}")
    for role, value in table.items():
        if role not in ROLES:
            raise fail(("expires_days", role), f"unknown role (roles: {', '.join(ROLES)})")
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(
                ("expires_days", role), f"must be a whole number, not {kind_of_value(value)}"
            )
        if not 1 <= value <= MAX_EXPIRY_DAYS:
            raise fail(("expires_days", role), f"{value} must be between 1 and {MAX_EXPIRY_DAYS}")
        days[role] = value
    return RepositoryConfig(kind=RepositoryKind(kind), keys=Path(keys), expires_days=days)


def format_config(config: RepositoryConfig) -> str:
    """The TOML text of *config*, as :func:`parse_config` reads it back."""
    lines = [
        "# tbox ota repository settings (read by `tbox ota repo …`, not by vehicles)",
        f"kind = {_toml_string(config.kind.value)}",
        f"keys = {_toml_string(str(config.keys))}",
        "",
        "[expires_days]",
        *(f"{role} = {config.period(role).days}" for role in ROLES),
    ]
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    # A basic string with every character TOML forbids or treats specially escaped.
    out = []
    for ch in value:
        if ch in {'"', "\\"}:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'

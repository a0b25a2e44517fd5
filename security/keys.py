"""SecOC key files: AES keys by key id, in TOML.

::

    version = 1                                        # optional; the only version so far

    [keys]                                             # key id = 16, 24 or 32 bytes in hex
    brake = "2b7e151628aed2a6abf7158809cf4f3c"
    "powertrain.2" = "603deb1015ca71be2b73aef0857d7781 1f352c073b6108d72d9810a30914dff4"

Key ids are what SecOC rules name in ``key``. Hex digits may be grouped with spaces, ``:`` or
``_``. Errors are :class:`~security.errors.KeyFileError` naming the file, the line and the key,
never the key's value. The file holds secrets: keep it readable by the agent only.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from agent.errors import describe_toml_error, kind_of_value
from agent.toml_lines import dotted_key, line_of
from security.errors import KeyFileError

__all__ = ["load_keys", "parse_keys"]

_SEPARATORS: Final = re.compile(r"[\s:_]")
_HEX: Final = re.compile(r"(?:[0-9A-Fa-f]{2})+")
_KEY_LENGTHS: Final = (16, 24, 32)


def load_keys(path: str | os.PathLike[str]) -> Mapping[str, bytes]:
    """The keys in the key file at *path*; raises :class:`KeyFileError`."""
    name = os.fspath(path)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KeyFileError(name, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(name, None, f"cannot read the file: {e}") from None
    return parse_keys(text, name)


def parse_keys(text: str, source: str = "<string>") -> Mapping[str, bytes]:
    """The keys in key-file TOML *text*; *source* names it in errors."""
    try:
        data: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem, line = describe_toml_error(e, text)
        raise KeyFileError(source, None, f"TOML syntax error: {problem}", line=line) from None

    def fail(path: tuple[str, ...], problem: str) -> KeyFileError:
        return KeyFileError(source, dotted_key(path), problem, line=line_of(text, path))

    for key in data:
        if key not in ("version", "keys"):
            raise fail((key,), "unknown key (expected one of: version, keys)")
    version = data.get("version", 1)
    if isinstance(version, bool) or version != 1:
        raise fail(("version",), f"{version!r} is not supported (expected 1)")
    table = data.get("keys", {})
    if not isinstance(table, dict):
        raise fail(("keys",), f"must be a table ([keys]), not {kind_of_value(table)}")
    keys: dict[str, bytes] = {}
    for key_id, value in table.items():
        path = ("keys", key_id)
        if not isinstance(value, str):
            raise fail(path, f"must be a string of hex digits, not {kind_of_value(value)}")
        digits = _SEPARATORS.sub("", value)
        if not _HEX.fullmatch(digits):
            raise fail(path, "is not whole bytes of hex digits")
        if len(digits) // 2 not in _KEY_LENGTHS:
            raise fail(path, f"an AES key has 16, 24 or 32 bytes, not {len(digits) // 2}")
        keys[key_id] = bytes.fromhex(digits)
    return MappingProxyType(keys)

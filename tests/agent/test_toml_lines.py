"""Key lines in TOML text: headers, arrays of tables, dotted and quoted keys, inline values."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.toml_lines import (
    KeyPath,
    dotted_key,
    item_line,
    key_sites,
    line_in_value,
    line_of,
    split_dotted_key,
)

DOC = """\
# a comment with [not.a.header] and key = 1
title = "x = 1"                 # line 2
notes = \"\"\"
[fake]
fake = 2
\"\"\"

[vehicle]                       # line 8
id = "V1"

[[bus]]                         # line 11
url = "socketcan://can0"
dbc = [
  "a.dbc",  # [x] a comment
  'b.dbc',
]

[[bus]]                         # line 18
url = "virtual://x"
[bus.options]                   # line 20: the options of bus[1]
gain.coarse = 2
"odd.key" = { a = 1, nested = [ { deep = true }, 3 ] }

[ mqtt ]                        # line 24
port = 1883
"""


@pytest.mark.parametrize(
    ("path", "line"),
    [
        (("title",), 2),
        (("notes",), 3),
        (("vehicle",), 8),
        (("vehicle", "id"), 9),
        (("bus",), 11),
        (("bus", 0), 11),
        (("bus", 0, "url"), 12),
        (("bus", 0, "dbc"), 13),
        (("bus", 1), 18),
        (("bus", 1, "url"), 19),
        (("bus", 1, "options"), 20),
        (("bus", 1, "options", "gain"), 21),
        (("bus", 1, "options", "gain", "coarse"), 21),
        (("bus", 1, "options", "odd.key", "a"), 22),
        (("bus", 1, "options", "odd.key", "nested", 0, "deep"), 22),
        (("mqtt",), 24),
        (("mqtt", "port"), 25),
    ],
    ids=lambda v: dotted_key(v) if isinstance(v, tuple) else str(v),
)
def test_lines_of_keys_and_tables(path: KeyPath, line: int) -> None:
    assert line_of(DOC, path) == line


def test_nothing_inside_strings_or_comments_is_a_key() -> None:
    sites = key_sites(DOC)
    assert ("fake",) not in sites and ("notes", "fake") not in sites
    assert ("not",) not in sites and ("x",) not in sites


def test_missing_keys_fall_back_to_their_table() -> None:
    assert line_of(DOC, ("mqtt", "host")) == 24
    assert line_of(DOC, ("bus", 1, "dbc")) == 18
    assert line_of(DOC, ("bus", 7, "url")) == 11  # no such element: the array's first header
    assert line_of(DOC, ("status", "socket")) is None
    # min_depth limits the fallback
    assert line_of(DOC, ("mqtt", "host"), min_depth=2) is None
    assert line_of(DOC, ("bus", 1, "dbc"), min_depth=2) == 18
    assert line_of(DOC, ("bus", 1, "dbc"), min_depth=3) is None
    assert line_of(DOC, ()) is None


def test_array_elements_are_values_not_keys() -> None:
    assert key_sites(DOC)[("bus", 0, "dbc")].items == (14, 15)
    assert ("bus", 0, "dbc", 0) not in key_sites(DOC)
    assert item_line(DOC, ("bus", 0, "dbc"), 1) == 15
    assert item_line(DOC, ("bus", 0, "dbc"), 5) == 13  # past the end: the key's line
    assert item_line(DOC, ("bus", 0, "nothing"), 0) == 11


def test_search_within_a_value() -> None:
    assert line_in_value(DOC, ("bus", 0, "dbc"), "b.dbc") == 15
    assert line_in_value(DOC, ("bus", 0, "dbc"), re.compile(r"\.dbc"), nth=2) == 15
    assert line_in_value(DOC, ("bus", 0, "dbc"), ".dbc", nth=3) is None
    assert line_in_value(DOC, ("bus", 0, "url"), "dbc") is None  # not past the value's end
    # a [table]'s value is its body, up to the next header
    assert line_in_value(DOC, ("bus", 1, "options"), "deep") == 22
    assert line_in_value(DOC, ("vehicle",), "url") is None
    assert line_in_value(DOC, ("nothing",), "x") is None


def test_arrays_of_inline_tables_and_multiline_values() -> None:
    text = 'bus = [\n  { url = "a" },\n  # between\n  { url = "b",\n    dbc = "x" },\n]\nz = 1\n'
    assert line_of(text, ("bus", 0, "url")) == 2
    assert line_of(text, ("bus", 1)) == 4
    assert line_of(text, ("bus", 1, "dbc")) == 5
    assert line_of(text, ("z",)) == 7
    assert key_sites(text)[("bus",)].items == (2, 4)


def test_nested_arrays_of_tables_extend_the_last_element() -> None:
    text = "[[a]]\n[[a.b]]\nx = 1\n[[a]]\n[[a.b]]\n[[a.b]]\nx = 2\n[a.c]\ny = 3\n"
    assert line_of(text, ("a", 0, "b", 0, "x")) == 3
    assert line_of(text, ("a", 1, "b", 0)) == 5
    assert line_of(text, ("a", 1, "b", 1, "x")) == 7
    assert line_of(text, ("a", 1, "c", "y")) == 9


def test_quoted_keys_and_escapes() -> None:
    text = '["we ird".\'lit.eral\']\n"a\\"b" = 1\n\'c d\' . e = 2\n'
    assert line_of(text, ("we ird", "lit.eral")) == 1
    assert line_of(text, ("we ird", "lit.eral", 'a"b')) == 2
    assert line_of(text, ("we ird", "lit.eral", "c d", "e")) == 3


def test_multiline_strings_with_trailing_quotes() -> None:
    text = "s = \"\"\"a\"\"\"\"\nt = '''b'''''\nu = 1\n"
    assert tomllib.loads(text) == {"s": 'a"', "t": "b''", "u": 1}
    assert line_of(text, ("u",)) == 3


def test_dotted_keys_round_trip() -> None:
    assert dotted_key(("bus", 2, "url")) == "bus[2].url"
    assert dotted_key(("commands", "trusted_keys", "ops.v1")) == 'commands.trusted_keys."ops.v1"'
    assert dotted_key(("a", 0, 1, "b c")) == 'a[0][1]."b c"'
    assert dotted_key(()) == ""
    paths: list[KeyPath] = [("bus", 2, "url"), ("x", "a.b", 3), ("phase", 0, "turn", "deg")]
    for path in paths:
        assert split_dotted_key(dotted_key(path)) == path
    assert split_dotted_key("phase[1].turn") == ("phase", 1, "turn")
    assert split_dotted_key("odd[x].y") == ("odd", "[", "x]", "y")  # lenient, never raises


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_scanned_without_errors(text: str) -> None:
    sites = key_sites(text)
    lines = text.count("\n") + 1
    assert all(1 <= site.line <= lines for site in sites.values())
    line_of(text, ("a", 0, "b"))
    item_line(text, ("a",), 0)
    line_in_value(text, ("a",), "x")
    split_dotted_key(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="[]{}\"'=.,#\n abc0", max_size=200))
def test_toml_punctuation_is_scanned_without_errors(text: str) -> None:
    key_sites(text)


def test_deep_nesting_is_skipped_not_recursed() -> None:
    deep = "x = " + "[" * 5000 + "]" * 5000 + "\ny = 1\n"
    assert line_of(deep, ("y",)) == 2
    deep_tables = "x = " + "{a = " * 300 + "1" + "}" * 300 + "\ny = 1\n"
    assert line_of(deep_tables, ("y",)) == 2


# --- generated documents: every key and table of the parsed data is found on its line ----------

_NAMES = st.sampled_from(["a", "b", "url", "x-y", "a.b", "with space", "[t]", 'q"uote', "k=v"])
_SCALARS = st.one_of(
    st.integers(-(10**9), 10**9),
    st.booleans(),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\n"), max_size=8
    ),
)


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def _value(value: Any, multiline: bool) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v, False)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        if multiline and value:
            return "[\n" + "".join(f"  {_value(v, False)},  # c\n" for v in value) + "]"
        return "[" + ", ".join(_value(v, False) for v in value) + "]"
    return str(value)


def _render(data: dict[str, Any], prefix: tuple[str, ...], multiline: bool) -> str:
    """A TOML document for *data*: header tables, arrays of tables, inline values."""
    plain = {k: v for k, v in data.items() if not _is_table(v) and not _is_table_array(v)}
    out = "".join(f"{_key(k)} = {_value(v, multiline)}\n" for k, v in plain.items())
    for k, v in data.items():
        name = ".".join(_key(p) for p in (*prefix, k))
        if _is_table(v):
            out += f"[{name}]\n" + _render(v, (*prefix, k), multiline)
        elif _is_table_array(v):
            for element in v:
                out += f"[[{name}]]\n" + _render(element, (*prefix, k), multiline)
    return out


def _is_table(value: object) -> bool:
    return isinstance(value, dict) and bool(value)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_table(v) for v in value)


def _paths(data: dict[str, Any], prefix: KeyPath = ()) -> list[KeyPath]:
    found: list[KeyPath] = []
    for key, value in data.items():
        path = (*prefix, key)
        found.append(path)
        if isinstance(value, dict):
            found += _paths(value, path)
        elif isinstance(value, list):
            for i, element in enumerate(value):
                if isinstance(element, dict):
                    found.append((*path, i))
                    found += _paths(element, (*path, i))
    return found


_INLINE = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_NAMES, inner, max_size=3),
    max_leaves=6,
)
_TABLES = st.recursive(
    st.dictionaries(_NAMES, _INLINE, max_size=3),
    lambda inner: st.dictionaries(
        _NAMES, _INLINE | inner | st.lists(inner.filter(bool), min_size=1, max_size=2), max_size=3
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(_TABLES, st.booleans())
def test_generated_documents_locate_every_key(data: dict[str, Any], multiline: bool) -> None:
    text = _render(data, (), multiline)
    assert tomllib.loads(text) == data, text
    sites = key_sites(text)
    lines = text.splitlines()
    for path in _paths(data):
        assert path in sites, (path, text)
        last = next(p for p in reversed(path) if isinstance(p, str))
        assert _key(last) in lines[sites[path].line - 1] or isinstance(path[-1], int), (path, text)

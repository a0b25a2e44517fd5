"""``repository.toml``: parsing with located errors, formatting, round trips."""

from __future__ import annotations

import contextlib
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ota.errors import RepositoryConfigError
from ota.repository_config import (
    DEFAULT_EXPIRY_DAYS,
    MAX_EXPIRY_DAYS,
    ROLES,
    RepositoryConfig,
    RepositoryKind,
    format_config,
    parse_config,
)


def test_minimal_file_takes_default_periods() -> None:
    config = parse_config('kind = "director"\nkeys = "../d.keys"\n', source="r.toml")
    assert config.kind is RepositoryKind.DIRECTOR
    assert config.keys == Path("../d.keys")
    assert config.periods() == {r: timedelta(days=d) for r, d in DEFAULT_EXPIRY_DAYS.items()}
    assert config.is_online("targets") and not config.is_online("root")


def test_image_repositories_keep_only_timestamp_online() -> None:
    config = RepositoryConfig(kind=RepositoryKind.IMAGE, keys=Path("k"))
    assert [r for r in ROLES if config.is_online(r)] == ["timestamp"]


def test_keys_dir_is_relative_to_the_repository_unless_absolute(tmp_path: Path) -> None:
    relative = RepositoryConfig(kind=RepositoryKind.IMAGE, keys=Path("../image.keys"))
    assert relative.keys_dir(tmp_path / "image") == tmp_path / "image.keys"
    absolute = RepositoryConfig(kind=RepositoryKind.IMAGE, keys=Path("/srv/keys"))
    assert absolute.keys_dir(tmp_path) == Path("/srv/keys")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('kind = "image"\nkeys = "k"\nkind2 = 1\n', "r.toml:3: kind2: unknown key"),
        ('keys = "k"\n', "r.toml: lacks kind"),
        ('kind = "mirror"\nkeys = "k"\n', 'r.toml:1: kind: must be "image" or "director"'),
        ('kind = ["image"]\nkeys = "k"\n', "r.toml:1: kind: must be"),
        ('kind = "image"\n', "r.toml: lacks keys"),
        ('kind = "image"\nkeys = 3\n', "r.toml:2: keys: must be a non-empty path string"),
        (
            'kind = "image"\nkeys = "k"\n[expires_days]\nroot = 0\n',
            "r.toml:4: expires_days.root: 0 must be between 1 and 36500",
        ),
        (
            'kind = "image"\nkeys = "k"\n[expires_days]\nsnapshot = true\n',
            "r.toml:4: expires_days.snapshot: must be a whole number",
        ),
        (
            'kind = "image"\nkeys = "k"\n[expires_days]\nmirror = 3\n',
            "r.toml:4: expires_days.mirror: unknown role",
        ),
        ('kind = "image"\nkeys = "k"\nexpires_days = 3\n', "r.toml:3: expires_days: must be a"),
        ('kind = "image\n', "r.toml:1: "),
    ],
)
def test_errors_name_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(RepositoryConfigError) as excinfo:
        parse_config(text, source="r.toml")
    assert str(excinfo.value).startswith(expected)


_CONFIGS = st.builds(
    RepositoryConfig,
    kind=st.sampled_from(RepositoryKind),
    keys=st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), min_size=1).map(
        Path
    ),
    expires_days=st.fixed_dictionaries(
        {r: st.integers(min_value=1, max_value=MAX_EXPIRY_DAYS) for r in ROLES}
    ),
)


@given(_CONFIGS)
def test_format_then_parse_gives_the_same_settings(config: RepositoryConfig) -> None:
    parsed = parse_config(format_config(config), source="x")
    assert parsed.kind == config.kind
    assert parsed.keys == config.keys
    assert dict(parsed.expires_days) == dict(config.expires_days)


@given(st.text(max_size=200))
def test_any_text_parses_or_raises_a_config_error(text: str) -> None:
    with contextlib.suppress(RepositoryConfigError):
        parse_config(text, source="x")


@given(
    st.dictionaries(
        st.sampled_from(["kind", "keys", "expires_days", "other"]),
        st.one_of(
            st.sampled_from(['"image"', '"director"', '"k"', "1", "true", "[1]", "{root = 2}"]),
            st.just("{root = 0, timestamp = 1}"),
        ),
    )
)
def test_near_miss_files_parse_or_raise_a_config_error(entries: dict[str, str]) -> None:
    text = "".join(f"{k} = {v}\n" for k, v in entries.items())
    with contextlib.suppress(RepositoryConfigError):
        parse_config(text, source="x")

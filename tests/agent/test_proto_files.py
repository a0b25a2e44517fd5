"""The wire schema's files (C5): shipped, documented, and the committed bindings up to date."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.proto import PROTO_ROOT
from agent.proto.tbox import v1

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = PROTO_ROOT / "tbox" / "v1"
PROTO_FILES = sorted(PROTO_DIR.glob("*.proto"))

# A declaration that needs its own comment: a field, an enum value, a message, enum or oneof.
_DECLARATION = re.compile(
    r"^\s*((repeated|optional)\s+)?[\w.]+\s+\w+\s*=\s*\d+;|^\s*\w+\s*=\s*\d+;"
    r"|^\s*(message|enum|oneof)\s+\w+\s*\{"
)


def test_every_topic_has_its_proto_file() -> None:
    assert [p.name for p in PROTO_FILES] == [
        "command.proto",
        "events.proto",
        "ota.proto",
        "state.proto",
        "telemetry.proto",
    ]
    for path in PROTO_FILES:
        text = path.read_text(encoding="utf-8")
        assert 'syntax = "proto3";' in text
        assert "package tbox.v1;" in text
        # No file imports another, so the generated modules need no import rewriting.
        assert "import " not in text


@pytest.mark.parametrize("path", PROTO_FILES, ids=lambda p: p.name)
def test_every_declaration_is_documented(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    undocumented = [
        f"{path.name}:{n + 1}: {line.strip()}"
        for n, line in enumerate(lines)
        if _DECLARATION.match(line) and not lines[n - 1].strip().startswith("//")
    ]
    assert not undocumented


def test_every_published_message_starts_with_vehicle_sequence_schema() -> None:
    for message in (
        v1.TelemetryBatch,
        v1.SecurityEventBatch,
        v1.StateUpdate,
        v1.OtaStatus,
        v1.CommandResult,
    ):
        fields = {f.name: f.number for f in message.DESCRIPTOR.fields}
        assert fields["vehicle_id"] == 1
        assert fields["sequence"] == 2
        assert fields["schema_version"] == 3


def test_batches_share_their_layout() -> None:
    # BatchBuilder writes both kinds of batch with the same header code and items tag.
    telemetry = {(f.number, f.type, f.name) for f in v1.TelemetryBatch.DESCRIPTOR.fields}
    events = {(f.number, f.type, f.name) for f in v1.SecurityEventBatch.DESCRIPTOR.fields}
    assert {(n, t) for n, t, _ in telemetry} == {(n, t) for n, t, _ in events}


def _generator_missing() -> str | None:
    plugin = Path(sys.executable).parent / "protoc-gen-mypy"
    if importlib.util.find_spec("grpc_tools") is None:
        return "grpcio-tools is not installed"
    if not plugin.exists():
        return "mypy-protobuf is not installed"
    return None


def test_committed_bindings_are_up_to_date(tmp_path: Path) -> None:
    missing = _generator_missing()
    if missing:
        pytest.skip(f"{missing} (scripts/setup dev installs the generator)")
    subprocess.run(
        ["bash", str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
        cwd=REPO,
    )
    generated = sorted(p.name for p in (tmp_path / "tbox" / "v1").iterdir())
    committed = sorted(p.name for p in PROTO_DIR.iterdir() if p.name.endswith(("_pb2.py", ".pyi")))
    assert generated == committed
    stale = [
        name
        for name in generated
        if (tmp_path / "tbox" / "v1" / name).read_bytes() != (PROTO_DIR / name).read_bytes()
    ]
    assert not stale, f"run scripts/gen-proto: stale bindings {stale}"

"""``tbox ota tuf-client`` (the TUF conformance suite's client protocol) and ``tbox ota check``
against our own repositories: exit statuses, files, one-line errors naming the rejection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.cli import main
from tests.ota.test_update_client import BMS_FW, ROOTFS, Bench, make_bench

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    made = make_bench(tmp_path)
    with made.server:
        yield made


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tbox ota: error: ") and "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("words", [["ota", "tuf-client"], ["ota", "check"]], ids=" ".join)
def test_help_and_usage_errors(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0
    assert f"usage: tbox {' '.join(words)}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2


# --- tuf-client ----------------------------------------------------------------------------------


def _client_args(bench: Bench, metadata: Path) -> list[str]:
    return [
        "ota",
        "tuf-client",
        "--metadata-dir",
        str(metadata),
        "--metadata-url",
        bench.server.url + "image/metadata",
    ]


def test_init_refresh_download(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata, targets = tmp_path / "client" / "metadata", tmp_path / "client" / "targets"
    root = bench.srv / "image" / "metadata" / "1.root.json"
    before = len(bench.server.requests)
    assert (
        _run(["ota", "tuf-client", "--metadata-dir", str(metadata), "init", str(root)], capsys)[0]
        == 0
    )
    assert len(bench.server.requests) == before  # init makes no request
    assert (metadata / "root.json").read_bytes() == root.read_bytes()

    assert _run([*_client_args(bench, metadata), "refresh"], capsys)[0] == 0
    for role in ("root", "timestamp", "snapshot", "targets"):
        assert (metadata / f"{role}.json").is_file()  # unversioned names, as the protocol says

    download = [
        *_client_args(bench, metadata),
        "--target-name",
        ROOTFS,
        "--target-base-url",
        bench.server.url + "image/targets/",
        "--target-dir",
        str(targets),
        "download",
    ]
    assert _run(download, capsys)[0] == 0
    assert (targets / "tbox%2Frootfs-12.img").read_bytes() == bench.firmware[ROOTFS]
    assert _run(download, capsys)[0] == 0  # cached: not downloaded again
    assert len(bench.target_requests()) == 1

    missing = [*download]
    missing[missing.index(ROOTFS)] = "nope.bin"
    status, _, err = _run(missing, capsys)
    assert status == 1
    assert "no target 'nope.bin'" in _one_line_error(err)


def test_a_rejected_refresh_exits_1_naming_the_attack(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metadata = tmp_path / "metadata"
    root = bench.srv / "image" / "metadata" / "1.root.json"
    main(["ota", "tuf-client", "--metadata-dir", str(metadata), "init", str(root)])
    old = (bench.srv / "image" / "metadata" / "timestamp.json").read_bytes()
    bench.image.refresh(timestamp_only=True)
    assert _run([*_client_args(bench, metadata), "refresh"], capsys)[0] == 0
    (bench.srv / "image" / "metadata" / "timestamp.json").write_bytes(old)
    status, _, err = _run([*_client_args(bench, metadata), "refresh"], capsys)
    assert status == 1
    line = _one_line_error(err)
    assert "rollback: " in line and "timestamp" in line
    assert json.loads((metadata / "timestamp.json").read_bytes())["signed"]["version"] == 4


def test_tuf_client_usage(bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metadata = tmp_path / "metadata"
    status, _, err = _run(["ota", "tuf-client", "--metadata-dir", str(metadata), "refresh"], capsys)
    assert status == 2 and "needs --metadata-url" in err
    status, _, err = _run([*_client_args(bench, metadata), "refresh"], capsys)
    assert status == 2 and "run `init` first" in err
    status, _, err = _run([*_client_args(bench, metadata), "download"], capsys)
    assert status == 2 and "needs --target-name, --target-base-url, --target-dir" in err
    status, _, err = _run(
        ["ota", "tuf-client", "--metadata-dir", str(metadata), "init", str(tmp_path / "x")],
        capsys,
    )
    assert status == 2 and "no such file" in err


def test_as_the_conformance_suite_runs_it(bench: Bench, tmp_path: Path) -> None:
    # A separate process per command, options before the command word, exit 0 or 1.
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    base = [sys.executable, "-m", "agent", "ota", "tuf-client"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def run(*args: str) -> int:
        done = subprocess.run(
            [*base, *args], env=env, check=False, capture_output=True, text=True, timeout=60
        )
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode

    root = bench.srv / "image" / "metadata" / "1.root.json"
    url = bench.server.url + "image/metadata"
    assert run("--metadata-dir", str(metadata), "init", str(root)) == 0
    assert run("--metadata-url", url, "--metadata-dir", str(metadata), "refresh") == 0
    download = [
        "--metadata-url",
        url,
        "--metadata-dir",
        str(metadata),
        "--target-name",
        BMS_FW,
        "--target-dir",
        str(tmp_path / "targets"),
        "--target-base-url",
        bench.server.url + "image/targets",
        "download",
    ]
    assert run(*download) == 0
    assert (tmp_path / "targets" / "bms%2Ffw-3.bin").read_bytes() == bench.firmware[BMS_FW]
    (bench.srv / "image" / "metadata" / "timestamp.json").write_bytes(b"{}")
    assert run("--metadata-url", url, "--metadata-dir", str(metadata), "refresh") == 1


# --- check ---------------------------------------------------------------------------------------


def _check_args(bench: Bench, tmp_path: Path) -> list[str]:
    return [
        "ota",
        "check",
        "--director",
        bench.server.url + "director",
        "--image",
        bench.server.url + "image",
        "--vehicle-id",
        "VIN1",
        "--hardware-id",
        "tbox-hw2",
        "--ecu",
        "bms=bms-hw1",
        "--state-dir",
        str(tmp_path / "state"),
        "--root-director",
        str(bench.srv / "director" / "metadata" / "1.root.json"),
        "--root-image",
        str(bench.srv / "image" / "metadata" / "1.root.json"),
    ]


def test_check_prints_the_plan_and_downloads(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = _run(_check_args(bench, tmp_path), capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "vehicle VIN1: 2 verified target(s) (director targets v3, image targets v3)"
    assert lines[1].startswith(f"  {BMS_FW}  20000 bytes  sha256 ")
    assert lines[1].endswith("ECU bms  release 3")
    assert lines[2].endswith("T-box  release 12")
    assert bench.target_requests() == []

    dl = tmp_path / "dl"
    status, out, _ = _run([*_check_args(bench, tmp_path), "--download", str(dl), "--json"], capsys)
    assert status == 0
    plan = json.loads(out)
    assert [t["name"] for t in plan["targets"]] == [BMS_FW, ROOTFS]
    for target in plan["targets"]:
        assert Path(target["path"]).read_bytes() == bench.firmware[target["name"]]


def test_check_refusals_are_one_line_errors(
    bench: Bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run([*_check_args(bench, tmp_path), "--installed", "tbox=13"], capsys)
    assert status == 1
    assert _one_line_error(err) == (
        "tbox ota: error: downgrade: director target tbox/rootfs-12.img: release counter 12 is "
        "lower than the 13 installed on the T-box"
    )
    args = _check_args(bench, tmp_path)
    args[args.index("tbox-hw2")] = "tbox-hw9"
    status, _, err = _run(args, capsys)
    assert status == 1 and "wrong_hardware: " in _one_line_error(err)
    status, _, err = _run([*_check_args(bench, tmp_path), "--installed", "tbox=x"], capsys)
    assert status == 2 and "not a whole number" in err
    with pytest.raises(SystemExit) as excinfo:
        main([*_check_args(bench, tmp_path), "--ecu", "bms"])
    assert excinfo.value.code == 2 and "is not KEY=VALUE" in capsys.readouterr().err

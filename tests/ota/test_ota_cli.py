"""``tbox ota …`` (contract C1): every subcommand's help, exit statuses, one-line errors, and a
release engineer's session from init to a served, rotated repository."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.cli import main

REPO = Path(__file__).resolve().parents[2]

SUBCOMMANDS = [
    ["ota"],
    ["ota", "repo"],
    ["ota", "repo", "init"],
    ["ota", "repo", "add-target"],
    ["ota", "repo", "remove-target"],
    ["ota", "repo", "assign"],
    ["ota", "repo", "unassign"],
    ["ota", "repo", "refresh"],
    ["ota", "repo", "resign"],
    ["ota", "repo", "rotate-key"],
    ["ota", "repo", "threshold"],
    ["ota", "repo", "show"],
    ["ota", "serve"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_help_and_usage_errors(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0
    assert f"usage: tbox {' '.join(words)}" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tbox ota: error: ")
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def srv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    srv = tmp_path / "srv"
    (tmp_path / "rootfs.img").write_bytes(os.urandom(40_000))
    assert main(["ota", "repo", "init", str(srv / "image"), "--kind", "image"]) == 0
    assert main(["ota", "repo", "init", str(srv / "director"), "--kind", "director"]) == 0
    capsys.readouterr()
    return srv


def test_a_release_engineers_session(
    srv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, director = str(srv / "image"), str(srv / "director")
    status, out, _ = _run(
        [
            "ota", "repo", "add-target", image, str(tmp_path / "rootfs.img"),
            "--name", "tbox/rootfs-12.img", "--hardware-id", "tbox-hw2",
            "--release-counter", "12", "--kind", "tbox", "--sha512",
        ],
        capsys,
    )  # fmt: skip
    assert status == 0
    assert out.splitlines()[0].startswith("added tbox/rootfs-12.img (40000 bytes, sha256 ")
    assert "  metadata/2.targets.json" in out.splitlines()

    status, out, _ = _run(
        [
            "ota", "repo", "assign", director, "--image-repo", image,
            "--vehicle-id", "VIN1", "--target", "tbox/rootfs-12.img",
        ],
        capsys,
    )  # fmt: skip
    assert status == 0
    assert out.startswith("assigned tbox/rootfs-12.img to vehicle VIN1\n")

    status, out, _ = _run(["ota", "repo", "show", director], capsys)
    assert status == 0
    assert "vehicle VIN1:" in out
    assert "tbox/rootfs-12.img  40000 bytes" in out
    assert "vehicle_id=VIN1" in out

    status, out, _ = _run(["ota", "repo", "show", image, "--json", "--check"], capsys)
    assert status == 0
    shown = json.loads(out)
    assert shown["targets"]["tbox/rootfs-12.img"]["custom"]["release_counter"] == 12
    assert shown["problems"] == []

    status, out, _ = _run(["ota", "repo", "rotate-key", image, "targets"], capsys)
    assert status == 0
    assert out.startswith("rotated targets keys of")
    keyid = shown["roles"]["snapshot"]["keys"][0]["keyid"]
    status, out, _ = _run(
        ["ota", "repo", "rotate-key", image, "snapshot", "--key", keyid[:8]], capsys
    )
    assert status == 0

    status, out, _ = _run(
        ["ota", "repo", "threshold", image, "root", "2", "--add-keys", "1"], capsys
    )
    assert status == 0
    assert "root threshold of" in out and "new keys:" in out

    status, out, _ = _run(["ota", "repo", "refresh", image, "--timestamp-only"], capsys)
    assert (status, out.splitlines()[1:]) == (0, ["  metadata/timestamp.json"])
    status, out, _ = _run(["ota", "repo", "resign", image, "targets"], capsys)
    assert status == 0 and "metadata/" in out
    status, out, _ = _run(["ota", "repo", "refresh", director, "--vehicle-id", "VIN1"], capsys)
    assert status == 0 and "vehicles/VIN1/metadata/timestamp.json" in out

    status, out, _ = _run(
        [
            "ota",
            "repo",
            "unassign",
            director,
            "--vehicle-id",
            "VIN1",
            "--target",
            "tbox/rootfs-12.img",
        ],
        capsys,
    )
    assert status == 0
    status, out, _ = _run(["ota", "repo", "remove-target", image, "tbox/rootfs-12.img"], capsys)
    assert status == 0
    status, out, _ = _run(["ota", "repo", "show", image], capsys)
    assert "targets: none" in out


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["add-target", "{image}", "{file}", "--name", "../x"], 2, "target name"),
        (["add-target", "{image}", "{tmp}/absent"], 2, "absent: no such file"),
        (["add-target", "{director}", "{file}"], 2, "is a director repository, not image"),
        (["add-target", "{tmp}", "{file}"], 2, "is not an update repository"),
        (["add-target", "{image}", "{file}", "--delta-from", "ab" * 32], 2, "go together"),
        (
            ["add-target", "{image}", "{file}", "--delta-from", "AB", "--delta-patch", "p"],
            2,
            "64 lowercase hex",
        ),
        (["assign", "{director}", "--image-repo", "{image}", "--vehicle-id", "VIN1",
          "--target", "nope"], 2, "has no target 'nope'"),
        (["assign", "{director}", "--image-repo", "{image}", "--vehicle-id", "a/b",
          "--target", "nope"], 2, "has no target"),
        (["unassign", "{director}", "--vehicle-id", "VIN1", "--target", "x"], 2, "no vehicle"),
        (["resign", "{image}", "mirror"], 2, "unknown role 'mirror'"),
        (["threshold", "{image}", "targets", "3"], 2, "exceeds its 1 key"),
        (["rotate-key", "{image}", "targets", "--key", "0000"], 2, "names no single key"),
        (["refresh", "{image}", "--vehicle-id", "V"], 2, "director repository only"),
        (["show", "{director}", "--vehicle-id", "V9"], 2, "no vehicle 'V9'"),
        (["init", "{image}", "--kind", "image"], 2, "not an empty directory"),
        (["init", "{tmp}/n", "--kind", "image", "--threshold", "root=1", "--threshold", "root=2"],
         2, "--threshold root given twice"),
        (["refresh", "{image}", "--keys", "{tmp}/absent"], 2, "--keys"),
    ],
)  # fmt: skip
def test_failures_are_one_line(
    srv: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    status: int,
    message: str,
) -> None:
    (tmp_path / "fw.bin").write_bytes(b"fw")
    words = [
        a.format(
            image=srv / "image", director=srv / "director", tmp=tmp_path, file=tmp_path / "fw.bin"
        )
        for a in args
    ]
    if words[0] == "add-target" and "--hardware-id" not in words:
        words += ["--hardware-id", "hw", "--release-counter", "1", "--kind", "tbox"]
    got, _, err = _run(["ota", "repo", *words], capsys)
    assert got == status, err
    assert message in _one_line_error(err)


def test_a_missing_key_is_explained_with_exit_1(
    srv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in (srv / "image.keys" / "online").iterdir():
        key.unlink()
    status, _, err = _run(["ota", "repo", "refresh", str(srv / "image")], capsys)
    assert status == 1
    line = _one_line_error(err)
    assert "timestamp: 0 of the 1 signatures needed; no private key for" in line
    assert "keys looked for in" in line


def test_show_check_fails_on_a_problem(srv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    timestamp = srv / "image" / "metadata" / "timestamp.json"
    text = timestamp.read_text()
    timestamp.write_text(re.sub(r'"expires": "\d{4}', '"expires": "2099', text))  # forged
    status, out, err = _run(["ota", "repo", "show", str(srv / "image"), "--check"], capsys)
    assert status == 1
    assert "PROBLEM: timestamp v1 does not verify: timestamp was signed by 0/1 keys" in out
    assert "timestamp v1 does not verify" in _one_line_error(err)


def test_bad_argument_values_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (
        ["init", str(tmp_path / "r"), "--kind", "image", "--threshold", "root=0"],
        ["init", str(tmp_path / "r"), "--kind", "image", "--expires", "mirror=3"],
        ["init", str(tmp_path / "r"), "--kind", "mirror"],
        ["threshold", str(tmp_path), "root", "-1"],
        ["resign", str(tmp_path), "--within", "0"],
    ):
        with pytest.raises(SystemExit) as excinfo:
            main(["ota", "repo", *args])
        assert excinfo.value.code == 2
    with pytest.raises(SystemExit) as excinfo:
        main(["ota", "serve", str(tmp_path), "--port", "70000"])
    assert excinfo.value.code == 2


def test_init_prints_where_the_keys_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = _run(
        ["ota", "repo", "init", str(tmp_path / "d"), "--kind", "director", "--vehicle-id", "V1",
         "--keys", str(tmp_path / "dk"), "--threshold", "root=2", "--expires", "timestamp=2"],
        capsys,
    )  # fmt: skip
    assert status == 0
    lines = out.splitlines()
    assert (
        lines[0]
        == f"created director repository {tmp_path / 'd'}; private keys in {tmp_path / 'dk'}:"
    )
    assert sum(line.startswith("  offline/root-") for line in lines) == 2
    assert sum(line.startswith("  online/") for line in lines) == 3
    assert "provision vehicles with" in lines[-1]
    assert (tmp_path / "d" / "vehicles" / "V1" / "metadata" / "timestamp.json").exists()


def test_serve_in_a_process(srv: Path, tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    process = subprocess.Popen(
        [sys.executable, "-m", "agent", "ota", "serve", str(srv), "--port-file", str(port_file)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        port = int(port_file.read_text())
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/image/metadata/root.json", headers={"Range": "bytes=0-9"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (206, b'{\n "signat')
        conn.request("GET", "/image.keys/offline/")
        assert conn.getresponse().status == 404
        conn.close()
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"serving {srv} at http://127.0.0.1:{port}/" in err
    assert '"GET /image/metadata/root.json HTTP/1.1" 206' in err


def test_serve_refuses_a_missing_directory(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agent", "ota", "serve", str(tmp_path / "absent")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr.strip().endswith("absent: no such directory to serve")
    assert len(run.stderr.strip().splitlines()) == 1

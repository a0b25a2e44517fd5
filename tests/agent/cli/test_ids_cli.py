"""`tbox ids learn` and `tbox ids run` (contract C4) on real traffic and on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.cli import main
from security.rulefile import load_rules
from security.secoc import SecOcProfile, SecOcSender

DATA = Path(__file__).parents[2] / "data" / "rav4-2018-comma2k19"
LOG = DATA / "rav4_60s.log"
DBC = DATA / "toyota_new_mc_pt_generated.dbc"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    lines = LOG.read_text().splitlines(keepends=True)
    half = len(lines) // 2
    directory = tmp_path_factory.mktemp("rav4")
    first, second = directory / "first.log", directory / "second.log"
    first.write_text("".join(lines[:half]))
    second.write_text("".join(lines[half:]))
    return first, second


@pytest.fixture(scope="module")
def learned(halves: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    rules = tmp_path_factory.mktemp("rules") / "rav4.toml"
    status = main(["ids", "learn", "--dbc", f"can0={DBC}", str(halves[0]), "-o", str(rules)])
    assert status == 0
    return rules


def test_learn_writes_a_rule_file_that_loads(
    learned: Path, halves: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = load_rules(learned)
    assert {r.id for r in rules} >= {"can0.allowlist", "can0.timing", "can1.timing"}
    text = learned.read_text()
    assert text.startswith("# IDS baseline learned by tbox ids learn from ")
    out = tmp_path / "again.toml"
    status, lines, err = _run(capsys, "ids", "learn", str(halves[0]), "-o", str(out))
    assert status == 0 and lines == []
    assert f"49400 frames, 12 rules written to {out}" in err  # no DBC: no signal rules


def test_run_on_the_clean_second_half_prints_no_event(
    learned: Path, halves: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines, err = _run(
        capsys, "ids", "run", "--rules", str(learned), "--dbc", f"can0={DBC}", str(halves[1])
    )
    assert status == 0 and lines == []
    assert err.splitlines()[-1] == (f"tbox ids run: {halves[1]}: 49400 frames, 0 flagged, 0 events")


def _attacked(second: Path, tmp_path: Path) -> Path:
    """The clean second half with 300 frames of id 0x000 flooding can0 for 90 ms, in time
    order (the injected frames are the ones with id 000)."""
    lines = second.read_text().splitlines(keepends=True)
    t0 = float(lines[1000].split()[0].strip("()")) + 0.00001
    injected = [f"({t0 + k * 0.0003:.6f}) can0 000#0000000000000000\n" for k in range(300)]
    merged = sorted(lines + injected, key=lambda line: float(line.split()[0].strip("()")))
    attacked = tmp_path / "attacked.log"
    attacked.write_text("".join(merged))
    return attacked


def test_run_prints_events_with_explanations(
    learned: Path, halves: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attacked = _attacked(halves[1], tmp_path)
    status, lines, err = _run(
        capsys, "ids", "run", "--rules", str(learned), "--dbc", f"can0={DBC}", str(attacked)
    )
    assert status == 0
    events = [json.loads(line) for line in lines]
    allowlist = next(e for e in events if e["rule_id"] == "can0.allowlist")
    assert allowlist["id"] == 0 and allowlist["count"] == 300 and allowlist["channel"] == "can0"
    assert allowlist["severity"] == "high" and allowlist["observed"] == "CAN id 0x0"
    assert allowlist["event_definition_id"] == 0xA001 and allowlist["idsm_instance_id"] == 1
    assert len(allowlist["frames"]) == 16 + 17
    assert {"can0.allowlist", "can0.flood"} <= {e["rule_id"] for e in events}
    assert "can0.allowlist×1" in err and "can0.flood×1" in err


def test_run_frames_prints_per_frame_verdicts(
    learned: Path, halves: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    attacked = _attacked(halves[1], tmp_path)
    status, lines, _ = _run(
        capsys, "ids", "run", "--rules", str(learned), "--dbc", str(DBC), "--frames", str(attacked)
    )
    assert status == 0
    verdicts = [json.loads(line) for line in lines]
    assert list(verdicts[0]) == ["index", "t", "channel", "id", "rules"]
    injected = [i for i, line in enumerate(attacked.read_text().splitlines()) if " 000#" in line]
    assert [v["index"] for v in verdicts if v["id"] == 0] == injected
    assert all("can0.allowlist" in v["rules"] for v in verdicts if v["id"] == 0)
    assert verdicts[0]["channel"] == "can0" and verdicts[0]["rules"] == ["can0.allowlist"]
    # the flood rule flags every frame over its limit, real ones among them
    assert {tuple(v["rules"]) for v in verdicts if v["id"] != 0} <= {("can0.flood",)}
    assert "can0.flood" in verdicts[-1]["rules"]


def test_a_bad_rule_file_is_one_line_with_file_line_key_and_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[rule]]\nid = "t"\nkind = "timing"\nseverity = "low"\ndescription = "d"\n'
        'bus = "can0"\nmessages = [\n  { can_id = 0x0B4, period_ms = -24 },\n]\n'
    )
    status, lines, err = _run(capsys, "ids", "run", "--rules", str(bad), str(LOG))
    assert status == 1 and lines == []
    assert err == (
        f"tbox ids: error: {bad}:8: rule[0].messages[0].period_ms: -24 must be > 0 and "
        "≤ 3.6e+06 (rule 't')\n"
    )


def test_rules_the_dbc_cannot_satisfy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "s"\nkind = "signal_range"\nseverity = "low"\ndescription = "d"\n'
        'bus = "can0"\nsignal = "SPEED.SPEED"\nmax = 100\n'
    )
    status, _, err = _run(capsys, "ids", "run", "--rules", str(rules), str(LOG))
    assert status == 1
    assert err == (
        f"tbox ids: error: {rules}:7: rule[0].signal: needs the DBC files of bus 'can0' "
        "(--dbc) (rule 's')\n"
    )
    status, lines, err = _run(
        capsys, "ids", "run", "--rules", str(rules), "--dbc", str(DBC), "--frames", str(LOG)
    )
    assert status == 0 and lines == []  # 73 km/h at most


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ids", "run", "--rules", "missing.toml", str(LOG)], "rule file 'missing.toml' does not"),
        (["ids", "run", "--rules", str(LOG), "missing.log"], "log file 'missing.log' does not"),
        (["ids", "learn", "missing.log", "-o", "x.toml"], "log file 'missing.log' does not exist"),
        (["ids", "learn", str(LOG), "-o", "/nonexistent/x.toml"], "directory '/nonexistent'"),
        (["ids", "run", "--rules", str(LOG), "--keys", "k.toml", str(LOG)], "key file 'k.toml'"),
    ],
)
def test_bad_usage_exits_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = _run(capsys, *argv)
    assert status == 2 and message in err and len(err.splitlines()) == 1


def test_secoc_rules_with_a_key_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = bytes(range(16))
    keys = tmp_path / "keys.toml"
    keys.write_text(f'[keys]\nbrake = "{key.hex()}"\n')
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nid = "auth"\nkind = "secoc"\nseverity = "critical"\ndescription = "d"\n'
        'bus = "can0"\ncan_id = 0x0B0\nkey = "brake"\ndata_id = 0x0123\npayload_bytes = 4\n'
    )
    sender = SecOcSender(SecOcProfile(0x0123, 4), key)
    log_lines = [
        f"({1.0 + k * 0.01:.6f}) can0 0B0#{sender.next_frame(bytes(4)).hex().upper()}\n"
        for k in range(10)
    ]
    log_lines[5] = "(1.050000) can0 0B0#0000000000000000\n"  # forged
    log = tmp_path / "secoc.log"
    log.write_text("".join(log_lines))
    status, lines, _ = _run(
        capsys, "ids", "run", "--rules", str(rules), "--keys", str(keys), "--frames", str(log)
    )
    assert status == 0
    assert [json.loads(line)["index"] for line in lines] == [5]
    status, _, err = _run(capsys, "ids", "run", "--rules", str(rules), str(log))
    assert status == 1 and "rule[0].key: no key file was given (--keys)" in err
    keys.write_text('[keys]\nbrake = "00"\n')
    status, _, err = _run(
        capsys, "ids", "run", "--rules", str(rules), "--keys", str(keys), str(log)
    )
    assert status == 1 and err.startswith(f"tbox ids: error: {keys}:2: keys.brake: ")


@pytest.mark.parametrize("words", [["ids"], ["ids", "run"], ["ids", "learn"]], ids=" ".join)
def test_help_and_unknown_options(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0 and "usage: tbox ids" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_help_and_missing_subcommand() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "ids", "run", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and "--frames" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "agent", "ids"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2

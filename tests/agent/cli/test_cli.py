"""Contract C1: --help everywhere, exit 2 on bad usage, failures explained in one line."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from agent.cli import build_parser, main


def _subcommands(parser: argparse.ArgumentParser, words: list[str]) -> list[list[str]]:
    """Every subcommand path of *parser*, read from argparse (a new command is covered)."""
    found = []
    for action in parser._actions:  # argparse has no public way to list subparsers
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append([*words, name])
                found += _subcommands(sub, [*words, name])
    return found


SUBCOMMANDS = _subcommands(build_parser(), [])


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--help"])
    assert excinfo.value.code == 0
    assert "usage: tbox" in capsys.readouterr().out


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_unknown_option_is_usage_error(
    words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        main([*words, "--no-such-option"])
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_console_script_and_python_m_agent_agree() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "agent", "--help"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0
    for name in ("decode", "monitor", "sim"):
        assert name in run.stdout
    run = subprocess.run(
        [sys.executable, "-m", "agent"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 2


def test_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["monitor", "--sim", "nosuchscenario", "--duration", "1"]) == 1
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(Exception, match="nosuchscenario"):
        main(["--debug", "monitor", "--sim", "nosuchscenario", "--duration", "1"])

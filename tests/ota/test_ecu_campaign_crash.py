"""Power cuts of the whole vehicle during a campaign over three ECUs and the T-box (C6, issue 5).

The child (tests/ota/campaign_crash_child.py, scenarios ``ecus`` and ``ecus-fail``) runs the
simulated ECUs in its own process, so a crash point is a power cut of the T-box and of every
ECU at once. It is cut at every persisted campaign step (``campaign.step_renamed``, each arrival)
and at the ECU steps that change what an ECU boots (its validity flag, its active bank, the
invalidation of a rollback), then started again to finish. Read from the files alone, after the
cut and after the restart:

* every ECU has a valid bank to boot, and boots one;
* all or nothing: after the restart every ECU runs version 2 and the T-box release 2
  (``ecus``), or every ECU runs version 1 and the T-box release 1 (``ecus-fail``: the third
  ECU's version 2 fails to boot), with no version 2 left valid in any ECU to come back later;
* what the vehicle reported (the queued statuses) never says committed for an ECU that does not
  run its image.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from agent import crashpoints
from agent.proto.tbox.v1 import OtaStatus
from ota.ab_installer import AbInstaller
from tests.ota import campaign_crash_child as child
from tests.ota.test_campaign_crash import _parse_hits, _queued, _run_child

S = OtaStatus
EXPECTED = {"ecus": ("committed", "-", 2), "ecus-fail": ("rolled_back", "ecu_activation_failed", 1)}
#: The ECU steps that decide what an ECU boots (every arrival is cut).
ECU_POINTS = ("ecu.after_validity_flag", "ecu.after_active_switch", "ecu.after_invalidate")


def _ecu_meta(work: Path, name: str) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((work / "ecus" / name / "meta.json").read_text())
    return meta


def _check(work: Path, scenario: str, *, finished: bool, what: str) -> None:
    statuses = _queued(work)
    runs: dict[str, int] = {}
    for name in child.ECU_NAMES:
        meta = _ecu_meta(work, name)
        valid = [b for b in meta["banks"] if b["state"] == "valid"]
        assert valid, (what, name, meta)  # never an ECU without a bootable bank
        active = meta["banks"][meta["active"]]
        assert active["state"] == "valid" or len(valid) >= 1, (what, name, meta)
        runs[name] = (
            active["version"] if active["state"] == "valid" else max(b["version"] for b in valid)
        )
        committed = [s for s in statuses if s.target == name and s.state == S.STATE_COMMITTED]
        if committed:  # reported committed: it runs version 2
            assert runs[name] == 2, (what, name, meta)
    if not finished:
        return
    step, code, release = EXPECTED[scenario]
    slots = AbInstaller(work / "slots", max_attempts=child.MAX_ATTEMPTS).status()
    assert (slots.committed_release, slots.pending) == (release, None), (what, slots)
    assert runs == dict.fromkeys(child.ECU_NAMES, release), (what, runs)
    if release == 1:  # nothing of version 2 may come back at the next reset
        for name in child.ECU_NAMES:
            banks = _ecu_meta(work, name)["banks"]
            assert all(b["state"] != "valid" or b["version"] == 1 for b in banks), (what, banks)
    host = [s for s in statuses if s.target == "host"]
    final = S.STATE_COMMITTED if step == "committed" else S.STATE_ROLLED_BACK
    assert host and (host[-1].state, host[-1].error_code or "-") == (final, code), what


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    counts = {}
    for scenario, (step, code, _) in EXPECTED.items():
        work = tmp_path_factory.mktemp(f"baseline-{scenario}")
        child.prepare(work, scenario)
        run = _run_child(work, scenario, CHILD_REPORT_HITS="1")
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"final {step} {code}\n"), (run.stdout, run.stderr[-3000:])
        _check(work, scenario, finished=True, what=f"baseline {scenario}")
        counts[scenario] = _parse_hits(run.stdout)
    return counts


def _cases(baselines: dict[str, dict[str, int]], scenario: str) -> list[tuple[str, int]]:
    """Every arrival at the ECU points; every persisted campaign step of ``ecus-fail``, which
    goes through every step ``ecus`` takes up to the activations and then the rollback sweep
    (``ecus`` adds only its commit: its last step is cut too)."""
    hits = baselines[scenario]
    cases = [(name, n) for name in ECU_POINTS for n in range(1, hits.get(name, 0) + 1)]
    steps = hits.get("campaign.step_renamed", 0)
    wanted = range(1, steps + 1) if scenario == "ecus-fail" else [steps - 1, steps]
    cases += [("campaign.step_renamed", n) for n in wanted]
    return cases


def _cut_and_restart(work: Path, scenario: str, name: str, n: int) -> None:
    what = f"{name}:{n} in {scenario}"
    child.prepare(work, scenario)
    cut = _run_child(work, scenario, TBOX_CRASHPOINT=f"{name}:{n}")
    assert cut.returncode == crashpoints.EXIT_STATUS, (what, cut.returncode, cut.stderr)
    _check(work, scenario, finished=False, what=f"after the cut at {what}")
    restart = _run_child(work, scenario)
    assert restart.returncode == 0, (what, restart.stderr[-3000:])
    _check(work, scenario, finished=True, what=f"after the restart from {what}")


def test_the_workload_reaches_the_ecu_decisions(baselines: dict[str, dict[str, int]]) -> None:
    for name in ECU_POINTS:
        assert any(b.get(name) for b in baselines.values()), name
    assert baselines["ecus-fail"].get("ecu.after_invalidate", 0) >= 2  # bms and vcu


@pytest.mark.slow
@pytest.mark.parametrize("scenario", list(EXPECTED))
def test_a_vehicle_power_cut_anywhere_in_an_ecu_campaign_keeps_all_or_nothing(
    scenario: str, baselines: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    cases = _cases(baselines, scenario)
    assert len(cases) >= 8, cases
    # The children wait on the bus half of the time: three at once (separate processes, so
    # their virtual buses and crash point counters are their own).
    with ThreadPoolExecutor(max_workers=3) as pool:
        runs = [
            pool.submit(_cut_and_restart, tmp_path / f"{name}-{n}", scenario, name, n)
            for name, n in cases
        ]
        for run in runs:
            run.result()

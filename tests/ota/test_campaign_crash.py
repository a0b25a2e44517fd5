"""Power cuts during an update campaign (contract C6).

A child process (tests/ota/campaign_crash_child.py) runs a whole campaign with the real
AbInstaller, the real upload queue and a local update source; it is killed (exit 137) at every
crash point of the campaign modules (``campaign.*``, read from the registry) and at every
``slots.*`` point a campaign reaches, then started again to finish. Right after the cut and
after the restart, read independently of the code under test (the queue's SQLite file, the slot
files, the logs of the work done):

* a verified bootable slot exists, and nothing of the update is half-switched;
* every status the vehicle queued (what it has *reported*) tells the truth about the installer:
  never COMMITTED unless the update is committed, never ROLLED_BACK unless it was rolled back;
  statuses are numbered in order, and a status sent again carries its first number;
* the campaign ends committed (health check passes) or rolled back (it fails), never failed;
* no work is repeated that must not be: an installed image is not written again, a download
  resumes (at most one chunk fetched twice), each step is reported once.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from agent import crashpoints
from agent.crashpoints import all_crashpoints
from agent.proto.tbox.v1 import OtaStatus
from ota.ab_installer import AbInstaller
from ota.campaign_store import CampaignStore
from ota.errors import CampaignStateError
from tests.ota import campaign_crash_child as child
from tests.ota.ab_crash_child import CHUNK_SIZE, IMAGE_LENGTH

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(child.__file__)

CAMPAIGN_POINTS = [p.name for p in all_crashpoints() if p.name.startswith("campaign.")]
SLOT_POINTS = [p.name for p in all_crashpoints() if p.name.startswith("slots.")]
SCENARIOS = ("commit", "rollback", "corrupt")
EXPECTED = {
    "commit": ("committed", "-", 2),
    "rollback": ("rolled_back", "health_check_failed", 1),
    "corrupt": ("committed", "-", 2),
}
S = OtaStatus
_RANK = {
    S.STATE_RECEIVED: 0,
    S.STATE_DOWNLOADING: 1,
    S.STATE_VERIFYING: 2,
    S.STATE_INSTALLING: 3,
    S.STATE_ACTIVATING: 4,
    S.STATE_COMMITTED: 5,
    S.STATE_ROLLED_BACK: 5,
    S.STATE_FAILED: 5,
}
_FINAL = {S.STATE_COMMITTED, S.STATE_ROLLED_BACK, S.STATE_FAILED}


def _run_child(work: Path, scenario: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != crashpoints.ENV_VAR}
    return subprocess.run(
        [sys.executable, str(CHILD), str(work), scenario],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**environ, "PYTHONPATH": str(REPO), **env},
    )


def _queued(work: Path) -> list[OtaStatus]:
    """The statuses in the queue file, in queue order, a repeat of the same number once."""
    path = work / "queue.db"
    if not path.exists():
        return []
    db = sqlite3.connect(path)
    try:
        rows = db.execute(
            "SELECT payload FROM items WHERE kind = 'ota_status' ORDER BY id"
        ).fetchall()
    except sqlite3.OperationalError:  # cut before the schema was committed
        return []
    finally:
        db.close()
    by_sequence: dict[int, bytes] = {}
    statuses = []
    for (payload,) in rows:
        status = OtaStatus.FromString(payload)
        if status.sequence in by_sequence:  # queued again after a cut: the very same message
            assert by_sequence[status.sequence] == payload, f"{status.sequence} reused"
            continue
        by_sequence[status.sequence] = payload
        statuses.append(status)
    return statuses


def _slot_verifies(root: Path, slot: str, release: int) -> None:
    manifest = (root / slot / "manifest.json").read_text()
    data = (root / slot / "image").read_bytes()
    assert f'"release_counter": {release}' in manifest, (slot, manifest)
    assert f'"sha256": "{hashlib.sha256(data).hexdigest()}"' in manifest, slot


def _check(work: Path, scenario: str, *, finished: bool, what: str) -> None:
    """The invariants of the module's docstring, after a cut (*finished* false) or the end."""
    statuses = _queued(work)
    sequences = [s.sequence for s in statuses]
    assert sequences == sorted(sequences), (what, sequences)  # in order, each once
    assert all(s.campaign_id == f"c-{scenario}" for s in statuses), what
    assert all(s.correlation_id == "corr-1" and s.vehicle_id == child.VEHICLE for s in statuses)
    host = [s for s in statuses if s.target == "host"]
    ecu = [s for s in statuses if s.target != "host"]
    ranks = [_RANK[s.state] for s in host]
    assert ranks == sorted(ranks), (what, [s.state for s in host])  # never backwards
    finals = [s for s in host if s.state in _FINAL]
    assert len(finals) <= 1 and (not finals or host[-1] is finals[0]), what
    assert all(s.state != S.STATE_FAILED for s in host), (what, host[-1].detail)
    # each step reported once: only download progress and a retried install repeat a state
    steps = [s.state for s in host if not s.bytes_done]
    repeated = {x for x in steps if steps.count(x) > 1}
    assert repeated <= {S.STATE_INSTALLING}, (what, steps)
    assert not ecu, what  # ECU lanes: tests/ota/test_ecu_campaign_crash.py

    # the truth: the slot files (no boot: it would change them)
    slots = AbInstaller(work / "slots", max_attempts=child.MAX_ATTEMPTS)
    status = slots.status()
    committed = status.committed_release
    _slot_verifies(work / "slots", status.committed.slot, committed)  # the fallback is intact
    reported = host[-1].state if host else None
    if reported == S.STATE_COMMITTED:
        assert (committed, status.pending) == (2, None), (what, status)
    if reported == S.STATE_ROLLED_BACK:
        assert (committed, status.pending) == (1, None), (what, status)
        assert status.last_failure is not None and status.last_failure.image.release_counter == 2
        assert host[-1].error_code == "health_check_failed", what
    try:
        persisted = CampaignStore(work / "state").load()
    except CampaignStateError:  # the corrupt file, before the child moved it aside
        assert scenario == "corrupt" and not statuses, what
        persisted = None
    if persisted is not None and persisted.final:
        assert (persisted.step == "committed") == (committed == 2 and status.pending is None)

    # work not repeated
    install_log = work / "install.log"
    installs = install_log.read_text().split("\n")[:-1] if install_log.exists() else []
    done = [i for i, line in enumerate(installs) if line.startswith("done")]
    assert len(done) <= 1 and (not done or done[0] == len(installs) - 1), (what, installs)
    fetch_log = work / "fetch.log"
    fetched = sum(map(int, fetch_log.read_text().split())) if fetch_log.exists() else 0
    assert fetched <= IMAGE_LENGTH + CHUNK_SIZE, (what, fetched)  # a resume, not a restart

    if not finished:
        return
    step, code, release = EXPECTED[scenario]
    assert persisted is not None and (persisted.step, persisted.error_code or "-") == (step, code)
    assert not persisted.outbox, what  # every status is in the queue
    assert finals and finals[0].state == (
        S.STATE_COMMITTED if step == "committed" else S.STATE_ROLLED_BACK
    ), what
    assert installs and fetched >= IMAGE_LENGTH, (what, installs, fetched)
    assert not (work / "state" / "downloads").exists(), what
    booted = slots.boot()  # hashes the slot it boots: a verified bootable slot
    assert (booted.committed_release, booted.pending) == (release, None), (what, booted)
    if release == 2:
        _slot_verifies(work / "slots", booted.committed.slot, 2)


def _installs(work: Path) -> tuple[int, bool]:
    """How many installs were started, and whether the installer holds release 2 written and
    verified (pending after its switch, or committed) — then it must never be written again."""
    log = work / "install.log"
    starts = log.read_text().count("start ") if log.exists() else 0
    status = AbInstaller(work / "slots", max_attempts=child.MAX_ATTEMPTS).status()
    pending = status.pending
    installed = status.committed_release == 2 or (
        pending is not None and pending.image.release_counter == 2 and pending.phase != "writing"
    )
    return starts, installed


def _parse_hits(stdout: str) -> dict[str, int]:
    hits = {}
    for line in stdout.splitlines():
        if line.startswith("hits "):
            _, name, n = line.split()
            hits[name] = int(n)
    return hits


@pytest.fixture(scope="module")
def baselines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, int]]:
    """Each scenario run without a cut: its crash point counts (and a check of the run)."""
    counts = {}
    for scenario in SCENARIOS:
        work = tmp_path_factory.mktemp(f"baseline-{scenario}")
        child.prepare(work, scenario)
        run = _run_child(work, scenario, CHILD_REPORT_HITS="1")
        assert run.returncode == 0, run.stderr
        step, code, _ = EXPECTED[scenario]
        assert run.stdout.startswith(f"final {step} {code}\n"), run.stdout
        _check(work, scenario, finished=True, what=f"baseline {scenario}")
        counts[scenario] = _parse_hits(run.stdout)
    return counts


def test_the_workload_reaches_every_campaign_crash_point(
    baselines: dict[str, dict[str, int]],
) -> None:
    assert len(CAMPAIGN_POINTS) >= 8, CAMPAIGN_POINTS
    unreached = [n for n in CAMPAIGN_POINTS if not any(b.get(n) for b in baselines.values())]
    assert not unreached, f"extend tests/ota/campaign_crash_child.py to reach {unreached}"
    reached = [n for n in SLOT_POINTS if any(b.get(n) for b in baselines.values())]
    assert len(reached) >= 16, reached  # install, switch, boot, health, commit, rollback


def _cases(name: str, baselines: dict[str, dict[str, int]]) -> list[tuple[str, int]]:
    """(scenario, n) to cut at: every arrival at a campaign point in the commit and rollback
    runs (the corrupt run for a point only it reaches); first, middle and last for slots."""
    scenarios = [s for s in ("commit", "rollback") if baselines[s].get(name)]
    if not scenarios and baselines["corrupt"].get(name):
        scenarios = ["corrupt"]
    cases = []
    for scenario in scenarios:
        hits = baselines[scenario][name]
        every = name.startswith("campaign.") and hits <= 8
        ns = range(1, hits + 1) if every else sorted({1, max(1, hits // 2), hits})
        cases += [(scenario, n) for n in ns]
    return cases


@pytest.mark.slow
@pytest.mark.parametrize("name", CAMPAIGN_POINTS + SLOT_POINTS)
def test_a_power_cut_anywhere_in_a_campaign_leaves_the_truth_and_a_bootable_slot(
    name: str, baselines: dict[str, dict[str, int]], tmp_path: Path
) -> None:
    cases = _cases(name, baselines)
    if not cases:
        assert name.startswith("slots."), f"the crash workload never reaches {name}"
        pytest.skip(f"{name} is not reached by an uninterrupted campaign")
    for scenario, n in cases:
        what = f"{name}:{n} in {scenario}"
        work = tmp_path / f"{scenario}-{n}"
        child.prepare(work, scenario)
        cut = _run_child(work, scenario, TBOX_CRASHPOINT=f"{name}:{n}")
        assert cut.returncode == crashpoints.EXIT_STATUS, (what, cut.returncode, cut.stderr)
        assert f"crash point {name} reached {n}" in cut.stderr, what
        _check(work, scenario, finished=False, what=f"after the cut at {what}")
        starts, installed = _installs(work)
        restart = _run_child(work, scenario)
        assert restart.returncode == 0, (what, restart.stderr)
        _check(work, scenario, finished=True, what=f"after the restart from {what}")
        # an image the installer holds is not written again; a cut write is tried once more
        again = _installs(work)[0] - starts
        assert again == 0 if installed else again <= 1, (what, starts, again)

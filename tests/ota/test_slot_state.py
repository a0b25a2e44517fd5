"""The slot state's pure decisions and file formats: each rule on its own, then random sequences
of events checked against the invariants and the file round trip."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ota.errors import DowngradeError, SlotSequenceError, SlotStateError, UpdatePendingError
from ota.slot_state import (
    FailureKind,
    ImageInfo,
    Phase,
    SlotManifest,
    SlotState,
    begin_install,
    boot,
    commit,
    encode_manifest,
    encode_state,
    fail_install,
    finish_install,
    fresh_state,
    parse_manifest,
    parse_state,
    record_health,
    rollback,
    snapshot,
    trial_slot,
)

NOW = "2026-12-01T10:00:00+00:00"


def image(release: int, tag: str = "") -> ImageInfo:
    return ImageInfo(release, f"{release:02x}{tag:0<2}".ljust(64, "0")[:64], 1000 + release)


BASE = fresh_state("a", image(5), max_attempts=3)


def installed(release: int = 6) -> SlotState:
    return finish_install(begin_install(BASE, image(release), max_attempts=3, now=NOW))


def test_an_update_goes_into_the_slot_that_is_not_committed() -> None:
    state = begin_install(BASE, image(6), max_attempts=3, now=NOW)
    assert state.pending is not None
    assert (state.pending.slot, state.pending.phase, state.active) == ("b", Phase.WRITING, "a")
    assert state.try_slot is None and trial_slot(state) is None
    state = finish_install(state)
    assert (state.try_slot, trial_slot(state), state.active) == ("b", "b", "a")
    assert state.pending is not None and state.pending.attempts_left == 3


def test_release_counters_never_go_down() -> None:
    with pytest.raises(DowngradeError, match="release counter 4 is lower than the committed"):
        begin_install(BASE, image(4), max_attempts=3, now=NOW)
    with pytest.raises(DowngradeError, match="different image under the committed release"):
        begin_install(BASE, image(5, "ff"), max_attempts=3, now=NOW)
    assert begin_install(BASE, image(5), max_attempts=3, now=NOW).pending is not None


def test_one_update_at_a_time() -> None:
    with pytest.raises(UpdatePendingError, match="still pending"):
        begin_install(installed(), image(7), max_attempts=3, now=NOW)
    writing = begin_install(BASE, image(6), max_attempts=3, now=NOW)
    with pytest.raises(UpdatePendingError, match="interrupted; call boot"):
        begin_install(writing, image(7), max_attempts=3, now=NOW)


def test_each_boot_uses_an_attempt_until_none_is_left() -> None:
    state = installed()
    for left in (2, 1, 0):
        state = boot(state, trial_problem=None, now=NOW)
        assert state.pending is not None and state.pending.attempts_left == left
        assert state.active == "b"
    state = boot(state, trial_problem=None, now=NOW)
    assert state.pending is None and state.active == "a"
    assert state.last_failure is not None and state.last_failure.kind is FailureKind.ROLLED_BACK
    assert "boot attempts exhausted" in state.last_failure.reason


def test_a_trial_that_does_not_verify_is_rolled_back_at_boot() -> None:
    state = boot(installed(), trial_problem="its image is missing", now=NOW)
    assert state.pending is None and state.active == "a"
    assert state.last_failure is not None
    assert state.last_failure.reason == "slot b does not verify: its image is missing"


def test_an_interrupted_install_is_recorded_as_failed_at_boot() -> None:
    writing = begin_install(BASE, image(6), max_attempts=3, now=NOW)
    state = boot(writing, trial_problem=None, now=NOW)
    assert state.pending is None
    assert state.last_failure is not None
    assert state.last_failure.kind is FailureKind.INSTALL_FAILED
    assert "interrupted" in state.last_failure.reason


def test_commit_needs_a_health_check_passed_in_this_boot() -> None:
    state = boot(installed(), trial_problem=None, now=NOW)
    with pytest.raises(SlotSequenceError, match="health check has not passed"):
        commit(state)
    healthy = record_health(state, passed=True, reason="ok", now=NOW)
    rebooted = boot(healthy, trial_problem=None, now=NOW)
    assert rebooted.pending is not None and rebooted.pending.phase is Phase.TRYING
    done = commit(healthy)
    assert done.committed.slot == "b" and done.committed.image == image(6)
    assert done.pending is None and commit(done) == done


def test_a_failed_health_check_rolls_back_with_its_reason() -> None:
    state = boot(installed(), trial_problem=None, now=NOW)
    state = record_health(state, passed=False, reason="exit status 1", now=NOW)
    assert state.active == "a" and state.last_failure is not None
    assert state.last_failure.reason == "health check failed: exit status 1"


def test_rollback_of_an_install_in_progress_is_an_install_failure() -> None:
    writing = begin_install(BASE, image(6), max_attempts=3, now=NOW)
    state = rollback(writing, "cancelled", now=NOW)
    assert state.last_failure is not None
    assert state.last_failure.kind is FailureKind.INSTALL_FAILED
    with pytest.raises(SlotSequenceError, match="nothing to roll back"):
        rollback(BASE, "again", now=NOW)
    with pytest.raises(SlotSequenceError, match="cannot fail an install"):
        fail_install(BASE, "no", now=NOW)


def test_a_slot_being_written_is_reported_empty() -> None:
    writing = begin_install(BASE, image(6), max_attempts=3, now=NOW)
    old = SlotManifest(image(4), NOW)
    status = snapshot(writing, {"a": SlotManifest(image(5), NOW), "b": old})
    assert status.b is None and status.a is not None
    assert snapshot(BASE, {"a": None, "b": old}).b == old


# --- the files ---------------------------------------------------------------------------------


def test_a_manifest_round_trips() -> None:
    manifest = SlotManifest(replace(image(6), version="2026.12 ünïcode"), NOW)
    assert parse_manifest(encode_manifest(manifest), source="m.json") == manifest


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("committed"), "state.json: committed: is missing"),
        (lambda d: d["committed"].update(slot="c"), "committed.slot: 'c' is neither"),
        (lambda d: d.update(max_attempts=True), "max_attempts: True has the wrong type"),
        (lambda d: d.update(max_attempts=0), "max_attempts: 0 is below 1"),
        (
            lambda d: d["committed"]["image"].update(sha256="XYZ"),
            "committed.image: sha256 'XYZ' is not 64 lowercase hex digits",
        ),
        (lambda d: d["pending"].update(phase="flashing"), "pending.phase: 'flashing' is none of"),
        (lambda d: d["pending"].update(attempts_left=9), "pending.attempts_left: 9 is not from 0"),
        (lambda d: d["pending"].update(slot="a"), "pending.slot: the update is in the committed"),
        (lambda d: d.update(try_slot=None), "try_slot: None contradicts the rest of the file"),
    ],
)
def test_a_malformed_state_file_names_the_key(edit: object, message: str) -> None:
    document = json.loads(encode_state(installed()))
    assert callable(edit)
    edit(document)
    with pytest.raises(SlotStateError) as caught:
        parse_state(json.dumps(document).encode(), source="state.json")
    assert message in str(caught.value)


# --- random sequences --------------------------------------------------------------------------

_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("install"), st.integers(3, 9), st.sampled_from(["", "ff"])),
        st.tuples(st.just("finish"), st.none(), st.none()),
        st.tuples(st.just("fail"), st.none(), st.none()),
        st.tuples(st.just("boot"), st.none(), st.sampled_from([None, "bad image"])),
        st.tuples(st.just("health"), st.booleans(), st.none()),
        st.tuples(st.just("commit"), st.none(), st.none()),
        st.tuples(st.just("rollback"), st.none(), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events=_EVENTS, max_attempts=st.integers(1, 4))
def test_random_events_keep_the_invariants(
    events: list[tuple[str, object, object]], max_attempts: int
) -> None:
    state = fresh_state("a", image(5), max_attempts=max_attempts)
    floor = 5
    for kind, arg, extra in events:
        before = state
        try:
            if kind == "install":
                assert isinstance(arg, int) and isinstance(extra, str)
                state = begin_install(state, image(arg, extra), max_attempts=max_attempts, now=NOW)
            elif kind == "finish":
                state = finish_install(state)
            elif kind == "fail":
                state = fail_install(state, "failed", now=NOW)
            elif kind == "boot":
                assert extra is None or isinstance(extra, str)
                state = boot(state, trial_problem=extra, now=NOW)
            elif kind == "health":
                state = record_health(state, passed=bool(arg), reason="r", now=NOW)
            elif kind == "commit":
                state = commit(state)
            else:
                state = rollback(state, "r", now=NOW)
        except (SlotSequenceError, DowngradeError):
            assert state == before  # a refused event changes nothing
            continue
        # the committed release never goes down; commits happen only from a healthy trial
        assert state.committed.image.release_counter >= floor
        if state.committed != before.committed:
            assert before.pending is not None and before.pending.phase is Phase.HEALTHY
        floor = state.committed.image.release_counter
        # an update is never in the committed slot; the active slot is committed or on trial
        if state.pending is not None:
            assert state.pending.slot != state.committed.slot
            assert 0 <= state.pending.attempts_left <= state.max_attempts
        assert state.active in {state.committed.slot, state.try_slot}
        # what is written is what is read
        assert parse_state(encode_state(state), source="state.json") == state

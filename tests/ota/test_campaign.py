"""Campaigns without I/O: the cmd/ota body, the transition rules, the decisions, the state file,
and the store that keeps it (ota.campaign, ota.campaign_store)."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import crashpoints
from agent.errors import InputError
from agent.proto.tbox.v1 import OtaStatus
from ota.campaign import (
    FINAL_STEPS,
    HOST,
    MAX_BODY_BYTES,
    MAX_INSTALL_ATTEMPTS,
    AlreadyInstalled,
    Boot,
    Campaign,
    CampaignRequest,
    CheckHealth,
    Commit,
    CommitDone,
    DownloadDone,
    EcuActivated,
    EcuDownloaded,
    EcuFailed,
    EcuRolledBack,
    EcuStaged,
    EcuStaging,
    ErrorCode,
    Event,
    Failed,
    Install,
    InstallDone,
    InstallRetried,
    LanePhase,
    PlanChosen,
    RollBackEcu,
    RolledBack,
    Step,
    TargetRef,
    VerifyPassed,
    accept,
    activation_decision,
    campaign_problem,
    choose_targets,
    encode_campaign,
    error_code_for,
    find_target,
    install_decision,
    lane_action,
    leftover_rollback,
    parse_campaign,
    parse_request,
    progress_event,
    rollback_code,
    sent,
    stamp,
    status_message,
    transition,
    verify_decision,
)
from ota.campaign_store import CampaignStore
from ota.errors import (
    CampaignRequestError,
    CampaignSequenceError,
    CampaignStateError,
    DowngradeError,
    NoBootableSlotError,
    OtaVerificationError,
    SlotIOError,
    UpdatePendingError,
)
from ota.slot_state import (
    ImageInfo,
    SlotState,
    begin_install,
    boot,
    commit,
    finish_install,
    fresh_state,
    record_health,
    snapshot,
)
from ota.target_info import ImageKind

NOW = 1_800_000_000_000_000
T = "2026-12-01T10:00:00+00:00"


def sha(n: int) -> str:
    return f"{n:064x}"


HOST_2 = TargetRef("tbox/rootfs-2.img", sha(2), 2000, 2, ImageKind.TBOX)
HOST_3 = TargetRef("tbox/rootfs-3.img", sha(3), 3000, 3, ImageKind.TBOX)
ECU_7 = TargetRef("bms/fw-7.bin", sha(7), 700, 7, ImageKind.ECU, "bms")
VCU_4 = TargetRef("vcu/fw-4.bin", sha(4), 400, 4, ImageKind.ECU, "vcu")


def received(**request: Any) -> Campaign:
    return accept(CampaignRequest("c1", **request), command_id="cmd-1", now_us=NOW)


def run(c: Campaign, *events: Event) -> Campaign:
    for event in events:
        c = transition(c, event, now_us=NOW)
    return c


def image(t: TargetRef) -> ImageInfo:
    return t.image()


def slots(committed: TargetRef = HOST_2) -> SlotState:
    return fresh_state("a", image(committed), max_attempts=3)


def status(state: SlotState) -> Any:
    return snapshot(state, {"a": None, "b": None})


# --- the cmd/ota body --------------------------------------------------------------------------


def test_a_full_request_is_parsed() -> None:
    request = parse_request(
        json.dumps(
            {
                "campaign_id": "rollout-2026.12_a",
                "correlation_id": "req 4711/ü",
                "targets": ["tbox/rootfs-3.img", "bms/fw-7.bin"],
                "deadline": "2026-12-31T23:00:00Z",
            }
        ).encode()
    )
    assert request == CampaignRequest(
        "rollout-2026.12_a",
        "req 4711/ü",
        ("tbox/rootfs-3.img", "bms/fw-7.bin"),
        1_798_758_000,
    )


def test_a_minimal_request_means_every_assigned_target() -> None:
    assert parse_request(b'{"campaign_id": "c1"}') == CampaignRequest("c1")
    assert parse_request(b'{"campaign_id": "c1", "targets": "all"}') == CampaignRequest("c1")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "is not a valid JSON object"),
        (b"\xff{}", "is not UTF-8"),
        (b"[1]", "must be a JSON object, not an array"),
        (b"{}", "campaign_id is missing"),
        (b'{"campaign_id": ""}', "campaign_id"),
        (b'{"campaign_id": "a/b"}', "campaign_id"),
        (b'{"campaign_id": 7}', "campaign_id must be a string"),
        (b'{"campaign_id": "c", "campaign_id": "d"}', "repeats the key 'campaign_id'"),
        (b'{"campaign_id": "c", "target": "all"}', "unknown key 'target'"),
        (b'{"campaign_id": "c", "correlation_id": ""}', "correlation_id '' must be"),
        (b'{"campaign_id": "c", "correlation_id": "a\\nb"}', "correlation_id"),
        (b'{"campaign_id": "c", "correlation_id": null}', "correlation_id None"),
        (b'{"campaign_id": "c", "targets": []}', 'targets must be "all" or a list'),
        (b'{"campaign_id": "c", "targets": "some"}', 'targets must be "all" or a list'),
        (b'{"campaign_id": "c", "targets": ["../etc"]}', "targets: name"),
        (b'{"campaign_id": "c", "targets": ["a", "a"]}', "names a target twice"),
        (b'{"campaign_id": "c", "deadline": 1800000000}', "deadline 1800000000 must be"),
        (b'{"campaign_id": "c", "deadline": "tomorrow"}', "is not an RFC 3339 time"),
        (b'{"campaign_id": "c", "deadline": "2026-12-31T23:00:00"}', "has no UTC offset"),
        (b'{"campaign_id": "c", "deadline": NaN}', "NaN is not a JSON number"),
        (b"[" * 5000 + b"]" * 5000, "nested too deeply"),
        (b'{"campaign_id": "c", "x": "' + b"y" * MAX_BODY_BYTES + b'"}', "at most 16384"),
    ],
)
def test_a_malformed_request_names_the_field(body: bytes, message: str) -> None:
    with pytest.raises(CampaignRequestError) as caught:
        parse_request(body)
    assert message in str(caught.value)
    assert str(caught.value).startswith("cmd/ota body: ")
    assert isinstance(caught.value, InputError)  # the command channel's "invalid_body"


def _check_request_outcome(body: bytes) -> None:
    try:
        request = parse_request(body)
    except CampaignRequestError:
        return
    # whatever is accepted makes a campaign that keeps every invariant
    assert campaign_problem(accept(request, command_id="x", now_us=0)) is None


@settings(max_examples=500, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes_parse_or_fail_cleanly(body: bytes) -> None:
    _check_request_outcome(body)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)
_FIELD_VALUES = {
    "campaign_id": st.sampled_from(["c1", "rollout-7", ""]) | _JSON,
    "correlation_id": st.text(max_size=130) | _JSON,
    "targets": st.just("all")
    | st.lists(st.sampled_from(["tbox/a.img", "b", "..", "a b"]) | st.text(max_size=8))
    | _JSON,
    "deadline": st.sampled_from(["2026-12-31T23:00:00Z", "0001-01-01T00:00:00-23:59"])
    | st.datetimes().map(lambda d: d.isoformat())
    | _JSON,
    "extra": _JSON,
}


@settings(max_examples=500, deadline=None)
@given(doc=st.fixed_dictionaries({}, optional={k: v for k, v in _FIELD_VALUES.items()}))
def test_any_json_object_parses_or_fails_cleanly(doc: dict[str, Any]) -> None:
    _check_request_outcome(json.dumps(doc).encode())


def test_the_command_id_correlates_unless_the_campaign_names_one() -> None:
    assert received().correlation_id == "cmd-1"
    assert received(correlation_id="req-9").correlation_id == "req-9"
    odd = accept(CampaignRequest("c1"), command_id="a\x00b" + "x" * 200, now_us=NOW)
    assert odd.correlation_id == "a_b" + "x" * 125
    assert campaign_problem(odd) is None


# --- the transitions ---------------------------------------------------------------------------


def test_a_campaign_goes_through_every_step_with_one_event_each() -> None:
    c = received(deadline=1_798_758_000)
    assert c.step is Step.RECEIVED and [e.state for e in c.outbox] == [Step.RECEIVED]
    assert "deadline 2026-12-31T23:00:00+00:00" in c.detail
    c = sent(c)
    steps: list[tuple[Event, list[Step]]] = [
        (PlanChosen(HOST_2), [Step.DOWNLOADING]),
        (DownloadDone("/d/rootfs-2.img"), [Step.VERIFYING]),
        (VerifyPassed(), [Step.INSTALLING]),
        (InstallDone(), [Step.ACTIVATING]),
        (CommitDone(), [Step.COMMITTED]),
    ]
    for event, states in steps:
        c = run(c, event)
        assert [e.state for e in c.outbox] == states
        assert campaign_problem(c) is None
        assert all(e.detail.startswith("campaign c1: ") for e in c.outbox)
        c = sent(c)
    assert c.step is Step.COMMITTED and c.download is None and c.error_code == ""


def _lanes(c: Campaign) -> dict[str, LanePhase]:
    return {lane.ecu_id: lane.phase for lane in c.ecus}


def _staged_pair() -> Campaign:
    return run(
        received(),
        PlanChosen(HOST_2, (ECU_7, VCU_4)),
        EcuDownloaded("bms", "/d/bms"),
        EcuDownloaded("vcu", "/d/vcu"),
        DownloadDone("/d/host"),
        VerifyPassed(),
        EcuStaging("bms"),
        EcuStaged("bms"),
        EcuStaging("vcu"),
        EcuStaged("vcu"),
    )


def test_ecu_lanes_go_through_every_phase_with_events_in_their_lanes() -> None:
    c = sent(run(received(), PlanChosen(HOST_2, (ECU_7, VCU_4))))
    assert c.step is Step.DOWNLOADING and _lanes(c) == {"bms": "planned", "vcu": "planned"}
    assert lane_action(c) is None  # downloads are the runner's, in lane order
    with pytest.raises(CampaignSequenceError, match="not downloaded"):
        run(c, DownloadDone("/d/host"))
    c = run(c, EcuDownloaded("bms", "/d/bms"), EcuDownloaded("vcu", "/d/vcu"))
    assert [(e.target, e.bytes_done) for e in c.outbox] == [("bms", 700), ("vcu", 400)]
    c = sent(run(c, DownloadDone("/d/host"), VerifyPassed()))
    assert c.step is Step.INSTALLING and "staging bms, vcu" in c.detail
    action = lane_action(c)
    assert isinstance(action, type(lane_action(c))) and action is not None
    assert action.lane.ecu_id == "bms"
    with pytest.raises(CampaignSequenceError, match="has not staged"):
        run(c, InstallDone())
    with pytest.raises(CampaignSequenceError, match="bms is downloaded, not staging"):
        run(c, EcuStaged("bms"))  # flashed without saying so first
    c = run(c, EcuStaging("bms"))
    assert _lanes(c)["bms"] == "staging" and lane_action(c) == action.__class__(c.lane("bms"))
    with pytest.raises(CampaignSequenceError, match="bms is staging, not downloaded"):
        run(c, EcuStaged("bms", unchanged=True))  # a staged image the ECU booted is ours
    c = sent(run(c, EcuStaged("bms"), EcuStaged("vcu", unchanged=True), InstallDone()))
    assert _lanes(c) == {"bms": "staged", "vcu": "unchanged"}
    activate = lane_action(c)
    assert activate is not None and activate.lane.ecu_id == "bms"
    with pytest.raises(CampaignSequenceError, match="does not run its image"):
        run(c, CommitDone())
    c = run(c, EcuActivated("bms"), CommitDone())
    assert c.step is Step.COMMITTED and _lanes(c) == {"bms": "committed", "vcu": "unchanged"}
    assert [(e.state, e.target) for e in c.outbox] == [
        (Step.ACTIVATING, "bms"),
        (Step.COMMITTED, "bms"),
        (Step.COMMITTED, HOST),
    ]
    assert campaign_problem(c) is None


def test_an_ecu_only_campaign_needs_no_t_box_image() -> None:
    c = run(received(), PlanChosen(None, (ECU_7,)), EcuDownloaded("bms", "/d/bms"))
    with pytest.raises(CampaignSequenceError, match="only a T-box image"):
        run(c, DownloadDone("/d/host"))
    c = run(
        c, DownloadDone(None), VerifyPassed(), EcuStaging("bms"), EcuStaged("bms"), InstallDone()
    )
    assert c.step is Step.ACTIVATING and c.download is None
    c = run(c, EcuActivated("bms"), CommitDone())
    assert c.step is Step.COMMITTED and campaign_problem(c) is None


def test_a_failing_ecu_rolls_every_lane_back_before_the_campaign_ends() -> None:
    c = sent(run(_staged_pair(), InstallDone(), EcuActivated("bms")))
    # the third lane of three in the README; here the second of two fails at activation
    c = run(c, EcuFailed("vcu", ErrorCode.ECU_ACTIVATION_FAILED, "runs version 3 after reset"))
    assert c.abort is not None and c.abort.code is ErrorCode.ECU_ACTIVATION_FAILED
    assert not c.final and _lanes(c) == {"bms": "activated", "vcu": "failed"}
    failed = c.outbox[-1]
    assert (failed.state, failed.target, failed.error_code) == (
        Step.FAILED,
        "vcu",
        "ecu_activation_failed",
    )
    # ending it now only records (again) that it rolls back: the lanes go first
    assert run(c, RolledBack(ErrorCode.STALLED, "later")).abort == c.abort
    with pytest.raises(CampaignSequenceError, match="rolling back"):
        run(c, CommitDone())
    first = lane_action(c)
    assert isinstance(first, RollBackEcu) and first.lane.ecu_id == "vcu"  # last lane first
    c = run(c, EcuRolledBack("vcu", True))
    second = lane_action(c)
    assert isinstance(second, RollBackEcu) and second.lane.ecu_id == "bms"
    c = run(c, EcuRolledBack("bms", False, "no response"))
    assert lane_action(c) is None
    c = sent(c)
    c = run(c, RolledBack(ErrorCode.HEALTH_CHECK_FAILED, "ignored: the abort's reason wins"))
    assert (c.step, c.error_code) == (Step.ROLLED_BACK, "ecu_activation_failed")
    assert "ECU vcu: runs version 3 after reset" in c.detail
    assert "(ECUs: bms rollback_failed, vcu rolled_back)" in c.detail
    assert campaign_problem(c) is None


def test_a_failure_while_staging_ends_failed_after_the_staged_lanes_roll_back() -> None:
    c = run(_staged_pair(), Failed(ErrorCode.STALLED, "installing the T-box image stalled"))
    assert c.step is Step.INSTALLING and c.abort is not None
    assert [a.lane.ecu_id for a in [lane_action(c)] if isinstance(a, RollBackEcu)] == ["vcu"]
    c = run(c, EcuRolledBack("vcu", True), EcuRolledBack("bms", True))
    c = run(c, Failed(ErrorCode.STALLED, "installing the T-box image stalled"))
    assert (c.step, c.error_code) == (Step.FAILED, "stalled")
    assert _lanes(c) == {"bms": "rolled_back", "vcu": "rolled_back"}


def test_a_committed_t_box_image_leaves_a_campaign_with_ecu_lanes() -> None:
    c = run(
        received(),
        PlanChosen(HOST_2, (ECU_7,)),
        EcuDownloaded("bms", "/d/bms"),
        DownloadDone("/d/host"),
    )
    c = run(c, AlreadyInstalled())
    assert (c.step, c.target, c.download) == (Step.INSTALLING, None, None)
    assert (c.outbox[-2].state, c.outbox[-2].target) == (Step.COMMITTED, HOST)
    assert campaign_problem(c) is None


def test_an_interrupted_install_is_retried_a_bounded_number_of_times() -> None:
    c = run(received(), PlanChosen(HOST_2), DownloadDone("/d/x"), VerifyPassed())
    assert c.install_attempts == 1
    for attempt in range(2, MAX_INSTALL_ATTEMPTS + 1):
        c = run(c, InstallRetried())
        assert (c.step, c.install_attempts) == (Step.INSTALLING, attempt)
        assert f"attempt {attempt} of {MAX_INSTALL_ATTEMPTS}" in c.detail
    c = run(c, InstallRetried())
    assert (c.step, c.error_code) == (Step.FAILED, ErrorCode.INSTALL_INTERRUPTED)


@pytest.mark.parametrize(
    ("events", "bad"),
    [
        ((), DownloadDone("/x")),
        ((), RolledBack(ErrorCode.STALLED, "r")),
        ((PlanChosen(HOST_2),), PlanChosen(HOST_2)),
        (
            (PlanChosen(HOST_2), DownloadDone("/x"), VerifyPassed(), InstallDone()),
            Failed(ErrorCode.STALLED, "r"),
        ),
        ((PlanChosen(HOST_2), DownloadDone("/x")), CommitDone()),
        ((PlanChosen(HOST_2), Failed(ErrorCode.STALLED, "r")), Failed(ErrorCode.STALLED, "r")),
        ((), PlanChosen(ECU_7)),
        ((), PlanChosen(HOST_2, (HOST_3,))),
        ((), PlanChosen(None, ())),
        ((), PlanChosen(None, (ECU_7, ECU_7))),
        ((PlanChosen(HOST_2, (ECU_7,)),), EcuDownloaded("vcu", "/d")),
        ((PlanChosen(HOST_2, (ECU_7,)),), EcuStaged("bms")),
        ((PlanChosen(HOST_2, (ECU_7,)),), EcuRolledBack("bms", True)),
        ((PlanChosen(HOST_2),), DownloadDone("")),
    ],
)
def test_an_event_that_does_not_fit_is_refused(events: tuple[Event, ...], bad: Event) -> None:
    c = run(received(), *events)
    with pytest.raises(CampaignSequenceError, match="campaign c1"):
        transition(c, bad, now_us=NOW)


_SHA = st.text("0123456789abcdef", min_size=64, max_size=64)


def _targets(kind: ImageKind) -> st.SearchStrategy[TargetRef]:
    return st.builds(
        TargetRef,
        name=st.sampled_from(["tbox/a.img", "b.bin", "x/y/z"]),
        sha256=_SHA,
        length=st.integers(0, 10**6),
        release_counter=st.integers(0, 9),
        image_kind=st.just(kind),
        ecu_id=st.just(None) if kind is ImageKind.TBOX else st.sampled_from(["bms", "adas"]),
    )


_CODES = st.sampled_from(list(ErrorCode))
_FAILED = st.builds(Failed, _CODES, st.text(max_size=10))
_ROLLED_BACK = st.builds(RolledBack, _CODES, st.text(max_size=10))
_PLANS = st.builds(
    PlanChosen,
    st.none() | _targets(ImageKind.TBOX),
    st.lists(_targets(ImageKind.ECU), max_size=3, unique_by=lambda t: t.ecu_id).map(tuple),
)
_ECU_IDS = st.sampled_from(["bms", "adas"])
# Any event at all, fitting or not.
_EVENTS: st.SearchStrategy[Event] = st.one_of(
    _PLANS,
    st.builds(PlanChosen, st.none(), st.lists(_targets(ImageKind.ECU), max_size=2).map(tuple)),
    st.builds(PlanChosen, _targets(ImageKind.ECU), st.tuples(_targets(ImageKind.TBOX))),
    st.builds(DownloadDone, st.sampled_from(["/d/x.img", "", None])),
    st.builds(EcuDownloaded, _ECU_IDS, st.sampled_from(["/d/e.img", ""])),
    st.builds(EcuStaged, _ECU_IDS, st.booleans()),
    st.builds(EcuStaging, _ECU_IDS),
    st.builds(EcuActivated, _ECU_IDS),
    st.builds(EcuFailed, _ECU_IDS, _CODES, st.text(max_size=10)),
    st.builds(EcuRolledBack, _ECU_IDS, st.booleans(), st.text(max_size=10)),
    st.just(VerifyPassed()),
    st.just(AlreadyInstalled()),
    st.just(InstallRetried()),
    st.just(InstallDone()),
    st.just(CommitDone()),
    _ROLLED_BACK,
    _FAILED,
)


def _forward(c: Campaign, data: st.DataObject) -> Event:
    """An event that takes *c* forwards (what the runner would apply next)."""
    action = lane_action(c)
    if isinstance(action, RollBackEcu):
        return EcuRolledBack(action.lane.ecu_id, data.draw(st.booleans()), "no response")
    if action is not None:
        lane = action.lane
        if c.step is Step.ACTIVATING:
            return EcuActivated(lane.ecu_id)
        if lane.phase is LanePhase.STAGING:
            return EcuStaged(lane.ecu_id)
        if data.draw(st.booleans()):
            return EcuStaged(lane.ecu_id, unchanged=True)
        return EcuStaging(lane.ecu_id)
    if c.abort is not None:
        code, reason = c.abort.code, c.abort.reason
        return RolledBack(code, reason) if c.step is Step.ACTIVATING else Failed(code, reason)
    if c.step is Step.RECEIVED:
        return data.draw(_PLANS)
    if c.step is Step.DOWNLOADING:
        planned = [lane for lane in c.ecus if lane.phase is LanePhase.PLANNED]
        if planned:
            return EcuDownloaded(planned[0].ecu_id, "/d/e.img")
        return DownloadDone(None if c.target is None else "/d/x.img")
    if c.step is Step.VERIFYING:
        return VerifyPassed()
    if c.step is Step.INSTALLING:
        installing: list[Event] = [InstallDone(), InstallRetried()]
        return data.draw(st.sampled_from(installing))
    return CommitDone()


def _ending(c: Campaign, data: st.DataObject) -> Event:
    """An event that ends *c* in its step, or makes one of its ECUs fail."""
    lanes = [lane.ecu_id for lane in c.ecus]
    options: list[st.SearchStrategy[Event]] = [
        _ROLLED_BACK if c.step is Step.ACTIVATING else _FAILED
    ]
    if c.step in {Step.VERIFYING, Step.INSTALLING}:
        options.append(st.just(AlreadyInstalled()))
    if lanes and c.step in {Step.INSTALLING, Step.ACTIVATING}:
        options.append(st.builds(EcuFailed, st.sampled_from(lanes), _CODES, st.just("broke")))
    return data.draw(st.one_of(options))


_RANK = {s: i for i, s in enumerate(Step)} | dict.fromkeys(FINAL_STEPS, 99)
_COMMITTING = {
    (Step.ACTIVATING, CommitDone),
    (Step.VERIFYING, AlreadyInstalled),
    (Step.INSTALLING, AlreadyInstalled),
}


@settings(max_examples=1000, deadline=None)
@given(data=st.data(), targets=st.none() | st.just(("tbox/a.img",)))
def test_random_events_never_reach_an_illegal_state(
    data: st.DataObject, targets: tuple[str, ...] | None
) -> None:
    c = sent(received(targets=targets))
    numbers = count(1)
    for _ in range(data.draw(st.integers(0, 30))):
        # mostly forwards (hypothesis prefers small numbers), sometimes an ending, or anything
        choice = data.draw(st.integers(0, 9))
        if c.final or choice == 9:
            event = data.draw(_EVENTS)
        elif choice == 8:
            event = _ending(c, data)
        else:
            event = _forward(c, data)
        before = c
        try:
            c = transition(c, event, now_us=NOW)
        except CampaignSequenceError:
            continue  # nothing to compare: transition is pure, `c` is unchanged
        assert campaign_problem(c) is None, (before, event, c)
        # forwards only: INSTALLING may repeat (a retried install), nothing else goes back
        assert _RANK[c.step] >= _RANK[before.step]
        assert before.step not in FINAL_STEPS  # an ended campaign takes no event
        if c.step is Step.COMMITTED:
            assert (before.step, type(event)) in _COMMITTING
        if c.step is Step.ROLLED_BACK:
            assert before.step is Step.ACTIVATING
        if c.step is Step.FAILED:
            assert before.step is not Step.ACTIVATING
        assert c.install_attempts <= MAX_INSTALL_ATTEMPTS
        # a new step is reported in the host lane, last; ECU lanes report in their own lanes
        new = c.outbox[len(before.outbox) :]
        if c.step is not before.step:
            assert new and (new[-1].state, new[-1].target) == (c.step, HOST)
            assert bool(new[-1].error_code) == (c.step in {Step.FAILED, Step.ROLLED_BACK})
        lanes = {lane.ecu_id for lane in c.ecus}
        assert all(e.target in lanes | {HOST} for e in new)
        if c.final and c.step is not Step.COMMITTED:  # all or nothing
            pending = {"staging", "staged", "activated", "failed"}
            assert lane_action(c) is None
            assert not [lane for lane in c.ecus if lane.phase in pending]
        # what is written is what is read, once the events are numbered
        c = stamp(c, lambda: next(numbers))
        assert parse_campaign(encode_campaign(c), source="c.json") == c
        c = sent(c)
    hypothesis.event(
        f"ends {c.step} {c.error_code}"
    )  # --hypothesis-show-statistics: how far sequences get


# --- decisions ---------------------------------------------------------------------------------


def test_choose_targets() -> None:
    c = received()
    assert choose_targets(c, [HOST_2, ECU_7], {"bms"}) == PlanChosen(HOST_2, (ECU_7,))
    assert choose_targets(c, [ECU_7], {"bms", "vcu"}) == PlanChosen(None, (ECU_7,))
    unknown = choose_targets(c, [HOST_2, ECU_7], {"vcu"})
    assert isinstance(unknown, Failed) and unknown.code is ErrorCode.UNSUPPORTED_IMAGE_KIND
    assert "bms/fw-7.bin (ECU bms): no flashing address" in unknown.reason
    assert "flashes: vcu" in unknown.reason
    other_7 = TargetRef("bms/fw-8.bin", sha(8), 800, 8, ImageKind.ECU, "bms")
    twice = choose_targets(c, [ECU_7, other_7], {"bms"})
    assert isinstance(twice, Failed) and twice.code is ErrorCode.AMBIGUOUS_PLAN
    none = choose_targets(c, [])
    assert isinstance(none, Failed) and none.code is ErrorCode.NOTHING_ASSIGNED
    two = choose_targets(c, [HOST_2, HOST_3])
    assert isinstance(two, Failed) and two.code is ErrorCode.AMBIGUOUS_PLAN
    named = received(targets=("tbox/rootfs-3.img",))
    assert choose_targets(named, [HOST_2, HOST_3, ECU_7]) == PlanChosen(HOST_3, ())
    missing = choose_targets(named, [HOST_2])
    assert isinstance(missing, Failed) and missing.code is ErrorCode.NOT_ASSIGNED
    assert "tbox/rootfs-3.img not assigned" in missing.reason
    assert "assigned: tbox/rootfs-2.img" in missing.reason


def test_a_resumed_download_needs_the_same_image_in_the_plan() -> None:
    c = run(received(), PlanChosen(HOST_3))
    assert find_target(c, [HOST_2, HOST_3]) == 1
    gone = find_target(c, [HOST_2])
    assert isinstance(gone, Failed) and gone.code is ErrorCode.PLAN_CHANGED
    assert "is no longer assigned" in gone.reason
    changed = TargetRef(HOST_3.name, sha(4), 3000, 3, ImageKind.TBOX)
    other = find_target(c, [changed])
    assert isinstance(other, Failed) and "is now" in other.reason


def test_verify_decision() -> None:
    c = run(received(), PlanChosen(HOST_3), DownloadDone("/d/x"))
    floor = status(slots(HOST_2))
    assert verify_decision(c, HOST_3.sha256, HOST_3.length, floor) == VerifyPassed()
    bad = verify_decision(c, sha(9), HOST_3.length, floor)
    assert isinstance(bad, Failed) and bad.code is ErrorCode.HASH_MISMATCH
    assert "/d/x is 3000 bytes" in bad.reason
    assert verify_decision(c, HOST_3.sha256, 3000, status(slots(HOST_3))) == AlreadyInstalled()
    newer = TargetRef("tbox/rootfs-4.img", sha(4), 10, 4, ImageKind.TBOX)
    for floor_target in (newer, TargetRef("t/same-counter", sha(5), 10, 3, ImageKind.TBOX)):
        down = verify_decision(c, HOST_3.sha256, 3000, status(slots(floor_target)))
        assert isinstance(down, Failed) and down.code is ErrorCode.DOWNGRADE


def _installed(target: TargetRef, state: SlotState | None = None) -> SlotState:
    state = begin_install(state or slots(), image(target), max_attempts=3, now=T)
    return finish_install(state)


def test_install_decision_never_redoes_an_install() -> None:
    c = run(received(), PlanChosen(HOST_3), DownloadDone("/d/x"), VerifyPassed())
    assert install_decision(c, status(slots())) == Install()
    writing = begin_install(slots(), image(HOST_3), max_attempts=3, now=T)
    assert install_decision(c, status(writing)) == Install()  # the installer will explain
    assert install_decision(c, status(_installed(HOST_3))) == InstallDone()
    booted = boot(_installed(HOST_3), trial_problem=None, now=T)
    assert install_decision(c, status(booted)) == InstallDone()
    assert install_decision(c, status(slots(HOST_3))) == AlreadyInstalled()
    other = install_decision(c, status(_installed(TargetRef("t/x", sha(8), 1, 8, ImageKind.TBOX))))
    assert isinstance(other, Failed) and other.code is ErrorCode.UPDATE_PENDING


def test_activation_is_decided_by_the_installer_state() -> None:
    c = run(received(), PlanChosen(HOST_3), DownloadDone("/d/x"), VerifyPassed(), InstallDone())
    state = _installed(HOST_3)
    assert activation_decision(c, status(state)) == Boot()
    state = boot(state, trial_problem=None, now=T)
    assert activation_decision(c, status(state)) == CheckHealth()
    healthy = record_health(state, passed=True, reason="ok", now=T)
    assert activation_decision(c, status(healthy)) == Commit()
    assert activation_decision(c, status(commit(healthy))) == CommitDone()
    failed = record_health(state, passed=False, reason="exited with status 3: db down", now=T)
    assert activation_decision(c, status(failed)) == RolledBack(
        ErrorCode.HEALTH_CHECK_FAILED, "health check failed: exited with status 3: db down"
    )
    lost = activation_decision(c, status(slots()))
    assert isinstance(lost, RolledBack) and lost.code is ErrorCode.LOST_UPDATE
    assert "release 2" in lost.reason and "is committed" in lost.reason


def test_rollback_codes_read_the_installers_reasons() -> None:
    state = _installed(HOST_3)
    for _ in range(4):
        state = boot(state, trial_problem=None, now=T)
    assert state.last_failure is not None
    assert rollback_code(state.last_failure.reason) is ErrorCode.BOOT_FAILED
    bad = boot(_installed(HOST_3), trial_problem="its image is gone", now=T)
    assert bad.last_failure is not None
    assert rollback_code(bad.last_failure.reason) is ErrorCode.BOOT_FAILED
    assert rollback_code("stalled: campaign c1: activating x made no progress") is ErrorCode.STALLED
    assert rollback_code("an operator said so") is ErrorCode.ROLLED_BACK


def test_an_ended_campaign_does_not_leave_its_update_pending() -> None:
    c = run(received(), PlanChosen(HOST_3), DownloadDone("/d/x"), VerifyPassed())
    failed = run(c, Failed(ErrorCode.STALLED, "install overran"))
    reason = leftover_rollback(failed, status(_installed(HOST_3)))
    assert reason is not None and reason.startswith("stalled: campaign c1 ended failed")
    assert leftover_rollback(failed, status(slots())) is None
    assert leftover_rollback(c, status(_installed(HOST_3))) is None  # still running


def test_error_codes_of_exceptions() -> None:
    assert error_code_for(DowngradeError("x"), Step.VERIFYING) is ErrorCode.DOWNGRADE
    assert error_code_for(UpdatePendingError("x"), Step.INSTALLING) is ErrorCode.UPDATE_PENDING
    unbootable = NoBootableSlotError("x")
    assert error_code_for(unbootable, Step.ACTIVATING) is ErrorCode.INSTALLER_UNAVAILABLE
    assert error_code_for(OSError("x"), Step.INSTALLING) is ErrorCode.INSTALL_FAILED
    verification = OtaVerificationError("x")
    assert error_code_for(verification, Step.DOWNLOADING) is ErrorCode.VERIFICATION_FAILED
    assert error_code_for(OSError("x"), Step.RECEIVED) is ErrorCode.CHECK_FAILED
    assert error_code_for(OSError("x"), Step.DOWNLOADING) is ErrorCode.DOWNLOAD_FAILED
    disk = SlotIOError("cannot write /slots/b/image: No space left on device")
    assert error_code_for(disk, Step.INSTALLING) is ErrorCode.INSTALL_FAILED
    assert error_code_for(disk, Step.VERIFYING) is ErrorCode.INSTALLER_UNAVAILABLE


def test_status_messages_and_progress() -> None:
    c = run(received(correlation_id="req-9"), PlanChosen(HOST_2))
    event = progress_event(c, 1500, 2000, now_us=NOW + 5)
    assert (event.bytes_done, event.bytes_total) == (1500, 2000)
    assert "75% (1500 of 2000 bytes)" in event.detail
    message = status_message(c, stamp(c, lambda: 41).outbox[0], vehicle_id="VIN1")
    assert message.vehicle_id == "VIN1" and message.sequence == 41
    assert message.schema_version == 1 and message.state == OtaStatus.STATE_RECEIVED
    assert (message.campaign_id, message.correlation_id) == ("c1", "req-9")
    assert message.target == HOST and message.time_us == NOW
    with pytest.raises(CampaignSequenceError):
        progress_event(received(), 1, 2, now_us=NOW)


def test_a_planned_target_is_checked() -> None:
    with pytest.raises(OtaVerificationError, match="sha256"):
        TargetRef.of(TargetRef("t/a", "XYZ", 1, 1, ImageKind.TBOX))

    class NoHash:
        name, length, sha256, release_counter, image_kind, ecu_id = ("t", 1, None, 1, "tbox", None)

    with pytest.raises(OtaVerificationError, match="sha256 '' is not"):
        TargetRef.of(NoHash())

    class Odd(NoHash):
        image_kind = "firmware"

    with pytest.raises(OtaVerificationError, match="malformed"):
        TargetRef.of(Odd())
    assert TargetRef.of(HOST_2) == HOST_2


# --- the state file ----------------------------------------------------------------------------


def _stamped(c: Campaign) -> Campaign:
    numbers = count(100)
    return stamp(c, lambda: next(numbers))


def _activating() -> Campaign:
    return _stamped(
        run(
            received(targets=("tbox/rootfs-2.img",), deadline=1_798_758_000),
            PlanChosen(HOST_2, (ECU_7,)),
            EcuDownloaded("bms", "/d/bms"),
            DownloadDone("/d/x"),
            VerifyPassed(),
            EcuStaging("bms"),
            EcuStaged("bms"),
            InstallDone(),
        )
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format=3), "c.json: format: 3 is not 2"),
        (lambda d: d.pop("step"), "c.json: step: is missing"),
        (lambda d: d.update(step="flying"), "step: 'flying' is none of"),
        (lambda d: d.update(install_attempts=True), "install_attempts: True has the wrong type"),
        (lambda d: d.update(install_attempts=9), "install_attempts 9 is not from 0"),
        (lambda d: d.update(download=None), "download None does not fit step activating"),
        (lambda d: d.update(error_code="stalled"), "error_code 'stalled' does not fit"),
        (
            lambda d: d.update(target=None, ecus=[], download=None),
            "step activating needs a target",
        ),
        (lambda d: d["target"].update(sha256="00"), "target: sha256 '00' is not 64"),
        (lambda d: d["target"].update(image_kind="ecu"), "is not a T-box image"),
        (lambda d: d["ecus"][0]["target"].update(image_kind="disk"), "ecus[0].target.image_kind"),
        (lambda d: d["ecus"][0].update(phase="planned"), "ECU bms is planned, which does not fit"),
        (lambda d: d["ecus"][0].update(phase="rolled_back"), "the campaign is not rolling back"),
        (lambda d: d["ecus"][0].update(phase="committed"), "does not fit step activating"),
        (lambda d: d.update(abort={"code": "nope", "reason": "r"}), "abort.code: 'nope'"),
        (lambda d: d.update(step="failed", error_code="stalled"), "staged, which does not fit"),
        (lambda d: d.update(deadline="soon"), "deadline: 'soon' is not an RFC 3339"),
        (lambda d: d["outbox"][0].update(sequence=0), "outbox[0]: holds a number out of range"),
        (lambda d: d["outbox"][0].pop("detail"), "outbox[0].detail: is missing"),
        (lambda d: d.update(campaign_id="../x"), "campaign_id"),
    ],
)
def test_a_malformed_state_file_names_the_key(edit: Any, message: str) -> None:
    document = json.loads(encode_campaign(_activating()))
    edit(document)
    with pytest.raises(CampaignStateError) as caught:
        parse_campaign(json.dumps(document).encode(), source="c.json")
    assert message in str(caught.value)


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=200))
def test_any_bytes_as_a_state_file_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        c = parse_campaign(data, source="c.json")
    except CampaignStateError as e:
        assert e.source == "c.json"
    else:
        assert campaign_problem(c) is None


@settings(max_examples=500, deadline=None)
@given(
    path=st.lists(st.sampled_from(["outbox", 0, "target", "ecus", "abort", "x"]), max_size=3),
    key=st.text(max_size=15)
    | st.sampled_from(list(json.loads(encode_campaign(Campaign("c", "c", Step.RECEIVED))))),
    value=_JSON,
)
def test_a_damaged_state_file_parses_or_fails_cleanly(
    path: list[str | int], key: str, value: Any
) -> None:
    document: Any = json.loads(encode_campaign(_activating()))
    node = document
    for step in path:  # walk as far as the path leads
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            break
    if isinstance(node, dict):
        node[key] = value
    try:
        c = parse_campaign(json.dumps(document).encode(), source="c.json")
    except CampaignStateError:
        return
    assert campaign_problem(c) is None


# --- the store ---------------------------------------------------------------------------------


def test_the_store_keeps_one_campaign(tmp_path: Path) -> None:
    store = CampaignStore(tmp_path / "ota")
    assert store.load() is None
    c = _activating()
    store.save_step(c)
    assert store.load() == c
    store.save_sent(sent(c))
    assert store.load() == sent(c)
    downloads = store.download_dir("c1")
    (downloads / "x.part").write_bytes(b"123")
    assert downloads == tmp_path / "ota" / "downloads" / "c1"
    store.discard_downloads()
    assert not downloads.exists()
    store.discard_downloads()  # nothing left: harmless


def test_a_corrupt_state_file_is_an_error_naming_it_and_is_kept(tmp_path: Path) -> None:
    store = CampaignStore(tmp_path)
    store.path.write_bytes(b'{"format": 1, "step": "received"')
    with pytest.raises(CampaignStateError) as caught:
        store.load()
    assert str(caught.value).startswith(f"{store.path}: is not valid JSON")
    aside = store.move_aside()
    assert aside.name.startswith("campaign.json.corrupt-")
    assert aside.read_bytes() == b'{"format": 1, "step": "received"'
    assert store.load() is None


def test_the_campaign_crash_points_are_listed() -> None:
    names = {p.name for p in crashpoints.all_crashpoints()}
    assert {
        "campaign.step_written",
        "campaign.step_renamed",
        "campaign.sent_written",
        "campaign.sent_renamed",
        "campaign.events_queued",
        "campaign.progress_queued",
        "campaign.downloads_discarded",
        "campaign.moved_aside",
    } <= names

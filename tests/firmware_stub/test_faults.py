"""Fault plans: the ``--fault [ECU:]NAME=VALUE`` syntax and the counters that fire faults."""

from __future__ import annotations

import pytest

from firmware_stub.errors import EcuConfigError, PowerCut
from firmware_stub.faults import FaultPlan, FaultState, parse_faults


def test_faults_apply_to_every_ecu_or_to_the_one_named() -> None:
    plans = parse_faults(
        ["drop-response=36@3", "bms:power-cut-at-block=7", "vcu:delay=0.5", "power-off=0.1"],
        ["bms", "vcu"],
    )
    assert plans["bms"] == FaultPlan(
        drop_responses=frozenset({(0x36, 3)}), power_cut_at_block=7, power_off_s=0.1
    )
    assert plans["vcu"] == FaultPlan(
        drop_responses=frozenset({(0x36, 3)}), delay_s=0.5, power_off_s=0.1
    )
    assert plans["bms"].any and not FaultPlan(power_off_s=3).any
    step = parse_faults(["power-cut-at=ecu.after_progress:4", "corrupt-block=2"], ["bms"])
    assert step["bms"].power_cut_at == ("ecu.after_progress", 4)
    assert step["bms"].corrupt_block == 2
    assert parse_faults(["drop-rate=0.25"], ["bms"])["bms"].drop_rate == 0.25


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drop-response", "NAME=VALUE"),
        ("abs:delay=1", "no ECU is named 'abs'"),
        ("drop-response=zz@1", "not a valid value"),
        ("drop-rate=2", "not a valid value"),
        ("delay=-1", "not a valid value"),
        ("power-cut-at-block=0", "not a valid value"),
        ("power-cut-at=queue.before_commit", "not an ECU persistence step"),
        ("boot-fails=-1", "not a valid value"),
        ("boot-fails=v8", "not a valid value"),
        ("melt=1", "unknown fault 'melt'"),
    ],
)
def test_malformed_faults_are_usage_errors_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(EcuConfigError, match=message) as info:
        parse_faults([text], ["bms"])
    assert repr(text) in str(info.value)


def test_drops_count_requests_per_service() -> None:
    state = FaultState(FaultPlan(drop_responses=frozenset({(0x36, 2)})))
    assert [state.drop_response(0x36) for _ in range(3)] == [False, True, False]
    assert not state.drop_response(0x22)
    assert state.dropped == 1


def test_a_drop_rate_is_reproducible_for_a_seed() -> None:
    runs = [
        [FaultState(FaultPlan(drop_rate=0.5), seed=7).drop_response(0x36) for _ in range(1)]
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    state = FaultState(FaultPlan(drop_rate=0.5), seed=7)
    drops = sum(state.drop_response(0x36) for _ in range(400))
    assert 150 < drops < 250


def test_power_cuts_and_corruption_fire_once_per_process() -> None:
    state = FaultState(FaultPlan(power_cut_at=("ecu.block_written", 2), corrupt_block=1))
    state.step("ecu.block_written")
    with pytest.raises(PowerCut, match=r"ecu\.block_written"):
        state.step("ecu.block_written")
    state.step("ecu.block_written")
    assert state.block(b"\x00\x01") == (b"\x01\x01", False)
    assert state.block(b"\x00\x01") == (b"\x00\x01", False)
    cut = FaultState(FaultPlan(power_cut_at_block=2))
    assert [cut.block(b"x")[1] for _ in range(3)] == [False, True, False]
    assert cut.power_cuts == 1


def test_boot_fails_names_versions_that_crash_at_every_start() -> None:
    plans = parse_faults(["adas:boot-fails=8", "adas:boot-fails=9"], ["bms", "adas"])
    assert plans["adas"].boot_fails == frozenset({8, 9}) and plans["adas"].any
    assert plans["bms"] == FaultPlan()
    state = FaultState(plans["adas"])
    assert [state.boot_fails(v) for v in (7, 8, 8, 9)] == [False, True, True, True]
    assert state.boot_failures == 3

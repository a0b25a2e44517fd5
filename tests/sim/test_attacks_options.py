"""Attacks from option text (sim.attack_options): values, DBC resolution, one-line errors."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from agent.errors import UsageError
from can_dbc import SAMPLE_VEHICLE_DBC, load_dbc
from sim.attack_options import build_attack, kind_options, parse_attack_spec, parse_frame_id
from sim.attacks import (
    ATTACK_KINDS,
    AttackStream,
    DiagnosticAbuse,
    Flooding,
    Fuzzing,
    Masquerade,
    Replay,
    Spoofing,
    Suspension,
)


@functools.cache
def sample_db() -> Any:
    return load_dbc(SAMPLE_VEHICLE_DBC).database


def test_spec_with_every_value_type() -> None:
    attack = parse_attack_spec(
        "flooding:start=1.5,duration=2,seed=7,channel=can1,target-id=0x010,"
        "rate=1000,data=DE:AD:BE:EF,bitrate=250000,extended=no"
    )
    assert attack == Flooding(
        start=1.5,
        duration=2.0,
        seed=7,
        channel="can1",
        target_id=0x10,
        rate=1000.0,
        data=bytes.fromhex("DEADBEEF"),
        bitrate=250_000,
        extended=False,
    )
    assert parse_attack_spec("fuzzing") == Fuzzing()
    assert parse_attack_spec("fuzzing:id-min=0x600,id-max=1791,dlc=8,extended=0") == Fuzzing(
        id_min=0x600, id_max=0x6FF, dlc=8
    )
    assert parse_attack_spec("diagnostic:target-id=0x7E0,send-key=off,padding=0x55") == (
        DiagnosticAbuse(target_id=0x7E0, send_key=False, padding=0x55)
    )


def test_repeatable_target_ids_accumulate() -> None:
    spec = "suspension:target-id=0xA0,target-id=0xB0,target-id=0xA0"
    assert parse_attack_spec(spec) == Suspension(target_ids=(0xA0, 0xB0))
    built = build_attack("replay", [("target-id", "0x100,0x200"), ("source-start", "1")])
    assert built == Replay(target_ids=(0x100, 0x200), source_start=1.0)


def test_forged_kinds_resolve_their_message_from_the_dbc() -> None:
    db = sample_db()
    attack = parse_attack_spec(
        "spoofing:target-id=0xB0,signal=ESC_VehSpd,value=120", databases=[db]
    )
    assert isinstance(attack, Spoofing)
    assert attack.message is db.get_message_by_frame_id(0xB0)
    unknown = parse_attack_spec("masquerade:target-id=0x555", databases=[db])
    assert isinstance(unknown, Masquerade) and unknown.message is None


def test_ecu_names_every_message_the_node_sends() -> None:
    db = sample_db()
    attack = build_attack("suspension", [("ecu", "ESC")], databases=[db])
    assert isinstance(attack, Suspension)
    expected = sorted(m.frame_id for m in db.messages if "ESC" in m.senders)
    assert list(attack.target_ids) == expected
    assert 0xB0 in attack.target_ids and len(expected) >= 3


def test_every_kind_has_options_and_builds_with_defaults() -> None:
    for kind, cls in ATTACK_KINDS.items():
        names = kind_options(kind)
        assert names[:4] == ["start", "duration", "seed", "channel"]
        needs_target = kind in ("spoofing", "masquerade", "suspension")
        options = [("target-id", "0x100")] if needs_target else []
        assert isinstance(build_attack(kind, options), cls)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("storm", "unknown attack kind 'storm' (kinds: flooding, fuzzing, spoofing, replay"),
        ("flooding:signal=X", "flooding takes no option 'signal' (its options: start,"),
        ("flooding:target-id=0x800x", "flooding: target-id '0x800x' is not a CAN id"),
        ("flooding:target-id=0x20000000", "does not fit in 29 bits"),
        ("flooding:target-id=0x800", "flooding: id 0x800 does not fit in 11 bits"),
        ("flooding:rate=fast", "flooding: rate 'fast' is not a number"),
        ("flooding:rate=nan", "flooding: rate 'nan' must be a finite number"),
        ("flooding:data=XYZ", "flooding: data 'XYZ' is not hex bytes"),
        ("flooding:extended=maybe", "flooding: extended 'maybe' is not yes or no"),
        ("flooding:rate=1,rate=2", "flooding: rate is given twice"),
        ("flooding:start", "--attack 'flooding:start': write KIND:NAME=VALUE"),
        ("spoofing", "spoofing needs the id to forge: give target-id"),
        ("spoofing:target-id=0x100,signal=SPEED", "id 0x100: no DBC message has this id"),
        ("suspension", "suspension needs the ids to act on: give target-id (or ecu=NODE)"),
        ("suspension:ecu=NOBODY", "suspension: no DBC message is sent by ECU 'NOBODY'"),
        ("diagnostic:seed=1.5", "diagnostic: seed '1.5' is not a whole number"),
    ],
)
def test_mistakes_are_one_line_usage_errors(text: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        attack = parse_attack_spec(text)
        if isinstance(attack, Spoofing):  # the forger checks the signal against the DBC
            AttackStream(attack)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_frame_ids() -> None:
    assert parse_frame_id("0x7DF", "id") == 0x7DF
    assert parse_frame_id("2015", "id") == 2015
    assert parse_frame_id(" 0x18DAF110 ", "id") == 0x18DAF110
    with pytest.raises(UsageError, match=r"id '7DF' is not a CAN id \(write 0x7DF or 2015\)"):
        parse_frame_id("7DF", "id")
    with pytest.raises(UsageError, match="does not fit in 29 bits"):
        parse_frame_id("-1", "id")

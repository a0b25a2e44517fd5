"""Helpers of the IDS tests: frames, a small DBC with a counter and a checksum, the RAV4 log."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import can
import pytest

from can_dbc import load_dbc, load_dbc_string
from can_dbc.integrity import IntegritySpec
from security.engine import EngineConfig, IdsEngine
from security.events import SecurityEvent
from security.rulefile import parse_rules

RAV4 = Path(__file__).parents[1] / "data" / "rav4-2018-comma2k19"
RAV4_LOG = RAV4 / "rav4_60s.log"
RAV4_DBC = RAV4 / "toyota_new_mc_pt_generated.dbc"

# One 8-byte message at 0x100 with a speed, a gear, a declared counter and CRC checksum.
SMALL_DBC = """VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Drive: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|300] "km/h" Vector__XXX
 SG_ Gear : 16|4@1+ (1,0) [0|15] "" Vector__XXX
 SG_ Drive_Counter : 48|4@1+ (1,0) [0|15] "" Vector__XXX
 SG_ Drive_CRC : 56|8@1+ (1,0) [0|255] "" Vector__XXX
BO_ 2016 DiagReq: 8 ECU
 SG_ Pci : 0|8@1+ (1,0) [0|255] "" Vector__XXX
BA_DEF_ SG_ "SigType" ENUM "Normal","Counter","Checksum";
BA_DEF_ BO_ "ChecksumAlgo" STRING ;
BA_DEF_DEF_ "SigType" "Normal";
BA_DEF_DEF_ "ChecksumAlgo" "";
BA_ "SigType" SG_ 256 Drive_Counter 1;
BA_ "SigType" SG_ 256 Drive_CRC 2;
BA_ "ChecksumAlgo" BO_ 256 "crc8_sae_j1850";
"""


@cache
def small_db() -> Any:
    return load_dbc_string(SMALL_DBC, "small.dbc").database


@cache
def rav4_db() -> Any:
    return load_dbc(RAV4_DBC).database


@cache
def _rav4_frames() -> tuple[can.Message, ...]:
    from agent.canlog import read_log

    return tuple(read_log(RAV4_LOG))


def rav4_frames() -> list[can.Message]:
    """The RAV4 log's frames (fresh list; the Message objects are shared, do not mutate)."""
    return list(_rav4_frames())


def frame(
    t: float,
    can_id: int,
    data: bytes | Sequence[int] = b"\0" * 8,
    channel: str = "can0",
    **kwargs: Any,
) -> can.Message:
    payload = bytearray(data)
    return can.Message(
        timestamp=t,
        arbitration_id=can_id,
        is_extended_id=can_id > 0x7FF,
        data=payload,
        dlc=len(payload),
        channel=channel,
        check=False,
        **kwargs,
    )


def drive_frame(t: float, speed: float, counter: int, *, gear: int = 3) -> can.Message:
    """A correct Drive frame (0x100) of the small DBC: counter and CRC filled in."""
    db = small_db()
    message = db.get_message_by_frame_id(0x100)
    data = bytearray(
        message.encode(
            {"Speed": speed, "Gear": gear, "Drive_Counter": 0, "Drive_CRC": 0}, scaling=True
        )
    )
    spec = IntegritySpec.for_message(message)
    assert spec is not None
    spec.apply(data, counter)
    return frame(t, 0x100, data)


def periodic(can_id: int, period: float, start: float, end: float, **kw: Any) -> list[can.Message]:
    """Frames of *can_id* every *period* seconds in [start, end)."""
    out = []
    t = start
    while t < end:
        out.append(frame(t, can_id, **kw))
        t += period
    return out


def engine(rules_text: str, **kwargs: Any) -> IdsEngine:
    kwargs.setdefault("databases", {"can0": [small_db()]})
    return IdsEngine(parse_rules(rules_text, "test.toml"), **kwargs)


def run(
    ids: IdsEngine, frames: Iterable[can.Message]
) -> tuple[list[tuple[str, ...]], list[SecurityEvent]]:
    """Per-frame verdicts and every event (the engine finished)."""
    verdicts = []
    events: list[SecurityEvent] = []
    for f in frames:
        verdicts.append(ids.process(f))
        events += ids.pop_events()
    events += ids.finish()
    return verdicts, events


def flagged(verdicts: list[tuple[str, ...]], rule_id: str) -> list[int]:
    """Indexes of the frames *rule_id* flagged."""
    return [i for i, v in enumerate(verdicts) if rule_id in v]


def rule(kind: str, body: str, *, rule_id: str = "r", severity: str = "high") -> str:
    """One rule's TOML text."""
    return (
        f'[[rule]]\nid = "{rule_id}"\nkind = "{kind}"\nseverity = "{severity}"\n'
        f'description = "test rule"\nbus = "can0"\n{body}\n'
    )


FAST = EngineConfig(scan_interval_s=0.01)


@pytest.fixture
def fast_config() -> EngineConfig:
    return FAST

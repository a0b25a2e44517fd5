"""Resumable, power-safe flashing: a power cut at every block and at every persistence step,
a lost link and a cancelled flash all end on the new image, resuming from the last block the ECU
acknowledged, and a valid bank boots at every moment in between."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from pathlib import Path

import pytest

from agent.crashpoints import all_crashpoints
from firmware_stub import FaultPlan
from ota.ecu_flash import BankState, EcuCheckFailedError, EcuNoResponseError
from ota.ecu_image import EcuImage
from tests.firmware_stub.support import (
    OTHER_KEY,
    QUICK,
    ecu_config,
    flasher,
    make_image,
    running,
)

V1 = make_image(1)
CHUNK = 256  # max block length 258 minus SID and counter
V2 = make_image(2, 12 * CHUNK - 192)  # exactly 12 blocks with header and signature
BLOCKS = len(V2) // CHUNK
POWER_OFF = 0.05
FORGED = EcuImage.from_bytes(make_image(2, 2000, key=OTHER_KEY))


def booted_versions(events: list[str]) -> list[str]:
    return [e.split(": ", 2)[-1] for e in events if "power on:" in e]


@pytest.mark.parametrize("block", range(1, BLOCKS + 1))
async def test_a_power_cut_at_every_block_resumes_to_the_new_image(
    tmp_path: Path, block: int
) -> None:
    assert BLOCKS == 12 and len(V2) == BLOCKS * CHUNK
    events: list[str] = []
    faults = FaultPlan(power_cut_at_block=block, power_off_s=POWER_OFF)
    config = ecu_config(factory=V1, faults=faults, max_block_length=CHUNK + 2)
    async with running(tmp_path, [config], events=events) as (host, url):
        result = await flasher(url).flash(EcuImage.from_bytes(V2))
        meta = host.ecus["bms"].flash.meta
    # While the power was off and when it came back, the old image was valid and booted.
    assert booted_versions(events) == ["running bank 0, version 1"]
    assert meta.active == 1 and meta.active_version == 2
    assert meta.banks[0].version == 1  # the fallback stays
    assert result.attempts == 2
    # The torn block and everything after it is sent again; nothing before it.
    assert result.resumed_from == ((block - 1) * CHUNK or None)
    assert result.bytes_sent >= len(V2) + CHUNK


STEPS = sorted(
    p.name
    for p in all_crashpoints()
    if p.name.startswith("ecu.")
    and "provision" not in p.name
    and "dtcs" not in p.name
    and "invalidate" not in p.name  # rollback steps: below
)
#: The steps a rollback reaches: its invalidation, and the boot of its reset (the second switch of
#: the active bank; the first is the flash's).
ROLLBACK_CASES = [
    (p.name, 1)
    for p in sorted(all_crashpoints(), key=lambda p: p.name)
    if p.name.startswith("ecu.") and "invalidate" in p.name
] + [("ecu.before_active_switch", 2), ("ecu.after_active_switch", 2)]
CASES = [(step, 1) for step in STEPS] + [
    ("ecu.block_written", 6),
    ("ecu.before_progress", 6),
    ("ecu.after_progress", 12),
]


@pytest.mark.parametrize(("step", "n"), CASES)
async def test_a_power_cut_at_every_persistence_step_ends_on_the_new_image(
    tmp_path: Path, step: str, n: int
) -> None:
    events: list[str] = []
    faults = FaultPlan(power_cut_at=(step, n), power_off_s=POWER_OFF)
    config = ecu_config(factory=V1, faults=faults, max_block_length=CHUNK + 2)
    timing = dataclasses.replace(QUICK, p2_star=0.6)  # a cut after 0x78: no long wait
    async with running(tmp_path, [config], events=events) as (host, url):
        if "check_failed" in step:
            # Only a refused image reaches these steps; the refusal survives the cut.
            with pytest.raises(EcuCheckFailedError):
                await flasher(url, timing=timing).flash(FORGED)
        result = await flasher(url, timing=timing).flash(EcuImage.from_bytes(V2))
        meta = host.ecus["bms"].flash.meta
        cuts = host.ecus["bms"].stats.power_cuts
    assert cuts == 1, f"{step}:{n} was never reached"
    booted = booted_versions(events)
    assert len(booted) == 1 and booted[0] in {
        "running bank 0, version 1",
        "running bank 1, version 2",
    }
    assert meta.active_version == 2
    assert result.attempts in (1, 2)  # a cut at the boot after the reset may go unnoticed


@pytest.mark.parametrize(("step", "n"), ROLLBACK_CASES)
async def test_a_power_cut_during_a_rollback_is_finished_by_the_next_call(
    tmp_path: Path, step: str, n: int
) -> None:
    assert len(ROLLBACK_CASES) == 4
    faults = FaultPlan(power_cut_at=(step, n), power_off_s=POWER_OFF)
    config = ecu_config(factory=V1, faults=faults, max_block_length=CHUNK + 2)
    timing = dataclasses.replace(QUICK, p2_star=0.6)
    image = EcuImage.from_bytes(V2)
    async with running(tmp_path, [config]) as (host, url):
        ecu = host.ecus["bms"]
        await flasher(url, timing=timing).flash(image)
        assert ecu.flash.meta.active_version == 2
        # One attempt: the cut may end it (no response); a new call finishes the job.
        with contextlib.suppress(EcuNoResponseError):
            await flasher(url, timing=timing, attempts=1).roll_back(image)
        assert ecu.stats.power_cuts == 1, f"{step}:{n} was never reached"
        meta = ecu.flash.meta
        assert meta.active is not None and meta.banks[meta.active].state is BankState.VALID
        info = await flasher(url, timing=timing).roll_back(image)
        meta = ecu.flash.meta
    assert (info.active.bank, info.active.version) == (0, 1)
    assert meta.active == 0 and meta.banks[1].state is BankState.INVALID


async def test_a_power_cut_during_a_rollback_is_retried_within_the_call(tmp_path: Path) -> None:
    faults = FaultPlan(power_cut_at=("ecu.before_invalidate", 1), power_off_s=POWER_OFF)
    config = ecu_config(factory=V1, faults=faults, max_block_length=CHUNK + 2)
    timing = dataclasses.replace(QUICK, p2_star=0.6)
    image = EcuImage.from_bytes(V2)
    events: list[str] = []
    async with running(tmp_path, [config], events=events) as (host, url):
        await flasher(url, timing=timing).flash(image, activate=False)
        info = await flasher(url, timing=timing).roll_back(image)
        assert host.ecus["bms"].stats.power_cuts == 1
    # The cut came before the invalidation: the staged version 2 booted, and was given up.
    assert booted_versions(events) == ["running bank 1, version 2"]
    assert info.active.version == 1


async def test_a_lost_link_resumes_on_the_next_call(tmp_path: Path) -> None:
    faults = FaultPlan(drop_responses=frozenset({(0x36, 5)}))
    config = ecu_config(factory=V1, faults=faults, max_block_length=CHUNK + 2)
    image = EcuImage.from_bytes(V2)
    async with running(tmp_path, [config]) as (host, url):
        with pytest.raises(EcuNoResponseError, match="TransferData"):
            await flasher(url, attempts=1, block_retries=0).flash(image)
        assert host.ecus["bms"].flash.meta.banks[1].written == 5 * CHUNK
        result = await flasher(url).flash(image)
    assert result.resumed_from == 5 * CHUNK
    assert result.bytes_sent == len(V2) - 5 * CHUNK


async def test_a_cancelled_flash_keeps_its_progress_and_the_next_call_resumes(
    tmp_path: Path,
) -> None:
    big = EcuImage.from_bytes(make_image(2, 60_000))
    config = ecu_config(factory=V1, max_block_length=CHUNK + 2, bank_size=1 << 17)
    async with running(tmp_path, [config]) as (host, url):
        halfway = asyncio.Event()

        def progress(event: object) -> None:
            if getattr(event, "done", 0) > 20_000:
                halfway.set()

        task = asyncio.create_task(flasher(url).flash(big, progress=progress))
        await asyncio.wait_for(halfway.wait(), 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        written = host.ecus["bms"].flash.meta.banks[1].written
        assert 20_000 <= written < len(big.data)
        result = await flasher(url).flash(big)
        assert host.ecus["bms"].flash.meta.active_version == 2
    assert result.resumed_from is not None and result.resumed_from >= written


async def test_a_power_cycle_between_requests_mid_transfer_is_survived(tmp_path: Path) -> None:
    big = EcuImage.from_bytes(make_image(2, 30_000))
    config = ecu_config(factory=V1, max_block_length=CHUNK + 2)
    async with running(tmp_path, [config]) as (host, url):
        ecu = host.ecus["bms"]
        task = asyncio.create_task(flasher(url).flash(big))
        while ecu.stats.blocks < 20:  # noqa: ASYNC110 - polling a counter the ECU keeps
            await asyncio.sleep(0.005)
        await ecu.power_cycle(0.05)
        result = await task
        assert ecu.flash.meta.active_version == 2
    assert result.attempts == 2 and result.resumed_from is not None

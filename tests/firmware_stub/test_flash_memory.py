"""The simulated flash: two banks and a metadata record, the validity flag written last, boot
selection and verification, and an in-process power cut at every persistence step."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.crashpoints import all_crashpoints
from firmware_stub.errors import FlashStateError, PowerCut
from firmware_stub.faults import FaultPlan, FaultState
from firmware_stub.flash import (
    DTC_BOOT_VERIFICATION,
    DTC_CHECK_FAILED,
    DTC_START_FAILED,
    FLASH_FILE,
    META_FILE,
    FlashMemory,
)
from ota.ecu_flash import BankState, CheckStatus
from ota.ecu_image import EcuImage
from tests.firmware_stub.support import OTHER_KEY, PUBLIC, make_image

BANK = 1 << 15
BLOCK = 512


def memory(root: Path, faults: FaultState | None = None, **kwargs: object) -> FlashMemory:
    options: dict[str, object] = {"hardware_id": "bms", "bank_size": BANK, "trusted_key": PUBLIC}
    options.update(kwargs)
    return FlashMemory(root / "bms", faults=faults, **options)  # type: ignore[arg-type]


@pytest.fixture
def flash(tmp_path: Path) -> Iterator[FlashMemory]:
    mem = memory(tmp_path)
    mem.open(factory_image=make_image(1))
    mem.boot()
    yield mem
    mem.close()


def download(mem: FlashMemory, data: bytes, *, start: int = 0) -> None:
    bank = mem.meta.target
    for offset in range(start, len(data), BLOCK):
        mem.write_block(bank, offset, data[offset : offset + BLOCK], len(data))


def program(mem: FlashMemory, data: bytes) -> CheckStatus:
    bank = mem.meta.target
    mem.erase(bank)
    download(mem, data)
    return mem.check(bank)


def test_a_new_flash_has_two_empty_banks_and_no_active_one(tmp_path: Path) -> None:
    mem = memory(tmp_path)
    assert mem.open()
    assert mem.meta.active is None and mem.meta.target == 0
    assert [b.state for b in mem.meta.banks] == [BankState.EMPTY, BankState.EMPTY]
    assert (tmp_path / "bms" / FLASH_FILE).stat().st_size == 2 * BANK
    assert mem.boot().active is None
    mem.close()
    again = memory(tmp_path)
    assert not again.open()
    again.close()


def test_the_factory_image_is_bank_0_valid_and_active(flash: FlashMemory) -> None:
    meta = flash.meta
    assert meta.active == 0 and meta.banks[0].state is BankState.VALID
    assert meta.banks[0].version == 1 and meta.target == 1
    assert flash.read(0, meta.banks[0].length) == make_image(1)


def test_a_factory_image_that_does_not_verify_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FlashStateError, match="signature"):
        memory(tmp_path).open(factory_image=make_image(1, key=OTHER_KEY))
    with pytest.raises(FlashStateError, match="other hardware"):
        memory(tmp_path).open(factory_image=make_image(1, hardware_id="vcu"))


def test_erase_write_check_boot_switches_banks_and_keeps_the_fallback(flash: FlashMemory) -> None:
    image = make_image(2, 5000)
    flash.erase(1)
    assert flash.meta.banks[1].state is BankState.ERASED
    assert flash.read(1, BANK) == b"\xff" * BANK
    download(flash, image)
    record = flash.meta.banks[1]
    assert (record.state, record.length, record.written) == (BankState.WRITING, 5000 + 192, 5192)
    assert record.crc32 == zlib.crc32(image)
    assert flash.check(1) is CheckStatus.OK
    checked = flash.meta
    assert checked.banks[1].state is BankState.VALID and checked.active == 0
    report = flash.boot()
    assert (report.active, report.version, report.switched) == (1, 2, True)
    assert flash.meta.banks[0].state is BankState.VALID  # the fallback
    assert flash.meta.target == 0


def test_the_metadata_record_is_documented_json(flash: FlashMemory, tmp_path: Path) -> None:
    data = json.loads((tmp_path / "bms" / META_FILE).read_text())
    assert set(data) == {
        "format",
        "bank_size",
        "active",
        "sequence",
        "fingerprint",
        "dtcs",
        "banks",
    }
    assert data["banks"][0]["state"] == "valid" and data["active"] == 0
    flash.write_fingerprint(b"0123456789abcdef")
    data = json.loads((tmp_path / "bms" / META_FILE).read_text())
    assert bytes.fromhex(data["fingerprint"]) == b"0123456789abcdef"


@pytest.mark.parametrize(
    ("image", "status"),
    [
        (make_image(2, key=OTHER_KEY), CheckStatus.BAD_SIGNATURE),
        (make_image(2, hardware_id="vcu"), CheckStatus.WRONG_HARDWARE),
        (make_image(0), CheckStatus.DOWNGRADE),
        (b"not an image at all" * 20, CheckStatus.MALFORMED),
    ],
)
def test_a_failed_check_marks_the_bank_invalid_and_stores_a_dtc(
    flash: FlashMemory, image: bytes, status: CheckStatus
) -> None:
    assert program(flash, image) is status
    assert flash.meta.banks[1].state is BankState.INVALID
    assert flash.meta.dtcs == (DTC_CHECK_FAILED,)
    assert flash.boot().active == 0
    flash.clear_dtcs()
    assert not flash.meta.dtcs


def test_an_equal_version_is_accepted_and_the_newer_programming_boots(flash: FlashMemory) -> None:
    assert program(flash, make_image(1, 4000)) is CheckStatus.OK
    assert flash.boot().active == 1


def test_a_corrupted_block_fails_the_check_with_a_hash_mismatch(tmp_path: Path) -> None:
    mem = memory(tmp_path, FaultState(FaultPlan(corrupt_block=3)))
    mem.open(factory_image=make_image(1))
    mem.boot()
    assert program(mem, make_image(2, 5000)) is CheckStatus.HASH_MISMATCH
    mem.close()


def test_a_check_without_dtc_recording_stores_none(flash: FlashMemory) -> None:
    flash.erase(1)
    download(flash, make_image(0))
    assert flash.check(1, record_dtc=False) is CheckStatus.DOWNGRADE
    assert flash.meta.dtcs == ()


def test_no_trusted_key_refuses_every_image(tmp_path: Path) -> None:
    mem = memory(tmp_path, trusted_key=None)
    mem.open(factory_image=make_image(1))
    assert mem.boot().active == 0  # hash-verified at boot
    assert program(mem, make_image(2)) is CheckStatus.NO_TRUSTED_KEY
    mem.close()


def test_boot_falls_back_when_the_newest_bank_rotted(flash: FlashMemory, tmp_path: Path) -> None:
    program(flash, make_image(2, 5000))
    flash.boot()
    assert flash.meta.active == 1
    flash.close()
    with (tmp_path / "bms" / FLASH_FILE).open("r+b") as f:
        f.seek(BANK + 1000)
        f.write(b"\x00\x01\x02")
    mem = memory(tmp_path)
    mem.open()
    report = mem.boot()
    assert (report.active, report.version, report.rejected) == (0, 1, (1,))
    assert mem.meta.banks[1].state is BankState.INVALID
    assert DTC_BOOT_VERIFICATION in mem.meta.dtcs
    mem.close()


def test_the_active_bank_is_never_written(flash: FlashMemory) -> None:
    with pytest.raises(ValueError, match="active"):
        flash.erase(0)
    with pytest.raises(ValueError, match="active"):
        flash.write_block(0, 0, b"x", 1)


def test_blocks_go_only_where_the_progress_says(flash: FlashMemory) -> None:
    with pytest.raises(ValueError, match="cannot take"):
        flash.write_block(1, 0, b"x", 10)  # not erased
    flash.erase(1)
    flash.write_block(1, 0, b"abc", 10)
    with pytest.raises(ValueError, match="cannot take"):
        flash.write_block(1, 5, b"x", 10)
    with pytest.raises(ValueError, match="cannot take"):
        flash.write_block(1, 3, b"x", 11)  # another declared length
    with pytest.raises(ValueError, match="exceeds"):
        flash.write_block(1, 3, b"x" * 8, 10)


def test_unusable_state_is_a_clear_error(tmp_path: Path) -> None:
    mem = memory(tmp_path)
    mem.open()
    with pytest.raises(FlashStateError, match="in use"):
        memory(tmp_path).open()
    mem.close()
    with pytest.raises(FlashStateError, match="bank size"):
        memory(tmp_path, bank_size=BANK * 2).open()
    (tmp_path / "bms" / META_FILE).write_text('{"format": 1, "banks": 3}')
    with pytest.raises(FlashStateError, match=r"meta\.json: .*banks"):
        memory(tmp_path).open()
    (tmp_path / "bms" / META_FILE).write_text("{not json")
    with pytest.raises(FlashStateError, match=r"meta\.json"):
        memory(tmp_path).open()


# --- power cuts --------------------------------------------------------------------------------

STEPS = sorted(p.name for p in all_crashpoints() if p.name.startswith("ecu."))
ROLLBACK_STEPS = [s for s in STEPS if "invalidate" in s]
UPDATE_STEPS = [
    s for s in STEPS if "provision" not in s and "fingerprint" not in s and s not in ROLLBACK_STEPS
]


def test_every_persistence_step_is_a_declared_crash_point() -> None:
    assert "ecu.block_written" in STEPS and "ecu.after_validity_flag" in STEPS
    assert ROLLBACK_STEPS == ["ecu.after_invalidate", "ecu.before_invalidate"]
    assert len(STEPS) == 22


@pytest.mark.parametrize("step", UPDATE_STEPS)
@pytest.mark.parametrize("n", [1, 2, 5])
def test_a_power_cut_at_any_step_leaves_a_bootable_bank(tmp_path: Path, step: str, n: int) -> None:
    """Update v1 → v2 → v3 with a cut at the n-th time *step* is reached; after it, a valid bank
    boots; doing the rest of the update (as a resuming tester would) ends on the newest."""
    faults = FaultState(FaultPlan(power_cut_at=(step, n)))
    mem = memory(tmp_path, faults)
    mem.open(factory_image=make_image(1))
    mem.boot()
    images = [make_image(2, 4000), make_image(3, 6000)]
    if "dtcs_cleared" in step:
        images.insert(0, make_image(0))  # a refused image stores a DTC; then clear it
    cut = False
    for image in images:
        try:
            status = program(mem, image)
            if status is not CheckStatus.OK:
                mem.clear_dtcs()
            mem.boot()
        except PowerCut:
            cut = True
            mem.reload()
            report = mem.boot()
            assert report.active is not None, f"no bootable bank after a cut at {step}"
            assert mem.read(report.active, mem.meta.banks[report.active].length) in {
                make_image(1),
                make_image(2, 4000),
                make_image(3, 6000),
            }
            _finish(mem, image)
    assert mem.meta.active is not None
    assert mem.meta.banks[mem.meta.active].version == 3
    expected_hits = faults.steps[step] >= n
    assert cut == expected_hits
    mem.close()


def _finish(mem: FlashMemory, data: bytes) -> None:
    """What a resuming tester does after a cut: resume, check or start over; then reset."""
    image = EcuImage.from_bytes(data)
    active = mem.meta.active_record
    if active is not None and active.sha256 == image.sha256:
        return
    bank = mem.meta.target
    record = mem.meta.banks[bank]
    if record.state is BankState.VALID and record.sha256 == image.sha256:
        mem.boot()
        return
    resumable = (
        record.state is BankState.WRITING
        and record.length == len(data)
        and zlib.crc32(data[: record.written]) == record.crc32
    )
    if not resumable:
        mem.erase(bank)
        download(mem, data)
    elif record.written < len(data):
        download(mem, data, start=record.written)
    status = mem.check(bank)
    if status is CheckStatus.OK:
        mem.boot()
    else:
        mem.clear_dtcs()


def test_a_torn_block_is_rewritten_on_resume(tmp_path: Path) -> None:
    mem = memory(tmp_path, FaultState(FaultPlan(power_cut_at_block=4)))
    mem.open(factory_image=make_image(1))
    mem.boot()
    data = make_image(2, 5000)
    with pytest.raises(PowerCut):
        program(mem, data)
    mem.reload()
    assert mem.boot().active == 0
    record = mem.meta.banks[1]
    assert record.written == 3 * BLOCK  # the torn fourth block is not covered
    assert mem.read(1, 3 * BLOCK + BLOCK // 2)[3 * BLOCK :] == data[3 * BLOCK : 3 * BLOCK + 256]
    download(mem, data, start=record.written)
    assert mem.check(1) is CheckStatus.OK
    assert mem.boot().version == 2
    mem.close()


# --- rollback: invalidating a bank ------------------------------------------------------------


def test_invalidating_the_active_bank_boots_the_fallback_at_the_next_boot(
    flash: FlashMemory, tmp_path: Path
) -> None:
    assert program(flash, make_image(2, 5000)) is CheckStatus.OK
    flash.boot()
    assert flash.meta.active == 1
    assert flash.invalidate(1)
    # It keeps running until the next boot; the metadata says so, and survives a reopen.
    assert flash.meta.active == 1 and flash.meta.banks[1].state is BankState.INVALID
    assert flash.meta.banks[1].version == 2  # what it held stays on record
    with pytest.raises(ValueError, match="runs invalidated"):
        flash.erase(0)  # the only valid bank
    flash.close()
    again = memory(tmp_path)
    again.open()
    report = again.boot()
    assert (report.active, report.version, report.switched, report.rejected) == (0, 1, True, ())
    assert again.meta.dtcs == ()  # a rollback is no fault
    assert again.meta.target == 1
    assert program(again, make_image(3, 4000)) is CheckStatus.OK  # the next update goes on
    again.close()


def test_invalidating_a_staged_bank_keeps_the_running_one(flash: FlashMemory) -> None:
    assert program(flash, make_image(2, 5000)) is CheckStatus.OK
    assert flash.invalidate(1)
    assert flash.meta.active == 0
    assert flash.boot().active == 0
    assert flash.invalidate(1)  # already invalid: nothing to do
    assert flash.meta.banks[1].state is BankState.INVALID


def test_invalidate_refuses_to_leave_no_valid_bank(flash: FlashMemory, tmp_path: Path) -> None:
    assert not flash.invalidate(0)  # the only valid bank
    assert flash.meta.banks[0].state is BankState.VALID
    with pytest.raises(ValueError, match="no valid image"):
        flash.invalidate(1)  # empty
    assert program(flash, make_image(1, 3000)) is CheckStatus.OK  # the same image again
    assert not flash.invalidate(1)  # the fallback would be the same image
    program(flash, make_image(2, 5000))
    flash.boot()
    flash.close()
    with (tmp_path / "bms" / FLASH_FILE).open("r+b") as f:  # the fallback rots
        f.seek(1000)
        f.write(b"\x00\x01\x02")
    mem = memory(tmp_path)
    mem.open()
    assert not mem.invalidate(1)
    assert mem.meta.banks[1].state is BankState.VALID and mem.boot().active == 1
    mem.close()


@pytest.mark.parametrize("step", ROLLBACK_STEPS)
def test_a_power_cut_while_invalidating_leaves_a_bootable_bank(tmp_path: Path, step: str) -> None:
    mem = memory(tmp_path, FaultState(FaultPlan(power_cut_at=(step, 1))))
    mem.open(factory_image=make_image(1))
    mem.boot()
    program(mem, make_image(2, 4000))
    mem.boot()
    with pytest.raises(PowerCut):
        mem.invalidate(1)
    mem.reload()
    report = mem.boot()
    # Before the rename: version 2 is still valid and boots; after: the fallback boots.
    assert (report.active, report.version) == ((1, 2) if "before" in step else (0, 1))
    if mem.meta.banks[1].state is BankState.VALID:  # what a resuming tester does
        assert mem.invalidate(1)
        assert mem.boot().version == 1
    assert mem.meta.banks[0].state is BankState.VALID
    mem.close()


def test_an_image_that_crashes_at_start_is_invalidated_with_a_dtc(tmp_path: Path) -> None:
    faults = FaultState(FaultPlan(boot_fails=frozenset({2})))
    mem = memory(tmp_path, faults)
    mem.open(factory_image=make_image(1))
    mem.boot()
    assert program(mem, make_image(2, 4000)) is CheckStatus.OK  # it checks out …
    report = mem.boot()  # … and crashes at start
    assert (report.active, report.version, report.crashed, report.rejected) == (0, 1, (1,), ())
    assert mem.meta.banks[1].state is BankState.INVALID
    assert mem.meta.dtcs == (DTC_START_FAILED,)
    mem.close()
    again = memory(tmp_path, faults)
    again.open()
    assert again.boot().active == 0 and faults.boot_failures == 1  # persistently invalid
    again.close()

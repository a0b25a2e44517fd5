"""Director decisions: faithful copies of image targets, one assignment per slot."""

from __future__ import annotations

import io
from typing import Any

import pytest
from tuf.api.metadata import TargetFile

from ota.director import assign, assignment_for, check_vehicle_id, slot_of, unassign
from ota.errors import OtaInputError, OtaUsageError
from ota.target_info import ImageKind, TargetCustom, check_matches_image, make_target_file
from tests.ota.repository_builders import NOW, PERIODS, build


def _image(name: str, kind: ImageKind = ImageKind.ECU, **custom: Any) -> TargetFile:
    fields = TargetCustom(hardware_id="hw", release_counter=3, image_kind=kind, **custom)
    return make_target_file(name, io.BytesIO(name.encode()), fields)


def test_an_assignment_copies_the_image_target_and_adds_vehicle_and_ecu() -> None:
    image = _image("bms/fw-3.bin")
    entry = assignment_for(image, vehicle_id="VIN1", ecu_id="bms")
    assert (entry.path, entry.length, entry.hashes) == (image.path, image.length, image.hashes)
    assert entry.custom == {**image.custom, "vehicle_id": "VIN1", "ecu_id": "bms"}
    check_matches_image(entry, image)
    assert image.custom.get("vehicle_id") is None  # the image's fields are not touched


def test_an_image_built_for_one_ecu_keeps_it() -> None:
    image = _image("bms/fw-3.bin", ecu_id="bms")
    assert assignment_for(image, vehicle_id="VIN1").custom["ecu_id"] == "bms"
    assert assignment_for(image, vehicle_id="VIN1", ecu_id="bms").custom["ecu_id"] == "bms"
    with pytest.raises(OtaUsageError, match="built for ECU 'bms', not 'vcu'"):
        assignment_for(image, vehicle_id="VIN1", ecu_id="vcu")


def test_ecu_firmware_needs_an_ecu() -> None:
    with pytest.raises(OtaUsageError, match="--ecu-id"):
        assignment_for(_image("fw.bin"), vehicle_id="VIN1")
    tbox = assignment_for(_image("rootfs.img", ImageKind.TBOX), vehicle_id="VIN1")
    assert "ecu_id" not in tbox.custom


@pytest.mark.parametrize(
    ("vehicle_id", "ecu_id", "message"),
    [("a/b", None, "vehicle id"), ("VIN1", "bad id", "ECU id"), (".x", None, "vehicle id")],
)
def test_bad_ids_are_usage_errors(vehicle_id: str, ecu_id: str | None, message: str) -> None:
    with pytest.raises(OtaUsageError, match=message):
        assignment_for(_image("fw.bin"), vehicle_id=vehicle_id, ecu_id=ecu_id or "bms")
    with pytest.raises(OtaUsageError):
        check_vehicle_id("a b")


def test_an_image_target_with_broken_custom_fields_is_an_input_error() -> None:
    broken = TargetFile(3, {"sha256": "00" * 32}, "x.bin", {"custom": {"hardware_id": "hw"}})
    with pytest.raises(OtaInputError, match=r"image target x\.bin"):
        assignment_for(broken, vehicle_id="VIN1")


def test_assigning_replaces_the_slot_and_keeps_the_others() -> None:
    built = build()
    bms3 = assignment_for(_image("bms/fw-3.bin"), vehicle_id="VIN1", ecu_id="bms")
    vcu1 = assignment_for(_image("vcu/fw-1.bin"), vehicle_id="VIN1", ecu_id="vcu")
    tbox = assignment_for(_image("rootfs.img", ImageKind.TBOX), vehicle_id="VIN1")
    repo = built.repo
    for entry in (bms3, vcu1, tbox):
        repo = assign(repo, entry, built.signers, PERIODS, NOW)
    assert sorted(repo.targets.signed.targets) == ["bms/fw-3.bin", "rootfs.img", "vcu/fw-1.bin"]
    assert slot_of(bms3) == ("ecu", "bms") and slot_of(tbox) == ("tbox", None)

    bms4 = assignment_for(_image("bms/fw-4.bin"), vehicle_id="VIN1", ecu_id="bms")
    after = assign(repo, bms4, built.signers, PERIODS, NOW)
    assert sorted(after.targets.signed.targets) == ["bms/fw-4.bin", "rootfs.img", "vcu/fw-1.bin"]
    assert after.targets.signed.version == repo.targets.signed.version + 1
    assert assign(after, bms4, built.signers, PERIODS, NOW) is after  # nothing to do


def test_unassigning() -> None:
    built = build()
    entry = assignment_for(_image("rootfs.img", ImageKind.TBOX), vehicle_id="VIN1")
    repo = assign(built.repo, entry, built.signers, PERIODS, NOW)
    repo = unassign(repo, "rootfs.img", built.signers, PERIODS, NOW)
    assert repo.targets.signed.targets == {}
    with pytest.raises(OtaUsageError, match="not assigned"):
        unassign(repo, "rootfs.img", built.signers, PERIODS, NOW)

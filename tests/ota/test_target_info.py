"""Target names, custom fields (the parser the client applies to metadata), director matching."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from tuf.api.metadata import TargetFile

from ota.errors import OtaInputError, OtaUsageError, OtaVerificationError
from ota.target_info import (
    DeltaDescriptor,
    ImageKind,
    TargetCustom,
    check_matches_image,
    check_target_name,
    make_target_file,
    target_name_problem,
    vehicle_id_problem,
)

SHA = "ab" * 32


def _custom(**changes: Any) -> TargetCustom:
    fields: dict[str, Any] = {
        "hardware_id": "tbox-hw2",
        "release_counter": 7,
        "image_kind": ImageKind.TBOX,
    }
    fields.update(changes)
    return TargetCustom(**fields)


@pytest.mark.parametrize(
    "name", ["rootfs.img", "tbox/1.2.0/rootfs-1.2.0.img", "bms/fw_3+build.bin", "a"]
)
def test_good_target_names(name: str) -> None:
    assert target_name_problem(name) is None
    assert check_target_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "a//b", "../x", "a/../b", ".hidden", "a/.b", "sp ace", "a\\b", "é", "x" * 256],
)
def test_bad_target_names(name: str) -> None:
    assert target_name_problem(name) is not None
    with pytest.raises(OtaUsageError, match="target name"):
        check_target_name(name)


@given(st.text(max_size=300))
def test_a_valid_target_name_is_a_safe_relative_path(name: str) -> None:
    if target_name_problem(name) is None:
        parts = name.split("/")
        assert all(p and not p.startswith(".") for p in parts)
        assert name.isascii() and len(name) <= 255


@pytest.mark.parametrize("vehicle_id", ["VIN1234567", "fleet-42", "v.1", "a@b"])
def test_good_vehicle_ids(vehicle_id: str) -> None:
    assert vehicle_id_problem(vehicle_id) is None


@pytest.mark.parametrize("vehicle_id", ["", ".hidden", "..", "a/b", "a b", "a+b", "a#b", "a\\b", 7])
def test_bad_vehicle_ids(vehicle_id: object) -> None:
    assert vehicle_id_problem(vehicle_id) is not None


def test_custom_fields_round_trip_through_json() -> None:
    custom = _custom(
        ecu_id="bms",
        image_kind=ImageKind.ECU,
        delta=DeltaDescriptor(from_sha256=SHA, patch="bms/patch-6-7.bsdiff"),
    )
    data = json.loads(json.dumps(custom.to_json()))
    assert data == {
        "hardware_id": "tbox-hw2",
        "release_counter": 7,
        "image_kind": "ecu",
        "ecu_id": "bms",
        "delta": {"from_sha256": SHA, "patch": "bms/patch-6-7.bsdiff", "algorithm": "bsdiff4"},
    }
    assert TargetCustom.from_json(data, where="t") == custom


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hardware_id": ""}, "hardware_id"),
        ({"hardware_id": "has space"}, "hardware_id"),
        ({"ecu_id": "-bad"}, "ecu_id"),
        ({"release_counter": -1}, "release_counter"),
        ({"release_counter": 2**63}, "release_counter"),
        ({"release_counter": True}, "release_counter"),
        ({"release_counter": 1.5}, "release_counter"),
        ({"image_kind": "tbox"}, "image_kind"),  # a str, not the enum
        ({"vehicle_id": "a/b"}, "vehicle_id"),
    ],
)
def test_invalid_fields_are_usage_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(OtaUsageError, match=message):
        _custom(**changes)


@pytest.mark.parametrize(
    ("delta", "message"),
    [
        ({"from_sha256": "AB" * 32, "patch": "p"}, "64 lowercase hex"),
        ({"from_sha256": SHA, "patch": "../p"}, "patch target name"),
        ({"from_sha256": SHA, "patch": "p", "algorithm": "xdelta"}, "not supported"),
    ],
)
def test_invalid_delta_descriptors(delta: dict[str, str], message: str) -> None:
    with pytest.raises(OtaUsageError, match=message):
        DeltaDescriptor(**delta)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be an object"),
        ({"hardware_id": "hw", "release_counter": 1}, "lacks image_kind"),
        ({"hardware_id": "hw", "release_counter": 1, "image_kind": ["ecu"]}, "image_kind"),
        ({"hardware_id": "hw", "release_counter": "1", "image_kind": "ecu"}, "release_counter"),
        (
            {"hardware_id": "hw", "release_counter": 1, "image_kind": "ecu", "delta": {}},
            "delta lacks",
        ),
        (
            {"hardware_id": "hw", "release_counter": 1, "image_kind": "ecu", "delta": "x"},
            "delta must be an object",
        ),
    ],
)
def test_from_json_names_the_problem_and_the_place(data: object, message: str) -> None:
    with pytest.raises(OtaInputError, match=message) as excinfo:
        TargetCustom.from_json(data, where="targets.json: fw.bin")
    assert str(excinfo.value).startswith("targets.json: fw.bin: ")


def test_from_json_ignores_unknown_fields_and_reads_the_directors() -> None:
    data = {**_custom().to_json(), "future": {"x": 1}, "vehicle_id": "VIN1"}
    parsed = TargetCustom.from_json(data, where="t")
    assert parsed.vehicle_id == "VIN1"
    assert parsed == _custom(vehicle_id="VIN1")


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
_FIELD_VALUES = st.one_of(
    _JSON,
    st.sampled_from(["tbox", "ecu", "hw-1", SHA, "p/q.bin", "bsdiff4"]),
    st.integers(min_value=-2, max_value=2**64),
)


@given(
    st.one_of(
        _JSON,
        st.fixed_dictionaries(
            {},
            optional={
                k: _FIELD_VALUES
                for k in ("hardware_id", "release_counter", "image_kind", "ecu_id", "vehicle_id")
            }
            | {
                "delta": st.one_of(
                    _JSON,
                    st.fixed_dictionaries(
                        {},
                        optional={k: _FIELD_VALUES for k in ("from_sha256", "patch", "algorithm")},
                    ),
                )
            },
        ),
    )
)
def test_from_json_accepts_anything_and_only_raises_input_errors(data: object) -> None:
    try:
        custom = TargetCustom.from_json(data, where="x")
    except OtaInputError:
        return
    # whatever it accepts is valid and survives a round trip
    assert TargetCustom.from_json(json.loads(json.dumps(custom.to_json())), where="x") == custom


def test_make_target_file_hashes_what_it_reads_sha256_first() -> None:
    data = b"firmware" * 1000
    target = make_target_file("bms/fw.bin", io.BytesIO(data), _custom(), sha512=True)
    assert target.length == len(data)
    assert list(target.hashes) == ["sha256", "sha512"]  # the client prefixes with the first
    assert target.hashes["sha256"] == hashlib.sha256(data).hexdigest()
    assert target.hashes["sha512"] == hashlib.sha512(data).hexdigest()
    assert target.custom == _custom().to_json()
    assert target.get_prefixed_paths()[0] == f"bms/{target.hashes['sha256']}.fw.bin"


def test_make_target_file_checks_the_name() -> None:
    with pytest.raises(OtaUsageError):
        make_target_file("../fw.bin", io.BytesIO(b"x"), _custom())


def _image_target() -> TargetFile:
    return make_target_file("fw.bin", io.BytesIO(b"abc"), _custom(image_kind=ImageKind.ECU))


def _director_copy(image: TargetFile, **custom: Any) -> TargetFile:
    fields = copy.deepcopy(image.unrecognized_fields)
    fields["custom"].update(custom)
    return TargetFile(image.length, dict(image.hashes), image.path, fields)


def test_a_faithful_director_copy_matches() -> None:
    image = _image_target()
    check_matches_image(_director_copy(image, vehicle_id="VIN1", ecu_id="bms"), image)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: setattr(t, "length", t.length + 1), "bytes"),
        (lambda t: t.hashes.update(sha256="00" * 32), "hashes"),
        (lambda t: t.hashes.update(sha512="00" * 64), "hashes"),  # an extra algorithm too
        (lambda t: t.custom.update(release_counter=99), "release_counter"),
        (lambda t: t.custom.pop("hardware_id"), "hardware_id"),
        (lambda t: t.custom.update(delta={"patch": "x"}), "adds delta"),
        (lambda t: setattr(t, "path", "other.bin"), "compared with"),
    ],
)
def test_any_difference_from_the_image_is_refused(mutate: Any, message: str) -> None:
    image = _image_target()
    director = _director_copy(image, vehicle_id="VIN1")
    mutate(director)
    with pytest.raises(OtaVerificationError, match=message):
        check_matches_image(director, image)


def test_director_may_not_change_an_ecu_id_the_image_set() -> None:
    image = make_target_file(
        "fw.bin", io.BytesIO(b"abc"), _custom(image_kind=ImageKind.ECU, ecu_id="bms")
    )
    with pytest.raises(OtaVerificationError, match="ecu_id"):
        check_matches_image(_director_copy(image, ecu_id="vcu"), image)

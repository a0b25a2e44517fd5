"""What a target entry says about an image: its name, its hashes and its custom fields.

Every target in our repositories carries, in ``TargetFile.unrecognized_fields["custom"]``::

    {"hardware_id": "tbox-hw2", "ecu_id": "bms", "release_counter": 12, "image_kind": "ecu",
     "delta": {"from_sha256": "…", "patch": "bms/12-from-11.bsdiff", "algorithm": "bsdiff4"}}

``ecu_id`` and ``delta`` are optional. A director's copy of an image target adds
``vehicle_id`` (and ``ecu_id`` when the image left it open) and changes nothing else.
:class:`TargetCustom` reads both kinds (``vehicle_id`` is ``None`` in an image target).

Usage::

    custom = TargetCustom(hardware_id="tbox-hw2", release_counter=12, image_kind=ImageKind.TBOX)
    with open("rootfs.img", "rb") as f:
        target = make_target_file("tbox/rootfs-12.img", f, custom)
    TargetCustom.from_json(target.custom, where="targets.json: tbox/rootfs-12.img")
    check_matches_image(director_target, image_target)  # raises OtaVerificationError

:meth:`TargetCustom.from_json` accepts any JSON value and either returns a valid
:class:`TargetCustom` or raises :class:`~ota.errors.OtaInputError`: it is the parser the update
client applies to metadata. Unknown keys are ignored, so that later fields do not break older
readers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, BinaryIO, Final

from tuf.api.metadata import TargetFile

from ota.errors import OtaInputError, OtaUsageError, OtaVerificationError

__all__ = [
    "DIRECTOR_ONLY_FIELDS",
    "MAX_RELEASE_COUNTER",
    "DeltaDescriptor",
    "ImageKind",
    "TargetCustom",
    "check_matches_image",
    "check_target_name",
    "identifier_problem",
    "make_target_file",
    "target_name_problem",
    "vehicle_id_problem",
]

#: Release counters are JSON integers every consumer can hold (signed 64-bit).
MAX_RELEASE_COUNTER: Final = 2**63 - 1

#: Custom fields a director adds to an image target's; every other field must be copied as is.
DIRECTOR_ONLY_FIELDS: Final = frozenset({"vehicle_id", "ecu_id"})

_VEHICLE_ID = re.compile(r"[^\s/+#\\.][^\s/+#\\]{0,63}")
_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SEGMENT = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_NAME = 255
_DELTA_ALGORITHMS: Final = ("bsdiff4",)


class ImageKind(StrEnum):
    """What a target installs: the T-box's own software, or an ECU's firmware."""

    TBOX = "tbox"
    ECU = "ecu"


def identifier_problem(value: object) -> str | None:
    """Why *value* is not a hardware or ECU identifier, or ``None`` if it is one."""
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    if not _IDENTIFIER.fullmatch(value):
        return (
            f"{value!r} must be 1–64 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return None


def vehicle_id_problem(value: object) -> str | None:
    """Why *value* is not a vehicle id usable as a directory and URL path segment, or ``None``.

    The agent's rule (1–64 printable characters without whitespace or ``/ + #``, as it is an MQTT
    topic level) plus no leading dot and no backslash. URLs must still quote it.
    """
    if not isinstance(value, str):
        return f"must be a string, not {_kind(value)}"
    if not (_VEHICLE_ID.fullmatch(value) and value.isprintable()):
        return (
            f"{value!r} must be 1–64 printable characters without whitespace or / + # \\, "
            "not starting with '.'"
        )
    return None


def target_name_problem(name: object) -> str | None:
    """Why *name* cannot be a target name (a relative URL path), or ``None`` if it can.

    Names are ``/``-separated segments of letters, digits and ``._+-``; no segment starts with a
    dot (so no ``..`` and no hidden files), and the whole is at most 255 characters. They are used
    as URL paths and, hash-prefixed, as file names.
    """
    if not isinstance(name, str):
        return f"must be a string, not {_kind(name)}"
    if not name:
        return "must not be empty"
    if len(name) > _MAX_NAME:
        return f"is {len(name)} characters long; at most {_MAX_NAME} are allowed"
    for segment in name.split("/"):
        if not _SEGMENT.fullmatch(segment):
            return (
                f"{name!r}: every '/'-separated part must be letters, digits and '._+-', "
                "not empty and not starting with '.'"
            )
    return None


def check_target_name(name: str) -> str:
    """*name* if it is a valid target name, else :class:`OtaUsageError`."""
    problem = target_name_problem(name)
    if problem is not None:
        raise OtaUsageError(f"target name {problem}")
    return name


@dataclass(frozen=True, slots=True)
class DeltaDescriptor:
    """A patch that turns the image with sha256 *from_sha256* into this target.

    *patch* names another target in the same repository (the patch file itself).
    """

    from_sha256: str
    patch: str
    algorithm: str = "bsdiff4"

    def __post_init__(self) -> None:
        if not isinstance(self.from_sha256, str) or not _SHA256.fullmatch(self.from_sha256):
            raise OtaUsageError(
                f"delta from_sha256 {self.from_sha256!r} must be 64 lowercase hex digits"
            )
        problem = target_name_problem(self.patch)
        if problem is not None:
            raise OtaUsageError(f"delta patch target name {problem}")
        if self.algorithm not in _DELTA_ALGORITHMS:
            raise OtaUsageError(
                f"delta algorithm {self.algorithm!r} is not supported "
                f"(supported: {', '.join(_DELTA_ALGORITHMS)})"
            )

    def to_json(self) -> dict[str, Any]:
        """The descriptor as it appears in ``custom["delta"]``."""
        return {"from_sha256": self.from_sha256, "patch": self.patch, "algorithm": self.algorithm}


@dataclass(frozen=True, slots=True)
class TargetCustom:
    """The custom fields of one of our targets, validated on construction.

    Invalid values raise :class:`OtaUsageError` (the operator typed them);
    :meth:`from_json` turns that into :class:`OtaInputError` for data read from metadata.
    """

    hardware_id: str
    release_counter: int
    image_kind: ImageKind
    ecu_id: str | None = None
    delta: DeltaDescriptor | None = None
    vehicle_id: str | None = None  # set by a director only

    def __post_init__(self) -> None:
        problem = identifier_problem(self.hardware_id)
        if problem is not None:
            raise OtaUsageError(f"hardware_id {problem}")
        if self.vehicle_id is not None:
            problem = vehicle_id_problem(self.vehicle_id)
            if problem is not None:
                raise OtaUsageError(f"vehicle_id {problem}")
        if self.ecu_id is not None:
            problem = identifier_problem(self.ecu_id)
            if problem is not None:
                raise OtaUsageError(f"ecu_id {problem}")
        counter = self.release_counter
        if isinstance(counter, bool) or not isinstance(counter, int):
            raise OtaUsageError(f"release_counter must be an integer, not {_kind(counter)}")
        if not 0 <= counter <= MAX_RELEASE_COUNTER:
            raise OtaUsageError(f"release_counter {counter} must be between 0 and 2^63-1")
        if not isinstance(self.image_kind, ImageKind):
            raise OtaUsageError(f"image_kind {self.image_kind!r} must be 'tbox' or 'ecu'")

    def to_json(self) -> dict[str, Any]:
        """The fields as stored in ``TargetFile.unrecognized_fields["custom"]``."""
        data: dict[str, Any] = {
            "hardware_id": self.hardware_id,
            "release_counter": self.release_counter,
            "image_kind": self.image_kind.value,
        }
        if self.ecu_id is not None:
            data["ecu_id"] = self.ecu_id
        if self.delta is not None:
            data["delta"] = self.delta.to_json()
        if self.vehicle_id is not None:
            data["vehicle_id"] = self.vehicle_id
        return data

    @classmethod
    def from_json(cls, data: object, *, where: str) -> TargetCustom:
        """Parse a target's ``custom`` value; :class:`OtaInputError` naming *where* if invalid.

        Accepts any JSON value (this is the check applied to metadata from a server).
        """
        if not isinstance(data, Mapping):
            raise OtaInputError(f"{where}: custom must be an object, not {_kind(data)}")
        missing = [k for k in ("hardware_id", "release_counter", "image_kind") if k not in data]
        if missing:
            raise OtaInputError(f"{where}: custom lacks {', '.join(missing)}")
        kind = data["image_kind"]
        if not isinstance(kind, str) or kind not in {k.value for k in ImageKind}:
            raise OtaInputError(f"{where}: custom image_kind {kind!r} must be 'tbox' or 'ecu'")
        try:
            return cls(
                hardware_id=data["hardware_id"],
                release_counter=data["release_counter"],
                image_kind=ImageKind(kind),
                ecu_id=data.get("ecu_id"),
                delta=_delta_from_json(data.get("delta")),
                vehicle_id=data.get("vehicle_id"),
            )
        except OtaUsageError as e:
            raise OtaInputError(f"{where}: custom {e}") from e


def _delta_from_json(data: object) -> DeltaDescriptor | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise OtaUsageError(f"delta must be an object, not {_kind(data)}")
    missing = [k for k in ("from_sha256", "patch", "algorithm") if k not in data]
    if missing:
        raise OtaUsageError(f"delta lacks {', '.join(missing)}")
    return DeltaDescriptor(
        from_sha256=data["from_sha256"], patch=data["patch"], algorithm=data["algorithm"]
    )


def make_target_file(
    name: str, data: BinaryIO, custom: TargetCustom, *, sha512: bool = False
) -> TargetFile:
    """The :class:`TargetFile` for *data* (read to the end) under *name*, with *custom* fields.

    sha256 comes first: python-tuf's client prefixes download paths with the first hash.
    """
    check_target_name(name)
    algorithms = ["sha256", "sha512"] if sha512 else ["sha256"]
    target = TargetFile.from_data(name, data, algorithms)
    target.unrecognized_fields["custom"] = custom.to_json()
    return target


def check_matches_image(director: TargetFile, image: TargetFile) -> None:
    """Raise :class:`OtaVerificationError` unless *director* describes exactly *image*.

    Same path, length and hashes (the same algorithms with the same values), and every custom
    field of the image copied unchanged; the director may only add ``vehicle_id`` and
    ``ecu_id`` (the latter only where the image has none).
    """
    name = image.path
    if director.path != image.path:
        raise OtaVerificationError(
            f"director target {director.path!r} is compared with image target {image.path!r}"
        )
    if director.length != image.length:
        raise OtaVerificationError(
            f"{name}: director says {director.length} bytes, image repository {image.length}"
        )
    if director.hashes != image.hashes:
        raise OtaVerificationError(
            f"{name}: director and image repository disagree on hashes "
            f"({sorted(director.hashes)} vs {sorted(image.hashes)})"
        )
    mine = director.custom if isinstance(director.custom, Mapping) else {}
    theirs = image.custom if isinstance(image.custom, Mapping) else {}
    for key, value in theirs.items():
        if key not in mine or mine[key] != value:
            raise OtaVerificationError(
                f"{name}: director custom {key} is {mine.get(key)!r}, image repository says "
                f"{value!r}"
            )
    extra = set(mine) - set(theirs) - DIRECTOR_ONLY_FIELDS
    if extra:
        raise OtaVerificationError(
            f"{name}: director custom adds {', '.join(sorted(extra))}, which only the image "
            "repository may set"
        )


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__

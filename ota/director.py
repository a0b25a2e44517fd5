"""Decisions of the director repository: which image each vehicle's ECUs should run.

A director lists, per vehicle, the targets assigned to it, each a copy of an image-repository
target (same path, length, hashes and custom fields) plus ``custom.vehicle_id`` and, where the
image leaves it open, ``custom.ecu_id``. A vehicle installs a target only if the director assigns
it *and* the image repository vouches for it identically
(:func:`ota.target_info.check_matches_image`).

An assignment occupies a slot: the T-box's own software (one slot per ECU id, usually none), or
one ECU's firmware. Assigning into an occupied slot replaces the earlier assignment, so the
director's targets say at any time exactly what the vehicle should run.

Usage::

    entry = assignment_for(image_target, vehicle_id="VIN123", ecu_id="bms")
    repo = assign(vehicle_repo, entry, signers, periods, now)
    repo = unassign(vehicle_repo, "bms/fw-12.bin", signers, periods, now)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime, timedelta

from tuf.api.metadata import TargetFile

from ota.errors import OtaUsageError
from ota.repository import RepositoryMetadata, Signers, remove_target, replace_targets
from ota.target_info import (
    ImageKind,
    TargetCustom,
    check_matches_image,
    identifier_problem,
    vehicle_id_problem,
)

__all__ = ["assign", "assignment_for", "check_vehicle_id", "slot_of", "unassign"]


def check_vehicle_id(vehicle_id: str) -> str:
    """*vehicle_id* if it can name a vehicle's directory and URL path, else OtaUsageError."""
    problem = vehicle_id_problem(vehicle_id)
    if problem is not None:
        raise OtaUsageError(f"vehicle id {problem}")
    return vehicle_id


def assignment_for(
    image_target: TargetFile, *, vehicle_id: str, ecu_id: str | None = None
) -> TargetFile:
    """The director's entry assigning *image_target* to *vehicle_id* (and ECU *ecu_id*).

    Length, hashes and custom fields are copied exactly. ECU firmware needs an ECU id: the
    image's, or *ecu_id*; both given, they must agree.
    """
    check_vehicle_id(vehicle_id)
    custom = TargetCustom.from_json(image_target.custom, where=f"image target {image_target.path}")
    if ecu_id is not None:
        problem = identifier_problem(ecu_id)
        if problem is not None:
            raise OtaUsageError(f"ECU id {problem}")
        if custom.ecu_id is not None and custom.ecu_id != ecu_id:
            raise OtaUsageError(
                f"{image_target.path} is built for ECU {custom.ecu_id!r}, not {ecu_id!r}"
            )
    if custom.image_kind is ImageKind.ECU and custom.ecu_id is None and ecu_id is None:
        raise OtaUsageError(f"{image_target.path} is ECU firmware: say which ECU (--ecu-id)")
    fields = copy.deepcopy(dict(image_target.unrecognized_fields))
    fields["custom"] = dict(fields["custom"])
    fields["custom"]["vehicle_id"] = vehicle_id
    if ecu_id is not None and custom.ecu_id is None:
        fields["custom"]["ecu_id"] = ecu_id
    entry = TargetFile(image_target.length, dict(image_target.hashes), image_target.path, fields)
    check_matches_image(entry, image_target)
    return entry


def slot_of(target: TargetFile) -> tuple[str, str | None]:
    """What an assignment occupies: (image kind, ECU id)."""
    custom = target.custom if isinstance(target.custom, Mapping) else {}
    ecu = custom.get("ecu_id")
    return (str(custom.get("image_kind")), ecu if isinstance(ecu, str) else None)


def assign(
    repo: RepositoryMetadata,
    entry: TargetFile,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """The vehicle's director metadata with *entry* assigned, replacing its slot's occupant.

    Re-assigning what is assigned already changes nothing.
    """
    current = repo.targets.signed.targets
    if current.get(entry.path) == entry:
        return repo
    targets = copy.deepcopy(repo.targets.signed)
    slot = slot_of(entry)
    for name in [n for n, t in current.items() if n == entry.path or slot_of(t) == slot]:
        del targets.targets[name]
    targets.targets[entry.path] = copy.deepcopy(entry)
    return replace_targets(repo, targets, signers, periods, now)


def unassign(
    repo: RepositoryMetadata,
    name: str,
    signers: Signers,
    periods: Mapping[str, timedelta],
    now: datetime,
) -> RepositoryMetadata:
    """The vehicle's director metadata without the assignment of target *name*."""
    if name not in repo.targets.signed.targets:
        raise OtaUsageError(f"{name!r} is not assigned to this vehicle")
    return remove_target(repo, name, signers, periods, now)

"""``tbox ota slots``: the T-box's A/B slots — provision them once, show what they hold.

``provision DIR IMAGE --release-counter N`` is the factory install: it writes IMAGE into slot
``a`` of a new slots directory, verifies it from disk and commits it, so that the agent's update
campaigns (``[ota]``) have a committed, bootable software to update and to fall back on.
``status DIR`` prints the slots' state (``--json``: as the agent reports it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import InputError, UsageError

if TYPE_CHECKING:
    from ota.slot_state import SlotManifest

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``tbox ota slots`` under ``tbox ota``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "slots",
        help="the T-box's A/B slots: provision, status",
        description="Provision the T-box's A/B slots with its factory software, or show them.",
    )
    slots = parser.add_subparsers(dest="slots_command", metavar="COMMAND")
    slots.required = True
    p: argparse.ArgumentParser = slots.add_parser(
        "provision",
        help="write the factory image into slot a and commit it",
        description=(
            "Write IMAGE into slot a of a new slots directory DIR, re-hash it from disk and "
            "commit it (refused if DIR is already provisioned)."
        ),
    )
    p.add_argument("dir", type=Path, metavar="DIR", help="the slots directory ([ota] slots_dir)")
    p.add_argument("image", type=Path, metavar="IMAGE", help="the factory software image")
    p.add_argument(
        "--release-counter",
        type=_non_negative,
        required=True,
        metavar="N",
        help="its release counter (updates must not be lower)",
    )
    p.add_argument("--version", default="", help="a version string for reports")
    p.add_argument("--max-attempts", type=_positive, default=3, metavar="N", help="default 3")
    p.set_defaults(handler=_provision)
    s: argparse.ArgumentParser = slots.add_parser(
        "status", help="what the slots hold", description="Show the A/B slots' state."
    )
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("--json", action="store_true", help="one JSON object")
    s.set_defaults(handler=_status)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is below 0")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _provision(args: argparse.Namespace) -> int:
    from ota.ab_installer import AbInstaller, sha256_from_disk

    if not args.image.is_file():
        raise UsageError(f"{args.image}: no such image file")
    try:
        sha256, length = sha256_from_disk(args.image)
    except OSError as e:
        raise InputError(f"{args.image}: cannot read: {e.strerror or e}") from e
    status = AbInstaller(args.dir, max_attempts=args.max_attempts).provision(
        args.image, sha256, length, args.release_counter, version=args.version
    )
    print(
        f"{args.dir}: slot {status.active} holds {args.image.name} (release "
        f"{status.committed_release}, {length:,} bytes, sha256 {sha256[:16]}…), committed"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    from ota.ab_installer import AbInstaller

    if not (args.dir / "state.json").exists():
        raise InputError(
            f"{args.dir}: not provisioned (no state.json); see `tbox ota slots provision`"
        )
    status = AbInstaller(args.dir).status()
    doc = status.to_json()
    if args.json:
        json.dump(doc, sys.stdout, sort_keys=True)
        print()
        return 0
    print(f"active slot {status.active}, committed release {status.committed_release}")
    for slot in ("a", "b"):
        manifest = status.manifest(slot)
        print(f"  {slot}: {'empty' if manifest is None else _describe(manifest)}")
    if status.pending is not None:
        print(f"  pending: {doc.get('pending')}")
    if status.last_failure is not None:
        print(f"  last failure: {doc.get('last_failure')}")
    return 0


def _describe(manifest: SlotManifest) -> str:
    image = manifest.image
    return f"release {image.release_counter} {image.version!r}, {image.length:,} bytes"

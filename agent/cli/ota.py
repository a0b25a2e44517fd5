"""``tbox ota …``: update repositories (build, sign, maintain) and a bench server for them.

* ``tbox ota repo init DIR --kind image|director [--vehicle-id ID …] [--keys DIR]
  [--threshold ROLE=N …] [--expires ROLE=DAYS …]`` — a new repository and its keys.
* ``tbox ota repo add-target DIR FILE --hardware-id HW --release-counter N --kind tbox|ecu
  [--name NAME] [--ecu-id ID] [--sha512] [--delta-base OLD [--delta-patch NAME] | --delta-from
  SHA256 --delta-patch NAME]`` — publish an image in an image repository (with a bsdiff4 delta
  computed from image file OLD, or describing a patch target already published).
* ``tbox ota repo remove-target DIR NAME`` — stop listing an image.
* ``tbox ota repo assign DIRECTOR --image-repo DIR --vehicle-id ID --target NAME [--ecu-id ID]``
  and ``tbox ota repo unassign DIRECTOR --vehicle-id ID --target NAME`` — what a vehicle runs.
* ``tbox ota repo refresh DIR [--timestamp-only] [--vehicle-id ID …]`` — new snapshot and
  timestamp versions (the regular job of the online keys).
* ``tbox ota repo resign DIR [ROLE …] [--within DAYS]`` — re-sign expiring (or named) roles.
* ``tbox ota repo rotate-key DIR ROLE [--key KEYID …]`` — replace a role's keys (root too).
* ``tbox ota repo threshold DIR ROLE N [--add-keys K]`` — change a role's threshold.
* ``tbox ota repo show DIR [--vehicle-id ID …] [--json] [--check]`` — roles, versions, expiries,
  keys and targets; ``--check`` exits 1 on the first problem.
* ``tbox ota serve DIR [--host H] [--port P] [--port-file F] [--throttle B/S] [--fail-after N]``
  — serve a directory over HTTP with byte ranges, for the bench.
* ``tbox ota check --director URL --image URL --vehicle-id ID --hardware-id HW --state-dir DIR
  --root-director FILE --root-image FILE [--ecu ID=HW …] [--installed SLOT=N …] [--download DIR]``
  — the vehicle's update client once: print the verified plan (and download it), for the bench.
* ``tbox ota tuf-client --metadata-dir DIR [--metadata-url URL …] init|refresh|download`` — the
  TUF conformance suite's client protocol over the same client code (:mod:`ota.conformance_client`).

Every signing command takes ``--keys DIR`` (repeatable; searched before the repository's own
keys directory), e.g. the offline medium holding root and targets keys.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.cli import ota_slots
from agent.errors import UsageError

if TYPE_CHECKING:
    from ota.repository_tool import RepositoryDirectory

_ROLES = ("root", "targets", "snapshot", "timestamp")


def register(subparsers: Any) -> None:
    """Add ``tbox ota`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ota",
        help="update repositories: create, publish, assign, sign, serve",
        description=(
            "Over-the-air update tooling: 'repo' builds and maintains signed TUF repositories "
            "(an image repository with offline keys, a director with online keys and one "
            "repository per vehicle, as Uptane has them); 'serve' serves a directory over HTTP "
            "for bench use."
        ),
    )
    sub = parser.add_subparsers(dest="ota_command", metavar="SUBCOMMAND")
    sub.required = True
    repo = sub.add_parser(
        "repo",
        help="create and maintain update repositories",
        description=(
            "Create and maintain update repositories. An image repository lists the images "
            "(targets) with their hashes and custom fields; a director repository assigns them "
            "to vehicles. A vehicle installs what the director assigns and the image repository "
            "vouches for identically. Repositories are plain files for any static web server."
        ),
    )
    repo_sub = repo.add_subparsers(dest="repo_command", metavar="COMMAND")
    repo_sub.required = True
    _add_init(repo_sub)
    _add_add_target(repo_sub)
    _add_remove_target(repo_sub)
    _add_assign(repo_sub)
    _add_unassign(repo_sub)
    _add_refresh(repo_sub)
    _add_resign(repo_sub)
    _add_rotate_key(repo_sub)
    _add_threshold(repo_sub)
    _add_show(repo_sub)
    _add_serve(sub)
    _add_check(sub)
    _add_tuf_client(sub)
    ota_slots.register(sub)


# --- argument parsers --------------------------------------------------------------------------


def _add_keys_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a directory of private keys to sign with, searched before the repository's own "
        "(repeatable; e.g. the offline medium)",
    )


def _add_init(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "init",
        help="create a repository and its keys",
        description=(
            "Create a repository in DIR (absent or empty) and new Ed25519 keys for its roles. "
            "An image repository has offline root, targets and snapshot keys and an online "
            "timestamp key; a director an offline root key and online targets, snapshot and "
            "timestamp keys. Private keys are written (mode 0600) to --keys, by default "
            "DIR.keys next to DIR, in offline/ and online/ subdirectories: move offline/ to "
            "offline storage. Provision vehicles with DIR/metadata/root.json."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository directory to create")
    p.add_argument("--kind", required=True, choices=("image", "director"), help="which repository")
    p.add_argument(
        "--vehicle-id",
        action="append",
        default=[],
        metavar="ID",
        help="director: also create this vehicle's repository (repeatable; `assign` creates "
        "them as needed)",
    )
    p.add_argument(
        "--keys",
        type=Path,
        metavar="DIR",
        help="where to write the private keys (default DIR.keys)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        type=_role_number,
        metavar="ROLE=N",
        help="N keys for ROLE, all N needed to sign (default 1; repeatable)",
    )
    p.add_argument(
        "--expires",
        action="append",
        default=[],
        type=_role_number,
        metavar="ROLE=DAYS",
        help="validity of ROLE's metadata once signed (defaults: root 365, targets 90, "
        "snapshot 7, timestamp 1; repeatable)",
    )
    p.set_defaults(handler=_init)


def _add_add_target(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "add-target",
        help="publish an image in an image repository",
        description=(
            "Copy FILE into DIR/targets under its hash-prefixed name and list it in a new "
            "targets version with its length, sha256 (and sha512) and custom fields, then new "
            "snapshot and timestamp versions. Needs the targets, snapshot and timestamp keys. "
            "With --delta-base OLD, also a bsdiff4 patch from OLD to FILE (published in the "
            "same targets version), which vehicles running OLD download instead of FILE."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the image repository")
    p.add_argument("file", metavar="FILE", type=Path, help="the image file")
    p.add_argument(
        "--name", help="target name, a relative path like tbox/rootfs-12.img (default: FILE's name)"
    )
    p.add_argument("--hardware-id", required=True, metavar="HW", help="hardware it runs on")
    p.add_argument("--ecu-id", metavar="ID", help="the ECU it is built for, if only one")
    p.add_argument(
        "--release-counter",
        required=True,
        type=_non_negative_int,
        metavar="N",
        help="release counter (vehicles never install a lower one than they run)",
    )
    p.add_argument(
        "--kind",
        required=True,
        choices=("tbox", "ecu"),
        help="tbox: the T-box's own software; ecu: an ECU's firmware",
    )
    p.add_argument("--sha512", action="store_true", help="also list (and publish by) sha512")
    p.add_argument(
        "--delta-from",
        metavar="SHA256",
        help="with --delta-patch: the sha256 of the image a patch turns into this one",
    )
    p.add_argument(
        "--delta-patch",
        metavar="NAME",
        help="with --delta-from: the patch's target name (bsdiff4); with --delta-base: the name "
        "to publish the computed patch under (default: NAME.from-<sha256 of OLD>.bsdiff4)",
    )
    p.add_argument(
        "--delta-base",
        metavar="OLD",
        type=Path,
        help="compute a bsdiff4 patch from image file OLD (what vehicles run now) to FILE, "
        "publish it as a target too and describe it in FILE's target: vehicles holding OLD "
        "download the patch instead of the image",
    )
    _add_keys_option(p)
    p.set_defaults(handler=_add_target)


def _add_remove_target(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "remove-target",
        help="stop listing an image",
        description="List target NAME no more (new targets, snapshot and timestamp versions). "
        "Its file stays, for clients in the middle of downloading it.",
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the image repository")
    p.add_argument("name", metavar="NAME", help="the target name")
    _add_keys_option(p)
    p.set_defaults(handler=_remove_target)


def _add_assign(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "assign",
        help="assign an image to a vehicle (director)",
        description=(
            "List image repository target NAME for vehicle ID in the director, with the same "
            "length, hashes and custom fields, plus vehicle_id (and ecu_id). It replaces what "
            "the vehicle had assigned for the same ECU (or for the T-box itself). The image "
            "repository must verify and hold the file. The vehicle's repository is created on "
            "first use."
        ),
    )
    p.add_argument("dir", metavar="DIRECTOR", type=Path, help="the director repository")
    p.add_argument("--image-repo", required=True, type=Path, metavar="DIR", help="image repository")
    p.add_argument("--vehicle-id", required=True, metavar="ID", help="the vehicle")
    p.add_argument("--target", required=True, metavar="NAME", help="the image's target name")
    p.add_argument("--ecu-id", metavar="ID", help="the ECU to flash (ECU firmware)")
    _add_keys_option(p)
    p.set_defaults(handler=_assign)


def _add_unassign(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "unassign",
        help="withdraw an assignment (director)",
        description="Withdraw target NAME from vehicle ID's assignments.",
    )
    p.add_argument("dir", metavar="DIRECTOR", type=Path, help="the director repository")
    p.add_argument("--vehicle-id", required=True, metavar="ID", help="the vehicle")
    p.add_argument("--target", required=True, metavar="NAME", help="the assigned target")
    _add_keys_option(p)
    p.set_defaults(handler=_unassign)


def _add_refresh(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "refresh",
        help="new snapshot and timestamp versions",
        description=(
            "Sign new snapshot and timestamp versions with fresh expiries (a director: for "
            "every vehicle, or those named). With --timestamp-only, only timestamp: the "
            "regular job of an image repository's online timestamp key."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository")
    p.add_argument("--timestamp-only", action="store_true", help="leave snapshot as it is")
    p.add_argument(
        "--vehicle-id", action="append", metavar="ID", help="director: only this vehicle"
    )
    _add_keys_option(p)
    p.set_defaults(handler=_refresh)


def _add_resign(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "resign",
        help="re-sign expiring metadata",
        description=(
            "Sign new versions, with fresh expiries, of the ROLEs named or else of every role "
            "that expires within --within days (default 1: run it at least daily); the roles "
            "listing them follow. A new root version is signed by the root keys."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository")
    # No argparse choices: with nargs="*" Python 3.11 rejects an empty list against them.
    p.add_argument("roles", nargs="*", metavar="ROLE", help="roles to re-sign")
    p.add_argument(
        "--within",
        type=_positive_int,
        default=1,
        metavar="DAYS",
        help="without ROLEs: re-sign what expires within DAYS days (default 1)",
    )
    p.add_argument(
        "--vehicle-id", action="append", metavar="ID", help="director: only this vehicle"
    )
    _add_keys_option(p)
    p.set_defaults(handler=_resign)


def _add_rotate_key(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "rotate-key",
        help="replace a role's keys",
        description=(
            "Replace ROLE's keys (all, or those given with --key) with new ones in a new root "
            "version signed by the old and the new root keys; metadata signed by ROLE is "
            "re-signed (by old and new keys where the old are at hand, so that clients on "
            "either root keep working). Old key files move to revoked/."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository")
    p.add_argument(
        "role", metavar="ROLE", choices=_ROLES, help="root, targets, snapshot, timestamp"
    )
    p.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="KEYID",
        help="replace only this key (at least 8 hex digits of its id; repeatable)",
    )
    _add_keys_option(p)
    p.set_defaults(handler=_rotate_key)


def _add_threshold(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "threshold",
        help="change a role's signature threshold",
        description=(
            "Set ROLE's threshold to N in a new root version, after adding --add-keys new keys "
            "to it; metadata of ROLE is re-signed to meet it."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository")
    p.add_argument(
        "role", metavar="ROLE", choices=_ROLES, help="root, targets, snapshot, timestamp"
    )
    p.add_argument("n", metavar="N", type=_positive_int, help="signatures needed")
    p.add_argument(
        "--add-keys", type=_non_negative_int, default=0, metavar="K", help="new keys to add first"
    )
    _add_keys_option(p)
    p.set_defaults(handler=_threshold)


def _add_show(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "show",
        help="roles, versions, expiries, keys and targets",
        description=(
            "Print each role's version, expiry, threshold, signatures and keys (with where the "
            "private key is), each target with its length, hashes and custom fields, and any "
            "problem (a role that does not verify or has expired). A director: its root and "
            "every vehicle (or those named)."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the repository")
    p.add_argument(
        "--vehicle-id", action="append", metavar="ID", help="director: only this vehicle"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--check", action="store_true", help="exit 1 naming the first problem, if any")
    _add_keys_option(p)
    p.set_defaults(handler=_show)


def _add_serve(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "serve",
        help="serve a directory over HTTP (bench)",
        description=(
            "Serve the files under DIR over HTTP/1.1 with byte ranges (206, Content-Range, "
            "416), ETag and If-Range; nothing outside DIR, no hidden files, no *.pem. Logs "
            "requests to stderr; runs until Ctrl-C or SIGTERM (exit 0). Bench faults for "
            "client tests: --throttle and --fail-after."
        ),
    )
    p.add_argument("dir", metavar="DIR", type=Path, help="the directory to serve")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=0, help="port to listen on (default 0: any free port)"
    )
    p.add_argument(
        "--port-file", type=Path, metavar="FILE", help="write the port to FILE once listening"
    )
    p.add_argument(
        "--throttle",
        type=_positive_int,
        metavar="BYTES_PER_S",
        help="send each response body at most this fast (slow-retrieval attack)",
    )
    p.add_argument(
        "--fail-after",
        type=_non_negative_int,
        metavar="BYTES",
        help="drop the connection after BYTES of body, once per path (to test resuming)",
    )
    p.add_argument(
        "--fail-match",
        default="*",
        metavar="GLOB",
        help="--fail-after only for paths matching GLOB, e.g. 'image/targets/*' (default *)",
    )
    p.add_argument("--quiet", action="store_true", help="do not log requests")
    p.set_defaults(handler=_serve)


def _role_number(text: str) -> tuple[str, int]:
    role, sep, number = text.partition("=")
    if not sep or role not in _ROLES:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not ROLE=N with ROLE one of {', '.join(_ROLES)}"
        )
    if not number.isascii() or not number.isdigit() or int(number) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: {number!r} is not a whole number ≥ 1")
    return role, int(number)


def _non_negative_int(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number ≥ 0")
    return int(text)


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0–65535)")
    return value


# --- handlers ----------------------------------------------------------------------------------


def _open(args: argparse.Namespace) -> RepositoryDirectory:
    from ota.repository_tool import RepositoryDirectory

    return RepositoryDirectory(args.dir, keys=args.keys)


def _print_written(written: Sequence[str]) -> None:
    for name in written:
        print(f"  {name}")


def _init(args: argparse.Namespace) -> int:
    from ota.repository_config import RepositoryKind
    from ota.repository_tool import RepositoryDirectory

    thresholds = _unique_roles(args.threshold, "--threshold")
    expires = _unique_roles(args.expires, "--expires")
    repository = RepositoryDirectory.init(
        args.dir,
        RepositoryKind(args.kind),
        keys=args.keys,
        thresholds=thresholds,
        expires_days=expires,
        vehicle_ids=args.vehicle_id,
    )
    keys_dir = repository.keys.dirs[-1]
    print(f"created {args.kind} repository {args.dir}; private keys in {keys_dir}:")
    for path in sorted(p for p in keys_dir.rglob("*.pem") if "revoked" not in p.parts):
        print(f"  {path.relative_to(keys_dir)}")
    print(
        f"move {keys_dir / 'offline'} to offline storage (sign with --keys DIR); provision "
        f"vehicles with {args.dir / 'metadata' / 'root.json'}"
    )
    return 0


def _add_target(args: argparse.Namespace) -> int:
    from ota.target_info import DeltaDescriptor, ImageKind, TargetCustom

    if args.delta_base is not None and args.delta_from is not None:
        raise UsageError("--delta-base computes the delta; --delta-from describes one: not both")
    if args.delta_base is None and (args.delta_from is None) != (args.delta_patch is None):
        raise UsageError("--delta-from and --delta-patch go together")
    delta = (
        None
        if args.delta_from is None
        else DeltaDescriptor(from_sha256=args.delta_from, patch=args.delta_patch)
    )
    custom = TargetCustom(
        hardware_id=args.hardware_id,
        release_counter=args.release_counter,
        image_kind=ImageKind(args.kind),
        ecu_id=args.ecu_id,
        delta=delta,
    )
    repository = _open(args)
    name = args.name if args.name is not None else args.file.name
    if args.delta_base is not None:
        target, patch, written = repository.add_delta_target(
            args.file,
            base=args.delta_base,
            name=name,
            custom=custom,
            patch_name=args.delta_patch,
            sha512=args.sha512,
        )
        print(
            f"added delta {patch.path} ({patch.length} bytes, "
            f"{100 * patch.length / max(target.length, 1):.1f} % of the image) from "
            f"{args.delta_base} (sha256 {target.custom['delta']['from_sha256'][:16]}…)"
        )
    else:
        target, written = repository.add_target(
            args.file, name=name, custom=custom, sha512=args.sha512
        )
    print(
        f"added {target.path} ({target.length} bytes, sha256 {target.hashes['sha256'][:16]}…) "
        f"to {args.dir}" + ("" if written else " (it was there already)")
    )
    _print_written(written)
    return 0


def _remove_target(args: argparse.Namespace) -> int:
    written = _open(args).remove_target(args.name)
    print(f"removed {args.name} from {args.dir}")
    _print_written(written)
    return 0


def _assign(args: argparse.Namespace) -> int:
    from ota.repository_tool import RepositoryDirectory

    director = _open(args)
    image = RepositoryDirectory(args.image_repo)
    entry, written = director.assign(
        image, vehicle_id=args.vehicle_id, target_name=args.target, ecu_id=args.ecu_id
    )
    ecu = entry.custom.get("ecu_id")
    print(
        f"assigned {entry.path} to vehicle {args.vehicle_id}"
        + (f" ECU {ecu}" if ecu else "")
        + ("" if written else " (it was assigned already)")
    )
    _print_written(written)
    return 0


def _unassign(args: argparse.Namespace) -> int:
    written = _open(args).unassign(vehicle_id=args.vehicle_id, target_name=args.target)
    print(f"withdrew {args.target} from vehicle {args.vehicle_id}")
    _print_written(written)
    return 0


def _refresh(args: argparse.Namespace) -> int:
    written = _open(args).refresh(timestamp_only=args.timestamp_only, vehicle_ids=args.vehicle_id)
    print(f"refreshed {args.dir}")
    _print_written(written)
    return 0


def _resign(args: argparse.Namespace) -> int:
    written = _open(args).resign(
        args.roles, within=timedelta(days=args.within), vehicle_ids=args.vehicle_id
    )
    print(f"re-signed {args.dir}" + ("" if written else ": nothing was due"))
    _print_written(written)
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    new, written = _open(args).rotate_key(args.role, revoke=args.key)
    print(f"rotated {args.role} keys of {args.dir}; new: {', '.join(k[:12] for k in new)}")
    _print_written(written)
    return 0


def _threshold(args: argparse.Namespace) -> int:
    new, written = _open(args).set_threshold(args.role, args.n, add_keys=args.add_keys)
    added = f"; new keys: {', '.join(k[:12] for k in new)}" if new else ""
    print(f"{args.role} threshold of {args.dir} is {args.n}{added}")
    _print_written(written)
    return 0


def _show(args: argparse.Namespace) -> int:
    from ota.errors import OtaVerificationError

    data = _open(args).describe(args.vehicle_id)
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print("\n".join(_show_text(data)))
    if args.check:
        problems = data.get("problems", []) + [
            f"vehicle {vid}: {p}"
            for vid, v in data.get("vehicles", {}).items()
            for p in v["problems"]
        ]
        if problems:
            raise OtaVerificationError(f"{args.dir}: {problems[0]}")
    return 0


def _show_text(data: dict[str, Any]) -> list[str]:
    lines = [f"{data['kind']} repository {data['path']} (keys: {', '.join(data['keys'])})"]
    if data["kind"] == "image":
        lines += _repo_text(data, indent="")
        return lines
    lines += _role_text("root", data["root"], indent="")
    vehicles = data["vehicles"]
    if not vehicles:
        lines.append("no vehicles yet (`tbox ota repo assign` creates them)")
    for vehicle_id, repo in vehicles.items():
        lines.append(f"vehicle {vehicle_id}:")
        lines += _repo_text(repo, indent="  ", skip_root=True)
    return lines


def _repo_text(repo: dict[str, Any], *, indent: str, skip_root: bool = False) -> list[str]:
    lines: list[str] = []
    for role, info in repo["roles"].items():
        if not (skip_root and role == "root"):
            lines += _role_text(role, info, indent=indent)
    targets = repo["targets"]
    lines.append(f"{indent}targets ({len(targets)}):" if targets else f"{indent}targets: none")
    for name, t in targets.items():
        custom = t["custom"] if isinstance(t["custom"], dict) else {}
        fields = " ".join(
            f"{k}={json.dumps(v) if isinstance(v, dict | list) else v}" for k, v in custom.items()
        )
        lines.append(
            f"{indent}  {name}  {t['length']} bytes  sha256 {t['hashes'].get('sha256', '?')[:16]}…"
            + (f"  {fields}" if fields else "")
        )
    for problem in repo["problems"]:
        lines.append(f"{indent}PROBLEM: {problem}")
    return lines


def _role_text(role: str, info: dict[str, Any], *, indent: str) -> list[str]:
    state = "EXPIRED" if info["expired"] else "expires"
    lines = [
        f"{indent}{role:<9}  v{info['version']:<4} {state} {info['expires']}  "
        f"threshold {info['threshold']} of {len(info['keys'])}, "
        f"{info['signatures']} valid signature{'s' if info['signatures'] != 1 else ''}"
    ]
    for key in info["keys"]:
        where = key["private_key"] or "private key not here"
        lines.append(f"{indent}  key {key['keyid'][:12]}  {key['scheme']}  {where}")
    return lines


def _unique_roles(pairs: Sequence[tuple[str, int]], option: str) -> dict[str, int]:
    seen: dict[str, int] = {}
    for role, value in pairs:
        if role in seen:
            raise UsageError(f"{option} {role} given twice")
        seen[role] = value
    return seen


def _serve(args: argparse.Namespace) -> int:
    from agent.durable_file import write_durably
    from ota.http_server import RepositoryServer

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with RepositoryServer(
            args.dir,
            host=args.host,
            port=args.port,
            throttle=args.throttle,
            fail_after=args.fail_after,
            fail_match=args.fail_match,
            log=None if args.quiet else log,
        ) as server:
            if args.port_file is not None:
                try:
                    write_durably(args.port_file, f"{server.port}\n".encode())
                except OSError as e:
                    raise UsageError(
                        f"cannot write --port-file {args.port_file}: {e.strerror or e}"
                    ) from e
            print(
                f"tbox ota serve: serving {args.dir} at {server.url}", file=sys.stderr, flush=True
            )
            while not stop.wait(0.5):
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0


# --- the update client: `check` and `tuf-client` ----------------------------------------------


def _add_check(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "check",
        help="run the vehicle's update client once (bench)",
        description=(
            "Refresh the vehicle's director repository and the image repository (python-tuf "
            "ngclient, resumable downloads, trusted time), verify every assignment (vehicle, "
            "hardware and ECU ids, identical in the image repository, release counter not lower "
            "than installed) and print the verified plan; with --download, download and verify "
            "every target into DIR. Any refusal exits 1 naming its code (rollback, freeze, …)."
        ),
    )
    p.add_argument("--director", required=True, metavar="URL", help="director repository base URL")
    p.add_argument("--image", required=True, metavar="URL", help="image repository base URL")
    p.add_argument("--vehicle-id", required=True, metavar="ID", help="this vehicle")
    p.add_argument("--hardware-id", required=True, metavar="HW", help="the T-box's hardware id")
    p.add_argument(
        "--ecu",
        action="append",
        default=[],
        type=_pair,
        metavar="ID=HW",
        help="an ECU this client updates and its hardware id (repeatable)",
    )
    p.add_argument(
        "--installed",
        action="append",
        default=[],
        type=_pair,
        metavar="SLOT=N",
        help="the installed release counter of SLOT ('tbox' or an ECU id; repeatable)",
    )
    p.add_argument(
        "--state-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the client's persistent state (metadata caches, partial downloads)",
    )
    p.add_argument(
        "--root-director",
        required=True,
        type=Path,
        metavar="FILE",
        help="the director root the vehicle is provisioned with",
    )
    p.add_argument(
        "--root-image",
        required=True,
        type=Path,
        metavar="FILE",
        help="the image repository root the vehicle is provisioned with",
    )
    p.add_argument("--download", type=Path, metavar="DIR", help="download every target into DIR")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(handler=_check)


def _add_tuf_client(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "tuf-client",
        help="the TUF conformance suite's client protocol",
        description=(
            "A TUF client with the command-line protocol of the TUF conformance suite "
            "(init, refresh, download; exit 0 on success, 1 on failure), running the update "
            "client's own code: python-tuf ngclient with durable metadata, the resumable "
            "fetcher and trusted time."
        ),
    )
    p.add_argument(
        "--metadata-dir",
        required=True,
        type=Path,
        metavar="DIR",
        help="the client's trusted metadata",
    )
    p.add_argument("--metadata-url", metavar="URL", help="the repository's metadata URL")
    p.add_argument("--target-name", metavar="NAME", help="download: the target path")
    p.add_argument("--target-base-url", metavar="URL", help="download: the targets URL")
    p.add_argument("--target-dir", type=Path, metavar="DIR", help="download: where to store it")
    commands = p.add_subparsers(dest="tuf_command", metavar="COMMAND")
    commands.required = True
    init = commands.add_parser("init", help="trust a root (no network)")
    init.add_argument("trusted_root", type=Path, metavar="TRUSTED_ROOT", help="root.json to trust")
    commands.add_parser("refresh", help="update the top-level metadata")
    commands.add_parser("download", help="refresh, then download and verify a target")
    p.set_defaults(handler=_tuf_client)


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _check(args: argparse.Namespace) -> int:
    from ota.target_info import ImageKind
    from ota.update_client import Slot, UpdateClient, UpdateClientConfig

    installed: dict[Slot, int] = {}
    for slot, number in args.installed:
        if not number.isascii() or not number.isdigit():
            raise UsageError(f"--installed {slot}={number}: not a whole number")
        key: Slot = (ImageKind.TBOX, None) if slot == "tbox" else (ImageKind.ECU, slot)
        installed[key] = int(number)
    config = UpdateClientConfig(
        vehicle_id=args.vehicle_id,
        hardware_id=args.hardware_id,
        ecus=dict(args.ecu),
        director_url=args.director,
        image_url=args.image,
        state_dir=args.state_dir,
        director_root=args.root_director,
        image_root=args.root_image,
    )
    client = UpdateClient(config, installed=installed)
    plan = client.check()
    paths = {}
    if args.download is not None:
        paths = {t.name: str(client.download(t, args.download / t.file_name)) for t in plan.targets}
    if args.json:
        data = plan.to_json()
        for target in data["targets"]:
            target["path"] = paths.get(target["name"])
        print(json.dumps(data, indent=2))
        return 0
    print(
        f"vehicle {plan.vehicle_id}: {len(plan.targets)} verified target(s) (director targets "
        f"v{plan.director_version}, image targets v{plan.image_version})"
    )
    for t in plan.targets:
        where = "T-box" if t.ecu_id is None else f"ECU {t.ecu_id}"
        print(
            f"  {t.name}  {t.length} bytes  sha256 {(t.sha256 or '?')[:16]}…  {where}  "
            f"release {t.release_counter}" + (f"  -> {paths[t.name]}" if t.name in paths else "")
        )
    return 0


def _tuf_client(args: argparse.Namespace) -> int:
    from ota import conformance_client

    command = args.tuf_command
    if command == "init":
        conformance_client.init(args.metadata_dir, args.trusted_root)
        return 0
    if args.metadata_url is None:
        raise UsageError(f"tuf-client {command} needs --metadata-url")
    if command == "refresh":
        conformance_client.refresh(args.metadata_dir, args.metadata_url)
        return 0
    missing = [
        option
        for option, value in (
            ("--target-name", args.target_name),
            ("--target-base-url", args.target_base_url),
            ("--target-dir", args.target_dir),
        )
        if value is None
    ]
    if missing:
        raise UsageError(f"tuf-client download needs {', '.join(missing)}")
    conformance_client.download(
        args.metadata_dir,
        args.metadata_url,
        target_name=args.target_name,
        target_base_url=args.target_base_url,
        target_dir=args.target_dir,
    )
    return 0

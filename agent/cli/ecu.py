"""``tbox ecu …``: simulated ECUs for the bench, and their firmware images.

* ``tbox ecu run --bus URL --ecu NAME[:REQID:RESPID] … --state-dir DIR [--trusted-key PUB]
  [--factory-image FILE …] [--fault [ECU:]NAME=VALUE …]`` — UDS bootloaders on a bus
  (:mod:`firmware_stub`), each ECU's flash kept in ``DIR/<name>/``; until Ctrl-C, SIGTERM or
  ``--duration``.
* ``tbox ecu info --bus URL --ecu NAME[:REQID:RESPID] … [--json]`` — what each ECU reports:
  active bank and version, both banks, fingerprint, VIN, hardware id, download in progress.
* ``tbox ecu image PAYLOAD -o OUT --version N --hardware-id HW --key PRIVATE`` — build and sign
  a firmware image (:mod:`ota.ecu_image`).
* ``tbox ecu keygen PRIVATE [--public PUB]`` — an Ed25519 key pair for signing images.
* ``tbox ecu inspect IMAGE [--trusted-key PUB] [--json]`` — an image's header; with a key, verify
  it.

Without ids, the n-th ``--ecu`` of a command gets 0x7E0+n / 0x7E8+n (``tbox ecu run`` prints
the ids it uses).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from agent.cli.sim import _handle, _non_negative, _positive_int, _Stopper
from agent.errors import UsageError

_PROG_RUN = "tbox ecu run"


def register(subparsers: Any) -> None:
    """Add ``tbox ecu`` and its subcommands."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ecu",
        help="simulated ECUs (UDS bootloaders) and their signed firmware images",
        description=(
            "Simulated ECUs for the bench: 'run' starts UDS bootloaders on a CAN bus, 'info' "
            "asks ECUs what they run; 'image' builds and signs a firmware image, 'keygen' makes "
            "a signing key pair, 'inspect' shows (and verifies) an image. 'tbox flash' flashes "
            "an image into an ECU."
        ),
    )
    sub = parser.add_subparsers(dest="ecu_command", metavar="SUBCOMMAND")
    sub.required = True
    _add_run(sub)
    _add_info(sub)
    _add_image(sub)
    _add_keygen(sub)
    _add_inspect(sub)


def add_ecu_option(parser: argparse.ArgumentParser, *, many: bool) -> None:
    """``--ecu NAME[:REQID:RESPID]`` (repeatable when *many*)."""
    help_text = (
        "an ECU: its name, and its request and response CAN ids in hex (default 0x7E0/0x7E8 "
        "for the first --ecu, 0x7E1/0x7E9 for the second, …)"
    )
    if many:
        parser.add_argument(
            "--ecu",
            action="append",
            required=True,
            metavar="NAME[:REQID:RESPID]",
            help=help_text + "; repeatable",
        )
    else:
        parser.add_argument("--ecu", required=True, metavar="NAME[:REQID:RESPID]", help=help_text)


def add_security_options(parser: argparse.ArgumentParser, *, secret_option: str) -> None:
    """The seed/key options both sides share (``--secret`` for the ECU, ``--key`` for tbox
    flash)."""
    from ota.ecu_flash import DEFAULT_SECURITY_LEVEL, SeedKeyAlgorithm

    parser.add_argument(
        secret_option,
        dest="secret",
        metavar="SECRET",
        help="the SecurityAccess secret: text, or hex:0011… (default: the simulated ECUs' "
        "bench secret)",
    )
    parser.add_argument(
        "--algorithm",
        choices=[a.value for a in SeedKeyAlgorithm],
        default=SeedKeyAlgorithm.HMAC_SHA256.value,
        help="how the key is computed from the seed (default hmac-sha256: HMAC-SHA256(secret, "
        "seed) truncated to 16 bytes)",
    )
    parser.add_argument(
        "--security-level",
        type=_level,
        default=DEFAULT_SECURITY_LEVEL,
        metavar="N",
        help=f"SecurityAccess level, odd (requestSeed); N+1 is sendKey (default "
        f"{DEFAULT_SECURITY_LEVEL})",
    )


def _level(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value % 2 != 1 or not 0 < value < 0x7F:
        raise argparse.ArgumentTypeError(f"{text!r}: the level must be odd, 1 … 0x7D")
    return value


def _byte_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20}
    factor = units.get(text[-1:].lower(), 1)
    number = text[:-1] if factor > 1 else text
    try:
        value = int(number, 0) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4M, 65536)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


# --- argument parsers --------------------------------------------------------------------------


def _add_run(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="run simulated ECUs (UDS bootloaders) on a bus",
        description=(
            "Run simulated ECUs on a CAN bus (bus URL: virtual://NAME in this process only, "
            "socketcand://HOST:PORT/CHANNEL from 'tbox sim serve --socketcand', socketcan://can0, "
            "…): UDS over ISO-TP with sessions, SecurityAccess, erase, download, check "
            "(SHA-256, Ed25519 against --trusted-key, hardware id, no downgrade), reset, DIDs, "
            "DTCs. Each ECU keeps two flash banks and their metadata in STATE_DIR/NAME/ and "
            "boots the valid bank with the highest version. Prints what happens on stderr; "
            "runs until Ctrl-C, SIGTERM or --duration."
        ),
    )
    p.add_argument("--bus", required=True, metavar="URL", help="the bus URL")
    add_ecu_option(p, many=True)
    p.add_argument(
        "--state-dir", required=True, type=Path, metavar="DIR", help="where ECUs keep their flash"
    )
    p.add_argument(
        "--trusted-key",
        type=Path,
        metavar="PUB",
        help="the Ed25519 public key (PEM) images must be signed with; without it every "
        "image is refused at the check",
    )
    p.add_argument(
        "--factory-image",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="an image that ECUs with its hardware id start with when their state is new "
        "(repeatable)",
    )
    p.add_argument(
        "--hardware-id",
        action="append",
        default=[],
        metavar="ECU=HW",
        help="an ECU's hardware id (default: its name); images must be built for it",
    )
    p.add_argument("--vin", default="TBOXSIM0000000001", help="the VIN the ECUs report")
    add_security_options(p, secret_option="--secret")
    p.add_argument(
        "--max-attempts",
        type=_positive_int,
        default=3,
        metavar="N",
        help="wrong keys before the lockout (default 3)",
    )
    p.add_argument(
        "--lockout",
        type=_non_negative,
        default=10.0,
        metavar="S",
        help="lockout delay after too many wrong keys (default 10)",
    )
    p.add_argument(
        "--s3",
        type=_non_negative,
        default=5.0,
        metavar="S",
        help="seconds without a request before a non-default session ends (default 5)",
    )
    p.add_argument(
        "--max-block-length",
        type=_block_length,
        default=4095,
        metavar="N",
        help="maximum TransferData request length the ECUs announce (default 4095)",
    )
    p.add_argument(
        "--bank-size",
        type=_byte_size,
        default="4M",
        metavar="BYTES",
        help="size of each flash bank (default 4M)",
    )
    p.add_argument(
        "--erase-time",
        type=_non_negative,
        default=0.2,
        metavar="S",
        help="simulated erase duration (default 0.2; response pending meanwhile)",
    )
    p.add_argument(
        "--check-time",
        type=_non_negative,
        default=0.0,
        metavar="S",
        help="extra simulated duration of the check (default 0)",
    )
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="[ECU:]NAME=VALUE",
        help="inject a fault: drop-response=SID@N, drop-rate=P, delay=S, power-cut-at-block=N, "
        "power-cut-at=STEP[:N], power-off=S, corrupt-block=N, boot-fails=VERSION (an image of "
        "that version crashes at start: the ECU marks it invalid and boots the other bank) "
        "(repeatable)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed for drop-rate (default 0)")
    p.add_argument("--duration", type=_non_negative, metavar="S", help="stop after S seconds")
    p.add_argument("--quiet", action="store_true", help="print only the start and the summary")
    p.set_defaults(handler=_handle(_run))


def _block_length(text: str) -> int:
    value = _positive_int(text)
    if not 3 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"{text!r} must be 3 … 65535")
    return value


def _add_info(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "info",
        help="print what ECUs report (versions, active bank, fingerprint)",
        description=(
            "Ask each ECU over UDS (ReadDataByIdentifier, default session) for its hardware id, "
            "VIN, active bank and version, both banks, fingerprint and the download in progress, "
            "and print them (one JSON object per ECU with --json)."
        ),
    )
    p.add_argument("--bus", required=True, metavar="URL", help="the bus URL")
    add_ecu_option(p, many=True)
    p.add_argument("--json", action="store_true", help="one JSON object per ECU")
    p.add_argument(
        "--timeout",
        type=_non_negative,
        default=1.0,
        metavar="S",
        help="response timeout per request (default 1)",
    )
    p.set_defaults(handler=_handle(_info))


def _add_image(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "image",
        help="build and sign a firmware image",
        description=(
            "Build a firmware image from PAYLOAD (any file): a 128-byte header (version, "
            "hardware id, payload SHA-256, signing key id), the payload, and an Ed25519 "
            "signature over the header. ECUs verify it against their trusted key and refuse a "
            "version lower than the one they run."
        ),
    )
    p.add_argument("payload", type=Path, metavar="PAYLOAD", help="the firmware payload")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT", help="image file")
    p.add_argument(
        "--version", required=True, type=_version, metavar="N", help="firmware version (0 … 2^63-1)"
    )
    p.add_argument(
        "--hardware-id", required=True, metavar="HW", help="the ECU hardware the image is for"
    )
    p.add_argument(
        "--key", required=True, type=Path, metavar="PRIVATE", help="Ed25519 private key (PEM)"
    )
    p.set_defaults(handler=_image)


def _version(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 … 2^63-1")
    return value


def _add_keygen(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "keygen",
        help="make an Ed25519 key pair for signing images",
        description=(
            "Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) to PRIVATE and its public "
            "key (PEM) to --public (default PRIVATE.pub). ECUs trust the public key "
            "('tbox ecu run --trusted-key'); 'tbox ecu image --key' signs with the private one."
        ),
    )
    p.add_argument("private", type=Path, metavar="PRIVATE", help="private key file to write")
    p.add_argument("--public", type=Path, metavar="PUB", help="public key file to write")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(handler=_keygen)


def _add_inspect(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="show an image's header; verify it with a public key",
        description=(
            "Print an image's version, hardware id, payload length and hashes and the key id "
            "that signed it. With --trusted-key, also verify the payload hash and the signature "
            "(exit 1 if they do not verify)."
        ),
    )
    p.add_argument("image", type=Path, metavar="IMAGE", help="the image file")
    p.add_argument("--trusted-key", type=Path, metavar="PUB", help="verify with this public key")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=_inspect)


# --- tbox ecu run ------------------------------------------------------------------------------


def _ecu_configs(args: argparse.Namespace) -> list[Any]:
    """Everything ``tbox ecu run`` was told, checked before anything is opened."""
    from firmware_stub import EcuConfig, ServerConfig, parse_faults
    from ota.ecu_flash import SeedKeyAlgorithm, parse_ecu_spec, parse_secret
    from ota.ecu_image import EcuImage, hardware_id_problem, load_public_key

    addresses = [parse_ecu_spec(text, i) for i, text in enumerate(args.ecu)]
    names = [a.name for a in addresses]
    hardware = {a.name: a.name for a in addresses}
    for text in args.hardware_id:
        ecu, sep, hw = text.partition("=")
        if not sep or ecu not in hardware:
            raise UsageError(
                f"--hardware-id {text!r}: write ECU=HW for one of the ECUs ({', '.join(names)})"
            )
        problem = hardware_id_problem(hw)
        if problem is not None:
            raise UsageError(f"--hardware-id {text!r}: {problem}")
        hardware[ecu] = hw
    for name, hw in hardware.items():
        if hardware_id_problem(hw) is not None:
            raise UsageError(f"ECU {name!r}: its name cannot serve as a hardware id (≤ 32 chars)")
    key = load_public_key(args.trusted_key) if args.trusted_key is not None else None
    factory: dict[str, bytes] = {}
    for path in args.factory_image:
        image = EcuImage.load(path)
        if key is not None:
            image.verify(key, source=str(path))
        matched = [n for n, hw in hardware.items() if hw == image.hardware_id]
        if not matched:
            raise UsageError(
                f"--factory-image {path}: built for {image.hardware_id!r}, which no ECU is"
            )
        for name in matched:
            factory[name] = image.data
    faults = parse_faults(args.fault, names)
    if len(args.vin) != 17 or not args.vin.isascii():
        raise UsageError(f"--vin {args.vin!r} must be 17 ASCII characters")
    secret = parse_secret(args.secret) if args.secret is not None else None
    configs = []
    for address in addresses:
        server = ServerConfig(
            hardware_id=hardware[address.name],
            vin=args.vin,
            algorithm=SeedKeyAlgorithm(args.algorithm),
            security_level=args.security_level,
            max_attempts=args.max_attempts,
            lockout_s=args.lockout,
            s3_s=args.s3,
            max_block_length=args.max_block_length,
        )
        if secret is not None:
            server = _with_secret(server, secret)
        if args.max_block_length + 128 > args.bank_size:
            raise UsageError("--bank-size is too small for a single block")
        configs.append(
            EcuConfig(
                address=address,
                server=server,
                bank_size=args.bank_size,
                trusted_key=key,
                erase_time_s=args.erase_time,
                check_time_s=args.check_time,
                faults=faults[address.name],
                factory_image=factory.get(address.name),
            )
        )
    return configs


def _with_secret(server: Any, secret: bytes) -> Any:
    import dataclasses

    return dataclasses.replace(server, secret=secret)


async def _run(args: argparse.Namespace, stopper: _Stopper) -> int:
    from agent.busurl import parse_bus_url
    from firmware_stub import EcuHost

    spec = parse_bus_url(args.bus)
    configs = _ecu_configs(args)

    def on_event(ecu: str, text: str) -> None:
        if not args.quiet:
            print(f"{_PROG_RUN}: {ecu}: {text}", file=sys.stderr, flush=True)

    async with EcuHost(
        spec, configs, state_dir=args.state_dir, on_event=on_event, seed=args.seed
    ) as host:
        if args.trusted_key is None:
            print(
                f"{_PROG_RUN}: warning: no --trusted-key: every image will be refused at the check",
                file=sys.stderr,
            )
        for ecu in host.ecus.values():
            report = ecu.boot_report
            running = (
                "no valid bank"
                if report is None or report.active is None
                else f"bank {report.active}, version {report.version}"
            )
            faults = " (faults on)" if ecu.config.faults.any else ""
            print(
                f"{_PROG_RUN}: {ecu.address.describe()} on {spec.url}: {running}{faults}",
                file=sys.stderr,
            )
        print(f"{_PROG_RUN}: ready", file=sys.stderr, flush=True)
        await stopper.until_stopped(_lifetime(host, args.duration))
    for ecu in host.ecus.values():
        s = ecu.stats
        print(
            f"{_PROG_RUN}: {ecu.name}: {s.requests} requests, {s.blocks} blocks written, "
            f"{s.pending_sent} response pending, {s.dropped} responses dropped, "
            f"{s.power_cuts} power cuts",
            file=sys.stderr,
        )
    return 0


async def _lifetime(host: Any, duration: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(duration):
            await host.wait()


# --- tbox ecu info -----------------------------------------------------------------------------


async def _info(args: argparse.Namespace, stopper: _Stopper) -> int:
    from agent.busurl import parse_bus_url
    from ota.ecu_flash import EcuFlasher, EcuInfo, FlashTiming, parse_ecu_spec

    spec = parse_bus_url(args.bus)
    addresses = [parse_ecu_spec(text, i) for i, text in enumerate(args.ecu)]
    timing = FlashTiming(p2=args.timeout or 1.0)
    results: list[EcuInfo] = []

    async def read_all() -> None:
        for address in addresses:
            results.append(await EcuFlasher(spec, address, timing=timing).read_info())

    if not await stopper.until_stopped(read_all()):
        return 1
    for info in results:
        if args.json:
            print(json.dumps(info.to_json()), flush=True)
        else:
            print(_describe(info), flush=True)
    return 0


def _describe(info: Any) -> str:
    from ota.ecu_flash import BankState

    active = info.active
    lines = [f"{info.ecu.describe()}  hardware {info.hardware_id}  VIN {info.vin}"]
    if active.bank is None:
        lines.append("  active: none (bootloader only)")
    else:
        lines.append(
            f"  active: bank {active.bank}, version {active.version}, sha256 {active.sha256.hex()}"
        )
    for i, bank in enumerate(info.banks):
        what = ""
        if bank.state is BankState.VALID:
            what = f"version {bank.version}"
        elif bank.state is BankState.INVALID and bank.version:
            what = f"(was version {bank.version})"
        lines.append(f"  bank {i}: {bank.state.name.lower()} {what}".rstrip())
    fingerprint = info.fingerprint.decode("ascii", "replace")
    lines.append(f"  fingerprint: {fingerprint if any(info.fingerprint) else '(none)'}")
    download = info.download
    if download.state is BankState.WRITING:
        lines.append(
            f"  download: bank {download.bank}, {download.written} of {download.length} bytes"
        )
    return "\n".join(lines)


# --- images and keys ---------------------------------------------------------------------------


def _image(args: argparse.Namespace) -> int:
    from ota.ecu_image import EcuImage, build_image, load_private_key, write_image
    from ota.errors import OtaIOError

    key = load_private_key(args.key)
    try:
        payload = args.payload.read_bytes()
    except OSError as e:
        raise OtaIOError(f"cannot read payload {args.payload}: {e.strerror or e}") from e
    data = build_image(payload, version=args.version, hardware_id=args.hardware_id, private_key=key)
    write_image(args.output, data)
    image = EcuImage.from_bytes(data)
    print(
        f"tbox ecu image: wrote {args.output}: version {image.version} for {image.hardware_id}, "
        f"{len(data)} bytes, sha256 {image.sha256.hex()}"
    )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from agent.durable_file import write_durably
    from ota.ecu_image import generate_key_pair
    from ota.errors import OtaIOError

    private_path: Path = args.private
    public_path: Path = args.public or private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists() and not args.force:
            raise UsageError(f"{path} exists (use --force to overwrite it)")
    private, public = generate_key_pair()
    try:
        write_durably(private_path, private, mode=0o600)
        write_durably(public_path, public)
    except OSError as e:
        raise OtaIOError(f"cannot write the key pair: {e.strerror or e}") from e
    print(f"tbox ecu keygen: wrote {private_path} (private, 0600) and {public_path} (public)")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from ota.ecu_image import EcuImage, load_public_key

    image = EcuImage.load(args.image)
    header = image.header
    verified: bool | None = None
    if args.trusted_key is not None:
        key = load_public_key(args.trusted_key)
        image.verify(key, source=str(args.image))  # raises: exit 1 with the defect
        verified = True
    description = {
        "version": header.version,
        "hardware_id": header.hardware_id,
        "payload_length": header.payload_length,
        "payload_sha256": header.payload_sha256.hex(),
        "sha256": image.sha256.hex(),
        "length": len(image.data),
        "key_id": header.key_id.hex(),
        "verified": verified,
    }
    if args.json:
        print(json.dumps(description))
    else:
        for name, value in description.items():
            if value is not None:
                print(f"{name:15} {value}")
    return 0

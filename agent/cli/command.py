"""``tbox command``: a backend's side of the command channel, for benches and scripts.

* ``tbox command keygen FILE`` writes an Ed25519 private key (PEM, mode 0600) and its public key
  (``FILE.pub``), which the agent trusts with ``[commands.trusted_keys] <id> = "FILE.pub"``.
* ``tbox command send --broker mqtt://HOST:PORT --vehicle-id ID --key FILE [--key-id ID] KIND
  [--body TEXT | --body-file FILE]`` signs a command, publishes it on
  ``vehicles/<id>/cmd/<kind>`` (QoS 1) and waits for its ``CommandResult``: it prints the result
  and exits 0 if the status is ``ok``, 1 otherwise (or when no result comes in ``--timeout``).
  ``--zstd`` compresses the body first (``ids-rules`` accepts that: a learned rule file is about
  ten times smaller, under the vehicle's command size limit).
  ``--watch-ota`` then prints the vehicle's ``ota/status`` events of that campaign until it ends
  (committed, rolled back or failed; exit 0 only for committed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from agent.cli.broker_args import parse_broker_url
from agent.errors import InputError, TboxError, UsageError

__all__ = ["register"]

_FINAL = ("STATE_COMMITTED", "STATE_ROLLED_BACK", "STATE_FAILED")


def register(subparsers: Any) -> None:
    """Add ``tbox command``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "command",
        help="sign and send a command to a vehicle, or make a signing key (bench)",
        description="The backend's side of the command channel, for benches and scripts.",
    )
    sub = parser.add_subparsers(dest="command_command", metavar="COMMAND")
    sub.required = True
    keygen: argparse.ArgumentParser = sub.add_parser(
        "keygen", help="write an Ed25519 signing key and its public key (FILE.pub)"
    )
    keygen.add_argument("file", type=Path, metavar="FILE")
    keygen.set_defaults(handler=_keygen)
    send: argparse.ArgumentParser = sub.add_parser(
        "send",
        help="sign, publish and wait for the result",
        description=(
            "Sign a command with --key, publish it on vehicles/<id>/cmd/<KIND> and print the "
            "vehicle's result (exit 0 when it is ok)."
        ),
    )
    send.add_argument("kind", metavar="KIND", help="schemes, state, ping, ota, …")
    send.add_argument("--broker", required=True, metavar="mqtt://HOST:PORT")
    send.add_argument("--vehicle-id", required=True, metavar="ID")
    send.add_argument("--key", required=True, type=Path, metavar="FILE", help="private key (PEM)")
    send.add_argument("--key-id", default="ops", help="the id the vehicle trusts it as (ops)")
    body = send.add_mutually_exclusive_group()
    body.add_argument("--body", default="", help="the body as text")
    body.add_argument("--body-file", type=Path, metavar="FILE", help="the body from a file")
    send.add_argument(
        "--zstd", action="store_true", help="compress the body with zstd (for ids-rules)"
    )
    send.add_argument("--timeout", type=float, default=30.0, metavar="S", help="default 30")
    send.add_argument(
        "--watch-ota",
        action="store_true",
        help="then print the campaign's ota/status events until it ends",
    )
    send.set_defaults(handler=_send)


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        fd = os.open(args.file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{args.file} exists: not overwriting a key") from None
    except OSError as e:
        raise InputError(f"{args.file}: cannot create: {e.strerror or e}") from e
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    Path(f"{args.file}.pub").write_bytes(public)
    print(f"{args.file} (private, 0600) and {args.file}.pub (trust it in [commands.trusted_keys])")
    return 0


def _send(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    host, port = parse_broker_url(args.broker)
    try:
        key = load_pem_private_key(args.key.read_bytes(), password=None)
    except OSError as e:
        raise InputError(f"{args.key}: cannot read: {e.strerror or e}") from e
    except (ValueError, TypeError) as e:
        raise InputError(f"{args.key}: not an unencrypted PEM private key ({e})") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise InputError(f"{args.key}: not an Ed25519 key")
    if args.body_file is not None:
        try:
            body = args.body_file.read_bytes()
        except OSError as e:
            raise InputError(f"{args.body_file}: cannot read: {e.strerror or e}") from e
    else:
        body = args.body.encode()
    if args.zstd:
        import zstandard

        body = zstandard.ZstdCompressor(level=19).compress(body)
    return asyncio.run(_exchange(args, host, port, key, body))


async def _exchange(args: argparse.Namespace, host: str, port: int, key: Any, body: bytes) -> int:
    import aiomqtt

    from agent.commands import make_command, sign_command
    from agent.proto.tbox.v1 import CommandResult, OtaStatus

    prefix = f"vehicles/{args.vehicle_id}/"
    command = make_command(args.kind, body, vehicle_id=args.vehicle_id)
    try:
        async with aiomqtt.Client(host, port) as client:
            await client.subscribe(prefix + f"cmd/{args.kind}/result", qos=1)
            if args.watch_ota:
                await client.subscribe(prefix + "ota/status", qos=1)
            await client.publish(
                prefix + f"cmd/{args.kind}", sign_command(key, args.key_id, command), qos=1
            )
            async with asyncio.timeout(args.timeout):
                async for message in client.messages:
                    payload = message.payload
                    if message.topic.matches(prefix + "ota/status"):
                        status = OtaStatus.FromString(payload)
                        if status.correlation_id != command.command_id:
                            continue
                        state = OtaStatus.State.Name(status.state)
                        print(
                            f"ota {status.target or 'host'}: {state[6:].lower()}: {status.detail}"
                        )
                        if status.target in ("", "host") and state in _FINAL:
                            return 0 if state == "STATE_COMMITTED" else 1
                        continue
                    result = CommandResult.FromString(payload)
                    if result.command_id != command.command_id:
                        continue
                    status_name = (
                        CommandResult.Status.Name(result.status).removeprefix("STATUS_").lower()
                    )
                    code = f" ({result.error_code})" if result.error_code else ""
                    print(f"{args.kind}: {status_name}{code}: {result.message}")
                    ok = result.status == CommandResult.STATUS_OK
                    if not (ok and args.watch_ota):
                        return 0 if ok else 1
    except TimeoutError:
        what = "the campaign to end" if args.watch_ota else "a result"
        raise TboxError(
            f"no answer from vehicle {args.vehicle_id}: waited {args.timeout:g} s for {what}"
        ) from None
    except aiomqtt.MqttError as e:
        raise TboxError(f"broker {host}:{port}: {e}") from e
    print("the broker closed the connection", file=sys.stderr)
    return 1

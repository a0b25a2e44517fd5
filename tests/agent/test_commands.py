"""Signed commands (C5): every rejection, replay protection, results, signing and key files."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.commands import (
    SIGNING_CONTEXT,
    CommandRejected,
    CommandVerifier,
    RejectionCode,
    VerifiedCommand,
    command_topic,
    key_id_of,
    load_private_key,
    load_public_key,
    load_trusted_keys,
    make_command,
    result_payload,
    result_topic,
    sign_command,
)
from agent.errors import InputError, UsageError
from agent.proto.tbox.v1 import Command, CommandResult, SignedCommand

VIN = "VIN-1"
NOW = 1_700_000_000.0
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TOPIC = command_topic(VIN, "schemes")


class Clock:
    """A settable clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _verifier(clock: Clock | None = None, **options: Any) -> CommandVerifier:
    return CommandVerifier({"ops-1": KEY.public_key()}, VIN, clock=clock or Clock(), **options)


def _command(**fields: object) -> Command:
    command = make_command(
        "schemes", b"scheme text", vehicle_id=VIN, command_id="c-1", issued_time=NOW - 10
    )
    for name, value in fields.items():
        setattr(command, name, value)
    return command


def _signed(
    command: Command | None = None, *, key: Ed25519PrivateKey = KEY, key_id: str = "ops-1"
) -> bytes:
    return sign_command(key, key_id, command or _command())


def test_a_valid_command_is_verified() -> None:
    verified = _verifier().verify(TOPIC, _signed())
    assert verified == VerifiedCommand(
        kind="schemes",
        command_id="c-1",
        vehicle_id=VIN,
        issued_time=NOW - 10,
        expiry_time=NOW + 290,
        body=b"scheme text",
        key_id="ops-1",
    )


def test_the_signature_covers_the_context_and_the_command_bytes() -> None:
    signed = SignedCommand.FromString(_signed())
    KEY.public_key().verify(signed.signature, SIGNING_CONTEXT + signed.command)
    # Signing the bare command bytes (no context) is not accepted.
    bare = SignedCommand(
        command=signed.command, signature=KEY.sign(signed.command), key_id="ops-1"
    ).SerializeToString()
    with pytest.raises(CommandRejected) as caught:
        _verifier().verify(TOPIC, bare)
    assert caught.value.code == RejectionCode.BAD_SIGNATURE


def _tamper_signature(payload: bytes) -> bytes:
    signed = SignedCommand.FromString(payload)
    signed.signature = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    return signed.SerializeToString()


def _tamper_command(payload: bytes) -> bytes:
    signed = SignedCommand.FromString(payload)
    command = Command.FromString(signed.command)
    command.body = b"something else"
    signed.command = command.SerializeToString()
    return signed.SerializeToString()


def _sign_raw(command_bytes: bytes) -> bytes:
    return SignedCommand(
        command=command_bytes, signature=KEY.sign(SIGNING_CONTEXT + command_bytes), key_id="ops-1"
    ).SerializeToString()


# Each case: (code, topic, payload factory, verifier options, claimed command id in the error).
CASES: list[tuple[RejectionCode, str, Callable[[], bytes], dict[str, Any], str]] = [
    (RejectionCode.BAD_TOPIC, "vehicles/VIN-2/cmd/schemes", _signed, {}, ""),
    (RejectionCode.BAD_TOPIC, command_topic(VIN, "a/b"), _signed, {}, ""),
    (RejectionCode.BAD_TOPIC, result_topic(VIN, "schemes"), _signed, {}, ""),
    (
        RejectionCode.TOO_LARGE,
        TOPIC,
        lambda: _signed(_command(body=b"x" * 5000)),
        {"max_bytes": 4096},
        "",
    ),
    (RejectionCode.NOT_SIGNED_COMMAND, TOPIC, lambda: b"\xff\xff\xff", {}, ""),
    (RejectionCode.NOT_SIGNED_COMMAND, TOPIC, lambda: b"", {}, ""),
    (
        RejectionCode.NOT_SIGNED_COMMAND,
        TOPIC,
        lambda: SignedCommand(command=b"x", key_id="ops-1").SerializeToString(),
        {},
        "",
    ),
    (RejectionCode.UNKNOWN_KEY, TOPIC, lambda: _signed(key_id="ops-9"), {}, "c-1"),
    (RejectionCode.BAD_SIGNATURE, TOPIC, lambda: _signed(key=OTHER_KEY), {}, "c-1"),
    (RejectionCode.BAD_SIGNATURE, TOPIC, lambda: _tamper_signature(_signed()), {}, "c-1"),
    (RejectionCode.BAD_SIGNATURE, TOPIC, lambda: _tamper_command(_signed()), {}, "c-1"),
    (
        RejectionCode.BAD_SIGNATURE,
        TOPIC,
        lambda: SignedCommand(
            command=b"\x12\x01x", signature=b"short", key_id="ops-1"
        ).SerializeToString(),
        {},
        "x",
    ),
    (RejectionCode.MALFORMED_COMMAND, TOPIC, lambda: _sign_raw(b"\xff\xff"), {}, ""),
    (RejectionCode.MALFORMED_COMMAND, TOPIC, lambda: _signed(_command(command_id="")), {}, ""),
    (
        RejectionCode.MALFORMED_COMMAND,
        TOPIC,
        lambda: _signed(_command(command_id="x" * 129)),
        {},
        "x" * 128,
    ),
    (RejectionCode.MALFORMED_COMMAND, TOPIC, lambda: _signed(_command(vehicle_id="")), {}, "c-1"),
    (RejectionCode.MALFORMED_COMMAND, TOPIC, lambda: _signed(_command(kind="")), {}, "c-1"),
    (
        RejectionCode.MALFORMED_COMMAND,
        TOPIC,
        lambda: _signed(_command(issued_time_us=0)),
        {},
        "c-1",
    ),
    (
        RejectionCode.MALFORMED_COMMAND,
        TOPIC,
        lambda: _signed(_command(expiry_time_us=int((NOW - 10) * 1e6))),
        {},
        "c-1",
    ),
    (RejectionCode.WRONG_VEHICLE, TOPIC, lambda: _signed(_command(vehicle_id="VIN-2")), {}, "c-1"),
    (RejectionCode.KIND_MISMATCH, TOPIC, lambda: _signed(_command(kind="ota")), {}, "c-1"),
    (
        RejectionCode.NOT_YET_VALID,
        TOPIC,
        lambda: _signed(
            make_command("schemes", b"", vehicle_id=VIN, command_id="c-1", issued_time=NOW + 301)
        ),
        {},
        "c-1",
    ),
    (
        RejectionCode.EXPIRED,
        TOPIC,
        lambda: _signed(
            make_command(
                "schemes",
                b"",
                vehicle_id=VIN,
                command_id="c-1",
                issued_time=NOW - 1000,
                lifetime=699,
            )
        ),
        {},
        "c-1",
    ),
    (
        RejectionCode.LIFETIME_TOO_LONG,
        TOPIC,
        lambda: _signed(
            make_command(
                "schemes", b"", vehicle_id=VIN, command_id="c-1", issued_time=NOW, lifetime=3601
            )
        ),
        {"max_lifetime": 3600},
        "c-1",
    ),
]


@pytest.mark.parametrize(("code", "topic", "payload", "options", "claimed_id"), CASES)
def test_every_rejection_reason(
    code: RejectionCode,
    topic: str,
    payload: Callable[[], bytes],
    options: dict[str, Any],
    claimed_id: str,
) -> None:
    with pytest.raises(CommandRejected) as caught:
        _verifier(**options).verify(topic, payload())
    error = caught.value
    assert error.code == code
    assert isinstance(error, InputError)
    assert error.command_id == claimed_id
    assert str(code) in str(error)
    assert error.message


def test_the_cases_cover_every_code() -> None:
    covered = {case[0] for case in CASES} | {RejectionCode.REPLAYED}  # replay: tests below
    assert covered == set(RejectionCode)


def test_skew_is_tolerated_on_both_ends() -> None:
    clock = Clock()
    verifier = _verifier(clock)
    early = make_command("schemes", b"", vehicle_id=VIN, command_id="a", issued_time=NOW + 299)
    verifier.verify(TOPIC, _signed(early))
    late = make_command(
        "schemes", b"", vehicle_id=VIN, command_id="b", issued_time=NOW - 400, lifetime=120
    )
    verifier.verify(TOPIC, _signed(late))


def test_a_replayed_command_is_rejected() -> None:
    verifier = _verifier()
    payload = _signed()
    verifier.verify(TOPIC, payload)
    with pytest.raises(CommandRejected) as caught:
        verifier.verify(TOPIC, payload)
    assert caught.value.code == RejectionCode.REPLAYED
    assert caught.value.command_id == "c-1"


def test_rejected_commands_do_not_take_their_id() -> None:
    verifier = _verifier()
    with pytest.raises(CommandRejected):
        verifier.verify(TOPIC, _signed(_command(vehicle_id="VIN-2")))
    verifier.verify(TOPIC, _signed())  # same id, now valid: accepted


def test_forgotten_ids_leave_a_floor_that_still_refuses_replays() -> None:
    clock = Clock()
    verifier = _verifier(clock, remember=2)
    payloads = [
        _signed(
            make_command(
                "schemes", b"", vehicle_id=VIN, command_id=f"c{i}", issued_time=NOW - 100 + i
            )
        )
        for i in range(3)
    ]
    for payload in payloads:
        verifier.verify(TOPIC, payload)
    # c0 was forgotten to make room for c2, but it was issued at or before the floor.
    for payload in payloads:
        with pytest.raises(CommandRejected) as caught:
            verifier.verify(TOPIC, payload)
        assert caught.value.code == RejectionCode.REPLAYED
    older = make_command("schemes", b"", vehicle_id=VIN, command_id="late", issued_time=NOW - 200)
    with pytest.raises(CommandRejected, match="oldest command still remembered"):
        verifier.verify(TOPIC, _signed(older))


def test_expired_ids_are_forgotten_without_raising_the_floor() -> None:
    clock = Clock()
    verifier = _verifier(clock, remember=2)
    for i in range(2):
        verifier.verify(
            TOPIC,
            _signed(
                make_command(
                    "schemes",
                    b"",
                    vehicle_id=VIN,
                    command_id=f"old{i}",
                    issued_time=NOW,
                    lifetime=60,
                )
            ),
        )
    clock.now += 1000  # both expired (beyond the skew): making room forgets them
    newer = make_command(
        "schemes", b"", vehicle_id=VIN, command_id="new", issued_time=clock.now - 50
    )
    verifier.verify(TOPIC, _signed(newer))
    second = make_command(
        "schemes", b"", vehicle_id=VIN, command_id="new2", issued_time=clock.now - 60
    )
    verifier.verify(TOPIC, _signed(second))  # no floor was set, so an earlier issue time is fine


def test_own_results_and_foreign_topics_are_not_command_topics() -> None:
    verifier = _verifier()
    assert verifier.kind_of(TOPIC) == "schemes"
    assert verifier.kind_of(result_topic(VIN, "schemes")) is None
    assert verifier.kind_of("vehicles/VIN-2/cmd/schemes") is None
    assert verifier.kind_of("vehicles/VIN-1/telemetry") is None
    assert result_topic(VIN, "ota") == "vehicles/VIN-1/cmd/ota/result"


def test_vehicle_id_must_be_one_topic_level() -> None:
    with pytest.raises(ValueError, match="topic level"):
        CommandVerifier({}, "a/b")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20_000))
def test_random_bytes_only_ever_give_command_rejected(payload: bytes) -> None:
    with pytest.raises(CommandRejected):
        _verifier().verify(TOPIC, payload)


VALID = _signed()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(VALID) - 1), st.integers(1, 255), st.binary(max_size=8))
def test_tampered_payloads_are_rejected(index: int, flip: int, tail: bytes) -> None:
    tampered = bytearray(VALID)
    tampered[index] ^= flip
    with pytest.raises(CommandRejected):
        _verifier().verify(TOPIC, bytes(tampered) + tail)


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        Command,
        kind=st.text(max_size=70),
        command_id=st.text(max_size=130),
        issued_time_us=st.integers(-(2**63), 2**63 - 1),
        expiry_time_us=st.integers(-(2**63), 2**63 - 1),
        vehicle_id=st.sampled_from([VIN, "", "VIN-2"]),
        body=st.binary(max_size=50),
    )
)
def test_any_signed_command_is_verified_or_rejected(command: Command) -> None:
    try:
        verified = _verifier().verify(TOPIC, _signed(command))
    except CommandRejected:
        return
    assert verified.command_id == command.command_id
    assert verified.kind == "schemes"


def test_result_payload_round_trips() -> None:
    try:
        _verifier().verify(TOPIC, _signed(key=OTHER_KEY))
    except CommandRejected as e:
        payload = result_payload(
            vehicle_id=VIN,
            sequence=77,
            command_id=e.command_id,
            kind=e.kind,
            status="rejected",
            error_code=e.code,
            message=e.message + "!" * 2000,
            created_time=NOW,
        )
    result = CommandResult.FromString(payload)
    assert result.vehicle_id == VIN
    assert result.sequence == 77
    assert result.schema_version == 1
    assert result.time_us == NOW * 1_000_000
    assert result.command_id == "c-1"
    assert result.kind == "schemes"
    assert result.status == CommandResult.STATUS_REJECTED
    assert result.error_code == "bad_signature"
    assert len(result.message) == 1000
    ok = CommandResult.FromString(
        result_payload(
            vehicle_id=VIN, sequence=78, command_id="c-2", kind="ota", status="ok", created_time=NOW
        )
    )
    assert ok.status == CommandResult.STATUS_OK
    assert ok.error_code == ""


def test_make_command_defaults() -> None:
    a = make_command("diag", b"", vehicle_id=VIN)
    b = make_command("diag", b"", vehicle_id=VIN)
    assert a.command_id != b.command_id
    assert a.expiry_time_us - a.issued_time_us == 300_000_000
    with pytest.raises(ValueError, match="lifetime"):
        make_command("diag", b"", vehicle_id=VIN, lifetime=0)


# --------------------------------------------------------------------------------------------
# Key files


def _public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_public_forms(tmp_path: Path) -> dict[str, Path]:
    public = KEY.public_key()
    raw = _public_bytes(public)
    forms = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "der": public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "ssh": public.public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        + b" ops\n",
        "raw": raw,
        "hex": raw.hex().encode() + b"\n",
        "b64": base64.b64encode(raw) + b"\n",
    }
    paths = {}
    for name, data in forms.items():
        paths[name] = tmp_path / f"key.{name}"
        paths[name].write_bytes(data)
    return paths


def test_public_keys_load_in_every_form(tmp_path: Path) -> None:
    expected = _public_bytes(KEY.public_key())
    paths = _write_public_forms(tmp_path)
    for path in paths.values():
        assert _public_bytes(load_public_key(path)) == expected
    trusted = load_trusted_keys({"ops-1": paths["pem"], "ops-2": str(paths["hex"])})
    verifier = CommandVerifier(trusted, VIN, clock=Clock())
    assert verifier.verify(TOPIC, _signed()).key_id == "ops-1"


def test_private_keys_load_and_sign(tmp_path: Path) -> None:
    forms = {
        "pem": KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "ssh": KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        "der": KEY.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        "raw": bytes(range(32)),
        "hex": bytes(range(32)).hex().encode(),
    }
    for name, data in forms.items():
        path = tmp_path / f"private.{name}"
        path.write_bytes(data)
        loaded = load_private_key(path)
        assert _public_bytes(loaded.public_key()) == _public_bytes(KEY.public_key()), name


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a key at all", "not an Ed25519 public key"),
        (b"", "not an Ed25519 public key"),
        (
            X25519PrivateKey.from_private_bytes(bytes(32))
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "holds a X25519PublicKey",
        ),
        (
            KEY.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "holds a private key",
        ),
        (
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            "not an Ed25519 public key",
        ),
    ],
)
def test_bad_public_key_files_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as caught:
        load_public_key(path)
    assert str(path) in str(caught.value)


def test_missing_and_unreadable_key_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"public key file .*nope\.pem does not exist"):
        load_public_key(tmp_path / "nope.pem")
    with pytest.raises(InputError, match="cannot read"):
        load_public_key(tmp_path)  # a directory
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"garbage")
    with pytest.raises(InputError, match=rf"private key file {bad}: not an unencrypted Ed25519"):
        load_private_key(bad)
    encrypted = tmp_path / "enc.pem"
    encrypted.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(InputError, match=r"enc\.pem"):
        load_private_key(encrypted)


def test_key_id_of_is_stable() -> None:
    key_id = key_id_of(KEY.public_key())
    assert len(key_id) == 16
    assert key_id == key_id_of(Ed25519PrivateKey.from_private_bytes(bytes(range(32))).public_key())
    assert key_id != key_id_of(OTHER_KEY.public_key())

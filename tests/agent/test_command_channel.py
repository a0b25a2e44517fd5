"""The command channel: every message gets exactly one result, nothing a sender does ends it."""

from __future__ import annotations

import asyncio

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.command_channel import CommandChannel, CommandFailed
from agent.commands import CommandVerifier, VerifiedCommand, make_command, sign_command
from agent.errors import InputError
from agent.proto.tbox.v1 import CommandResult
from agent.uplink import IncomingMessage

VEHICLE = "VIN-C1"
KEY = Ed25519PrivateKey.generate()


class Sink:
    def __init__(self) -> None:
        self.sent: list[tuple[str, CommandResult]] = []
        self._sequence = 0

    def next_sequence(self) -> int:
        self._sequence += 1
        return self._sequence

    def publish_soon(
        self, suffix: str, payload: bytes, *, retain: bool = False, key: str | None = None
    ) -> None:
        assert not retain and key is None
        self.sent.append((suffix, CommandResult.FromString(payload)))


def _message(kind: str, body: bytes = b"", *, key: Ed25519PrivateKey = KEY) -> IncomingMessage:
    command = make_command(kind, body, vehicle_id=VEHICLE, command_id=f"id-{kind}")
    return IncomingMessage(f"vehicles/{VEHICLE}/cmd/{kind}", sign_command(key, "ops", command))


async def _ok(command: VerifiedCommand) -> str:
    return f"done {command.body.decode()}"


async def _refuse(command: VerifiedCommand) -> str:
    raise CommandFailed("busy", "an update is running")


async def _bad_input(command: VerifiedCommand) -> str:
    raise InputError("line 3: no such key")


async def _crash(command: VerifiedCommand) -> str:
    raise ZeroDivisionError("boom")


async def _hang(command: VerifiedCommand) -> str:
    await asyncio.sleep(10)
    return "never"


def _channel(sink: Sink) -> CommandChannel:
    verifier = CommandVerifier({"ops": KEY.public_key()}, VEHICLE)
    handlers = {"ok": _ok, "refuse": _refuse, "bad": _bad_input, "crash": _crash, "hang": _hang}
    return CommandChannel(verifier, handlers, sink, handler_timeout_s=0.2)


@pytest.mark.parametrize(
    ("kind", "status", "code", "message"),
    [
        ("ok", CommandResult.STATUS_OK, "", "done x"),
        ("refuse", CommandResult.STATUS_FAILED, "busy", "an update is running"),
        ("bad", CommandResult.STATUS_FAILED, "invalid_body", "line 3: no such key"),
        ("crash", CommandResult.STATUS_FAILED, "internal_error", "ZeroDivisionError: boom"),
        ("hang", CommandResult.STATUS_FAILED, "timeout", "not done within 0.2 s"),
        ("nope", CommandResult.STATUS_REJECTED, "unsupported_kind", "no handler for commands"),
    ],
)
async def test_each_outcome_is_one_result(kind: str, status: int, code: str, message: str) -> None:
    sink = Sink()
    await _channel(sink).handle(_message(kind, b"x"))
    [(suffix, result)] = sink.sent
    assert suffix == f"cmd/{kind}/result"
    assert (result.status, result.error_code) == (status, code)
    assert message in result.message
    assert result.command_id == f"id-{kind}" and result.vehicle_id == VEHICLE
    assert result.sequence == 1


async def test_rejections_are_counted_by_code_and_results_ignored() -> None:
    sink = Sink()
    channel = _channel(sink)
    await channel.handle(_message("ok", key=Ed25519PrivateKey.generate()))
    await channel.handle(_message("ok"))
    await channel.handle(_message("ok"))  # the same command id again: a replay
    await channel.handle(IncomingMessage(f"vehicles/{VEHICLE}/cmd/ok/result", b"anything"))
    await channel.handle(IncomingMessage(f"vehicles/{VEHICLE}/cmd/ok", b"\xff" * 40))
    codes = [r.error_code for _, r in sink.sent]
    assert codes == ["bad_signature", "", "replayed", "not_signed_command"]
    stats = channel.stats
    assert (stats.received, stats.accepted, stats.rejected, stats.ignored) == (4, 1, 3, 1)
    assert stats.by_code == {"bad_signature": 1, "replayed": 1, "not_signed_command": 1}


async def test_run_serves_until_cancelled() -> None:
    sink = Sink()
    channel = _channel(sink)
    inbox: asyncio.Queue[IncomingMessage] = asyncio.Queue()

    async def messages():  # type: ignore[no-untyped-def]
        while True:
            yield await inbox.get()

    task = asyncio.create_task(channel.run(messages))
    await inbox.put(_message("ok", b"1"))
    await inbox.put(_message("crash"))
    async with asyncio.timeout(5):
        while len(sink.sent) < 2:  # noqa: ASYNC110 - the channel has no event to await
            await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [r.status for _, r in sink.sent] == [
        CommandResult.STATUS_OK,
        CommandResult.STATUS_FAILED,
    ]


@settings(max_examples=200, deadline=None)
@given(
    topic=st.one_of(
        st.text(max_size=60),
        st.builds(lambda k: f"vehicles/{VEHICLE}/cmd/{k}", st.text(max_size=20)),
    ),
    payload=st.binary(max_size=300),
)
def test_arbitrary_messages_never_raise(topic: str, payload: bytes) -> None:
    sink = Sink()
    channel = _channel(sink)
    asyncio.run(channel.handle(IncomingMessage(topic, payload)))
    assert len(sink.sent) <= 1
    assert all(r.status == CommandResult.STATUS_REJECTED for _, r in sink.sent)

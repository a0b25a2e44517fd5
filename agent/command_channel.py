"""The command channel: signed commands from ``vehicles/<id>/cmd/<kind>`` to their handlers.

:class:`CommandChannel` reads what the uplink receives on its ``cmd/#`` subscription, has each
message checked by :class:`~agent.commands.CommandVerifier` (size, signature, vehicle, validity
window, replay), runs the handler registered for the command's kind and publishes one
``tbox.v1.CommandResult`` on ``cmd/<kind>/result``:

* ``ok`` — the handler ran; its return value is the result's message;
* ``rejected`` — the verifier refused the command (``error_code`` is its
  :class:`~agent.commands.RejectionCode`), or no handler serves the kind (``unsupported_kind``);
* ``failed`` — the handler raised :class:`CommandFailed` (its code) or an input error
  (``invalid_body``), an unexpected error (``internal_error``), or overran its time
  (``timeout``).

Nothing a sender puts in a message ends the channel: every outcome is a result and a log line.
Messages on topics that are not command topics (our own results, delivered back by a broker that
ignores MQTT 5's "no local") are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

from agent.commands import CommandRejected, CommandVerifier, VerifiedCommand, result_payload
from agent.errors import InputError
from agent.uplink import IncomingMessage

__all__ = ["CommandChannel", "CommandFailed", "CommandHandler", "CommandStats", "ResultSink"]

log = logging.getLogger(__name__)

#: How long one handler may run before its command is reported as failed.
DEFAULT_HANDLER_TIMEOUT_S: Final = 60.0

#: A handler: takes a verified command, returns the result's message or raises.
CommandHandler = Callable[[VerifiedCommand], Awaitable[str]]


class CommandFailed(Exception):  # noqa: N818 - an outcome a handler reports, not a program error
    """Raised by a handler when a verified command could not be carried out."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ResultSink(Protocol):
    """Where results go: the uplink's side channel."""

    def next_sequence(self) -> int:
        """A number from the vehicle's message sequence."""
        ...

    def publish_soon(
        self, suffix: str, payload: bytes, *, retain: bool = False, key: str | None = None
    ) -> None:
        """Publish *payload* under the vehicle's topic prefix when the link is up."""
        ...


@dataclass(slots=True)
class CommandStats:
    """Counters since start: messages received, and their outcomes (rejections by code)."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    ignored: int = 0
    by_code: Counter[str] = field(default_factory=Counter)


class CommandChannel:
    """Verifies and dispatches commands; :meth:`run` serves until cancelled."""

    def __init__(
        self,
        verifier: CommandVerifier,
        handlers: Mapping[str, CommandHandler],
        results: ResultSink,
        *,
        handler_timeout_s: float = DEFAULT_HANDLER_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.stats = CommandStats()
        self._verifier = verifier
        self._handlers = dict(handlers)
        self._results = results
        self._timeout = handler_timeout_s
        self._clock = clock

    async def run(self, messages: Callable[[], AsyncIterator[IncomingMessage]]) -> None:
        """Handle every message from ``messages()`` (the uplink's) one at a time."""
        async for message in messages():
            await self.handle(message)

    async def handle(self, message: IncomingMessage) -> None:
        """Verify, run and answer one message; never raises for anything the sender did."""
        if self._verifier.kind_of(message.topic) is None:
            self.stats.ignored += 1
            return
        self.stats.received += 1
        try:
            command = self._verifier.verify(message.topic, message.payload)
        except CommandRejected as e:
            log.warning("command on %s: %s", message.topic, e)
            self._answer(e.kind, e.command_id, "rejected", str(e.code), e.message)
            return
        handler = self._handlers.get(command.kind)
        if handler is None:
            kinds = ", ".join(sorted(self._handlers)) or "none"
            problem = f"no handler for commands of kind {command.kind!r} (supported: {kinds})"
            log.warning("command %s: %s", command.command_id, problem)
            self._answer(command.kind, command.command_id, "rejected", "unsupported_kind", problem)
            return
        try:
            async with asyncio.timeout(self._timeout):
                detail = await handler(command)
        except CommandFailed as e:
            self._fail(command, e.code, e.message)
        except InputError as e:
            self._fail(command, "invalid_body", str(e))
        except TimeoutError:
            self._fail(command, "timeout", f"not done within {self._timeout:g} s")
        except Exception as e:
            log.exception("command %s (%s): handler failed", command.command_id, command.kind)
            self._fail(command, "internal_error", f"{type(e).__name__}: {e}")
        else:
            log.info("command %s (%s): %s", command.command_id, command.kind, detail)
            self._answer(command.kind, command.command_id, "ok", "", detail)

    def _fail(self, command: VerifiedCommand, code: str, message: str) -> None:
        log.warning(
            "command %s (%s) failed: %s: %s", command.command_id, command.kind, code, message
        )
        self._answer(command.kind, command.command_id, "failed", code, message)

    def _answer(
        self,
        kind: str,
        command_id: str,
        status: Literal["ok", "rejected", "failed"],
        code: str,
        message: str,
    ) -> None:
        if status == "ok":
            self.stats.accepted += 1
        elif status == "rejected":
            self.stats.rejected += 1
            self.stats.by_code[code] += 1
        else:
            self.stats.failed += 1
            self.stats.by_code[code] += 1
        payload = result_payload(
            vehicle_id=self._verifier.vehicle_id,
            sequence=self._results.next_sequence(),
            command_id=command_id,
            kind=kind,
            status=status,
            error_code=code,
            message=message,
            created_time=self._clock(),
        )
        self._results.publish_soon(f"cmd/{kind}/result", payload)

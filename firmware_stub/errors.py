"""The exception hierarchy of :mod:`firmware_stub`, split by who is at fault.

* :class:`EcuConfigError` — the operator configured a simulated ECU wrongly (a bad ``--ecu`` or
  ``--fault``, two ECUs sharing an id, a bank too small); exit status 2.
* :class:`FlashStateError` — an ECU's state directory is unusable: the metadata file is
  malformed, was made with another bank size, or another process holds it; exit status 1. The
  message names the file.
* :class:`FlashIOError` — the file system failed while the ECU persisted something; the ECU
  answers the request with NRC 0x72 (generalProgrammingFailure).

:class:`PowerCut` is not an error: it is how an in-process power cut (fault injection) unwinds
a persistence step, and :class:`~firmware_stub.ecu.SimulatedEcu` turns it into an ECU that is
off for a while and then boots from what was persisted.
"""

from __future__ import annotations

from agent.errors import InputError, TboxError, UsageError

__all__ = ["EcuConfigError", "FirmwareStubError", "FlashIOError", "FlashStateError", "PowerCut"]


class FirmwareStubError(TboxError):
    """Base class of every error :mod:`firmware_stub` raises on purpose."""


class EcuConfigError(FirmwareStubError, UsageError):
    """A simulated ECU is configured wrongly (the operator's fault)."""


class FlashStateError(FirmwareStubError, InputError):
    """An ECU's persisted flash state is unusable; the message names the file."""


class FlashIOError(FirmwareStubError):
    """Reading or writing an ECU's flash files failed."""


class PowerCut(Exception):  # noqa: N818 - an event, not an error
    """Raised at a persistence step to simulate a power cut in-process (fault injection)."""

    def __init__(self, step: str) -> None:
        self.step = step
        super().__init__(f"power cut at {step}")

"""The exception hierarchy of :mod:`ota`, split by who is at fault.

* :class:`OtaError` — base class of every error :mod:`ota` raises on purpose. It derives from
  :class:`agent.errors.TboxError`, so the ``tbox`` command line reports it in one line.
* :class:`OtaUsageError` — the operator asked for something malformed or impossible (an unknown
  role, a threshold above the number of keys, a bad target name); exit status 2.
* :class:`OtaInputError` — a file handed to us is broken (metadata, a key file, custom target
  fields); :class:`RepositoryConfigError` is the located kind for ``repository.toml``, and
  :class:`SigningKeyError` says a private key needed to sign is missing or unusable; exit 1.
* :class:`OtaVerificationError` — something does not verify: a signature threshold, a length or
  hash, a director assignment that differs from what the image repository vouches for; exit 1.
* :class:`OtaIOError` — the file system failed us (cannot read, write or rename); exit 1.

Foreign exceptions (``OSError``, python-tuf's, cryptography's) are wrapped where they cross into
this package (``raise … from e``); every message names what and where.
"""

from __future__ import annotations

from agent.errors import InputError, LocatedInputError, TboxError, UsageError

__all__ = [
    "OtaError",
    "OtaIOError",
    "OtaInputError",
    "OtaUsageError",
    "OtaVerificationError",
    "RepositoryConfigError",
    "SigningKeyError",
]


class OtaError(TboxError):
    """Base class of every error :mod:`ota` raises on purpose."""


class OtaUsageError(OtaError, UsageError):
    """The operator's request is malformed or impossible (exit status 2)."""


class OtaInputError(OtaError, InputError):
    """A file or value handed to us is malformed (metadata, key file, custom target fields)."""


class RepositoryConfigError(OtaInputError, LocatedInputError):
    """A repository's ``repository.toml`` is malformed; names file, line and key."""


class SigningKeyError(OtaInputError):
    """A private key needed to sign is missing, unreadable or too widely readable."""


class OtaVerificationError(OtaError):
    """Metadata or a target does not verify (signatures, threshold, length, hashes, matching)."""


class OtaIOError(OtaError):
    """Reading or writing a repository's files failed."""


# --- A/B slots of the T-box's own software (ota.slot_state, ota.ab_installer, ota.health_check) -


class SlotStateError(OtaInputError, LocatedInputError):
    """The slot state file or a slot's manifest is missing, unreadable or inconsistent.

    ``source`` names the file. The installer never answers it by guessing which slot to boot:
    the message says how to recover (``AbInstaller.recover`` naming the slot to trust).
    """


class SlotSequenceError(OtaUsageError):
    """An installer operation does not fit the current state (commit before the health check,
    a health check before the new slot was booted, rollback with nothing pending, …)."""


class UpdatePendingError(SlotSequenceError):
    """An install was asked for while another update is pending (not committed or rolled back)."""


class DowngradeError(OtaVerificationError):
    """The image's release counter is lower than the committed one (anti-rollback), or equal to
    it for a different image."""


class ImageMismatchError(OtaVerificationError):
    """The image handed to the installer does not have the expected length or sha256."""


class SlotWriteVerificationError(OtaVerificationError):
    """A slot read back after writing does not match what was written (failing storage)."""


class NoBootableSlotError(OtaError):
    """The slot the bootloader must boot does not verify against its manifest."""


class SlotIOError(OtaIOError):
    """Reading or writing the slots' files failed (disk full, permissions, a missing image)."""


class HealthCheckConfigError(OtaUsageError):
    """A health check is configured wrongly (empty command, malformed entry point, bad timeout)."""


__all__ += [
    "DowngradeError",
    "HealthCheckConfigError",
    "ImageMismatchError",
    "NoBootableSlotError",
    "SlotIOError",
    "SlotSequenceError",
    "SlotStateError",
    "SlotWriteVerificationError",
    "UpdatePendingError",
]

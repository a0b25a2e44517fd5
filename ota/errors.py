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

from enum import StrEnum

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


# --- the update client (ota.update_client, ota.trusted_time, ota.conformance_client) ----------


class RejectionCode(StrEnum):
    """Why the update client refused metadata or a target: machine-readable, stable values.

    Each names the attack (or fault) the refusal defends against, as Uptane and TUF name them.
    """

    #: A role's metadata is older than the version already trusted (or lists older versions).
    ROLLBACK = "rollback"
    #: Metadata has expired: the repository (or someone in between) serves a frozen state.
    FREEZE = "freeze"
    #: The clock is earlier than a time at which metadata was already verified as fresh.
    CLOCK_ROLLBACK = "clock_rollback"
    #: Metadata files from different repository states (not what the role above lists).
    MIX_AND_MATCH = "mix_and_match"
    #: Metadata signed by no trusted key of its role.
    BAD_SIGNATURE = "bad_signature"
    #: Metadata signed by some, but fewer than the threshold of, its role's keys.
    THRESHOLD = "threshold"
    #: A new root version not signed by a threshold of the old root's keys (and of its own).
    KEY_ROTATION = "key_rotation"
    #: More bytes than the limit for a metadata file or than a target's listed length.
    ENDLESS_DATA = "endless_data"
    #: A transfer below the minimum average throughput (or a stalled socket).
    SLOW_RETRIEVAL = "slow_retrieval"
    #: A target's bytes do not match its listed hashes (arbitrary software).
    BAD_HASH = "bad_hash"
    #: A director target assigned to another vehicle (director metadata of another vehicle).
    WRONG_VEHICLE = "wrong_vehicle"
    #: A director target built for other hardware than the T-box's or its ECU's.
    WRONG_HARDWARE = "wrong_hardware"
    #: A director target for an ECU this client does not serve.
    WRONG_ECU = "wrong_ecu"
    #: The image repository does not vouch for a director target identically.
    DIRECTOR_IMAGE_MISMATCH = "director_image_mismatch"
    #: A release counter lower than the installed one.
    DOWNGRADE = "downgrade"
    #: Verified metadata that breaks our own rules (custom fields) or TUF's (a missing role).
    INVALID_METADATA = "invalid_metadata"


class UpdateRejectedError(OtaVerificationError):
    """The update client refused metadata or a target; ``code`` says why (a
    :class:`RejectionCode`), ``repository`` which repository ("director", "image" or a URL)
    and ``role`` which role or target, where known. Nothing was installed.

    ``str()`` is ``"<code>: <message>"``; ``reason`` is the message alone.
    """

    def __init__(
        self,
        code: RejectionCode,
        reason: str,
        *,
        repository: str | None = None,
        role: str | None = None,
    ) -> None:
        self.code = code
        self.reason = reason
        self.repository = repository
        self.role = role
        super().__init__(f"{code.value}: {reason}")


class UpdateUnavailableError(OtaError):
    """A repository could not be reached or did not serve a file (connection refused, HTTP
    404/500, a dropped connection): no evidence of an attack, try again later. ``repository``
    and ``role`` as in :class:`UpdateRejectedError`."""

    def __init__(
        self, reason: str, *, repository: str | None = None, role: str | None = None
    ) -> None:
        self.reason = reason
        self.repository = repository
        self.role = role
        super().__init__(reason)


class TrustedTimeStateError(OtaInputError):
    """The persisted trusted-time floor file is unreadable or malformed (the message names it
    and how to recover)."""


__all__ += [
    "RejectionCode",
    "TrustedTimeStateError",
    "UpdateRejectedError",
    "UpdateUnavailableError",
]


# --- update campaigns (ota.campaign, ota.campaign_store, ota.campaign_runner) -------------------


class CampaignRequestError(OtaInputError):
    """A ``cmd/ota`` campaign body is malformed (the sender's fault); names the field."""


class CampaignStateError(OtaInputError, LocatedInputError):
    """The persisted campaign file is unreadable or inconsistent; ``source`` names the file."""


class CampaignSequenceError(OtaError):
    """A campaign event does not fit the campaign's step (a program error, never input)."""


class CampaignBusyError(OtaError):
    """A campaign was submitted while another one is still running (one at a time)."""


__all__ += [
    "CampaignBusyError",
    "CampaignRequestError",
    "CampaignSequenceError",
    "CampaignStateError",
    "EcuLaneError",
]


class EcuLaneError(OtaError):
    """Staging, activating or rolling back one ECU of a campaign failed; ``code`` is the
    campaign's error code for it (:class:`ota.campaign.ErrorCode` value)."""

    def __init__(self, ecu_id: str, code: str, message: str) -> None:
        super().__init__(message)
        self.ecu_id = ecu_id
        self.code = code

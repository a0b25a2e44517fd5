"""The ECUs a campaign flashes: one :class:`~ota.ecu_flash.EcuFlasher` per ECU of ``[ota.ecus]``.

:class:`EcuFleet` is what :class:`ota.campaign_runner.CampaignRunner` calls for its ECU lanes
(ADR 0012): *stage* an image (flash it into the ECU's inactive bank and have the ECU check it,
no reset), *activate* it (reset the ECU and verify it runs the image) and *roll back* (invalidate
the image in the ECU and reset it into its previous image). Each step is idempotent and resumes
where the ECU is, so a campaign resumed after a power cut simply calls it again.

Failures come out as :class:`~ota.errors.EcuLaneError` with the campaign's error code:

==========================  ===================================================================
``ecu_refused``             the ECU refused the image (its check: hash, signature, hardware id,
                            version; SecurityAccess; a negative response that is not transient)
``downgrade``               the image's version is below what the ECU runs
``ecu_unreachable``         no response after every attempt (bus down, ECU off)
``ecu_activation_failed``   after the reset the ECU runs another image (its new image failed to
                            boot and the bootloader fell back)
``verification_failed``     the downloaded file is not an ECU image at all
``rollback_failed``         the ECU refused or could not finish the rollback
==========================  ===================================================================

Threads: :class:`~ota.ecu_flash.EcuFlasher` runs udsoncan in worker threads; loading an image
(hashing it) runs in a thread too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.busurl import BusSpec
from agent.errors import BusError, TboxError
from ota.campaign import ErrorCode
from ota.ecu_flash import (
    DEFAULT_SECRET,
    CheckStatus,
    EcuActivationError,
    EcuAddress,
    EcuCheckFailedError,
    EcuFlasher,
    EcuFlashError,
    EcuNoResponseError,
    EcuProtocolError,
    FlashTiming,
    SeedKeyAlgorithm,
)
from ota.ecu_image import EcuImage
from ota.errors import EcuLaneError

__all__ = ["EcuEndpoint", "EcuFleet"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EcuEndpoint:
    """Where one ECU is and how to unlock it (``[ota.ecus.<id>]``)."""

    ecu_id: str
    bus: BusSpec | str
    request_id: int
    response_id: int
    secret: bytes = DEFAULT_SECRET
    algorithm: SeedKeyAlgorithm = SeedKeyAlgorithm.HMAC_SHA256
    security_level: int = 1


class EcuFleet:
    """Stages, activates and rolls back campaign images on the configured ECUs."""

    def __init__(
        self,
        endpoints: Iterable[EcuEndpoint],
        *,
        timing: FlashTiming | None = None,
        attempts: int = 3,
        tester_id: str = "tbox",
    ) -> None:
        self._flashers: dict[str, EcuFlasher] = {}
        for e in endpoints:
            self._flashers[e.ecu_id] = EcuFlasher(
                e.bus,
                EcuAddress(e.ecu_id, e.request_id, e.response_id),
                secret=e.secret,
                algorithm=e.algorithm,
                security_level=e.security_level,
                timing=timing,
                attempts=attempts,
                tester_id=tester_id,
            )

    def flashable(self) -> frozenset[str]:
        """The ECU ids this fleet can flash."""
        return frozenset(self._flashers)

    async def runs(self, ecu_id: str, image_path: Path) -> bool:
        """Whether *ecu_id* runs the image at *image_path* now."""
        image = await self._image(ecu_id, image_path)
        try:
            info = await self._flasher(ecu_id).read_info()
        except (EcuFlashError, BusError) as e:
            raise _lane_error(ecu_id, e, "reading what it runs") from e
        return info.active.bank is not None and info.active.sha256 == image.sha256

    async def stage(self, ecu_id: str, image_path: Path) -> bool:
        """Flash the image at *image_path* into *ecu_id*'s inactive bank, checked by the ECU, not
        booted; ``True`` if the ECU already runs it (nothing was flashed)."""
        image = await self._image(ecu_id, image_path)
        try:
            result = await self._flasher(ecu_id).flash(image, activate=False)
        except (EcuFlashError, BusError) as e:
            raise _lane_error(ecu_id, e, "staging") from e
        log.info(
            "ota: ECU %s: %s version %d (%d bytes sent, %d attempts)",
            ecu_id,
            "already runs" if result.already_installed else "staged",
            image.version,
            result.bytes_sent,
            result.attempts,
        )
        return result.already_installed

    async def activate(self, ecu_id: str, image_path: Path) -> None:
        """Reset *ecu_id* into its staged image and verify it runs it."""
        image = await self._image(ecu_id, image_path)
        try:
            await self._flasher(ecu_id).activate(image)
        except (EcuFlashError, BusError) as e:
            raise _lane_error(ecu_id, e, "activating") from e
        log.info("ota: ECU %s runs version %d", ecu_id, image.version)

    async def roll_back(self, ecu_id: str, image_path: Path) -> None:
        """Invalidate the image at *image_path* in *ecu_id* and reset it into its previous image
        (nothing to do if the ECU neither holds nor runs it)."""
        image = await self._image(ecu_id, image_path)
        try:
            info = await self._flasher(ecu_id).roll_back(image)
        except (EcuFlashError, BusError) as e:
            raise EcuLaneError(ecu_id, ErrorCode.ROLLBACK_FAILED, f"ECU {ecu_id}: {e}") from e
        log.info("ota: ECU %s rolled back; it runs version %d", ecu_id, info.active.version)

    def _flasher(self, ecu_id: str) -> EcuFlasher:
        try:
            return self._flashers[ecu_id]
        except KeyError:
            raise EcuLaneError(
                ecu_id, ErrorCode.UNSUPPORTED_IMAGE_KIND, f"no ECU {ecu_id!r} in [ota.ecus]"
            ) from None

    async def _image(self, ecu_id: str, path: Path) -> EcuImage:
        try:
            return await asyncio.to_thread(EcuImage.load, path)
        except TboxError as e:
            raise EcuLaneError(
                ecu_id, ErrorCode.VERIFICATION_FAILED, f"{path} is not an ECU image: {e}"
            ) from e


def _lane_error(ecu_id: str, error: Exception, doing: str) -> EcuLaneError:
    """The campaign's view of a flasher error."""
    if isinstance(error, EcuCheckFailedError):
        downgrade = error.status is CheckStatus.DOWNGRADE
        code = ErrorCode.DOWNGRADE if downgrade else ErrorCode.ECU_REFUSED
    elif isinstance(error, EcuActivationError):
        code = ErrorCode.ECU_ACTIVATION_FAILED
    elif isinstance(error, EcuNoResponseError | EcuProtocolError | BusError):
        code = ErrorCode.ECU_UNREACHABLE
    else:
        code = ErrorCode.ECU_REFUSED
    text = str(error)
    if not text.startswith(f"ECU {ecu_id}"):
        text = f"ECU {ecu_id}: {text}"
    return EcuLaneError(ecu_id, code, f"{doing}: {text}")

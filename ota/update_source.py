"""The update client as a campaign's update source: :class:`UpdateClientSource`.

:class:`~ota.campaign_runner.CampaignRunner` asks its source for a plan and for verified files
(:class:`~ota.campaign_runner.UpdateSource`); :class:`~ota.update_client.UpdateClient` answers
with an :class:`~ota.update_client.UpdatePlan` and downloads into a given path. This adapter
passes the installed release counter (from the A/B slots) to ``check`` so that the client itself
refuses a downgrade, and stores each target under its flat file name in the campaign's download
directory. The client reports no progress while it downloads: the campaign hears of a download
once, when it ends (the client's throughput floor and socket timeout catch a stall earlier).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ota.campaign_runner import SlotInstaller
from ota.target_info import ImageKind
from ota.update_client import PlannedTarget, Slot, UpdateClient

__all__ = ["UpdateClientSource"]


class UpdateClientSource:
    """:class:`UpdateClient` seen as a campaign's update source (blocking: runs in a thread)."""

    def __init__(self, client: UpdateClient, slots: SlotInstaller) -> None:
        self.client = client
        self.slots = slots

    def _installed(self, slot: Slot) -> int | None:
        if slot == (ImageKind.TBOX, None):
            return self.slots.status().committed_release
        return None  # ECU firmware: the ECUs know their versions (flashing, issue 5)

    def check(self) -> tuple[PlannedTarget, ...]:
        """The verified plan: what the director assigns and the image repository vouches for."""
        return self.client.check(self._installed).targets

    def download(
        self, target: PlannedTarget, dest: Path, progress: Callable[[int, int], None]
    ) -> Path:
        """Download *target* into *dest* (resuming), verified; report it done."""
        path = self.client.download(target, dest / target.file_name)
        progress(target.length, target.length)
        return path

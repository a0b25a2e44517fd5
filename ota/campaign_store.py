"""Where an update campaign lives on disk: one state file, replaced atomically, and its downloads.

::

    DIR/campaign.json                        the running campaign, or the last one (its format:
                                             ota.campaign's docstring)
    DIR/downloads/<campaign id>/             what the update client downloads for it
    DIR/campaign.json.corrupt-<UTC time>     an unreadable state file, kept for a post-mortem

Every write of the state file is :func:`agent.durable_file.write_durably` (temporary file, fsync,
rename, fsync of the directory) and hits named crash points (contract C6): ``campaign.step_*``
when a campaign enters a step (the file then lists the step's status events as unsent) and
``campaign.sent_*`` once those events are in the upload queue.

A missing file means no campaign. An unreadable or inconsistent one is a
:class:`~ota.errors.CampaignStateError` naming the file and the key; the runner then moves it
aside (:meth:`CampaignStore.move_aside`, never deletes it) and starts without a campaign — a
vehicle must stay updatable — after rolling back any update the lost campaign left pending.
Blocking: call from a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Final

from agent import crashpoints
from agent.durable_file import fsync_dir, write_durably
from ota.campaign import Campaign, encode_campaign, parse_campaign
from ota.errors import OtaIOError

__all__ = ["STATE_FILE", "CampaignStore"]

STATE_FILE: Final = "campaign.json"
DOWNLOADS: Final = "downloads"

CP_STEP = (
    crashpoints.declare(
        "campaign.step_written",
        "a campaign's new step, with its status events as unsent, is written and fsynced as a "
        "temporary file, not yet renamed",
    ),
    crashpoints.declare(
        "campaign.step_renamed",
        "a campaign's new step has replaced the state file; its directory is not yet fsynced",
    ),
)
CP_SENT = (
    crashpoints.declare(
        "campaign.sent_written",
        "the campaign file saying that its step's status events are queued is written and "
        "fsynced as a temporary file, not yet renamed",
    ),
    crashpoints.declare(
        "campaign.sent_renamed",
        "the campaign file saying that its step's status events are queued is in place; its "
        "directory is not yet fsynced",
    ),
)
CP_DISCARDED = crashpoints.declare(
    "campaign.downloads_discarded", "an ended campaign's downloads are deleted"
)
CP_MOVED_ASIDE = crashpoints.declare(
    "campaign.moved_aside",
    "an unreadable campaign file was renamed to campaign.json.corrupt-<time>, not yet fsynced",
)


class CampaignStore:
    """The campaign state file and download directories under *directory*."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def path(self) -> Path:
        """The state file."""
        return self.directory / STATE_FILE

    def load(self) -> Campaign | None:
        """The persisted campaign; ``None`` if there is none.

        Raises :class:`~ota.errors.CampaignStateError` naming the file if it is unreadable,
        and :class:`~ota.errors.OtaIOError` if it cannot be read at all.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise OtaIOError(f"cannot read {self.path}: {e.strerror or e}") from e
        return parse_campaign(data, source=str(self.path))

    def save_step(self, campaign: Campaign) -> None:
        """Persist *campaign* as it enters a step (its outbox holds the step's events)."""
        self._save(campaign, CP_STEP)

    def save_sent(self, campaign: Campaign) -> None:
        """Persist *campaign* once its outbox's events are in the upload queue."""
        self._save(campaign, CP_SENT)

    def download_dir(self, campaign_id: str, ecu_id: str | None = None) -> Path:
        """The directory the update client downloads *campaign_id*'s T-box image into, or the
        image of the ECU *ecu_id* (a subdirectory: two ECUs' images may share a file name);
        created."""
        path = self.directory / DOWNLOADS / campaign_id
        if ecu_id is not None:
            path = path / f"ecu-{ecu_id}"
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OtaIOError(f"cannot create {path}: {e.strerror or e}") from e
        return path

    def discard_downloads(self) -> None:
        """Delete every campaign's downloads (they are needed only until a campaign ends)."""
        path = self.directory / DOWNLOADS
        if not path.exists():
            return
        try:
            shutil.rmtree(path)
            fsync_dir(self.directory)
        except OSError as e:
            raise OtaIOError(f"cannot delete {path}: {e.strerror or e}") from e
        CP_DISCARDED.hit()

    def move_aside(self) -> Path:
        """Rename an unreadable state file to ``campaign.json.corrupt-<UTC time>``; return it."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{STATE_FILE}.corrupt-{stamp}")
        try:
            self.path.replace(aside)
            CP_MOVED_ASIDE.hit()
            fsync_dir(self.directory)
        except OSError as e:
            raise OtaIOError(f"cannot move {self.path} aside: {e.strerror or e}") from e
        return aside

    def _save(self, campaign: Campaign, points: tuple[crashpoints.CrashPoint, ...]) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_durably(
                self.path, encode_campaign(campaign), written=points[0], renamed=points[1]
            )
        except OSError as e:
            raise OtaIOError(f"cannot write {self.path}: {e.strerror or e}") from e

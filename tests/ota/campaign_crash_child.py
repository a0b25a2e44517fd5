"""A T-box running one update campaign, for the campaign crash tests, run as a child process.

    python tests/ota/campaign_crash_child.py WORK SCENARIO

WORK holds ``slots/`` (provisioned by the test with release 1, see :func:`prepare`), the
images an update source serves (``images/``), the campaign store (``state/``), the upload queue
(``queue.db``) and the sequence file. The child submits campaign ``c-<SCENARIO>`` (the same body
in every run: a restarted child gets "already received" and goes on with the resumed campaign)
for every assigned target — release 2 of the T-box image, and in the ``ecus`` scenarios version
2 for each of three simulated ECUs (firmware_stub, running in this process on a virtual bus with
their flash under ``ecus/``: a crash of the child is a power cut of the whole vehicle) — and
waits until it ends, printing ``final <step> <error_code>``. Scenarios:

    commit     the health check passes: committed
    rollback   the health check fails: rolled back
    corrupt    like commit, but the test left an unreadable campaign file for it to move aside
    ecus       three ECUs and the T-box: committed
    ecus-fail  the third ECU's version 2 fails to boot: every ECU and the T-box rolled back

Two append-only logs tell the test what work was done across runs (written with ``os.write``
on ``O_APPEND`` files, so that a crash point's exit loses nothing already said):

    fetch.log    ``<n>`` per chunk the update source read from its "server", before storing it
    install.log  ``start <release>`` / ``done <release>`` around each ``AbInstaller.install``

With ``CHILD_REPORT_HITS=1`` it prints ``hits <name> <n>`` for every crash point at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.crashpoints import all_crashpoints
from agent.durable_file import fsync_dir
from agent.telemetry_codec import SequenceCounter
from agent.upload_queue import UploadQueue
from ota.ab_installer import AbInstaller
from ota.campaign_runner import CampaignRunner
from ota.campaign_store import CampaignStore
from ota.errors import OtaVerificationError
from ota.slot_state import SlotStatus
from tests.ota.ab_crash_child import CHUNK_SIZE, FixedCheck, image_file

if TYPE_CHECKING:
    from firmware_stub import EcuConfig
    from ota.ecu_fleet import EcuFleet

VEHICLE = "VIN-CAMPAIGN"
MAX_ATTEMPTS = 3
HOST_IMAGE = "tbox/rootfs-2.img"
ECU_NAMES = ("bms", "vcu", "adas")
ECU_BUS = "virtual://campaign-crash-ecus"


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """A target of :class:`LocalSource`: an image file with its real length and sha256."""

    name: str
    path: Path
    length: int
    sha256: str
    release_counter: int
    image_kind: str = "tbox"
    ecu_id: str | None = None

    @classmethod
    def of_file(
        cls, name: str, path: Path, release_counter: int, *, ecu_id: str | None = None
    ) -> LocalTarget:
        """The target serving *path*, hashed as it is now."""
        data = path.read_bytes()
        kind = "tbox" if ecu_id is None else "ecu"
        digest = hashlib.sha256(data).hexdigest()
        return cls(name, path, len(data), digest, release_counter, kind, ecu_id)


def append_line(path: Path, line: str) -> None:
    """Append *line* to *path* at once (no Python buffer: a crash point's exit keeps it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class LocalSource:
    """An update source (:class:`ota.campaign_runner.UpdateSource`) serving local files.

    ``download`` copies a target in chunks into ``<dest>/<name>.part`` (appending, fsynced per
    chunk), resumes from the partial file's size in a later call — even in a later process — and
    checks the length and sha256 before renaming it into place, as the real update client does.
    Each chunk read from the "server" is logged to *fetch_log* before it is stored. *stall_after*
    chunks, a download blocks until *release* is set (the watchdog's test); *plan* replaces what
    ``check`` returns.
    """

    def __init__(
        self,
        targets: Sequence[LocalTarget],
        *,
        chunk_size: int = CHUNK_SIZE,
        fetch_log: Path | None = None,
        stall_after: int | None = None,
        release: threading.Event | None = None,
    ) -> None:
        self.targets = list(targets)
        self.chunk_size = chunk_size
        self.fetch_log = fetch_log
        self.stall_after = stall_after
        self.release = release or threading.Event()
        self.checks = 0
        self.downloads = 0

    def check(self) -> list[LocalTarget]:
        """The plan: every target."""
        self.checks += 1
        return list(self.targets)

    def download(
        self,
        target: LocalTarget,
        dest: Path,
        progress: Callable[[int, int], None],
        *,
        bases: object = None,
    ) -> Path:
        """Copy *target* into *dest*, resuming a partial copy; the verified file (no deltas:
        *bases* is not used)."""
        self.downloads += 1
        final = dest / Path(target.name).name
        if final.exists():
            return final
        part = final.with_name(final.name + ".part")
        done = part.stat().st_size if part.exists() else 0
        chunks = 0
        with target.path.open("rb") as server, part.open("ab") as out:
            server.seek(done)
            while chunk := server.read(self.chunk_size):
                if self.stall_after is not None and chunks >= self.stall_after:
                    self.release.wait()
                    raise OSError("the test ended the stalled download")
                if self.fetch_log is not None:
                    append_line(self.fetch_log, str(len(chunk)))
                out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                done += len(chunk)
                chunks += 1
                progress(done, target.length)
        data = part.read_bytes()
        if (len(data), hashlib.sha256(data).hexdigest()) != (target.length, target.sha256):
            part.unlink()
            raise OtaVerificationError(f"{target.name}: downloaded bytes do not match its hashes")
        part.replace(final)
        fsync_dir(dest)
        return final


class LoggingInstaller(AbInstaller):
    """An :class:`AbInstaller` that logs each install call to *log* (what "not redone" means)."""

    def __init__(self, root: Path, log: Path) -> None:
        super().__init__(root, max_attempts=MAX_ATTEMPTS, chunk_size=CHUNK_SIZE)
        self.log = log

    def install(
        self,
        image_path: Path,
        expected_sha256: str,
        expected_length: int,
        release_counter: int,
        *,
        version: str = "",
    ) -> SlotStatus:
        """:meth:`AbInstaller.install`, logged."""
        append_line(self.log, f"start {release_counter}")
        status = super().install(
            image_path, expected_sha256, expected_length, release_counter, version=version
        )
        append_line(self.log, f"done {release_counter}")
        return status


def targets(work: Path, scenario: str) -> list[LocalTarget]:
    """What the director assigns in every run: release 2 of the T-box (and of each ECU)."""
    images = work / "images"
    host, _, _ = image_file(images, 2)
    planned = [LocalTarget.of_file(HOST_IMAGE, host, 2)]
    if scenario.startswith("ecus"):
        from tests.firmware_stub.support import make_image

        for name in ECU_NAMES:
            path = images / f"{name}-2.img"
            if not path.exists():
                path.write_bytes(make_image(2, 4000, hardware_id=name))
            planned.insert(0, LocalTarget.of_file(f"{name}/fw-2.img", path, 2, ecu_id=name))
    return planned


def ecu_configs(scenario: str) -> list[EcuConfig]:
    """The three ECUs, version 1 from the factory; adas's version 2 crashes at start in
    ``ecus-fail``."""
    from firmware_stub import FaultPlan
    from ota.ecu_flash import EcuAddress
    from tests.firmware_stub.support import ecu_config, make_image

    configs = []
    for index, name in enumerate(ECU_NAMES):
        faults = FaultPlan()
        if scenario == "ecus-fail" and name == "adas":
            faults = FaultPlan(boot_fails=frozenset({2}))
        address = EcuAddress(name, 0x7E0 + index, 0x7E8 + index)
        configs.append(
            ecu_config(address, factory=make_image(1, 4000, hardware_id=name), faults=faults)
        )
    return configs


def fleet() -> EcuFleet:
    """The T-box's view of the three ECUs."""
    from ota.ecu_fleet import EcuEndpoint, EcuFleet
    from tests.firmware_stub.support import QUICK

    endpoints = [
        EcuEndpoint(name, ECU_BUS, 0x7E0 + i, 0x7E8 + i) for i, name in enumerate(ECU_NAMES)
    ]
    return EcuFleet(endpoints, timing=QUICK)


def prepare(work: Path, scenario: str) -> None:
    """A new T-box under *work*: release 1 committed in slot a; for ``corrupt``, a broken file."""
    images = work / "images"
    images.mkdir(parents=True, exist_ok=True)
    slots = AbInstaller(work / "slots", max_attempts=MAX_ATTEMPTS, chunk_size=CHUNK_SIZE)
    path, sha256, length = image_file(images, 1)
    slots.provision(path, sha256, length, 1, version="v1")
    if scenario == "corrupt":
        (work / "state").mkdir()
        (work / "state" / "campaign.json").write_text('{"format": 1, "step": "flying"}\n')


def body(scenario: str) -> bytes:
    """The campaign command's body of *scenario*."""
    return json.dumps({"campaign_id": f"c-{scenario}", "correlation_id": "corr-1"}).encode()


def runner(work: Path, queue: UploadQueue, scenario: str) -> CampaignRunner:
    """The runner as every run of the child configures it."""
    counter = SequenceCounter(work / "sequence", block=16)
    return CampaignRunner(
        CampaignStore(work / "state"),
        LoggingInstaller(work / "slots", work / "install.log"),
        LocalSource(targets(work, scenario), fetch_log=work / "fetch.log"),
        queue,
        health_check=FixedCheck(scenario != "rollback"),
        vehicle_id=VEHICLE,
        next_sequence=counter.next,
        progress_interval_s=0.0,  # every chunk: deterministic crash point counts
        ecus=fleet() if scenario.startswith("ecus") else None,
    )


async def main(work: Path, scenario: str) -> None:
    """Run the campaign to its end (see the module's docstring)."""
    async with contextlib.AsyncExitStack() as stack:
        if scenario.startswith("ecus"):
            from firmware_stub import EcuHost

            await stack.enter_async_context(
                EcuHost(ECU_BUS, ecu_configs(scenario), state_dir=work / "ecus")
            )
        queue = await stack.enter_async_context(UploadQueue(work / "queue.db"))
        r = await stack.enter_async_context(runner(work, queue, scenario))
        await r.submit(body(scenario), command_id="cmd-1")
        final = await r.wait_idle()
    assert final is not None
    sys.stdout.write(f"final {final.step} {final.error_code or '-'}\n")
    if os.environ.get("CHILD_REPORT_HITS"):
        for point in all_crashpoints():
            sys.stdout.write(f"hits {point.name} {point.hits}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2]))

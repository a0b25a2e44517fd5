"""A T-box going through updates, for the A/B installer's crash tests, run as a child process.

    python tests/ota/ab_crash_child.py ROOT IMAGES

On a new slot root it provisions release 1, boots, then runs five updates that reach every
persistence step of :mod:`ota.ab_installer`:

    2  installed, booted, healthy, committed
    3  installed, booted, health check fails: rolled back
    4  the image handed over is corrupt: install fails
    5  installed, booted until the boot attempts are exhausted: rolled back
    6  installed, booted, healthy, committed, committed again

It prints, each line flushed as soon as the call has returned (a crash point exits without
flushing Python's buffers):

    provisioned 1     release 1 is committed in slot a
    update <n>        update n is about to start
    committed <n>     update n is committed
    rolled_back <n>   update n was rolled back
    failed <n>        update n failed to install
    hits <name> <n>   (at the end, with CHILD_REPORT_HITS=1) how often each crash point was reached
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from agent.crashpoints import all_crashpoints
from ota.ab_installer import AbInstaller
from ota.errors import ImageMismatchError
from ota.health_check import HealthResult

MAX_ATTEMPTS = 2
CHUNK_SIZE = 4096
IMAGE_LENGTH = 3 * CHUNK_SIZE + 100  # four chunks, the last one short
CORRUPT_RELEASE = 4


def image_bytes(release: int) -> bytes:
    """The image of *release*: distinct for every release, the same in every process."""
    block = hashlib.sha256(f"release {release}".encode()).digest()
    return (block * (IMAGE_LENGTH // len(block) + 1))[:IMAGE_LENGTH]


def image_file(directory: Path, release: int) -> tuple[Path, str, int]:
    """Write the image of *release* under *directory*: (path, sha256, length)."""
    data = image_bytes(release)
    path = directory / f"release-{release}.img"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest(), len(data)


def installer(root: Path) -> AbInstaller:
    """The installer as every process of the test configures it."""
    return AbInstaller(root, max_attempts=MAX_ATTEMPTS, chunk_size=CHUNK_SIZE)


class FixedCheck:
    """A health check with a fixed answer (the real checks are tested in test_health_check)."""

    def __init__(self, passed: bool) -> None:
        self.passed = passed

    def run(self) -> HealthResult:
        """The fixed answer."""
        return HealthResult(self.passed, "fixed answer " + ("pass" if self.passed else "fail"), 0)


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _install(slots: AbInstaller, images: Path, release: int) -> None:
    path, sha256, length = image_file(images, release)
    slots.install(path, sha256, length, release, version=f"v{release}")


def main(root: Path, images: Path) -> None:
    """Run the whole workload (see the module's docstring)."""
    slots = installer(root)
    path, sha256, length = image_file(images, 1)
    slots.provision(path, sha256, length, 1, version="v1")
    _say("provisioned 1")
    slots.boot()

    _say("update 2")
    _install(slots, images, 2)
    slots.boot()
    slots.check_health(FixedCheck(True))
    slots.commit()
    _say("committed 2")

    _say("update 3")
    _install(slots, images, 3)
    slots.boot()
    slots.check_health(FixedCheck(False))
    _say("rolled_back 3")

    _say(f"update {CORRUPT_RELEASE}")
    path, sha256, length = image_file(images, CORRUPT_RELEASE)
    path.write_bytes(b"X" + path.read_bytes()[1:])  # damaged in transit, same length
    try:
        slots.install(path, sha256, length, CORRUPT_RELEASE)
    except ImageMismatchError:
        _say(f"failed {CORRUPT_RELEASE}")

    _say("update 5")
    _install(slots, images, 5)
    for _ in range(MAX_ATTEMPTS + 1):  # never committed: the last boot rolls it back
        slots.boot()
    _say("rolled_back 5")

    _say("update 6")
    _install(slots, images, 6)
    slots.boot()
    slots.check_health(FixedCheck(True))
    slots.commit()
    slots.commit()
    _say("committed 6")

    if os.environ.get("CHILD_REPORT_HITS"):
        for point in all_crashpoints():
            _say(f"hits {point.name} {point.hits}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

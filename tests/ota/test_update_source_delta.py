"""Delta downloads end to end: an image published with ``add_delta_target`` (a real signed image
repository and director served over HTTP), fetched by UpdateClientSource as a patch when the
vehicle holds the base image, and as the full image — automatically — when it does not, when
the base is damaged, when the patch is altered on the server, or when a validly signed patch
does not rebuild the image."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from agent.cli import main
from ota.ab_installer import AbInstaller
from ota.image_cache import BaseImages, ImageCache, KnownImages
from ota.repository_tool import RepositoryDirectory
from ota.target_info import DeltaDescriptor, ImageKind, TargetCustom
from ota.update_client import PlannedTarget
from ota.update_source import DownloadMethod, DownloadReport, UpdateClientSource, delta_problem
from tests.ota.test_update_client import ROOTFS, Bench, make_bench

NEXT = "tbox/rootfs-13.img"
TBOX13 = TargetCustom(hardware_id="tbox-hw2", release_counter=13, image_kind=ImageKind.TBOX)
VEHICLE = "VIN3"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _next_release(old: bytes) -> bytes:
    rng = random.Random(13)
    new = bytearray(old)
    for _ in range(50):
        new[rng.randrange(len(new))] ^= 0x5A
    return bytes(new[:150_000]) + rng.randbytes(4_000) + bytes(new[150_000:])


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    """The image repository of test_update_client plus rootfs-13 with a delta from rootfs-12
    (what VIN3 runs), assigned to VIN3."""
    made = make_bench(tmp_path)
    base = tmp_path / "rootfs-12.img"
    base.write_bytes(made.firmware[ROOTFS])
    source = tmp_path / "rootfs-13.img"
    source.write_bytes(_next_release(made.firmware[ROOTFS]))
    made.firmware[NEXT] = source.read_bytes()
    made.image.add_delta_target(source, base=base, name=NEXT, custom=TBOX13)
    made.director.add_vehicle(VEHICLE)
    made.director.assign(made.image, vehicle_id=VEHICLE, target_name=NEXT)
    with made.server:
        yield made


def _source(bench: Bench, tmp_path: Path) -> tuple[UpdateClientSource, PlannedTarget]:
    """VIN3's update source; its slots run rootfs-12 (release 12)."""
    slots = AbInstaller(tmp_path / "slots")
    base = tmp_path / "rootfs-12.img"
    slots.provision(base, _sha(base.read_bytes()), base.stat().st_size, 12)
    source = UpdateClientSource(bench.client(VEHICLE), slots)
    (target,) = source.check()
    return source, target


def _fetched(bench: Bench) -> dict[str, int]:
    """Body bytes served per target file name (without its hash prefix)."""
    served: dict[str, int] = {}
    for r in bench.server.requests:
        if r.path.startswith("image/targets/") and r.method == "GET":
            name = r.path.rsplit("/", 1)[-1].split(".", 1)[1]
            served[name] = served.get(name, 0) + r.body_bytes
    return served


def _download(
    source: UpdateClientSource,
    target: PlannedTarget,
    dest: Path,
    *,
    bases: BaseImages | None = None,
) -> tuple[Path, DownloadReport, list[tuple[int, int]]]:
    calls: list[tuple[int, int]] = []
    path = source.download(target, dest, lambda d, t: calls.append((d, t)), bases=bases)
    assert source.last_report is not None
    return path, source.last_report, calls


def test_the_delta_is_taken_when_the_base_image_is_there(bench: Bench, tmp_path: Path) -> None:
    source, target = _source(bench, tmp_path)
    delta = target.custom.delta
    assert delta is not None and delta.from_sha256 == _sha(bench.firmware[ROOTFS])
    assert delta.patch == f"{NEXT}.from-{delta.from_sha256[:12]}.bsdiff4"
    cache = ImageCache(tmp_path / "ecu-images")
    cache.add(bench.firmware[ROOTFS])

    path, report, progress = _download(source, target, tmp_path / "dl", bases=cache)

    assert path == tmp_path / "dl" / target.file_name
    assert path.read_bytes() == bench.firmware[NEXT]
    assert report.method is DownloadMethod.DELTA and report.fallback is None
    assert report.transferred < target.length // 5
    assert report.describe() == (
        f"delta from {delta.from_sha256[:12]} ({report.transferred:,} bytes instead of "
        f"{target.length:,})"
    )
    assert _fetched(bench) == {
        "rootfs-13.img.from-" + delta.from_sha256[:12] + ".bsdiff4": report.transferred
    }
    assert progress[-1] == (report.transferred, report.transferred)
    assert all(total == report.transferred for _, total in progress)
    assert sorted(p.name for p in path.parent.iterdir()) == [target.file_name]  # no leftovers

    again_path, again, _ = _download(source, target, tmp_path / "dl", bases=cache)
    assert (again_path, again.method, again.transferred) == (path, DownloadMethod.PRESENT, 0)


def test_the_constructors_bases_serve_the_slot_image(bench: Bench, tmp_path: Path) -> None:
    source, target = _source(bench, tmp_path)
    slots = source.slots
    assert isinstance(slots, AbInstaller)
    committed = slots.status().committed
    source.bases = KnownImages({committed.image.sha256: slots.image_path(committed.slot)})
    path, report, _ = _download(source, target, tmp_path / "dl")
    assert report.method is DownloadMethod.DELTA
    assert path.read_bytes() == bench.firmware[NEXT]


def _assert_full(bench: Bench, report: DownloadReport, path: Path, reason: str) -> None:
    assert path.read_bytes() == bench.firmware[NEXT]
    assert report.method is DownloadMethod.FULL
    assert report.transferred == report.length == len(bench.firmware[NEXT])
    assert report.fallback is not None and reason in report.fallback, report.fallback
    assert report.describe().startswith(f"full image ({report.length:,} bytes); delta not used: ")
    assert _fetched(bench).get("rootfs-13.img") == report.length


def test_without_the_base_the_full_image_is_downloaded(
    bench: Bench, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, target = _source(bench, tmp_path)
    path, report, progress = _download(source, target, tmp_path / "dl", bases=KnownImages({}))
    _assert_full(bench, report, path, "is on the vehicle")
    assert set(_fetched(bench)) == {"rootfs-13.img"}  # the patch was not fetched
    assert progress[-1] == (report.length, report.length)
    assert "downloading the full image" in caplog.text

    path, report, _ = _download(source, target, tmp_path / "dl2")  # no bases at all
    assert report.method is DownloadMethod.FULL and report.fallback is not None
    assert "no base images" in report.fallback


def test_a_damaged_base_is_not_patched(bench: Bench, tmp_path: Path) -> None:
    damaged = bytearray(bench.firmware[ROOTFS])
    damaged[1000] ^= 1
    (tmp_path / "slot.img").write_bytes(damaged)
    source, target = _source(bench, tmp_path)
    bases = KnownImages({_sha(bench.firmware[ROOTFS]): tmp_path / "slot.img"})
    path, report, _ = _download(source, target, tmp_path / "dl", bases=bases)
    _assert_full(bench, report, path, "slot.img has sha256")
    assert set(_fetched(bench)) == {"rootfs-13.img"}


def test_a_patch_altered_on_the_server_is_rejected_by_tuf(bench: Bench, tmp_path: Path) -> None:
    (published,) = (bench.srv / "image" / "targets" / "tbox").glob("*.bsdiff4")
    altered = bytearray(published.read_bytes())
    altered[len(altered) // 2] ^= 0xFF
    published.write_bytes(altered)
    source, target = _source(bench, tmp_path)
    bases = KnownImages({_sha(bench.firmware[ROOTFS]): tmp_path / "base.img"})
    (tmp_path / "base.img").write_bytes(bench.firmware[ROOTFS])
    path, report, _ = _download(source, target, tmp_path / "dl", bases=bases)
    _assert_full(bench, report, path, "bad_hash")
    assert sorted(p.name for p in path.parent.iterdir()) == [target.file_name]


def test_a_signed_patch_that_does_not_rebuild_the_image_falls_back(
    bench: Bench, tmp_path: Path
) -> None:
    # A patch made from another base, published and described as if it were from rootfs-12.
    other = tmp_path / "other.img"
    other.write_bytes(bench.firmware[ROOTFS][:5000] + b"?" + bench.firmware[ROOTFS][5001:])
    wrong = tmp_path / "rootfs-14.img"
    wrong.write_bytes(bench.firmware[NEXT][:-1] + b"!")
    bench.firmware["tbox/rootfs-14.img"] = wrong.read_bytes()
    _, patch, _ = bench.image.add_delta_target(
        wrong, base=other, name="tbox/scratch.img", custom=TBOX13, patch_name="tbox/14.bsdiff4"
    )
    described = TargetCustom(
        hardware_id="tbox-hw2",
        release_counter=14,
        image_kind=ImageKind.TBOX,
        delta=DeltaDescriptor(from_sha256=_sha(bench.firmware[ROOTFS]), patch=patch.path),
    )
    bench.image.add_target(wrong, name="tbox/rootfs-14.img", custom=described)
    bench.director.unassign(vehicle_id=VEHICLE, target_name=NEXT)
    bench.director.assign(bench.image, vehicle_id=VEHICLE, target_name="tbox/rootfs-14.img")
    source, target = _source(bench, tmp_path)
    (tmp_path / "base.img").write_bytes(bench.firmware[ROOTFS])
    bases = KnownImages({_sha(bench.firmware[ROOTFS]): tmp_path / "base.img"})
    path, report, _ = _download(source, target, tmp_path / "dl", bases=bases)
    assert path.read_bytes() == wrong.read_bytes()
    assert report.method is DownloadMethod.FULL and report.fallback is not None
    assert "the signed target has" in report.fallback
    assert set(_fetched(bench)) == {"14.bsdiff4", "rootfs-14.img"}


def test_delta_problem_decides_before_any_io(bench: Bench, tmp_path: Path) -> None:
    _, target = _source(bench, tmp_path)
    assert delta_problem(target, have_bases=True, max_delta_bytes=10**9) is None
    assert "no base images" in (
        delta_problem(target, have_bases=False, max_delta_bytes=10**9) or ""
    )
    too_big = delta_problem(target, have_bases=True, max_delta_bytes=1000)
    assert too_big is not None and "patched in memory" in too_big


def test_add_target_with_delta_base_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "image"
    old = random.Random(5).randbytes(60_000)
    (tmp_path / "old.img").write_bytes(old)
    (tmp_path / "new.img").write_bytes(_next_release(old))
    common = ["--hardware-id", "tbox-hw2", "--release-counter", "13", "--kind", "tbox"]
    assert main(["ota", "repo", "init", str(image), "--kind", "image"]) == 0
    capsys.readouterr()
    args = ["ota", "repo", "add-target", str(image), str(tmp_path / "new.img"), *common]
    both = [*args, "--delta-base", str(tmp_path / "old.img"), "--delta-from", "ab" * 32]
    assert main(both) == 2
    assert "not both" in capsys.readouterr().err
    assert main([*args, "--delta-base", str(tmp_path / "old.img"), "--name", "tbox/r13.img"]) == 0
    out = capsys.readouterr().out
    assert "added delta tbox/r13.img.from-" in out and "added tbox/r13.img" in out
    targets = {name: t.custom for name, t in _image_targets(image).items()}
    patch_name = f"tbox/r13.img.from-{_sha(old)[:12]}.bsdiff4"
    assert targets["tbox/r13.img"]["delta"] == {
        "from_sha256": _sha(old),
        "patch": patch_name,
        "algorithm": "bsdiff4",
    }
    assert "delta" not in targets[patch_name]
    (tmp_path / "noise.img").write_bytes(random.Random(6).randbytes(60_000))
    noise = ["ota", "repo", "add-target", str(image), str(tmp_path / "noise.img"), *common]
    assert main([*noise, "--delta-base", str(tmp_path / "old.img")]) == 2
    assert "not smaller than the image" in capsys.readouterr().err


def _image_targets(image: Path) -> dict[str, TargetFile]:
    return dict(RepositoryDirectory(image).load().targets.signed.targets)

"""``tbox flash --bus URL --ecu NAME[:REQID:RESPID] IMAGE [--key SECRET]``: flash an ECU over UDS.

The same code as the agent's campaigns (:class:`ota.ecu_flash.EcuFlasher`): the programming
sequence over ISO-TP, resuming where the ECU left off after a power cut or a lost link, with a
progress bar (rich) on a terminal and one line per phase otherwise. Prints one line on stdout
when done. Ctrl-C or SIGTERM stops between two requests; the ECU keeps what it acknowledged and
the same command resumes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from agent.cli.ecu import add_ecu_option, add_security_options
from agent.cli.sim import _handle, _non_negative, _positive_int, _Stopper

_PROG = "tbox flash"


def register(subparsers: Any) -> None:
    """Add ``tbox flash``."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "flash",
        help="flash a signed firmware image into an ECU over UDS",
        description=(
            "Flash IMAGE ('tbox ecu image') into the ECU over UDS on ISO-TP: sessions, "
            "SecurityAccess (--key), erase of the inactive bank, download, check (the ECU "
            "verifies hash, signature, hardware id and version), reset, and a read-back of what "
            "the ECU runs. A flash interrupted by a power cut or a lost link resumes from the "
            "last block the ECU acknowledged (also when the command is run again)."
        ),
    )
    p.add_argument("--bus", required=True, metavar="URL", help="the bus URL")
    add_ecu_option(p, many=False)
    p.add_argument("image", type=Path, metavar="IMAGE", help="the signed image file")
    add_security_options(p, secret_option="--key")
    p.add_argument(
        "--attempts",
        type=_positive_int,
        default=3,
        metavar="N",
        help="attempts (each resumes where the last stopped) before giving up (default 3)",
    )
    p.add_argument(
        "--timeout",
        type=_non_negative,
        default=1.0,
        metavar="S",
        help="response timeout P2 (default 1); after 'response pending' P2* is 6 s",
    )
    p.add_argument(
        "--reconnect",
        type=_non_negative,
        default=15.0,
        metavar="S",
        help="how long to wait for the ECU to answer again after a reset or lost link (default 15)",
    )
    p.add_argument(
        "--max-block", type=_positive_int, metavar="N", help="cap the TransferData length"
    )
    p.add_argument(
        "--no-activate",
        action="store_true",
        help="stop once the ECU accepted the image (staged); do not reset it",
    )
    p.add_argument("--force", action="store_true", help="flash even if the ECU runs this image")
    p.add_argument(
        "--no-precheck",
        action="store_true",
        help="send the image even if the ECU's hardware id or version says it will refuse it",
    )
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(handler=_handle(_flash))


async def _flash(args: argparse.Namespace, stopper: _Stopper) -> int:
    from agent.busurl import parse_bus_url
    from ota.ecu_flash import (
        DEFAULT_SECRET,
        EcuFlasher,
        FlashInterruptedError,
        FlashProgress,
        FlashResult,
        FlashTiming,
        SeedKeyAlgorithm,
        parse_ecu_spec,
        parse_secret,
    )
    from ota.ecu_image import EcuImage

    spec = parse_bus_url(args.bus)
    address = parse_ecu_spec(args.ecu)
    image = EcuImage.load(args.image)
    secret = parse_secret(args.secret) if args.secret is not None else DEFAULT_SECRET
    flasher = EcuFlasher(
        spec,
        address,
        secret=secret,
        algorithm=SeedKeyAlgorithm(args.algorithm),
        security_level=args.security_level,
        timing=FlashTiming(p2=args.timeout or 1.0, reconnect=args.reconnect),
        attempts=args.attempts,
        max_block=args.max_block,
        tester_id="tbox-cli",
    )
    if not args.debug:
        logging.getLogger("ota.ecu_flash").setLevel(logging.WARNING)
    display = _Display(address.name, len(image.data), quiet=args.quiet)
    result: list[FlashResult] = []

    async def work() -> None:
        result.append(
            await flasher.flash(
                image,
                progress=display.update,
                activate=not args.no_activate,
                precheck=not args.no_precheck,
                force=args.force,
            )
        )

    try:
        completed = await stopper.until_stopped(work())
    finally:
        display.close()
    if not completed:
        last: FlashProgress | None = display.last
        done = last.done if last is not None else 0
        raise FlashInterruptedError(
            f"ECU {address.name}: stopped after {done} of {len(image.data)} bytes; the ECU keeps "
            "what it acknowledged: run the same command to resume"
        )
    print(_summary(result[0]))
    return 0


def _summary(result: Any) -> str:
    head = f"{result.ecu}: version {result.version} (sha256 {result.sha256[:16]}…, "
    head += f"{result.length} bytes)"
    if result.already_installed:
        return f"{head}: already running, nothing sent"
    state = "running" if result.activated else "staged (checked; an ECU reset activates it)"
    line = f"{head}: {state} after {result.elapsed_s:.1f} s"
    if result.transfer_s > 0 and result.bytes_sent:
        line += f"; {result.bytes_sent / result.transfer_s / 1000:.1f} kB/s during transfer"
    if result.resumed_from is not None:
        line += f"; resumed at byte {result.resumed_from}"
    if result.attempts > 1:
        line += f"; {result.attempts} attempts"
    return line


class _Display:
    """A rich progress bar on a terminal, one line per phase otherwise (stderr)."""

    def __init__(self, ecu: str, total: int, *, quiet: bool) -> None:
        from rich.console import Console

        self.ecu = ecu
        self.total = total
        self.last: Any = None
        self._phase: tuple[str, int] | None = None
        self._quiet = quiet
        self._console = Console(stderr=True)
        self._progress: Any = None
        self._task: Any = None
        if not quiet and self._console.is_terminal:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self._console,
            )
            self._progress.start()
            self._task = self._progress.add_task(f"{ecu}: connect", total=total)

    def update(self, event: Any) -> None:
        """A :class:`~ota.ecu_flash.FlashProgress` from the flasher (in the event loop)."""
        self.last = event
        attempt = f" (attempt {event.attempt})" if event.attempt > 1 else ""
        description = f"{self.ecu}: {event.phase}{attempt}"
        if self._progress is not None:
            self._progress.update(self._task, description=description, completed=event.done)
        elif not self._quiet and (event.phase, event.attempt) != self._phase:
            self._phase = (event.phase, event.attempt)
            print(
                f"{_PROG}: {description}: {event.done} of {event.total} bytes",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Stop the live display."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

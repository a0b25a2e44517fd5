"""Flashing a 1 MiB image over a simulated 500 kbit/s CAN bus: achieved vs theoretical rate.

The whole stack runs as in production, in one process: :class:`ota.ecu_flash.EcuFlasher`
(udsoncan's client on can-isotp's pure-Python stack) flashes a simulated ECU
(:class:`firmware_stub.EcuHost`: its UDS server, ISO-TP stack and fsynced flash files) through the
full programming sequence.

**How the bus is simulated.** Both ends use python-can ``virtual`` buses on one channel, each
wrapped in a :class:`PacedBus` that shares one :class:`Wire`: every frame sent (in either
direction) occupies the wire for ``sim.wire.frame_bits(...) / bitrate`` seconds — the simulator's
wire model: SOF to intermission, 11-bit ids, and the stuff bits the frame's header and data
actually need — and frames queue for the wire one after the other, as on a real half-duplex bus.
``send`` blocks until the frame is (nearly) on the wire, like a CAN controller with one transmit
buffer; a frame is released at most ``slack`` (2 ms) before its modelled end, so timing noise of
``time.sleep`` does not leave the wire idle, while over the whole run the wire can never carry
more than its bit rate allows.

**The figures.** The theoretical ISO-TP payload rate of the bus is 7 payload bytes per
consecutive frame of 8 data bytes, at the wire time the model gives the consecutive frames of this
very transfer (mean bits per CF, stuffing included): ``7 × bitrate / mean CF bits``. The achieved
rate is the image's bytes over the transfer phase (RequestDownload to RequestTransferExit, all
block overheads — first frames, flow control, responses, the ECU writing and fsyncing each block
— included). The benchmark prints both, their ratio (target ≥ 0.8) and the whole flash's time
(sessions, security, erase, check, reset as well). ISO-TP block size 0 and STmin 0, the ECU's
maximum block length 4095 (classic ISO-TP's largest single message).

A reference run without pacing (CPU-bound, smaller image) shows how far above the bus the
pure-Python stacks are.

    .venv/bin/python benchmarks/bench_flash.py [--size 1048576] [--bitrate 500000]
        [--max-block-length 4095] [--no-reference]

Takes ~40 s at 500 kbit/s (the bus's own speed). Exits 1 below the target.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import can
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from firmware_stub import EcuConfig, EcuHost, ServerConfig
from ota.ecu_flash import EcuAddress, EcuFlasher, FlashResult, FlashTiming
from ota.ecu_image import EcuImage, build_image
from sim.wire import frame_bits

TARGET = 0.8
SLACK_S = 0.002
ECU = EcuAddress("bms", 0x7E0, 0x7E8)
CF_PAYLOAD = 7


@dataclass
class Wire:
    """One CAN wire shared by every :class:`PacedBus` on it."""

    bitrate: int
    slack: float = SLACK_S
    busy_until: float = 0.0
    bits: int = 0
    frames: int = 0
    cf_bits: list[int] = field(default_factory=list)
    by_kind: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    recording: bool = False

    def transmit(self, msg: can.Message) -> None:
        """Occupy the wire for *msg*; return when it is (nearly) through."""
        bits, _ = frame_bits(msg.arbitration_id, msg.is_extended_id, bytes(msg.data))
        with self.lock:
            now = time.perf_counter()
            end = max(now, self.busy_until) + bits / self.bitrate
            self.busy_until = end
            if self.recording:
                self.bits += bits
                self.frames += 1
                kind = ("SF", "FF", "CF", "FC")[msg.data[0] >> 4 & 3] if msg.data else "?"
                self.by_kind[kind] += 1
                if kind == "CF" and msg.arbitration_id == ECU.request_id and len(msg.data) == 8:
                    self.cf_bits.append(bits)
        ahead = end - time.perf_counter() - self.slack
        if ahead > 0:
            time.sleep(ahead)


class PacedBus(can.BusABC):
    """A python-can ``virtual`` bus whose sends are paced by a shared :class:`Wire`."""

    def __init__(self, channel: str, wire: Wire | None) -> None:
        self._inner = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self._wire = wire
        super().__init__(channel=channel)
        self.channel_info = f"paced virtual bus {channel}"

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self._wire is not None:
            self._wire.transmit(msg)
        self._inner.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        return self._inner.recv(timeout), False

    def shutdown(self) -> None:
        self._inner.shutdown()
        super().shutdown()


@dataclass
class Run:
    """One flash: its result and how long the whole flash took."""

    result: FlashResult
    total_s: float


async def flash_once(
    image: bytes, *, wire: Wire | None, max_block: int, bank_size: int, state_dir: Path
) -> Run:
    channel = f"bench-flash-{random.random()}"
    config = EcuConfig(
        ECU,
        server=ServerConfig("bms", max_block_length=max_block),
        bank_size=bank_size,
        trusted_key=KEY.public_key(),
        erase_time_s=0.0,
    )
    ecu_bus = PacedBus(channel, wire)
    tester_bus = PacedBus(channel, wire)
    try:
        async with EcuHost(ecu_bus, [config], state_dir=state_dir):
            flasher = EcuFlasher(tester_bus, ECU, timing=FlashTiming(p2=2.0), attempts=1)
            if wire is not None:
                wire.recording = True
            started = time.perf_counter()
            result = await flasher.flash(EcuImage.from_bytes(image))
            total = time.perf_counter() - started
            if wire is not None:
                wire.recording = False
    finally:
        tester_bus.shutdown()
        ecu_bus.shutdown()
    return Run(result, total)


KEY = Ed25519PrivateKey.generate()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1 << 20, help="payload bytes (default 1 MiB)")
    parser.add_argument("--bitrate", type=int, default=500_000, help="bit rate (default 500000)")
    parser.add_argument("--max-block-length", type=int, default=4095, help="UDS max block length")
    parser.add_argument("--no-reference", action="store_true", help="skip the unpaced run")
    args = parser.parse_args()

    payload = random.Random(1).randbytes(args.size)
    image = build_image(payload, version=2, hardware_id="bms", private_key=KEY)
    bank_size = 1 << max(16, (len(image) - 1).bit_length())
    print(
        f"Flashing a {args.size / 1024:.0f} KiB payload ({len(image)} bytes with header and "
        f"signature) over a simulated classic CAN bus at {args.bitrate / 1000:g} kbit/s"
    )
    print(
        "Bus: python-can virtual buses paced by the simulator's wire model (sim.wire.frame_bits: "
        "SOF … intermission, 11-bit ids, stuff bits of header and data); one wire for both "
        f"directions; a frame leaves at most {SLACK_S * 1000:g} ms before its modelled end."
    )
    print(
        f"ISO-TP: block size 0, STmin 0, no padding; ECU max block length {args.max_block_length} "
        f"({args.max_block_length - 2} image bytes per TransferData); ECU fsyncs every block."
    )
    wire = Wire(args.bitrate)
    with tempfile.TemporaryDirectory() as tmp:
        run = asyncio.run(
            flash_once(
                image,
                wire=wire,
                max_block=args.max_block_length,
                bank_size=bank_size,
                state_dir=Path(tmp),
            )
        )
    result = run.result
    mean_cf_bits = statistics.fmean(wire.cf_bits)
    theoretical = CF_PAYLOAD * args.bitrate / mean_cf_bits  # bytes per second
    achieved = len(image) / result.transfer_s
    ratio = achieved / theoretical
    load = wire.bits / args.bitrate / run.total_s
    print(
        f"consecutive frames: {len(wire.cf_bits)}, mean {mean_cf_bits:.1f} bits on the wire for "
        f"7 payload bytes → theoretical ISO-TP payload rate {theoretical / 1000:.2f} kB/s"
    )
    kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(wire.by_kind.items()))
    print(f"frames on the wire: {wire.frames} ({kinds})")
    print(
        f"transfer: {len(image)} bytes in {result.transfer_s:.2f} s = {achieved / 1000:.2f} kB/s "
        f"→ {ratio:.3f} of theoretical   {'PASS' if ratio >= TARGET else 'FAIL'} "
        f"(target ≥ {TARGET})"
    )
    print(
        f"whole flash (sessions, security, erase, transfer, check, reset): {run.total_s:.2f} s "
        f"→ {len(image) / run.total_s / theoretical:.3f} of theoretical; wire busy {load:.1%} "
        f"of that time"
    )
    if not args.no_reference:
        small = build_image(payload[: 256 << 10], version=2, hardware_id="bms", private_key=KEY)
        with tempfile.TemporaryDirectory() as tmp:
            ref = asyncio.run(
                flash_once(
                    small,
                    wire=None,
                    max_block=args.max_block_length,
                    bank_size=bank_size,
                    state_dir=Path(tmp),
                )
            )
        rate = len(small) / ref.result.transfer_s
        print(
            f"reference, unpaced (CPU-bound, 256 KiB): {rate / 1000:.1f} kB/s = "
            f"{rate / theoretical:.1f}× the bus's theoretical rate"
        )
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())

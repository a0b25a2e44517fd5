"""Benchmark: the compiled decoder against cantools' own decoding, measured in the same run.

Run: ``.venv/bin/python benchmarks/bench_decoder.py [--reps N]``

Two frame sets: the 37,740 known-id ``can0`` frames of the RAV4 log (tests/data) and a synthetic
set of many-signal messages (classic and CAN FD, both byte orders, scaled, signed, multiplexed).
For each, three decoders run over the same frames, interleaved, ``--reps`` times:

* ``cantools``: ``Database.decode_message(frame_id, data, decode_choices=False)`` — the baseline;
* ``cached``: ``Message.decode(data, decode_choices=False)`` with messages looked up in a dict by
  id — cantools used as well as it can be, shown for fairness;
* ``tbox``: ``Decoder.decode(frame_id, data)``.

Times are CPU time of this process (``time.process_time``), so other work on a shared machine
disturbs them less than wall-clock time would. Prints median µs per frame and the ratios; exits
1 if the decoder is less than 2.0x faster than ``decode_message`` on either set (CI may gate on
it), 0 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import logging
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import can
import cantools
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion

from can_dbc.decoder import Decoder

RAV4 = Path(__file__).resolve().parents[1] / "tests" / "data" / "rav4-2018-comma2k19"
REQUIRED_RATIO = 2.0

Frames = list[tuple[int, bytes]]


def rav4_frames() -> tuple[Any, Frames]:
    db: Any = cantools.database.load_file(
        str(RAV4 / "toyota_new_mc_pt_generated.dbc"), strict=False
    )
    known = {m.frame_id for m in db.messages}
    frames = [
        (m.arbitration_id, bytes(m.data))
        for m in can.LogReader(str(RAV4 / "rav4_60s.log"))
        if m.channel == "can0" and m.arbitration_id in known
    ]
    return db, frames


def synthetic_frames(count: int = 20_000) -> tuple[Any, Frames]:
    """Many-signal messages: 8-byte ones with 8-16 signals, 64-byte CAN FD ones with 48."""
    rng = random.Random(1)
    scalings = [(1, 0), (0.1, 0), (0.01, -40), (2, 100), (0.5, -0.5), (1, -1000)]

    def bits(big: bool, start: int, length: int) -> int:
        if not big:
            return ((1 << length) - 1) << start
        first = 8 * (start // 8) + 7 - start % 8
        return sum(1 << (8 * (n // 8) + 7 - n % 8) for n in range(first, first + length))

    def signals(nbytes: int, count: int) -> list[Any]:
        """``count`` non-overlapping signals of random order, size, sign and scaling."""
        result: list[Any] = []
        busy = 0
        while len(result) < count:
            big = rng.random() < 0.5
            length = rng.randint(1, 16 * nbytes // count)
            first = rng.randrange(8 * nbytes - length + 1)  # network bit if big endian
            start = 8 * (first // 8) + 7 - first % 8 if big else first
            if bits(big, start, length) & busy:
                continue
            busy |= bits(big, start, length)
            scale, offset = rng.choice(scalings)
            result.append(
                Signal(
                    name=f"S{len(result)}",
                    start=start,
                    length=length,
                    byte_order="big_endian" if big else "little_endian",
                    is_signed=rng.random() < 0.3,
                    conversion=BaseConversion.factory(scale=scale, offset=offset),
                )
            )
        return result

    messages = [
        Message(frame_id=0x100 + i, name=f"Classic{i}", length=8, signals=signals(8, n))
        for i, n in enumerate([8, 10, 12, 16] * 4)
    ]
    messages += [
        Message(frame_id=0x400 + i, name=f"Fd{i}", length=64, signals=signals(64, 48), is_fd=True)
        for i in range(4)
    ]
    mux = [
        Signal(name="Page", start=0, length=2, is_multiplexer=True),
        *(
            Signal(
                name=f"P{page}_{j}",
                start=8 + 8 * j,
                length=8,
                multiplexer_ids=[page],
                multiplexer_signal="Page",
                conversion=BaseConversion.factory(scale=0.25, offset=0),
            )
            for page in range(4)
            for j in range(7)
        ),
    ]
    messages.append(Message(frame_id=0x500, name="Paged", length=8, signals=mux))
    db = Database(messages=messages)
    frames = []
    for _ in range(count):
        message = rng.choice(messages)
        frames.append((message.frame_id, rng.randbytes(message.length)))
    return db, frames


def time_cantools(db: Any, frames: Frames) -> float:
    decode = db.decode_message
    start = time.process_time()
    for frame_id, data in frames:
        decode(frame_id, data, decode_choices=False)
    return time.process_time() - start


def time_cached(db: Any, frames: Frames) -> float:
    messages = {m.frame_id: m for m in db.messages}
    start = time.process_time()
    for frame_id, data in frames:
        messages[frame_id].decode(data, decode_choices=False)
    return time.process_time() - start


def time_tbox(decoder: Decoder, frames: Frames) -> float:
    decode = decoder.decode
    start = time.process_time()
    for frame_id, data in frames:
        decode(frame_id, data)
    return time.process_time() - start


def bench(label: str, db: Any, frames: Frames, reps: int) -> float:
    """Print one set's figures; return the ratio against decode_message."""
    decoder = Decoder(db)
    for frame_id, data in frames[:2000]:  # same answers before timing anything
        result = decoder.decode(frame_id, data)
        assert result is not None
        assert result.signals == db.decode_message(frame_id, data, decode_choices=False)
    runs: dict[str, list[float]] = {"cantools": [], "cached": [], "tbox": []}
    timers: dict[str, Callable[[], float]] = {
        "cantools": lambda: time_cantools(db, frames),
        "cached": lambda: time_cached(db, frames),
        "tbox": lambda: time_tbox(decoder, frames),
    }
    for rep in range(reps):
        order = list(timers)
        order = order[rep % 3 :] + order[: rep % 3]  # interleaved, rotating: fair to drift
        for name in order:
            gc.collect()
            runs[name].append(timers[name]() / len(frames) * 1e6)
    us = {name: statistics.median(values) for name, values in runs.items()}
    ratio = us["cantools"] / us["tbox"]
    print(f"[{label}]")
    print(
        f"  decoder vs cantools decode_message: {ratio:.2f}x (cantools {us['cantools']:.2f} "
        f"us/frame, tbox {us['tbox']:.2f} us/frame, {len(frames)} frames x {reps} reps)"
    )
    print(
        f"  decoder vs cached Message.decode:   {us['cached'] / us['tbox']:.2f}x "
        f"(cached {us['cached']:.2f} us/frame)"
    )
    return ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--reps", type=int, default=7, help="repetitions per decoder (median)")
    args = parser.parse_args(argv)
    logging.getLogger("cantools").setLevel(logging.ERROR)
    ratios = {
        "RAV4 log": bench("RAV4 log, can0 frames of known ids", *rav4_frames(), args.reps),
        "synthetic": bench("synthetic many-signal messages", *synthetic_frames(), args.reps),
    }
    slow = [name for name, ratio in ratios.items() if ratio < REQUIRED_RATIO]
    if slow:
        print(f"FAIL: decoder below {REQUIRED_RATIO}x decode_message on: {', '.join(slow)}")
        return 1
    print(f"OK: decoder at least {REQUIRED_RATIO}x decode_message on every set")
    return 0


if __name__ == "__main__":
    sys.exit(main())

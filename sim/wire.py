"""The CAN wire: how many bits a frame occupies, for timing and bus-load figures.

:func:`frame_bits` is exact for what the simulator sends: classic CAN = 47 + 8·n bits (11-bit id)
or 67 + 8·n (29-bit id) including the 3-bit intermission, plus the stuff bits actually needed for
the frame's header and data (a bit-stuffing automaton; the CRC's own 0–3 stuff bits are not
counted). CAN FD (bit-rate switch assumed): the arbitration part at the nominal rate and the data
part (ESI, DLC, data, stuff count, CRC-17/21 with its fixed stuff bits, dynamic stuff bits) at the
data rate.

:func:`estimated_bits` is the cheap lower bound (no stuffing, FD counted at the nominal rate) for
load figures on paths that see every replayed frame, where the exact count would cost more than
sending the frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import can

__all__ = [
    "FD_DLC_CODE",
    "FD_LENGTHS",
    "STUFF_TABLE",
    "estimated_bits",
    "frame_bits",
    "header_bits",
    "stuff_bits",
]

#: The data lengths a CAN FD frame can have, indexed by its DLC code.
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)
FD_DLC_CODE = {n: i for i, n in enumerate(FD_LENGTHS)}


def _build_stuff_table() -> list[int]:
    """Bit-stuffing automaton over bytes (MSB first, as CAN sends them).

    State = (last bit, run length 1–5) packed as ``last * 5 + run - 1``; entry
    ``[state * 256 + byte]`` holds ``next_state * 256 | stuff_bits << 16``.
    """
    table = [0] * (10 * 256)
    for state in range(10):
        for byte in range(256):
            last, run = divmod(state, 5)
            run += 1
            stuffed = 0
            for i in range(7, -1, -1):
                bit = (byte >> i) & 1
                if bit == last:
                    run += 1
                else:
                    last, run = bit, 1
                if run == 5:
                    stuffed += 1
                    last, run = 1 - last, 1  # the stuff bit starts a new run
            table[state * 256 + byte] = ((last * 5 + run - 1) * 256) | (stuffed << 16)
    return table


STUFF_TABLE = _build_stuff_table()


def stuff_bits(bits: Sequence[int]) -> tuple[int, int]:
    """Run the stuffing rule over an explicit bit list: ``(stuff bits, end state * 256)``."""
    last, run, stuffed = 1, 0, 0
    for bit in bits:
        if bit == last:
            run += 1
        else:
            last, run = bit, 1
        if run == 5:
            stuffed += 1
            last, run = 1 - last, 1
    return stuffed, (last * 5 + run - 1) * 256


def header_bits(frame_id: int, extended: bool, fd: bool, length: int) -> list[int]:
    """SOF … DLC (… ESI, DLC for FD) of a data frame, most significant bit first."""

    def bits(value: int, n: int) -> list[int]:
        return [(value >> i) & 1 for i in range(n - 1, -1, -1)]

    dlc = FD_DLC_CODE[length] if fd else min(length, 8)
    out = [0]  # SOF
    if extended:
        out += [*bits(frame_id >> 18, 11), 1, 1, *bits(frame_id & 0x3FFFF, 18)]  # SRR, IDE
    else:
        out += bits(frame_id, 11)
    if fd:
        out += [0] if extended else [0, 0]  # RRS (+ IDE for 11-bit)
        out += [1, 0, 1, 0]  # FDF, res, BRS, ESI
    else:
        out += [0, 0] if extended else [0, 0, 0]  # RTR, r1/IDE, r0
        if extended:
            out += [0]
    out += bits(dlc, 4)
    return out


def frame_bits(
    frame_id: int, extended: bool, data: bytes | bytearray, *, fd: bool = False
) -> tuple[int, int]:
    """Bits a data frame occupies on the wire: ``(nominal-rate bits, data-rate bits)``.

    Classic frames return ``(bits, 0)``. See the module docstring for what is counted.
    """
    n = len(data)
    hdr = header_bits(frame_id, extended, fd, n)
    stuffed, state = stuff_bits(hdr)
    data_stuff = 0
    table = STUFF_TABLE
    for b in data:
        e = table[state + b]
        state = e & 0xFFFF
        data_stuff += e >> 16
    if not fd:
        return (67 if extended else 47) + 8 * n + stuffed + data_stuff, 0
    arb = (36 if extended else 17) + 13
    crc = 17 if n <= 16 else 21
    data_phase = 1 + 4 + 8 * n + 4 + crc + (6 if crc == 17 else 7) + data_stuff
    return arb + stuffed, data_phase


def estimated_bits(msg: can.Message) -> int:
    """Bits *msg* occupies on the wire without stuffing: 47 or 67 overhead plus 8 per data byte."""
    overhead = 67 if msg.is_extended_id else 47
    if msg.is_remote_frame:
        return overhead
    return overhead + 8 * len(msg.data)

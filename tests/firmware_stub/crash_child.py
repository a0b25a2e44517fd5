"""A simulated ECU being reprogrammed, for the crash-point tests (C6), run as a child process.

    python -m tests.firmware_stub.crash_child STATE_DIR

In one process, on an in-process bus: a simulated ECU ("bms", factory image version 1 when its
state is new) and a tester that

    1  flashes an image signed by another key (refused at the check: reaches erase, blocks,
       progress and check_failed),
    2  flashes version 2 (erase, blocks, progress, validity flag, fingerprint, reset and the
       active bank switch),
    3  clears the DTCs (ClearDiagnosticInformation),
    4  rolls version 2 back (RoutineControl 0xFF02 invalidates its bank, the reset boots
       version 1 again: reaches the invalidation and the active bank switch).

It prints ``step N done`` after each (flushed; a crash point exits without flushing). With
``TBOX_CRASHPOINT=<ecu.name>:<n>`` the process exits 137 there, as a power cut would.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from ota.ecu_flash import (
    DEFAULT_SECRET,
    EcuCheckFailedError,
    SeedKeyAlgorithm,
    compute_key,
)
from ota.ecu_image import EcuImage
from tests.firmware_stub.support import OTHER_KEY, ecu_config, flasher, make_image, running

CHUNK = 256
V1 = make_image(1)
V2 = make_image(2, 12 * CHUNK - 192)
FORGED = make_image(2, 3 * CHUNK - 192, key=OTHER_KEY)


def config() -> object:
    """The ECU as every process of the test configures it."""
    return ecu_config(factory=V1, max_block_length=CHUNK + 2)


def clear_dtcs(url: str) -> None:
    import isotp
    import udsoncan
    from udsoncan.client import Client
    from udsoncan.connections import PythonIsoTpConnection

    from agent.busurl import open_bus, parse_bus_url

    bus = open_bus(parse_bus_url(url))
    stack = isotp.CanStack(
        bus, address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=0x7E0, rxid=0x7E8)
    )
    settings = dict(udsoncan.configs.default_client_config)
    settings.update(
        {
            "use_server_timing": False,
            "security_algo": lambda level, seed, params: compute_key(
                SeedKeyAlgorithm.HMAC_SHA256, DEFAULT_SECRET, seed
            ),
        }
    )
    try:
        with Client(PythonIsoTpConnection(stack), config=settings) as client:  # type: ignore[arg-type]
            client.clear_dtc()
    finally:
        bus.shutdown()


async def main(state_dir: Path) -> None:
    async with running(state_dir, [config()]) as (_, url):  # type: ignore[list-item]
        with contextlib.suppress(EcuCheckFailedError):
            await flasher(url).flash(EcuImage.from_bytes(FORGED))
        print("step 1 done", flush=True)
        await flasher(url).flash(EcuImage.from_bytes(V2))
        print("step 2 done", flush=True)
        await asyncio.to_thread(clear_dtcs, url)
        print("step 3 done", flush=True)
        await flasher(url).roll_back(EcuImage.from_bytes(V2))
        print("step 4 done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1])))

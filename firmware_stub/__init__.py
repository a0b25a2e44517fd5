"""A simulated ECU: a UDS bootloader over ISO-TP on any python-can bus, with two flash banks.

* :class:`EcuHost` runs one or several :class:`SimulatedEcu` on a bus (:mod:`firmware_stub.ecu`);
  ``tbox ecu run`` is its command line.
* :class:`UdsServer` decides every request (:mod:`firmware_stub.uds`, pure).
* :class:`FlashMemory` keeps the banks and the metadata durable (:mod:`firmware_stub.flash`).
* :class:`FaultPlan` drops or delays responses, cuts the power, corrupts blocks
  (:mod:`firmware_stub.faults`).

The tester side — and the protocol profile (DIDs, routines, records) both sides follow — is
:mod:`ota.ecu_flash`; images are :mod:`ota.ecu_image`.
"""

from firmware_stub.ecu import EcuConfig, EcuHost, EcuStats, SimulatedEcu
from firmware_stub.errors import EcuConfigError, FlashIOError, FlashStateError, PowerCut
from firmware_stub.faults import FaultPlan, parse_faults
from firmware_stub.flash import FlashMemory, FlashMeta
from firmware_stub.uds import ServerConfig, ServerState, Session, UdsServer

__all__ = [
    "EcuConfig",
    "EcuConfigError",
    "EcuHost",
    "EcuStats",
    "FaultPlan",
    "FlashIOError",
    "FlashMemory",
    "FlashMeta",
    "FlashStateError",
    "PowerCut",
    "ServerConfig",
    "ServerState",
    "Session",
    "SimulatedEcu",
    "UdsServer",
    "parse_faults",
]

"""tbox-agent: the on-vehicle service and the ``tbox`` command line."""

from agent.busurl import BusSpec, open_bus, parse_bus_url
from agent.errors import BusError, InputError, TboxError, UsageError

__all__ = [
    "BusError",
    "BusSpec",
    "InputError",
    "TboxError",
    "UsageError",
    "open_bus",
    "parse_bus_url",
]

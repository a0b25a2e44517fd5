"""DBC loading tolerant of real-world files, and the compiled signal decoder."""

from importlib.resources import files as _files
from pathlib import Path as _Path

from can_dbc.decoder import Decoded, Decoder
from can_dbc.diagnostics import DbcDiagnostic
from can_dbc.errors import DbcError, DbcLoadError, DecodeError
from can_dbc.loader import LoadedDbc, load_dbc, load_dbc_string

#: The sample vehicle's DBC (``can_dbc/vehicles/tbox_ev.dbc``) as a file path.
SAMPLE_VEHICLE_DBC = _Path(str(_files("can_dbc").joinpath("vehicles", "tbox_ev.dbc")))

__all__: list[str] = [
    "SAMPLE_VEHICLE_DBC",
    "DbcDiagnostic",
    "DbcError",
    "DbcLoadError",
    "DecodeError",
    "Decoded",
    "Decoder",
    "LoadedDbc",
    "load_dbc",
    "load_dbc_string",
]

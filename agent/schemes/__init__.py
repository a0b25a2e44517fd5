"""Collection schemes: what data to collect from decoded signals, and when.

* :mod:`~agent.schemes.model` — the frozen scheme model and the records schemes produce;
* :mod:`~agent.schemes.loader` — TOML files and decoded command payloads → validated schemes;
* :mod:`~agent.schemes.expression` — the condition language, parsed and compiled once;
* :mod:`~agent.schemes.evaluator` — :class:`SchemeEvaluator`, frames in, records out (pure);
* :mod:`~agent.schemes.last_known` — :class:`LastKnownState` for the retained ``state`` topic;
* :mod:`~agent.schemes.history` — per-signal values and bounded, time-indexed histories;
* :mod:`~agent.schemes.geofence` — named circles and polygons for ``inside()``.
"""

from agent.schemes.errors import ExpressionError, SchemeError
from agent.schemes.evaluator import SchemeEvaluator
from agent.schemes.expression import Expression, parse_expression
from agent.schemes.geofence import Geofence
from agent.schemes.last_known import LastKnownState
from agent.schemes.loader import load_schemes, parse_scheme_document, parse_schemes
from agent.schemes.model import (
    CollectedRecord,
    Condition,
    OnChange,
    Periodic,
    Sample,
    Scheme,
    SignalRef,
    SignalSpec,
)

__all__ = [
    "CollectedRecord",
    "Condition",
    "Expression",
    "ExpressionError",
    "Geofence",
    "LastKnownState",
    "OnChange",
    "Periodic",
    "Sample",
    "Scheme",
    "SchemeError",
    "SchemeEvaluator",
    "SignalRef",
    "SignalSpec",
    "load_schemes",
    "parse_expression",
    "parse_scheme_document",
    "parse_schemes",
]

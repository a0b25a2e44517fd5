"""The IDS: rule files, detectors, the engine and its security events; SecOC verification.

* :func:`load_rules` / :func:`parse_rules` read a rule file (format: :mod:`security.rulefile`)
  into a frozen :class:`RuleSet`; :func:`format_rules` writes one back.
* :func:`learn_rules` (:class:`BaselineLearner`) learns a baseline rule set from clean traffic.
* :class:`IdsEngine` judges frames against a rule set and returns per-frame verdicts and
  aggregated :class:`SecurityEvent` objects (AUTOSAR IdsM fields plus an explanation).
* :mod:`security.secoc` builds and verifies AUTOSAR-style authenticated frames;
  :func:`load_keys` reads their keys.
"""

from security.aggregate import AggregationPolicy
from security.engine import EngineConfig, EngineStats, IdsEngine
from security.errors import KeyFileError, RuleBindingError, RuleFileError
from security.events import ForensicFrame, SecurityEvent
from security.keys import load_keys, parse_keys
from security.learn import BaselineLearner, LearnOptions, learn_rules
from security.rulefile import format_rules, load_rules, parse_rule_document, parse_rules
from security.rules import KINDS, Rule, RuleSet, Severity

__all__: list[str] = [
    "KINDS",
    "AggregationPolicy",
    "BaselineLearner",
    "EngineConfig",
    "EngineStats",
    "ForensicFrame",
    "IdsEngine",
    "KeyFileError",
    "LearnOptions",
    "Rule",
    "RuleBindingError",
    "RuleFileError",
    "RuleSet",
    "SecurityEvent",
    "Severity",
    "format_rules",
    "learn_rules",
    "load_keys",
    "load_rules",
    "parse_keys",
    "parse_rule_document",
    "parse_rules",
]

"""Retry delays: exponential backoff with jitter, shared by everything that reconnects."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays: ``initial`` doubling up to ``maximum``, each with ±``jitter`` fraction."""

    initial: float = 0.1
    maximum: float = 5.0
    jitter: float = 0.2

    def delays(self) -> Iterator[float]:
        """An endless sequence of delays."""
        delay = self.initial
        while True:
            yield delay * (1.0 + random.uniform(-self.jitter, self.jitter))
            delay = min(delay * 2.0, self.maximum)

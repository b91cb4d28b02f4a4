"""Where the query path reports what it did; the app turns these reports into metrics."""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def cache(self, outcome: str) -> None: ...  # hit, miss, coalesced, stale, not-modified

    def backend(self, variation_type: str, outcome: str, seconds: float) -> None: ...

    def fallback(self, reason: str) -> None: ...

    def decoration_failed(self) -> None: ...

    def exposure(self, outcome: str) -> None: ...  # written, dropped


class Quiet:
    """The observer when nobody listens."""

    def cache(self, outcome: str) -> None:
        pass

    def backend(self, variation_type: str, outcome: str, seconds: float) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass

    def decoration_failed(self) -> None:
        pass

    def exposure(self, outcome: str) -> None:
        pass

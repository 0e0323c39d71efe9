"""Success factors: why a pattern works."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class SuccessFactorsMixin(PatternsMixin):
    """Success factors: why a pattern works."""

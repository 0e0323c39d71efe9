"""The evolution trajectory (meta-learning log)."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class EvolutionMixin(PatternsMixin):
    """The evolution trajectory (meta-learning log)."""

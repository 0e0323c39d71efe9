"""Effectiveness drift and epistemic drift."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class DriftMixin(PatternsMixin):
    """Effectiveness drift and epistemic drift."""

"""Quarantine lifecycle, automatic promotion and trust scores."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class LifecycleMixin(PatternsMixin):
    """Quarantine lifecycle, automatic promotion and trust scores."""

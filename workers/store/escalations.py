"""Escalation decisions and their similarity search."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class EscalationsMixin(PatternsMixin):
    """Escalation decisions and their similarity search."""

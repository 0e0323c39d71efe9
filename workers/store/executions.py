"""Executions, their statistics and the optimal execution window."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class ExecutionsMixin(PatternsMixin):
    """Executions, their statistics and the optimal execution window."""

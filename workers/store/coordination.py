"""Cross-job coordination: rate-limit events and pattern discovery events."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class CoordinationMixin(PatternsMixin):
    """Cross-job coordination: rate-limit events and pattern discovery events."""

"""Pattern entropy, exploration budget and the automatic entropy response."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class DiversityMixin(PatternsMixin):
    """Pattern entropy, exploration budget and the automatic entropy response."""

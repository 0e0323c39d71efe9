"""Error recoveries and learned wait times."""

from __future__ import annotations

from ostinato.workers.store.patterns import PatternsMixin


class RecoveriesMixin(PatternsMixin):
    """Error recoveries and learned wait times."""

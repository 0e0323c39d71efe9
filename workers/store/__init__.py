"""The learning store: every upstream operation, exact under many concurrent writers."""

from __future__ import annotations

from ostinato.workers.store.base import create_store_engine, utcnow
from ostinato.workers.store.coordination import CoordinationMixin
from ostinato.workers.store.dead_letters import DeadLettersMixin
from ostinato.workers.store.diversity import DiversityMixin
from ostinato.workers.store.drift import DriftMixin
from ostinato.workers.store.escalations import EscalationsMixin
from ostinato.workers.store.evolution import EvolutionMixin
from ostinato.workers.store.executions import ExecutionsMixin
from ostinato.workers.store.lifecycle import LifecycleMixin
from ostinato.workers.store.patterns import ApplicationInput, PatternsMixin
from ostinato.workers.store.recoveries import RecoveriesMixin
from ostinato.workers.store.success_factors import SuccessFactorsMixin


class Store(
    LifecycleMixin,
    SuccessFactorsMixin,
    DriftMixin,
    DiversityMixin,
    ExecutionsMixin,
    RecoveriesMixin,
    CoordinationMixin,
    EscalationsMixin,
    EvolutionMixin,
    DeadLettersMixin,
    PatternsMixin,
):
    """One object with every store operation; each call is one transaction unless inside ``batch``/``run``."""

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(create_store_engine(url))


__all__ = ["ApplicationInput", "Store", "create_store_engine", "utcnow"]

"""What the demo shows: the live panel while runners work, and the closing summary read from the store."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.table import Table
from sqlalchemy import func, select

from ostinato.demo.tally import Tally
from ostinato.demo.world import CHECKS
from ostinato.producers.preflight import PatternContext, Preflight
from ostinato.schema.tables import dead_letters, executions, patterns
from ostinato.settings import Settings
from ostinato.workers.maintenance import latest_drift
from ostinato.workers.store import Store

RECENT_SHEETS = 60
TOP_PATTERNS = 10
JUDGED = 3
"""Applications before beat's trust pass judges a pattern (validates or quarantines it)."""


@dataclass(frozen=True)
class StoreFigures:
    applied: int
    patterns: int
    validated: int
    quarantined: int
    dead_letters: int


def store_figures(store: Store, job_hashes: Sequence[str]) -> StoreFigures:
    """This run's applied outcomes, and the whole store's patterns and dead letters."""
    with store.batch() as connection:
        applied = connection.execute(
            select(func.count()).select_from(executions).where(executions.c.job_hash.in_(list(job_hashes)))
        ).scalar_one()
        by_status: dict[str, int] = dict(
            connection.execute(
                select(patterns.c.quarantine_status, func.count()).group_by(patterns.c.quarantine_status)
            ).all()
        )
        letters = connection.execute(select(func.count()).select_from(dead_letters)).scalar_one()
    return StoreFigures(
        applied=int(applied),
        patterns=int(sum(by_status.values())),
        validated=int(by_status.get("validated", 0)),
        quarantined=int(by_status.get("quarantined", 0)),
        dead_letters=int(letters),
    )


def live_table(tally: Tally, figures: StoreFigures, waiting: int, discoveries: int, mode: str) -> Table:
    table = Table(title=f"ostinato demo ({mode})", show_header=False, min_width=60)
    table.add_column(style="bold")
    table.add_column(justify="right")
    recent = tally.sheets[-RECENT_SHEETS:]
    rate = sum(s.success_without_retry for s in recent) / len(recent) if recent else 0.0
    rows = [
        ("runners at work", f"{len(tally.job_hashes) - len(tally.finished)} of {len(tally.job_hashes)}"),
        ("outcomes published", str(len(tally.sheets))),
        ("outcomes applied to the store", str(figures.applied)),
        ("waiting in the queue" if mode == "servers" else "waiting to be applied", str(waiting)),
        (
            "patterns (validated / quarantined)",
            f"{figures.patterns} ({figures.validated} / {figures.quarantined})",
        ),
        ("live discoveries received", str(discoveries)),
        ("rate-limit hits / waited out by others", f"{tally.rate_limited} / {tally.waits}"),
        ("dead letters", str(figures.dead_letters)),
        (f"success without retry, last {RECENT_SHEETS} sheets", f"{rate:.0%}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def summary(
    store: Store, settings: Settings, tally: Tally, discoveries: int, seed: int
) -> tuple[RenderableType, list[str]]:
    """The closing summary, and the guidance a brand-new job would be given (for the caller to check)."""
    first, last = tally.quarter_rates()
    learning = Table(title="learning", show_header=False)
    learning.add_column(style="bold")
    learning.add_column()
    learning.add_row("sheets run", f"{len(tally.sheets)} by {len(tally.job_hashes)} jobs")
    learning.add_row("success without retry", f"first quarter {first:.1%}  →  last quarter {last:.1%}")
    learning.add_row("discoveries broadcast live", str(discoveries))
    learning.add_row(
        "rate limits",
        f"{tally.rate_limited} hits; other runners waited them out {tally.waits} times "
        f"({tally.waited_seconds:.1f} s) instead of hitting them too",
    )
    entropy = store.calculate_pattern_entropy()
    budget = store.get_exploration_budget_statistics()
    learning.add_row(
        "pattern entropy",
        f"shannon {entropy.shannon_entropy:.3f} of {entropy.max_possible_entropy:.3f}, "
        f"diversity {entropy.diversity_index:.3f} over {entropy.unique_pattern_count} patterns",
    )
    learning.add_row(
        "exploration budget",
        f"current {_num(budget.get('current_budget'))}, average {_num(budget.get('avg_budget'))} "
        f"over {budget.get('total_adjustments', 0)} adjustments",
    )
    quarantined = store.get_quarantined_patterns(limit=5)
    learning.add_row(
        "quarantined (no longer suggested)",
        ", ".join(f"{r.pattern_name} ({r.effectiveness_score:.2f})" for r in quarantined) or "none",
    )
    drift = latest_drift(store, 100)
    exceeded = [d for d in drift if d.threshold_exceeded]
    learning.add_row("drift", f"{len(drift)} patterns measured, {len(exceeded)} beyond the threshold")
    for d in exceeded[:3]:
        change = f"{_num(d.effectiveness_before)} → {_num(d.effectiveness_after)}"
        learning.add_row("", f"{d.pattern_name}: {change}" + (", retired" if d.retired else ""))
    told = new_job_guidance(settings, seed)
    advice = Table(
        title="what a brand-new job checking files and tests would be told", show_header=False, min_width=64
    )
    advice.add_column()
    for line in told or ["(nothing yet)"]:
        advice.add_row(line)
    parts: list[RenderableType] = [_patterns_table(store), learning, advice]
    scrubbed = _scrubbed_example(tally)
    if scrubbed is not None:
        parts.append(scrubbed)
    return Group(*parts), told


def new_job_guidance(settings: Settings, seed: int) -> list[str]:
    reader = Preflight(settings)
    try:
        types = [CHECKS[0].validation_type, CHECKS[1].validation_type]
        chosen = reader.relevant_patterns(PatternContext(validation_types=types), 3, rng=random.Random(seed))
    finally:
        reader.close()
    return [p.guidance for p in chosen]


def _patterns_table(store: Store) -> Table:
    """The most effective of the patterns applied often enough to be judged (three applications)."""
    records = store.get_patterns(min_priority=0.0, limit=500)
    records.sort(key=lambda r: (r.applications >= JUDGED, r.effectiveness_score), reverse=True)
    columns = ("pattern", "seen", "applied", "effectiveness", "trust", "status")
    table = Table(*columns, title="top patterns")
    for r in records[:TOP_PATTERNS]:
        table.add_row(
            r.pattern_name[:56],
            str(r.occurrence_count),
            str(r.applications),
            f"{r.effectiveness_score:.2f}",
            f"{r.trust_score:.2f}",
            r.quarantine_status.value,
        )
    return table


def _scrubbed_example(tally: Tally) -> Table | None:
    """Secrets runners wrote into their tails, next to the same lines as they left the runner."""
    if not tally.secrets:
        return None
    table = Table("a runner wrote", "what left the runner", title="scrubbed before sending")
    for written, sent in tally.secrets[-3:]:
        table.add_row(written, sent)
    return table


def _num(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else "none"

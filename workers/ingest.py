"""Apply a batch of validated messages to the store: once each, in one transaction.

Each message's effect and its ``processed_messages`` row commit together, so a redelivered or duplicated
message changes nothing. Deltas to one pattern are combined into one locked row update per batch, so a hot
pattern costs one update per batch, not one per message.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import structlog

from ostinato.schema.identity import sheet_num_from_id
from ostinato.schema.messages import (
    ErrorRecoveryMessage,
    EscalationDecisionMessage,
    EvolutionEntryMessage,
    Message,
    PatternApplicationMessage,
    PatternReportMessage,
    RateLimitMessage,
    SheetOutcomeMessage,
)
from ostinato.schema.records import PatternDiscoveryEvent
from ostinato.schema.tables import processed_messages
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.store import ApplicationInput, Store
from ostinato.workers.store.evolution import DuplicateCycleError
from ostinato.workers.store.executions import ExecutionInput
from ostinato.workers.store.patterns import PatternSighting, merge_sightings
from ostinato.workers.store.success_factors import FactorObservation, observation

log = structlog.get_logger(__name__)

Detector = Callable[[Store, Sequence[SheetOutcomeMessage]], list[PatternSighting]]
"""Turns the outcomes of a batch into pattern sightings (pattern detection plugs in here)."""


@dataclass
class IngestReport:
    """What one batch did; ``discoveries`` are to be broadcast after the transaction commits."""

    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    discoveries: list[PatternDiscoveryEvent] = field(default_factory=list)


@dataclass
class _Partition:
    """A batch's messages by kind, each list typed."""

    outcomes: list[SheetOutcomeMessage] = field(default_factory=list)
    reports: list[PatternReportMessage] = field(default_factory=list)
    applications: list[PatternApplicationMessage] = field(default_factory=list)
    rate_limits: list[RateLimitMessage] = field(default_factory=list)
    recoveries: list[ErrorRecoveryMessage] = field(default_factory=list)
    escalations: list[EscalationDecisionMessage] = field(default_factory=list)
    evolution: list[EvolutionEntryMessage] = field(default_factory=list)

    @classmethod
    def of(cls, messages: Iterable[Message]) -> _Partition:
        batch = cls()
        for m in messages:
            match m:
                case SheetOutcomeMessage():
                    batch.outcomes.append(m)
                case PatternReportMessage():
                    batch.reports.append(m)
                case PatternApplicationMessage():
                    batch.applications.append(m)
                case RateLimitMessage():
                    batch.rate_limits.append(m)
                case ErrorRecoveryMessage():
                    batch.recoveries.append(m)
                case EscalationDecisionMessage():
                    batch.escalations.append(m)
                case EvolutionEntryMessage():
                    batch.evolution.append(m)
        return batch


def apply_messages(
    store: Store,
    messages: Sequence[Message],
    *,
    detector: Detector | None = detect_sightings,
    discovery_ttl_seconds: float = 300.0,
) -> IngestReport:
    """Apply ``messages`` in one transaction, retried whole on deadlock; duplicates are skipped.

    ``detector`` turns the batch's outcomes into pattern sightings (None switches detection off).
    """
    return store.run(lambda: _apply(store, messages, detector, discovery_ttl_seconds))


def _apply(store: Store, messages: Sequence[Message], detector: Detector | None, ttl: float) -> IngestReport:
    report = IngestReport()
    fresh = _claim(store, messages)
    report.duplicates = len(messages) - len(fresh)
    report.applied = len(fresh)
    batch = _Partition.of(fresh)
    outcomes = batch.outcomes

    store.record_executions([_execution(m) for m in outcomes])
    sightings = [_sighting(m) for m in batch.reports]
    if detector is not None and outcomes:
        sightings.extend(detector(store, outcomes))
    applications = [a for m in outcomes for a in _outcome_applications(m)]
    applications += [_application(m) for m in batch.applications]
    combined = _combine(sightings)
    known = set(store.lock_patterns([s.id for s in combined] + [a.pattern_id for a in applications]))
    store.add_sightings([s for s in combined if s.id in known])
    for sighting in combined:
        if sighting.id in known:
            continue
        result = store.upsert_pattern(sighting)
        if result.created:
            report.discoveries.append(
                store.record_pattern_discovery(
                    result.id,
                    sighting.pattern_name,
                    sighting.pattern_type,
                    sighting.provenance_job_hash or "",
                    effectiveness_score=1.0,
                    context_tags=sighting.context_tags,
                    ttl_seconds=ttl,
                    recorded_at=sighting.seen_at,
                )
            )

    store.record_pattern_applications(applications)
    store.record_success_factors([seen for m in outcomes for seen in _success_observations(m)])

    for rate_message in batch.rate_limits:
        rate = rate_message.payload
        store.record_rate_limit_event(
            rate.error_code,
            rate.duration_seconds,
            rate_message.job_hash,
            rate.model,
            recorded_at=rate.recorded_at,
        )
    for recovery_message in batch.recoveries:
        rec = recovery_message.payload
        store.record_error_recovery(
            rec.error_code,
            rec.suggested_wait,
            rec.actual_wait,
            rec.recovery_success,
            rec.model,
            rec.time_of_day,
            recorded_at=rec.recorded_at,
        )
    for escalation_message in batch.escalations:
        esc = escalation_message.payload
        store.record_escalation_decision(
            escalation_message.job_hash,
            esc.sheet_num,
            esc.confidence,
            esc.action,
            esc.validation_pass_rate,
            esc.retry_count,
            esc.guidance,
            esc.outcome_after_action,
            esc.model,
            recorded_at=esc.recorded_at,
        )
    for evolution_message in batch.evolution:
        report.dead_lettered += _record_evolution(store, evolution_message)
    return report


def _claim(store: Store, messages: Sequence[Message]) -> list[Message]:
    """Insert the batch's ``processed_messages`` rows; returns the messages not applied before.

    Ids are claimed in sorted order, so two batches that share messages wait for each other instead of
    deadlocking; a concurrent duplicate blocks until the first commits, then finds the row and skips.
    """
    unique: dict[str, Message] = {}
    for message in messages:
        unique.setdefault(str(message.message_id), message)
    if not unique:
        return []
    now = store.now()
    rows = [{"message_id": mid, "kind": unique[mid].kind, "processed_at": now} for mid in sorted(unique)]
    claimed = set(
        store.insert_rows(processed_messages, rows, returning="message_id", conflict=["message_id"])
    )
    return [m for mid, m in unique.items() if mid in claimed]


def _execution(message: SheetOutcomeMessage) -> ExecutionInput:
    o = message.payload
    return ExecutionInput(
        id=str(o.execution_id),
        workspace_hash=message.workspace_hash,
        job_hash=message.job_hash,
        sheet_num=o.sheet_num if o.sheet_num is not None else sheet_num_from_id(o.sheet_id),
        started_at=o.started_at,
        completed_at=o.completed_at or message.sent_at,
        duration_seconds=o.execution_duration,
        status=o.final_status,
        retry_count=o.retry_count,
        success_without_retry=o.success_without_retry,
        validation_pass_rate=o.validation_pass_rate,
        model=o.model,
        error_codes=[e.error_code for e in o.error_history],
    )


def _outcome_applications(message: SheetOutcomeMessage) -> list[ApplicationInput]:
    """An outcome's applied patterns succeeded only if every validation passed on the first attempt."""
    o = message.payload
    if not o.patterns_applied:
        return []
    passed = o.validation_pass_rate >= 1.0
    led_to_success = passed and o.success_without_retry
    applied_at = o.completed_at or message.sent_at
    execution_id = str(o.execution_id)
    retries = 0 if o.success_without_retry else max(1, o.retry_count)
    return [
        ApplicationInput(
            pattern_id=pid,
            pattern_led_to_success=led_to_success,
            applied_at=applied_at,
            execution_id=execution_id,
            retry_count_after=retries,
            grounding_confidence=o.grounding_confidence,
            validation_passed=passed,
        )
        for pid in dict.fromkeys(o.patterns_applied)
    ]


def _application(message: PatternApplicationMessage) -> ApplicationInput:
    a = message.payload
    return ApplicationInput(
        pattern_id=a.pattern_id,
        pattern_led_to_success=a.pattern_led_to_success,
        applied_at=a.applied_at,
        execution_id=a.execution_id,
        retry_count_before=a.retry_count_before,
        retry_count_after=a.retry_count_after,
        grounding_confidence=a.grounding_confidence,
        application_mode=a.application_mode,
        validation_passed=a.validation_passed,
    )


def _sighting(message: PatternReportMessage) -> PatternSighting:
    r = message.payload
    return PatternSighting(
        pattern_type=r.pattern_type,
        pattern_name=r.pattern_name,
        seen_at=r.reported_at,
        description=r.description,
        context_tags=list(r.context_tags) if r.context_tags is not None else None,
        suggested_action=r.suggested_action,
        provenance_job_hash=r.provenance.job_hash if r.provenance else message.job_hash,
        provenance_sheet_num=r.provenance.sheet_num if r.provenance else None,
        instrument_name=r.instrument_name,
    )


def _combine(sightings: Iterable[PatternSighting]) -> list[PatternSighting]:
    """One sighting per pattern id, in id order, leaving what applying them one by one would leave.

    Counts add up; description, suggested action and tags are the latest-seen sighting's, instrument and
    provenance the earliest's (``merge_sightings``), so a batch stores the same as the same sightings
    spread over many batches applied in any order.
    """
    groups: dict[str, list[PatternSighting]] = defaultdict(list)
    for s in sightings:
        groups[s.id].append(s)
    return [merge_sightings(groups[pid]) for pid in sorted(groups)]


def _success_observations(message: SheetOutcomeMessage) -> list[FactorObservation]:
    """Why each applied pattern worked, for the outcomes where it did (upstream's E.3.b)."""
    o = message.payload
    if not (o.patterns_applied and o.validation_pass_rate >= 1.0 and o.success_without_retry):
        return []
    context = o.success_context
    first, *others = dict.fromkeys(o.patterns_applied)
    seen = observation(
        first,
        o.completed_at or message.sent_at,
        validation_types=sorted({v.validation_type for v in o.validation_results}),
        prior_sheet_status=context.prior_sheet_status if context else None,
        retry_iteration=o.retry_count,
        escalation_was_pending=context.escalation_was_pending if context else False,
        grounding_confidence=o.grounding_confidence,
    )
    return [seen, *(FactorObservation(pid, seen.observed, seen.at) for pid in others)]  # one context, shared


def _record_evolution(store: Store, message: EvolutionEntryMessage) -> int:
    """Record an evolution entry; a duplicate cycle is dead-lettered (returns 1), not fatal to the batch."""
    e = message.payload
    try:
        store.record_evolution_entry(
            e.cycle,
            e.evolutions_completed,
            e.evolutions_deferred,
            list(e.issue_classes),
            e.cv_avg,
            e.implementation_loc,
            e.test_loc,
            e.loc_accuracy,
            e.research_candidates_resolved,
            e.research_candidates_created,
            e.notes,
            recorded_at=e.recorded_at,
        )
    except DuplicateCycleError as error:
        store.record_dead_letter(
            message.model_dump_json(), str(error), message_id=str(message.message_id), kind=message.kind
        )
        return 1
    return 0

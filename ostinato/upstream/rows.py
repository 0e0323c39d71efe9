"""One upstream row of each table, converted to the row ostinato stores (SPEC-store §0), or refused.

The conversions, table by table, are listed in the README ("Importing an upstream store"). Every
converter returns all the columns it sets, so the rows of a chunk share one shape for a multi-row insert.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import String, Table

from ostinato.schema import tables
from ostinato.schema.records import QuarantineStatus, SuccessFactors
from ostinato.upstream.errors import RefusedError
from ostinato.upstream.values import (
    Localize,
    count,
    flag,
    fraction,
    fraction_or_percentage,
    instant,
    json_object,
    non_negative,
    number,
    one_of,
    percentage,
    seconds,
    string_list,
    text,
)
from ostinato.workers.store.escalations import ACTIONS
from ostinato.workers.store.executions import execution_confidence
from ostinato.workers.store.success_factors import time_of_day_bucket

Row = dict[str, Any]
Converter = Callable[[Row, Localize], Row]

RETIRED = QuarantineStatus.RETIRED.value
STATUSES = frozenset(status.value for status in QuarantineStatus)
LEGACY_ACTIVE = "active"
"""An old upstream status that its own degradation rule treats as validated (SPEC-store §6.2.14)."""
OUTCOMES = frozenset({"success", "failed", "aborted", "skipped"})


def _or(value: Any, default: Any) -> Any:
    """Upstream's column DEFAULT, for a NULL where ostinato's column is NOT NULL."""
    return default if value is None else value


def pattern(r: Row, local: Localize) -> Row:
    """Status and priority agree on retirement (§0.4); success factors' time bucket is the UTC one."""
    stored = text(r["quarantine_status"], "quarantine_status") or QuarantineStatus.PENDING.value
    status = one_of(
        QuarantineStatus.VALIDATED.value if stored == LEGACY_ACTIVE else stored, "quarantine_status", STATUSES
    )
    priority = _or(fraction(r["priority_score"], "priority_score"), 0.5)
    if status == RETIRED or priority == 0.0:
        status, priority = RETIRED, 0.0
    factors_at = instant(r["success_factors_updated_at"], "success_factors_updated_at", local)
    return {
        "id": text(r["id"], "id"),
        "pattern_type": text(r["pattern_type"], "pattern_type"),
        "pattern_name": text(r["pattern_name"], "pattern_name"),
        "description": text(r["description"], "description"),
        "occurrence_count": _or(count(r["occurrence_count"], "occurrence_count"), 1),
        "first_seen": instant(r["first_seen"], "first_seen", local),
        "last_seen": instant(r["last_seen"], "last_seen", local),
        "last_confirmed": instant(r["last_confirmed"], "last_confirmed", local),
        "led_to_success_count": _or(count(r["led_to_success_count"], "led_to_success_count"), 0),
        "led_to_failure_count": _or(count(r["led_to_failure_count"], "led_to_failure_count"), 0),
        "effectiveness_score": _or(fraction(r["effectiveness_score"], "effectiveness_score"), 0.5),
        "variance": _or(non_negative(r["variance"], "variance"), 0.0),
        "suggested_action": text(r["suggested_action"], "suggested_action"),
        "context_tags": _or(string_list(r["context_tags"], "context_tags"), []),
        "priority_score": priority,
        "quarantine_status": status,
        "provenance_job_hash": text(r["provenance_job_hash"], "provenance_job_hash"),
        "provenance_sheet_num": count(r["provenance_sheet_num"], "provenance_sheet_num"),
        "quarantined_at": instant(r["quarantined_at"], "quarantined_at", local),
        "validated_at": instant(r["validated_at"], "validated_at", local),
        "quarantine_reason": text(r["quarantine_reason"], "quarantine_reason"),
        "trust_score": _or(fraction(r["trust_score"], "trust_score"), 0.5),
        "trust_calculation_date": instant(r["trust_calculation_date"], "trust_calculation_date", local),
        "success_factors": _success_factors(r["success_factors"], factors_at),
        "success_factors_updated_at": factors_at,
        "active": _or(flag(r["active"], "active"), True),
        "content_hash": text(r["content_hash"], "content_hash"),
        "instrument_name": text(r["instrument_name"], "instrument_name"),
    }


def _success_factors(value: Any, updated_at: datetime | None) -> dict[str, Any] | None:
    """Upstream sets the bucket from the local hour of each update, so the update time gives the UTC one."""
    factors = json_object(value, "success_factors")
    if factors is None:
        return None
    try:
        SuccessFactors.model_validate(factors)
    except ValidationError:
        raise RefusedError("success_factors is not a success-factors object", repr(value)[:60]) from None
    if updated_at is not None and factors.get("time_of_day_bucket") is not None:
        factors["time_of_day_bucket"] = time_of_day_bucket(updated_at.astimezone(UTC).hour)
    return factors


def execution(r: Row, local: Localize) -> Row:
    """A percentage pass rate becomes a fraction, and its confidence is recomputed on the fraction
    (upstream's saturated at 1 on the percentage)."""
    rate, converted = fraction_or_percentage(r["validation_pass_rate"], "validation_pass_rate")
    retries = _or(count(r["retry_count"], "retry_count"), 0)
    first_try = flag(r["success_without_retry"], "success_without_retry")
    confidence = fraction(r["confidence_score"], "confidence_score")
    if converted:
        assert rate is not None
        confidence = execution_confidence(rate, retries, bool(first_try))
    return {
        "id": text(r["id"], "id"),
        "workspace_hash": text(r["workspace_hash"], "workspace_hash"),
        "job_hash": text(r["job_hash"], "job_hash"),
        "sheet_num": count(r["sheet_num"], "sheet_num"),
        "started_at": instant(r["started_at"], "started_at", local),
        "completed_at": instant(r["completed_at"], "completed_at", local),
        "duration_seconds": seconds(r["duration_seconds"], "duration_seconds"),
        "status": text(r["status"], "status"),
        "retry_count": retries,
        "success_without_retry": first_try,
        "validation_pass_rate": rate,
        "confidence_score": confidence,
        "model": text(r["model"], "model"),
        "error_codes": _or(string_list(r["error_codes"], "error_codes"), []),
    }


def application(r: Row, local: Localize) -> Row:
    """Upstream never stored the application mode or validation result, so both stay unknown (NULL)."""
    return {
        "id": text(r["id"], "id"),
        "pattern_id": text(r["pattern_id"], "pattern_id"),
        "execution_id": text(r["execution_id"], "execution_id"),
        "applied_at": instant(r["applied_at"], "applied_at", local),
        "pattern_led_to_success": flag(r["pattern_led_to_success"], "pattern_led_to_success"),
        "retry_count_before": _or(count(r["retry_count_before"], "retry_count_before"), 0),
        "retry_count_after": _or(count(r["retry_count_after"], "retry_count_after"), 0),
        "grounding_confidence": fraction(r["grounding_confidence"], "grounding_confidence"),
        "application_mode": None,
        "validation_passed": None,
    }


def recovery(r: Row, local: Localize) -> Row:
    """The hour of day is the UTC hour of the record time, as ostinato records it (upstream's was local)."""
    recorded_at = instant(r["recorded_at"], "recorded_at", local)
    return {
        "id": text(r["id"], "id"),
        "error_code": text(r["error_code"], "error_code"),
        "suggested_wait": seconds(r["suggested_wait"], "suggested_wait"),
        "actual_wait": seconds(r["actual_wait"], "actual_wait"),
        "recovery_success": flag(r["recovery_success"], "recovery_success"),
        "recorded_at": recorded_at,
        "model": text(r["model"], "model"),
        "time_of_day": None if recorded_at is None else recorded_at.hour,
    }


def escalation(r: Row, local: Localize) -> Row:
    """Upstream's runner passed the pass rate as a percentage here, always (SPEC-store §1.7)."""
    return {
        "id": text(r["id"], "id"),
        "job_hash": text(r["job_hash"], "job_hash"),
        "sheet_num": count(r["sheet_num"], "sheet_num"),
        "confidence": fraction(r["confidence"], "confidence"),
        "action": one_of(r["action"], "action", ACTIONS),
        "guidance": text(r["guidance"], "guidance"),
        "validation_pass_rate": percentage(r["validation_pass_rate"], "validation_pass_rate"),
        "retry_count": count(r["retry_count"], "retry_count"),
        "outcome_after_action": one_of(r["outcome_after_action"], "outcome_after_action", OUTCOMES),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "model": text(r["model"], "model"),
    }


def rate_limit(r: Row, local: Localize) -> Row:
    return {
        "id": text(r["id"], "id"),
        "error_code": text(r["error_code"], "error_code"),
        "model": text(r["model"], "model"),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "expires_at": instant(r["expires_at"], "expires_at", local),
        "source_job_hash": text(r["source_job_hash"], "source_job_hash"),
        "duration_seconds": seconds(r["duration_seconds"], "duration_seconds"),
    }


def entropy_snapshot(r: Row, local: Localize) -> Row:
    return {
        "id": text(r["id"], "id"),
        "calculated_at": instant(r["calculated_at"], "calculated_at", local),
        "shannon_entropy": non_negative(r["shannon_entropy"], "shannon_entropy"),
        "max_possible_entropy": non_negative(r["max_possible_entropy"], "max_possible_entropy"),
        "diversity_index": fraction(r["diversity_index"], "diversity_index"),
        "unique_pattern_count": count(r["unique_pattern_count"], "unique_pattern_count"),
        "effective_pattern_count": count(r["effective_pattern_count"], "effective_pattern_count"),
        "total_applications": count(r["total_applications"], "total_applications"),
        "dominant_pattern_share": fraction(r["dominant_pattern_share"], "dominant_pattern_share"),
        "threshold_exceeded": _or(flag(r["threshold_exceeded"], "threshold_exceeded"), False),
    }


def entropy_response(r: Row, local: Localize) -> Row:
    return {
        "id": text(r["id"], "id"),
        "job_hash": text(r["job_hash"], "job_hash"),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "entropy_at_trigger": fraction(r["entropy_at_trigger"], "entropy_at_trigger"),
        "threshold_used": fraction(r["threshold_used"], "threshold_used"),
        "actions_taken": string_list(r["actions_taken"], "actions_taken"),
        "budget_boosted": _or(flag(r["budget_boosted"], "budget_boosted"), False),
        "quarantine_revisits": _or(count(r["quarantine_revisits"], "quarantine_revisits"), 0),
        "patterns_revisited": string_list(r["patterns_revisited"], "patterns_revisited"),
    }


def budget(r: Row, local: Localize) -> Row:
    """Without ``seq``: the importer numbers each job's rows under the job's budget lock."""
    return {
        "id": text(r["id"], "id"),
        "job_hash": text(r["job_hash"], "job_hash"),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "budget_value": fraction(r["budget_value"], "budget_value"),
        "entropy_at_time": non_negative(r["entropy_at_time"], "entropy_at_time"),
        "adjustment_type": text(r["adjustment_type"], "adjustment_type"),
        "adjustment_reason": text(r["adjustment_reason"], "adjustment_reason"),
    }


def discovery(r: Row, local: Localize) -> Row:
    return {
        "id": text(r["id"], "id"),
        "pattern_id": text(r["pattern_id"], "pattern_id"),
        "pattern_name": text(r["pattern_name"], "pattern_name"),
        "pattern_type": text(r["pattern_type"], "pattern_type"),
        "source_job_hash": text(r["source_job_hash"], "source_job_hash"),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "expires_at": instant(r["expires_at"], "expires_at", local),
        "effectiveness_score": fraction(r["effectiveness_score"], "effectiveness_score"),
        "context_tags": _or(string_list(r["context_tags"], "context_tags"), []),
    }


def evolution(r: Row, local: Localize) -> Row:
    return {
        "id": text(r["id"], "id"),
        "cycle": count(r["cycle"], "cycle"),
        "recorded_at": instant(r["recorded_at"], "recorded_at", local),
        "evolutions_completed": count(r["evolutions_completed"], "evolutions_completed"),
        "evolutions_deferred": count(r["evolutions_deferred"], "evolutions_deferred"),
        "issue_classes": string_list(r["issue_classes"], "issue_classes"),
        "cv_avg": number(r["cv_avg"], "cv_avg"),
        "implementation_loc": count(r["implementation_loc"], "implementation_loc"),
        "test_loc": count(r["test_loc"], "test_loc"),
        "loc_accuracy": number(r["loc_accuracy"], "loc_accuracy"),
        "research_candidates_resolved": _or(
            count(r["research_candidates_resolved"], "research_candidates_resolved"), 0
        ),
        "research_candidates_created": _or(
            count(r["research_candidates_created"], "research_candidates_created"), 0
        ),
        "notes": text(r["notes"], "notes"),
    }


def cluster(r: Row, local: Localize) -> Row:
    return {
        "workspace_hash": text(r["workspace_hash"], "workspace_hash"),
        "cluster_id": text(r["cluster_id"], "cluster_id"),
        "assigned_at": instant(r["assigned_at"], "assigned_at", local),
    }


CONVERTERS: dict[str, tuple[Table, Converter]] = {
    "patterns": (tables.patterns, pattern),
    "executions": (tables.executions, execution),
    "pattern_applications": (tables.pattern_applications, application),
    "error_recoveries": (tables.error_recoveries, recovery),
    "escalation_decisions": (tables.escalation_decisions, escalation),
    "rate_limit_events": (tables.rate_limit_events, rate_limit),
    "pattern_entropy_history": (tables.pattern_entropy_history, entropy_snapshot),
    "entropy_responses": (tables.entropy_responses, entropy_response),
    "exploration_budget": (tables.exploration_budget, budget),
    "pattern_discovery_events": (tables.pattern_discovery_events, discovery),
    "evolution_trajectory": (tables.evolution_trajectory, evolution),
    "workspace_clusters": (tables.workspace_clusters, cluster),
}
"""Upstream table → (ostinato table, converter); the names are the same on both sides."""


def fits(table: Table, row: Row) -> Row:
    """Refuse what the column cannot hold: NULL in NOT NULL, text over its length, NUL characters
    (PostgreSQL text and jsonb refuse them)."""
    for name, value in row.items():
        column = table.c[name]
        if value is None:
            if not column.nullable:
                raise RefusedError(f"{name} is missing")
        elif isinstance(value, str):
            if "\x00" in value:
                raise RefusedError(f"{name} holds a NUL character")
            length = column.type.length if isinstance(column.type, String) else None
            if length is not None and len(value) > length:
                raise RefusedError(f"{name} is longer than {length} characters", f"{len(value)} characters")
        elif isinstance(value, list | dict) and "\\u0000" in json.dumps(value):
            raise RefusedError(f"{name} holds a NUL character")
    return row


def convert(table_name: str, row: Row, local: Localize) -> Row:
    """The ostinato row for one upstream row; raises ``RefusedError`` with the first rule it breaks."""
    table, converter = CONVERTERS[table_name]
    return fits(table, converter(row, local))

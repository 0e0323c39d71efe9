"""Factories for valid wire messages of every kind, shared by the ingest and pipeline tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from ostinato.schema.identity import hash_job, hash_workspace, pattern_id
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

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WORKSPACE = hash_workspace("/srv/work/alpha")
REPORTED = pattern_id("semantic_failure", "missing import")


def envelope(job: str = "job-A") -> dict[str, Any]:
    return {"workspace_hash": WORKSPACE, "job_hash": hash_job(job), "sent_at": T0}


def outcome(sheet: int, job: str = "job-A", **fields: Any) -> SheetOutcomeMessage:
    payload: dict[str, Any] = {
        "sheet_id": f"{job}-sheet{sheet}",
        "started_at": T0 + timedelta(minutes=sheet),
        "completed_at": T0 + timedelta(minutes=sheet, seconds=30),
        "execution_duration": 30.0,
        "validation_pass_rate": 1.0,
        "success_without_retry": True,
        "validation_results": [{"validation_type": "file_exists", "passed": True}],
    }
    payload.update(fields)
    return SheetOutcomeMessage(**envelope(job), payload=payload)


def one_of_each(job: str = "job-A") -> list[Message]:
    """A valid message of every kind; the application refers to the reported pattern."""
    at = T0 + timedelta(hours=1)
    return [
        PatternReportMessage(
            **envelope(job),
            payload={
                "pattern_type": "semantic_failure",
                "pattern_name": "Missing  Import",
                "description": "module not installed",
                "context_tags": ["import"],
                "reported_at": at,
            },
        ),
        outcome(1, job, patterns_applied=[REPORTED]),
        PatternApplicationMessage(
            **envelope(job),
            payload={
                "pattern_id": REPORTED,
                "execution_id": str(uuid4()),
                "pattern_led_to_success": False,
                "applied_at": at + timedelta(minutes=5),
                "grounding_confidence": 0.7,
            },
        ),
        RateLimitMessage(
            **envelope(job), payload={"error_code": "E101", "retry_after_seconds": 120, "recorded_at": at}
        ),
        ErrorRecoveryMessage(
            **envelope(job),
            payload={
                "error_code": "E101",
                "suggested_wait": 60,
                "actual_wait": 75,
                "recovery_success": True,
                "recorded_at": at,
            },
        ),
        EscalationDecisionMessage(
            **envelope(job),
            payload={
                "sheet_num": 1,
                "confidence": 0.5,
                "action": "retry",
                "validation_pass_rate": 0.6,
                "retry_count": 1,
                "recorded_at": at,
            },
        ),
        EvolutionEntryMessage(
            **envelope(job),
            payload={
                "cycle": 7,
                "evolutions_completed": 2,
                "evolutions_deferred": 1,
                "issue_classes": ["flaky"],
                "cv_avg": 0.2,
                "implementation_loc": 120,
                "test_loc": 80,
                "loc_accuracy": 0.9,
                "recorded_at": at,
            },
        ),
    ]

"""The simulated world the demo's runners work in: what sheets check, how often they pass, what helps.

Everything a runner sends is made here, from a seeded random generator, so a run can be repeated. The world
holds the ground truth the store has to learn: which pattern, injected into a sheet's prompt, really raises
the chance that a validation passes, and which one misleads the model and lowers it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from ostinato.schema.identity import normalize_pattern_name, pattern_id
from ostinato.workers.detection.detector import fix_suggestion_tag
from ostinato.workers.detection.reasons import normalize_failure_reason

MAX_RETRIES = 2
RETRY_BONUS = 0.05
"""A retry sees the failure it follows, so it passes more often than the first attempt."""
RATE_LIMITED_MODEL = "claude-sonnet"
RATE_LIMIT_CHANCE = 0.03
RATE_LIMIT_SECONDS = 2.0
RATE_LIMIT_CODE = "E101"
DRIFT_AT = 0.5
"""Halfway through the run the model is updated: it now validates JSON by itself, and the old advice about the
schema makes it over-escape. The advice's effectiveness drifts down, beat retires it, and JSON sheets do
better than ever without it."""


@dataclass(frozen=True)
class Check:
    """One validation rule type: how often it passes unaided, how it fails, and what its pattern does."""

    validation_type: str
    base_pass: float
    pattern_effect: float
    """Added to the pass chance when the store's pattern for this check is injected (negative: misleads)."""
    after_update: tuple[float, float] | None
    failure_reason: str
    failure_category: str
    error_code: str
    suggested_fix: str
    output: str
    """A tail excerpt with the error signature the workers' output detector recognises."""

    """(base pass chance, advice effect) after the mid-run model update, for the one check it changes."""

    def chance(self, advised: bool, drifted: bool) -> float:
        """The first attempt's pass chance, with or without the store's advice, before or after the update."""
        base, effect = (self.after_update if drifted else None) or (self.base_pass, self.pattern_effect)
        return base + (effect if advised else 0.0)

    @property
    def pattern_id(self) -> str:
        """The id the store gives the validation-failure pattern it detects for this check."""
        return _detected("validation_failure", f"validation:{self.validation_type}")

    @property
    def pattern_ids(self) -> frozenset[str]:
        """Every pattern the store detects about this check's failures: each carries the same advice."""
        reason = normalize_failure_reason(self.failure_reason)
        return frozenset(
            {
                self.pattern_id,
                _detected("validation_failure", f"error_code:{self.error_code}"),
                _detected("semantic_failure", f"failure_category:{self.failure_category}"),
                _detected("semantic_failure", f"failure_reason:{reason}"),
                _detected("semantic_failure", fix_suggestion_tag(normalize_pattern_name(self.suggested_fix))),
            }
        )


def _detected(pattern_type: str, tag: str) -> str:
    """The id of the pattern the workers' detector names ``<type>:<tag>``."""
    return pattern_id(pattern_type, f"{pattern_type}:{tag}")


CHECKS: tuple[Check, ...] = (
    Check(
        "file_exists",
        0.30,
        +0.60,
        None,
        "expected output file was not created",
        "missing_output",
        "E301",
        "write the output file before reporting success",
        "FileNotFoundError: [Errno 2] No such file or directory: '{home}/out/report.json'",
    ),
    Check(
        "tests_pass",
        0.30,
        +0.60,
        None,
        "unit tests failed after the change",
        "test_failure",
        "E302",
        "run the test suite before finishing the sheet",
        'Traceback (most recent call last):\n  File "{home}/tests/test_api.py", line 41\n'
        "AssertionError: expected 200, got 500",
    ),
    Check(
        "content_regex",
        0.70,
        -0.45,
        None,
        "required section heading missing",
        "format_mismatch",
        "E303",
        "wrap the whole answer in a code block",
        "ValueError: section '## Summary' not found in {home}/docs/index.md",
    ),
    Check(
        "json_schema",
        0.40,
        +0.50,
        (0.85, -0.45),
        "output does not match the JSON schema",
        "schema_mismatch",
        "E304",
        "validate the JSON against the schema before writing it",
        "KeyError: 'status' while validating {home}/out/result.json",
    ),
)
CHECKS_BY_TYPE = {check.validation_type: check for check in CHECKS}
EFFECTS = {pid: check for check in CHECKS for pid in check.pattern_ids}
"""Pattern id → the check whose pass chance it changes (on sheets that run that check)."""


@dataclass(frozen=True)
class JobPlan:
    """A job's sheets, in the order it runs them: each checks one validation type."""

    name: str
    workspace: str
    model: str
    sheets: tuple[str, ...]


def job_plans(runners: int, rng: random.Random) -> list[JobPlan]:
    """``runners`` jobs over two workspaces and two models; every check recurs in several jobs."""
    names = ["api-refactor", "data-ingest", "docs-pipeline", "test-hardening", "schema-migration", "release"]
    workspaces = ["/home/alice/work/platform", "/home/bob/src/analytics"]
    models = [RATE_LIMITED_MODEL, "claude-haiku"]
    types = [check.validation_type for check in CHECKS]
    plans = []
    for index in range(runners):
        name = names[index % len(names)] + ("" if index < len(names) else f"-{index // len(names) + 1}")
        common = [check.validation_type for check in CHECKS if check.after_update is None]
        sheets = tuple(rng.sample(types, len(types)) + rng.sample(common, 2))
        plans.append(JobPlan(name, workspaces[index % 2], models[index % 2], sheets))
    return plans


SECRETS = (
    "export ANTHROPIC_API_KEY=sk-ant-api03-{token}",
    "git push https://{user}:ghp_{token}@github.example/acme/platform.git",
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ7dXNlcn0ifQ.{token}",
    "notify {user}.smith@example-corp.com when done",
    "connecting to db at 10.20.30.{octet} as {user} password={token}",
)


@dataclass
class SheetRun:
    """What happened to one sheet: its outcome message fields and what the demo tallies."""

    outcome: dict[str, Any]
    success_without_retry: bool
    applied: list[str]
    planted_secret: str | None = None
    rate_limited: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def run_sheet(
    plan: JobPlan,
    sheet_num: int,
    applied: list[str],
    rng: random.Random,
    completed_at: datetime | None = None,
    *,
    drifted: bool = False,
) -> SheetRun:
    """Simulate one sheet with ``applied`` patterns injected into its prompt; retries until it passes.

    Any pattern about the sheet's check moves its pass chance by the check's effect (several such patterns
    do no more than one: they carry the same advice); other patterns change nothing. ``drifted``: after the
    mid-run model update.
    """
    checks = [CHECKS_BY_TYPE[plan.sheets[sheet_num % len(plan.sheets)]]]
    helped = {c.validation_type: any(EFFECTS.get(p) == c for p in applied) for c in checks}

    def attempt(retry: int) -> list[bool]:
        chances = [c.chance(helped[c.validation_type], drifted) + RETRY_BONUS * retry for c in checks]
        return [rng.random() < min(0.97, max(0.03, chance)) for chance in chances]

    retries = 0
    passed = attempt(0)
    first_passed = list(passed)
    while not all(passed) and retries < MAX_RETRIES:
        retries += 1
        passed = attempt(retries)
    home = plan.workspace.rsplit("/", 2)[0]
    user = home.rsplit("/", 1)[-1]
    failed = [c for c, ok in zip(checks, first_passed, strict=True) if not ok]
    # The first attempt's failures are what the tail and the error history show.
    tail = [f"$ claude --model {plan.model} sheet{sheet_num}", f"cwd: {plan.workspace}"]
    tail += [c.output.format(home=plan.workspace) for c in failed]
    secret = None
    if rng.random() < 0.2:
        secret = rng.choice(SECRETS).format(
            token="".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=32)),
            user=user,
            octet=rng.randrange(2, 250),
        )
        tail.append(secret)
    tail.append("done" if all(passed) else "giving up after retries")
    duration = 20.0 + 40.0 * rng.random() * (1 + retries)
    completed = completed_at or datetime.now(UTC)
    started = completed - timedelta(seconds=duration)
    outcome: dict[str, Any] = {
        "execution_id": uuid4(),
        "sheet_id": f"{plan.name}-sheet{sheet_num}",
        "sheet_num": sheet_num,
        "model": plan.model,
        "started_at": started,
        "completed_at": completed,
        "execution_duration": duration,
        "retry_count": retries,
        "final_status": "completed" if all(passed) else "failed",
        "validation_results": [
            {
                "validation_type": c.validation_type,
                "passed": ok,
                "confidence": 0.9,
                **(
                    {}
                    if ok
                    else {
                        "failure_reason": c.failure_reason,
                        "failure_category": c.failure_category,
                        "suggested_fix": c.suggested_fix,
                        "error_code": c.error_code,
                    }
                ),
            }
            for c, ok in zip(checks, passed, strict=True)
        ],
        "validation_pass_rate": sum(passed) / len(passed),
        "success_without_retry": all(first_passed),
        "patterns_applied": applied,
        "stdout_tail": "\n".join(tail),
        "error_history": [
            {"error_code": c.error_code, "category": c.failure_category, "message": c.failure_reason}
            for c in failed
        ],
    }
    return SheetRun(outcome, all(first_passed), applied, planted_secret=secret)

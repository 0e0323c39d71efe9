"""Recurring patterns in sheet outcomes (SPEC-store §3.2), as pure values.

Detection is a fold: each outcome yields ``Evidence`` keyed by the pattern's tag, and ``describe`` turns the
totals under a key into a pattern once they reach the rule's minimum. ``detect_all`` folds a batch in memory;
ingest folds each job's outcomes into totals kept in the store, so what is detected never depends on how
outcomes were batched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from ostinato.schema.identity import hash16, normalize_pattern_name, pattern_id
from ostinato.schema.messages import SheetOutcome
from ostinato.schema.records import PatternType, QuarantineStatus
from ostinato.workers.detection.output import signature_names
from ostinato.workers.detection.reasons import normalize_failure_reason

MIN_PATTERN_FREQUENCY = 2
MIN_ERROR_CATEGORY_FREQUENCY = 3
MIN_FIX_SUGGESTION_FREQUENCY = 3
MIN_SUCCESSES_WITHOUT_RETRY = 3
MIN_OUTPUT_PATTERN_FREQUENCY = 2
MIN_EFFECTIVENESS_APPLICATIONS = 3
DEFAULT_EFFECTIVENESS_RATE = 0.4
"""Below neutral, so an untested pattern ranks under one that has shown moderate success."""
EFFECTIVENESS_FULL_WEIGHT_APPS = 5
LOW_CONFIDENCE_THRESHOLD = 0.7
MAX_EVIDENCE = 5
GLOBAL_NAME_DESCRIPTION_CHARS = 30


@dataclass(frozen=True)
class DetectedPattern:
    """A pattern seen in one batch of outcomes; ``evidence`` holds up to five contributing sheet ids."""

    pattern_type: PatternType
    description: str
    last_seen: datetime
    frequency: int = 1
    success_rate: float = 0.0
    context_tags: tuple[str, ...] = ()
    evidence: tuple[str, ...] = ()
    confidence: float = 0.5
    applications: int = 0
    successes_after_application: int = 0
    quarantine_status: QuarantineStatus | None = None
    trust_score: float | None = None

    @property
    def global_name(self) -> str:
        """The store name: type and first tag, else type and the start of the description."""
        if self.context_tags:
            return f"{self.pattern_type.value}:{self.context_tags[0]}"
        head = self.description[:GLOBAL_NAME_DESCRIPTION_CHARS].replace(" ", "_").lower()
        return f"{self.pattern_type.value}:{head}"

    @property
    def pattern_id(self) -> str:
        return pattern_id(self.pattern_type.value, self.global_name)

    @property
    def effectiveness_rate(self) -> float:
        """Share of applications followed by a first-attempt success; 0.4 until three applications."""
        if self.applications < MIN_EFFECTIVENESS_APPLICATIONS:
            return DEFAULT_EFFECTIVENESS_RATE
        return self.successes_after_application / self.applications

    @property
    def effectiveness_weight(self) -> float:
        """How far to trust ``effectiveness_rate``: ramps up to full at five applications."""
        return min(self.applications / EFFECTIVENESS_FULL_WEIGHT_APPS, 1.0)

    @property
    def is_quarantined(self) -> bool:
        return self.quarantine_status == QuarantineStatus.QUARANTINED

    @property
    def is_validated(self) -> bool:
        return self.quarantine_status == QuarantineStatus.VALIDATED


@dataclass(slots=True)
class Evidence:
    """What one outcome contributes to one pattern, keyed by the pattern's tag.

    ``extra`` carries the second sum a description needs (retries for retry success, successes for
    completion mode); ``label`` keeps the spelling of a fix suggestion as first seen. Not frozen: every
    outcome makes about ten, and a frozen dataclass is several times slower to build.
    """

    key: str
    count: int = 1
    extra: float = 0.0
    label: str = ""
    distinct: bool = True


OUTCOMES_KEY = "outcomes"
"""Not a pattern: the number of outcomes, which the first-attempt success rate divides by."""
FIRST_ATTEMPT_KEY = "success:first_attempt"
"""The one pattern whose description divides by the number of outcomes."""


@dataclass(frozen=True)
class Rule:
    """How the evidence under one tag prefix becomes a pattern."""

    pattern_type: PatternType
    minimum: int
    describe: Callable[[str, int, float, int], tuple[str, float, float]]
    """(subject, count, extra, outcomes) → (description, success rate, confidence)."""


RULES: dict[str, Rule] = {
    "validation": Rule(
        PatternType.VALIDATION_FAILURE,
        MIN_PATTERN_FREQUENCY,
        lambda t, n, _, __: (f"'{t}' validation tends to fail", 0.0, min(0.9, 0.5 + 0.1 * n)),
    ),
    "retry": Rule(
        PatternType.RETRY_SUCCESS,
        MIN_PATTERN_FREQUENCY,
        lambda _, n, retries, __: (
            f"Retrying works: avg {retries / n:.1f} retries lead to success",
            1.0,
            min(0.8, 0.5 + 0.1 * n),
        ),
    ),
    "completion": Rule(
        PatternType.COMPLETION_MODE,
        MIN_PATTERN_FREQUENCY,
        lambda _, n, passed, __: (
            f"Completion mode used {n}x ({passed / n:.0%} success rate)",
            passed / n,
            min(0.7, 0.4 + 0.1 * n),
        ),
    ),
    "success": Rule(
        PatternType.SUCCESS_WITHOUT_RETRY,
        MIN_SUCCESSES_WITHOUT_RETRY,
        lambda _, n, __, total: (
            f"First-attempt success rate: {n / total:.0%}",
            n / total,
            min(0.9, 0.6 + 0.3 * (n / total)),
        ),
    ),
    "confidence": Rule(
        PatternType.LOW_CONFIDENCE,
        MIN_PATTERN_FREQUENCY,
        lambda _, n, __, ___: (f"{n} validations have low confidence - review needed", 0.0, 0.6),
    ),
    "failure_category": Rule(
        PatternType.SEMANTIC_FAILURE,
        MIN_PATTERN_FREQUENCY,
        lambda c, n, _, __: (f"'{c}' failures are common ({n}x)", 0.0, min(0.85, 0.5 + 0.1 * n)),
    ),
    "failure_reason": Rule(
        PatternType.SEMANTIC_FAILURE,
        MIN_PATTERN_FREQUENCY,
        lambda r, n, _, __: (f"Recurring issue: '{r}' ({n}x)", 0.0, min(0.80, 0.45 + 0.1 * n)),
    ),
    "fix_suggestion": Rule(
        PatternType.SEMANTIC_FAILURE,
        MIN_FIX_SUGGESTION_FREQUENCY,
        lambda fix, n, _, __: (f"Suggested fix: '{fix}' (recommended {n}x)", 0.5, min(0.70, 0.4 + 0.05 * n)),
    ),
    "error_code": Rule(
        PatternType.VALIDATION_FAILURE,
        MIN_PATTERN_FREQUENCY,
        lambda c, n, _, __: (f"Error code '{c}' occurs frequently ({n}x)", 0.0, min(0.85, 0.5 + 0.1 * n)),
    ),
    "error_category": Rule(
        PatternType.VALIDATION_FAILURE,
        MIN_ERROR_CATEGORY_FREQUENCY,
        lambda c, n, _, __: (f"Error category '{c}' is common ({n}x)", 0.0, min(0.80, 0.45 + 0.08 * n)),
    ),
    "output_pattern": Rule(
        PatternType.OUTPUT_PATTERN,
        MIN_OUTPUT_PATTERN_FREQUENCY,
        lambda name, n, _, __: (f"Output error '{name}' detected ({n}x)", 0.0, min(0.85, 0.5 + 0.1 * n)),
    ),
}
"""One rule per row of the §3.2 table, in its order (which orders equal-confidence patterns)."""
RULE_RANK = {prefix: rank for rank, prefix in enumerate(RULES)}


def _passed_all(outcome: SheetOutcome) -> bool:
    return outcome.validation_pass_rate == 1.0


def fix_suggestion_tag(normalized_fix: str) -> str:
    """A tag per suggestion, so each suggestion is its own pattern (SPEC-store §0.11)."""
    return f"fix_suggestion:{hash16(normalized_fix)}"


def evidence(outcome: SheetOutcome) -> list[Evidence]:
    """Everything one outcome contributes to recurring patterns (every row of the §3.2 table)."""
    items = [Evidence(OUTCOMES_KEY)]
    failed = [r for r in outcome.validation_results if not r.passed]
    if outcome.validation_pass_rate < 1.0:
        items += [Evidence(f"validation:{r.validation_type}", distinct=False) for r in failed]
    if outcome.retry_count > 0 and _passed_all(outcome):
        items.append(Evidence("retry:effective", extra=outcome.retry_count))
    if outcome.completion_mode_used:
        items.append(Evidence("completion:used", extra=1.0 if _passed_all(outcome) else 0.0))
    if outcome.success_without_retry:
        items.append(Evidence(FIRST_ATTEMPT_KEY))
    items += [
        Evidence("confidence:low")
        for r in outcome.validation_results
        if r.confidence < LOW_CONFIDENCE_THRESHOLD
    ]
    items += [
        Evidence(f"failure_category:{c}", count=n, distinct=False)
        for c, n in outcome.failure_category_counts.items()
    ]
    items += [Evidence(f"failure_category:{r.failure_category}") for r in failed if r.failure_category]
    reasons = [*outcome.semantic_patterns, *(normalize_failure_reason(r.failure_reason) for r in failed)]
    items += [Evidence(f"failure_reason:{reason}") for reason in reasons if reason]
    fixes = [*outcome.fix_suggestions, *(r.suggested_fix for r in failed if r.suggested_fix)]
    items += [
        Evidence(fix_suggestion_tag(normalize_pattern_name(fix)), label=fix)
        for fix in fixes
        if normalize_pattern_name(fix)
    ]
    codes = [e.error_code for e in outcome.error_history if e.error_code]
    items += [Evidence(f"error_code:{code}") for code in codes]
    items += [Evidence(f"error_code:{r.error_code}") for r in outcome.validation_results if r.error_code]
    items += [
        Evidence(f"error_category:{code[:3]}x") for code in codes if code.startswith("E") and len(code) >= 3
    ]
    for tail in (outcome.stdout_tail, outcome.stderr_tail):
        items += [Evidence(f"output_pattern:{name}") for name in signature_names(tail)]
    return items


def describe(
    key: str, count: int, extra: float, outcomes: int, now: datetime, label: str = ""
) -> DetectedPattern | None:
    """The pattern that ``count`` pieces of evidence under ``key`` amount to, or None below its minimum."""
    prefix, _, subject = key.partition(":")
    rule = RULES.get(prefix)
    if rule is None or count < rule.minimum or (prefix == "failure_reason" and not subject):
        return None
    description, success_rate, confidence = rule.describe(label or subject, count, extra, max(outcomes, 1))
    return DetectedPattern(
        pattern_type=rule.pattern_type,
        description=description,
        last_seen=now,
        frequency=count,
        success_rate=success_rate,
        context_tags=(key,),
        confidence=confidence,
    )


@dataclass
class Tally:
    """Evidence folded per key: counts, extra sums, first label and the first sheet ids."""

    counts: dict[str, int] = field(default_factory=dict)
    extras: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    sheets: dict[str, list[str]] = field(default_factory=dict)

    def add(self, item: Evidence, sheet_id: str) -> None:
        self.counts[item.key] = self.counts.get(item.key, 0) + item.count
        self.extras[item.key] = self.extras.get(item.key, 0.0) + item.extra
        self.labels.setdefault(item.key, item.label)
        sheets = self.sheets.setdefault(item.key, [])
        if len(sheets) < MAX_EVIDENCE and not (item.distinct and sheet_id in sheets):
            sheets.append(sheet_id)

    @classmethod
    def of(cls, outcomes: Iterable[SheetOutcome]) -> Tally:
        tally = cls()
        for outcome in outcomes:
            for item in evidence(outcome):
                tally.add(item, outcome.sheet_id)
        return tally

    def patterns(self, now: datetime) -> list[DetectedPattern]:
        """Every key that reached its rule's minimum, in detector order then first appearance."""
        total = self.counts.get(OUTCOMES_KEY, 0)
        found = []
        for key, count in self.counts.items():
            pattern = describe(key, count, self.extras[key], total, now, self.labels[key])
            if pattern is not None:
                found.append(replace(pattern, evidence=tuple(self.sheets[key])))
        found.sort(key=lambda p: RULE_RANK[p.context_tags[0].partition(":")[0]])
        return found


def output_patterns_from_summary(summary: Mapping[str, int], now: datetime) -> list[DetectedPattern]:
    """One ``output_pattern`` per extractor name seen at least twice."""
    found = (describe(f"output_pattern:{name}", n, 0.0, 0, now) for name, n in summary.items())
    return [pattern for pattern in found if pattern is not None]


def _with_effectiveness(
    patterns: list[DetectedPattern], outcomes: Sequence[SheetOutcome]
) -> list[DetectedPattern]:
    """Credit each pattern with the outcomes that applied its id (once per outcome)."""
    applications: dict[str, int] = {}
    successes: dict[str, int] = {}
    for outcome in outcomes:
        for applied in set(outcome.patterns_applied):
            applications[applied] = applications.get(applied, 0) + 1
            if outcome.success_without_retry:
                successes[applied] = successes.get(applied, 0) + 1
    return [
        replace(
            pattern,
            applications=applications.get(pattern.pattern_id, 0),
            successes_after_application=successes.get(pattern.pattern_id, 0),
        )
        for pattern in patterns
    ]


def detect_all(outcomes: Sequence[SheetOutcome], now: datetime) -> list[DetectedPattern]:
    """Every recurring pattern in ``outcomes``, most confident first (ties keep detector order)."""
    if not outcomes:
        return []
    patterns = _with_effectiveness(Tally.of(outcomes).patterns(now), outcomes)
    patterns.sort(key=lambda pattern: pattern.confidence, reverse=True)
    return patterns


def calculate_success_rate(outcomes: Sequence[SheetOutcome]) -> float:
    """Share of outcomes that passed every validation; 0 for none."""
    if not outcomes:
        return 0.0
    return sum(1 for outcome in outcomes if _passed_all(outcome)) / len(outcomes)

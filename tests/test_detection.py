"""SPEC-store §5 scenarios 57–62 and decision 11: pattern detection, extraction, matching and guidance."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ostinato.schema.identity import pattern_id
from ostinato.schema.messages import ErrorEntry, SheetOutcome, ValidationResult
from ostinato.schema.records import PatternRecord, PatternType, QuarantineStatus
from ostinato.workers.detection import weighting
from ostinato.workers.detection.detector import (
    DetectedPattern,
    calculate_success_rate,
    detect_all,
    output_patterns_from_summary,
)
from ostinato.workers.detection.guidance import (
    LEGEND,
    dedupe_near_duplicates,
    format_record_guidance,
    near_duplicate_key,
    pattern_guidance,
    prompt_section,
)
from ostinato.workers.detection.matching import match, score
from ostinato.workers.detection.merging import merge_with_conflict_resolution
from ostinato.workers.detection.output import extract_output_patterns, signature_names, summarize
from ostinato.workers.detection.reasons import normalize_failure_reason

TOL = 1e-6
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def outcome(sheet_id: str = "sheet-1", **fields: Any) -> SheetOutcome:
    return SheetOutcome(sheet_id=sheet_id, started_at=NOW, **fields)


def failed(vtype: str = "file_exists", **fields: Any) -> ValidationResult:
    return ValidationResult.model_validate({"validation_type": vtype, "passed": False, **fields})


def of_type(patterns: list[DetectedPattern], kind: PatternType) -> list[DetectedPattern]:
    return [p for p in patterns if p.pattern_type == kind]


def tagged(patterns: list[DetectedPattern], tag: str) -> DetectedPattern:
    (found,) = [p for p in patterns if p.context_tags and p.context_tags[0] == tag]
    return found


def pattern(**fields: Any) -> DetectedPattern:
    base: dict[str, Any] = {
        "pattern_type": PatternType.VALIDATION_FAILURE,
        "description": "d",
        "last_seen": NOW,
        "frequency": 5,
        "confidence": 0.8,
    }
    return DetectedPattern(**(base | fields))


def record(
    description: str | None, effectiveness: float, occurrences: int = 1, name: str = "n"
) -> PatternRecord:
    return PatternRecord(
        id=pattern_id("validation_failure", name),
        pattern_type="validation_failure",
        pattern_name=name,
        description=description,
        occurrence_count=occurrences,
        effectiveness_score=effectiveness,
        first_seen=NOW,
        last_seen=NOW,
        last_confirmed=NOW,
    )


# Scenario 57: detectors


def test_validation_failures_group_by_type() -> None:
    outcomes = [outcome(f"s{i}", validation_results=[failed()], validation_pass_rate=0.0) for i in range(5)]
    found = of_type(detect_all(outcomes, NOW), PatternType.VALIDATION_FAILURE)
    assert len(found) == 1
    (p,) = found
    assert p.frequency == 5
    assert p.confidence == pytest.approx(0.9, abs=TOL)
    assert p.context_tags == ("validation:file_exists",)
    assert p.description == "'file_exists' validation tends to fail"
    assert p.evidence == ("s0", "s1", "s2", "s3", "s4")


def test_validation_failures_need_pass_rate_below_one() -> None:
    outcomes = [outcome(f"s{i}", validation_results=[failed()], validation_pass_rate=1.0) for i in range(3)]
    assert of_type(detect_all(outcomes, NOW), PatternType.VALIDATION_FAILURE) == []


def test_retry_success() -> None:
    outcomes = [outcome(f"s{n}", retry_count=n, validation_pass_rate=1.0) for n in (1, 2, 3)]
    (p,) = of_type(detect_all(outcomes, NOW), PatternType.RETRY_SUCCESS)
    assert p.description == "Retrying works: avg 2.0 retries lead to success"
    assert p.confidence == pytest.approx(0.8, abs=TOL)
    assert p.success_rate == 1.0
    assert p.frequency == 3


def test_completion_mode() -> None:
    rates = [1.0, 1.0, 1.0, 0.5]
    outcomes = [
        outcome(f"s{i}", completion_mode_used=True, validation_pass_rate=r) for i, r in enumerate(rates)
    ]
    (p,) = of_type(detect_all(outcomes, NOW), PatternType.COMPLETION_MODE)
    assert p.description == "Completion mode used 4x (75% success rate)"
    assert p.confidence == pytest.approx(0.7, abs=TOL)
    assert p.success_rate == pytest.approx(0.75, abs=TOL)


def test_first_attempt_success_rate() -> None:
    outcomes = [outcome(f"s{i}", success_without_retry=i < 6) for i in range(10)]
    (p,) = of_type(detect_all(outcomes, NOW), PatternType.SUCCESS_WITHOUT_RETRY)
    assert p.success_rate == pytest.approx(0.6, abs=TOL)
    assert p.confidence == pytest.approx(0.78, abs=TOL)
    assert p.description == "First-attempt success rate: 60%"
    assert p.frequency == 6


def test_error_codes_and_categories() -> None:
    outcomes = [
        outcome("a", error_history=[ErrorEntry(error_code="E101"), ErrorEntry(error_code="E102")]),
        outcome("b", error_history=[ErrorEntry(error_code="E101")]),
    ]
    patterns = detect_all(outcomes, NOW)
    code = tagged(patterns, "error_code:E101")
    assert code.confidence == pytest.approx(0.7, abs=TOL)
    assert code.frequency == 2
    assert code.evidence == ("a", "b")
    category = tagged(patterns, "error_category:E10x")
    assert category.frequency == 3
    assert category.confidence == pytest.approx(0.69, abs=TOL)
    assert category.pattern_type == PatternType.VALIDATION_FAILURE
    assert not [p for p in patterns if "E102" in p.context_tags[0]]


def test_validation_result_error_codes_count() -> None:
    outcomes = [outcome(f"s{i}", validation_results=[failed(error_code="V7")]) for i in range(2)]
    assert tagged(detect_all(outcomes, NOW), "error_code:V7").frequency == 2


def test_single_occurrences_give_no_pattern() -> None:
    failing = outcome(
        validation_results=[
            failed(
                confidence=0.5,
                failure_category="stale",
                failure_reason="file not created",
                suggested_fix="touch it",
                error_code="E101",
            )
        ],
        error_history=[ErrorEntry(error_code="E201")],
        stdout_tail="Killed: OOM",
        fix_suggestions=["touch it"],
    )
    assert detect_all([failing], NOW) == []
    lucky = outcome(
        retry_count=1, validation_pass_rate=1.0, completion_mode_used=True, success_without_retry=True
    )
    assert detect_all([lucky], NOW) == []
    assert detect_all([], NOW) == []


def test_low_confidence() -> None:
    results = [ValidationResult(confidence=0.5), ValidationResult(confidence=0.69), ValidationResult()]
    (p,) = of_type(detect_all([outcome(validation_results=results)], NOW), PatternType.LOW_CONFIDENCE)
    assert p.description == "2 validations have low confidence - review needed"
    assert p.confidence == pytest.approx(0.6, abs=TOL)


def test_semantic_categories_sum_both_sources() -> None:
    outcomes = [
        outcome("s1", failure_category_counts={"stale": 2}),
        outcome(
            "s1", failure_category_counts={"stale": 1}, validation_results=[failed(failure_category="stale")]
        ),
    ]
    p = tagged(detect_all(outcomes, NOW), "failure_category:stale")
    assert p.frequency == 4
    assert p.description == "'stale' failures are common (4x)"
    assert p.confidence == pytest.approx(0.85, abs=TOL)
    assert p.evidence == ("s1", "s1")


def test_semantic_reasons_are_normalised() -> None:
    outcomes = [
        outcome("a", semantic_patterns=["timeout"]),
        outcome("b", validation_results=[failed(failure_reason="Timeout after 60 seconds")]),
    ]
    p = tagged(detect_all(outcomes, NOW), "failure_reason:timeout")
    assert p.description == "Recurring issue: 'timeout' (2x)"
    assert p.confidence == pytest.approx(0.65, abs=TOL)
    assert p.pattern_type == PatternType.SEMANTIC_FAILURE


def test_each_fix_suggestion_is_its_own_pattern() -> None:
    outcomes = [
        outcome("a", fix_suggestions=["add tests", "add tests", "use a lock"]),
        outcome("b", fix_suggestions=["add tests", "use a lock", "use a lock"]),
    ]
    fixes = [p for p in detect_all(outcomes, NOW) if p.description.startswith("Suggested fix")]
    assert sorted(p.description for p in fixes) == [
        "Suggested fix: 'add tests' (recommended 3x)",
        "Suggested fix: 'use a lock' (recommended 3x)",
    ]
    ids = {p.pattern_id for p in fixes}
    assert len(ids) == 2
    assert pattern_id("semantic_failure", "semantic_failure:fix_suggestion") not in ids
    for p in fixes:
        assert p.confidence == pytest.approx(0.55, abs=TOL)
        assert p.success_rate == pytest.approx(0.5, abs=TOL)


def test_fix_suggestions_group_by_normalised_text() -> None:
    outcomes = [
        outcome("a", validation_results=[failed(suggested_fix="Add  Tests")]),
        outcome("b", fix_suggestions=["add tests", "ADD tests"]),
    ]
    (fix,) = [p for p in detect_all(outcomes, NOW) if p.description.startswith("Suggested fix")]
    assert fix.description == "Suggested fix: 'Add  Tests' (recommended 3x)"
    assert fix.evidence == ("a", "b")


def test_output_patterns_run_in_detect_all() -> None:
    outcomes = [
        outcome("a", stdout_tail="HTTP 429 from upstream"),
        outcome("b", stderr_tail="ok\nrate limit reached", stdout_tail="processed 4290 rows in the room"),
    ]
    patterns = detect_all(outcomes, NOW)
    p = tagged(patterns, "output_pattern:rate_limit")
    assert p.frequency == 2
    assert p.confidence == pytest.approx(0.7, abs=TOL)
    assert p.description == "Output error 'rate_limit' detected (2x)"
    assert p.global_name == "output_pattern:output_pattern:rate_limit"
    assert p.evidence == ("a", "b")
    assert of_type(patterns, PatternType.OUTPUT_PATTERN) == [p]


def test_detect_all_sorts_by_confidence_keeping_detector_order() -> None:
    outcomes = [
        outcome(f"s{i}", validation_results=[failed(error_code="X1")], validation_pass_rate=0.0)
        for i in range(2)
    ] + [outcome(f"r{i}", retry_count=1, validation_pass_rate=1.0) for i in range(4)]
    patterns = detect_all(outcomes, NOW)
    assert [p.global_name for p in patterns] == [
        "retry_success:retry:effective",
        "validation_failure:validation:file_exists",
        "validation_failure:error_code:X1",
    ]
    assert [p.confidence for p in patterns] == pytest.approx([0.8, 0.7, 0.7], abs=TOL)


def test_effectiveness_counts_applied_ids() -> None:
    retried = [outcome(f"r{i}", retry_count=1, validation_pass_rate=1.0) for i in range(2)]
    (probe,) = of_type(detect_all(retried, NOW), PatternType.RETRY_SUCCESS)
    rid = probe.pattern_id
    applied = [
        outcome("a1", patterns_applied=[rid], success_without_retry=True),
        outcome("a2", patterns_applied=[rid, rid], success_without_retry=True),
        outcome("a3", patterns_applied=[rid, "other"], success_without_retry=True),
        outcome("a4", patterns_applied=[rid]),
    ]
    patterns = detect_all(retried + applied, NOW)
    (retry,) = of_type(patterns, PatternType.RETRY_SUCCESS)
    assert (retry.applications, retry.successes_after_application) == (4, 3)
    assert retry.effectiveness_rate == pytest.approx(0.75, abs=TOL)
    assert retry.effectiveness_weight == pytest.approx(0.8, abs=TOL)
    (first,) = of_type(patterns, PatternType.SUCCESS_WITHOUT_RETRY)
    assert first.applications == 0


def test_calculate_success_rate() -> None:
    rates = [1.0, 0.5, 1.0, 0.0]
    assert calculate_success_rate([outcome(validation_pass_rate=r) for r in rates]) == pytest.approx(0.5)
    assert calculate_success_rate([]) == 0.0


# Scenario 58: reason normalisation


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("file not created during execution", "file not created"),
        ("Timeout after 60 seconds", "timeout"),
        ("connection to database main failed with timeout after 30s", "timeout"),
        ("Unable to establish connection to the remote server at db.internal:5432", "connection"),
        ("short error", "short error"),
        ("A" * 100, ""),
        ("   ", ""),
        (None, ""),
    ],
)
def test_normalize_failure_reason(reason: str | None, expected: str) -> None:
    assert normalize_failure_reason(reason) == expected


# Scenario 59 and decision 11: output extractor


def test_extractor_one_hit_per_name_per_line_with_context() -> None:
    (hit,) = extract_output_patterns("line one\nError: Rate limit exceeded (429)\nline three")
    assert (hit.name, hit.line) == ("rate_limit", 2)
    assert hit.confidence == pytest.approx(0.95, abs=TOL)
    assert hit.context_before == ("line one",)
    assert hit.context_after == ("line three",)


def test_extractor_traceback_and_import_error() -> None:
    hits = extract_output_patterns(
        "Traceback (most recent call last):\n  File x\nImportError: No module named foo"
    )
    assert [(h.name, h.line, h.confidence) for h in hits] == [
        ("traceback", 1, 0.75),
        ("import_error", 3, 0.95),
    ]
    assert hits[1].context_before == ("Traceback (most recent call last):", "  File x")
    assert hits[1].context_after == ()


def test_extractor_traceback_is_case_sensitive() -> None:
    assert extract_output_patterns("traceback (most recent call last):") == []


def test_extractor_context_is_two_lines_each_side() -> None:
    text = "a\nb\nc\nPermission denied\nd\ne\nf\n"
    (hit,) = extract_output_patterns(text)
    assert (hit.name, hit.line) == ("permission_denied", 4)
    assert hit.context_before == ("b", "c")
    assert hit.context_after == ("d", "e")


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_extractor_blank_input(text: str) -> None:
    assert extract_output_patterns(text) == []


@pytest.mark.parametrize(
    ("text", "name", "hit"),
    [
        ("meeting room booked", "out_of_memory", False),
        ("bloom filter ready", "out_of_memory", False),
        ("Process killed: OOM", "out_of_memory", True),
        ("reason: OOMKilled", "out_of_memory", True),
        ("processed 4290 records", "rate_limit", False),
        ("order 14290 shipped", "rate_limit", False),
        ("server said (429)", "rate_limit", True),
        ("status=503", "api_error", True),
        ("port 15030", "api_error", False),
        ("user 4011 logged in", "auth_failure", False),
        ("HTTP 401", "auth_failure", True),
        ("httpx.ReadTimeout", "timeout", True),
    ],
)
def test_extractor_word_boundaries(text: str, name: str, hit: bool) -> None:
    assert (name in summarize(extract_output_patterns(text))) is hit


def test_caseless_signatures_match_any_case_and_keep_their_lines() -> None:
    """Lower-casing "İ" lengthens the text; hits still land on the right line, with the original context."""
    text = "İstanbul İİİ\nCONNECTION REFUSED by ModuleNotFoundError\ntraceback (MOST RECENT call last)"
    hits = extract_output_patterns(text)
    assert [(h.name, h.line) for h in hits] == [("import_error", 2), ("connection_refused", 2)]
    assert hits[0].context_before == ("İstanbul İİİ",)
    assert hits[0].context_after == ("traceback (MOST RECENT call last)",)
    (same_line,) = extract_output_patterns("İ" * 20 + " RATE LIMIT\nnext line")
    assert (same_line.name, same_line.line, same_line.context_after) == ("rate_limit", 1, ("next line",))


@pytest.mark.parametrize(
    "text",
    [
        "ImportError: x\nImportError: y\ntimed out\nok",
        "Traceback (most recent call last):\nTimeoutError: timed out",
        "a\nb\nRate limit; HTTP 429 then 503\nPermission denied (EACCES)\n",
        "nothing to see here",
    ],
)
def test_signature_names_are_the_names_of_the_hits(text: str) -> None:
    assert signature_names(text) == [hit.name for hit in extract_output_patterns(text)]
    assert signature_names(text) or text == "nothing to see here"


def test_summary_and_output_patterns() -> None:
    hits = extract_output_patterns("ImportError: x\nImportError: y\ntimed out\nok")
    assert summarize(hits) == {"import_error": 2, "timeout": 1}
    patterns = output_patterns_from_summary({"import_error": 3, "timeout": 1, "rate_limit": 5}, NOW)
    assert {p.context_tags[0]: p.confidence for p in patterns} == pytest.approx(
        {"output_pattern:import_error": 0.8, "output_pattern:rate_limit": 0.85}, abs=TOL
    )
    assert all(p.pattern_type == PatternType.OUTPUT_PATTERN for p in patterns)


# Scenario 60: matcher


def test_matcher_scores() -> None:
    assert score(pattern(), {}, NOW) == pytest.approx(0.45, abs=TOL)
    assert score(pattern(quarantine_status=QuarantineStatus.VALIDATED), {}, NOW) == pytest.approx(
        0.55, abs=TOL
    )
    assert score(pattern(quarantine_status=QuarantineStatus.QUARANTINED), {}, NOW) == pytest.approx(
        0.15, abs=TOL
    )
    assert score(pattern(trust_score=0.9), {}, NOW) == pytest.approx(0.616, abs=TOL)
    assert score(pattern(trust_score=0.2), {}, NOW) == pytest.approx(0.317, abs=TOL)


def test_matcher_tags_and_recency() -> None:
    tags_pattern = pattern(context_tags=("a", "b"))
    assert score(tags_pattern, {"tags": ["a", "b", "c"]}, NOW) == pytest.approx(0.55, abs=TOL)
    assert score(tags_pattern, {"tags": "a"}, NOW) == pytest.approx(0.45, abs=TOL)
    week_old = pattern(last_seen=NOW - timedelta(days=7, hours=23))
    assert score(week_old, {}, NOW) == pytest.approx(0.375, abs=TOL)


def test_matcher_ranks_and_drops_zero_scores() -> None:
    pending = pattern(description="pending")
    validated = pattern(description="validated", quarantine_status=QuarantineStatus.VALIDATED)
    hopeless = pattern(
        description="hopeless", quarantine_status=QuarantineStatus.QUARANTINED, trust_score=0.0
    )
    assert score(hopeless, {}, NOW) == 0.0
    assert match([pending, hopeless, validated], {}, now=NOW) == [validated, pending]
    assert match([pending, validated], {}, limit=1, now=NOW) == [validated]


def test_effectiveness_rate_and_weight() -> None:
    assert pattern(applications=2, successes_after_application=2).effectiveness_rate == pytest.approx(0.4)
    assert pattern(applications=5, successes_after_application=3).effectiveness_rate == pytest.approx(0.6)
    assert pattern().effectiveness_weight == 0.0
    assert pattern(applications=2).effectiveness_weight == pytest.approx(0.4)
    assert pattern(applications=5).effectiveness_weight == 1.0
    assert pattern(applications=9).effectiveness_weight == 1.0
    proven = pattern(applications=5, successes_after_application=5)
    assert score(proven, {}, NOW) == pytest.approx(0.6, abs=TOL)


# Scenario 61: weighter (its priority lines are not reproduced, decisions 3 and 16)


def test_weighter() -> None:
    assert weighting.laplace_effectiveness(3, 0) == pytest.approx(0.875, abs=TOL)
    assert weighting.laplace_effectiveness(1, 1) == pytest.approx(0.5, abs=TOL)
    assert weighting.laplace_effectiveness(0, 0) == pytest.approx(0.5, abs=TOL)
    assert weighting.recency(90) == pytest.approx(0.729, abs=TOL)
    assert weighting.recency(30, 0.2) == pytest.approx(0.8, abs=TOL)
    assert weighting.frequency(0) == pytest.approx(0.6, abs=TOL)
    assert weighting.frequency(1) == pytest.approx(0.6, abs=TOL)
    assert weighting.frequency(100) == pytest.approx(1.0, abs=TOL)
    assert weighting.frequency(1000) == pytest.approx(1.0, abs=TOL)
    assert weighting.is_deprecated(2, 8) is True
    assert weighting.is_deprecated(3, 7) is False
    assert weighting.is_deprecated(0, 2) is False
    assert weighting.outcome_variance([True, False, True, False]) == pytest.approx(0.25, abs=TOL)


# Scenario 62: naming and merge


def test_detected_names_and_ids() -> None:
    outcomes = [outcome(f"s{i}", retry_count=1, validation_pass_rate=1.0) for i in range(2)]
    (retry,) = detect_all(outcomes, NOW)
    assert retry.global_name == "retry_success:retry:effective"
    assert retry.pattern_id == pattern_id("retry_success", "retry_success:retry:effective")
    untagged = pattern(
        pattern_type=PatternType.COMPLETION_MODE, description="Some Long Description That Exceeds"
    )
    assert untagged.global_name == "completion_mode:some_long_description_that_exc"


def test_merge_adopts_guidance_when_effectiveness_rises() -> None:
    detected = pattern(frequency=10, success_rate=0.8, last_seen=NOW)
    merged = merge_with_conflict_resolution(10, 0.6, "old advice", detected, NOW - timedelta(days=1))
    assert merged.occurrence_count == 20
    assert merged.effectiveness_score == pytest.approx(0.7, abs=TOL)
    assert merged.suggested_action == pattern_guidance(detected)
    assert merged.last_seen == NOW


def test_merge_keeps_action_otherwise() -> None:
    detected = pattern(frequency=10, success_rate=0.2, last_seen=NOW - timedelta(days=1))
    merged = merge_with_conflict_resolution(10, 0.6, "old advice", detected, NOW)
    assert merged.effectiveness_score == pytest.approx(0.4, abs=TOL)
    assert merged.suggested_action == "old advice"
    assert merged.last_seen == NOW
    empty = merge_with_conflict_resolution(0, 0.9, "kept", pattern(frequency=0))
    assert (empty.occurrence_count, empty.effectiveness_score, empty.suggested_action) == (0, 0.5, "kept")


# Guidance strings


def test_detected_guidance_formats() -> None:
    failure = pattern(description="'x' validation tends to fail")
    assert pattern_guidance(failure) == "⚠️ Common issue: 'x' validation tends to fail (seen 5x)"
    retry = pattern(
        pattern_type=PatternType.RETRY_SUCCESS, description="r", success_rate=1.0, trust_score=0.7
    )
    assert pattern_guidance(retry) == "✓ Tip: r (works 100% of the time) [High trust]"
    semantic = pattern(pattern_type=PatternType.SEMANTIC_FAILURE, description="s", trust_score=0.5)
    assert pattern_guidance(semantic) == "🔍 Semantic insight: s (seen 5x) [Trust: 50%]"
    first = pattern(pattern_type=PatternType.SUCCESS_WITHOUT_RETRY, description="f", trust_score=0.3)
    assert pattern_guidance(first) == "✓ Best practice: f [Low trust]"
    output = pattern(pattern_type=PatternType.OUTPUT_PATTERN, description="o")
    assert pattern_guidance(output) == "o"
    quarantined = pattern(description="q", quarantine_status=QuarantineStatus.QUARANTINED, trust_score=0.1)
    assert pattern_guidance(quarantined) == "⚠️ [QUARANTINED] q [Low trust]"


def test_global_guidance_format() -> None:
    assert format_record_guidance(record("Use locks", 0.975, 3)) == "✓ Use locks (seen 3x, 98% effective)"
    assert format_record_guidance(record("Use locks", 0.7, 2)) == "○ Use locks (seen 2x, 70% effective)"
    assert (
        format_record_guidance(record(None, 0.4, 1, name="raw_name")) == "⚠ raw_name (seen 1x, 40% effective)"
    )


def test_near_duplicates_keep_the_more_effective() -> None:
    assert near_duplicate_key("File not created error") == near_duplicate_key("file_not_created")
    assert near_duplicate_key("The file_not_created") == "file not created"
    weaker = record("File not created error", 0.6, name="a")
    other = record("Timeout", 0.5, name="b")
    stronger = record("file_not_created", 0.9, name="c")
    assert dedupe_near_duplicates([weaker, other, stronger]) == [stronger, other]
    tie = record("file not created", 0.6, name="d")
    assert dedupe_near_duplicates([weaker, tie]) == [weaker]


def test_prompt_section() -> None:
    assert prompt_section([]) == ""
    section = prompt_section([f"line {i}" for i in range(1, 7)])
    assert section.startswith("## Learned Patterns\n")
    assert "5. line 5" in section
    assert "6." not in section
    assert LEGEND not in section
    assert LEGEND in prompt_section(["x"], legend=True)

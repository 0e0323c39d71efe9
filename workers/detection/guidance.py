"""The text a runner injects into a prompt: guidance for detected patterns and for stored records."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ostinato.schema.records import PatternRecord, PatternType
from ostinato.workers.detection.detector import DetectedPattern

HIGH_TRUST_THRESHOLD = 0.7
LOW_TRUST_THRESHOLD = 0.3
HIGH_EFFECTIVENESS_THRESHOLD = 0.7
MODERATE_EFFECTIVENESS_THRESHOLD = 0.4
MAX_PROMPT_PATTERNS = 5
NEAR_DUPLICATE_KEY_CHARS = 30

LEGEND = "✓ = high effectiveness, ○ = moderate, ⚠ = low/untested"
PROMPT_HEADING = "## Learned Patterns"
PROMPT_INTRO = "Based on previous executions, here are relevant insights:"
PROMPT_CLOSING = "Consider these patterns when executing this sheet."

GUIDANCE_TEMPLATES: dict[PatternType, str] = {
    PatternType.VALIDATION_FAILURE: "⚠️ Common issue: {desc} (seen {freq}x){trust}",
    PatternType.RETRY_SUCCESS: "✓ Tip: {desc} (works {rate} of the time){trust}",
    PatternType.COMPLETION_MODE: "📝 Partial completion: {desc}{trust}",
    PatternType.SUCCESS_WITHOUT_RETRY: "✓ Best practice: {desc}{trust}",
    PatternType.LOW_CONFIDENCE: "⚠️ Needs attention: {desc}{trust}",
    PatternType.SEMANTIC_FAILURE: "🔍 Semantic insight: {desc} (seen {freq}x){trust}",
    PatternType.SEMANTIC_INSIGHT: "🧠 LLM insight: {desc}{trust}",
    PatternType.RESOURCE_ANOMALY: "⚡ Resource anomaly: {desc} (seen {freq}x){trust}",
    PatternType.RESOURCE_CORRELATION: "📊 Resource pattern: {desc}{trust}",
}
"""Types not listed here are shown as their bare description."""

_NOISE_WORDS = re.compile(r"\b(?:error|issue|problem|failed|failure|the|a|an)\b", re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


def trust_suffix(trust: float | None) -> str:
    if trust is None:
        return ""
    if trust >= HIGH_TRUST_THRESHOLD:
        return " [High trust]"
    if trust <= LOW_TRUST_THRESHOLD:
        return " [Low trust]"
    return f" [Trust: {trust:.0%}]"


def pattern_guidance(pattern: DetectedPattern) -> str:
    """A detected pattern as one prompt line; a quarantined one is flagged whatever its type."""
    suffix = trust_suffix(pattern.trust_score)
    if pattern.is_quarantined:
        return f"⚠️ [QUARANTINED] {pattern.description}{suffix}"
    template = GUIDANCE_TEMPLATES.get(pattern.pattern_type)
    if template is None:
        return f"{pattern.description}{suffix}"
    return template.format(
        desc=pattern.description,
        freq=pattern.frequency,
        rate=f"{pattern.success_rate:.0%}",
        trust=suffix,
    )


def effectiveness_indicator(effectiveness: float) -> str:
    if effectiveness > HIGH_EFFECTIVENESS_THRESHOLD:
        return "✓"
    if effectiveness > MODERATE_EFFECTIVENESS_THRESHOLD:
        return "○"
    return "⚠"


def format_record_guidance(record: PatternRecord) -> str:
    """A stored pattern as the runner shows it: indicator, text, occurrences and effectiveness."""
    effectiveness = record.effectiveness_score
    return (
        f"{effectiveness_indicator(effectiveness)} {record.description or record.pattern_name} "
        f"(seen {record.occurrence_count}x, {effectiveness:.0%} effective)"
    )


def near_duplicate_key(text: str) -> str:
    """A grouping key under which "File not created error" and "file_not_created" coincide."""
    key = _NOISE_WORDS.sub("", text.lower().replace("_", " "))
    return _WHITESPACE.sub(" ", key).strip()[:NEAR_DUPLICATE_KEY_CHARS]


def dedupe_near_duplicates(records: Iterable[PatternRecord]) -> list[PatternRecord]:
    """One record per near-duplicate key, so a prompt never carries the same advice twice.

    The most effective record of a group wins (the first on a tie) and takes the group's first position.
    """
    groups: dict[str, PatternRecord] = {}
    for record in records:
        key = near_duplicate_key(record.description or record.pattern_name)
        kept = groups.get(key)
        if kept is None or record.effectiveness_score > kept.effectiveness_score:
            groups[key] = record
    return list(groups.values())


def prompt_section(lines: Sequence[str], *, legend: bool = False) -> str:
    """The markdown block of at most five numbered guidance lines; "" when there are none."""
    if not lines:
        return ""
    block = [PROMPT_HEADING, "", PROMPT_INTRO, ""]
    block += [f"{number}. {line}" for number, line in enumerate(lines[:MAX_PROMPT_PATTERNS], 1)]
    if legend:
        block += ["", LEGEND]
    block += ["", PROMPT_CLOSING, ""]
    return "\n".join(block)

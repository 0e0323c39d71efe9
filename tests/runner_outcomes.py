"""Outcomes as a runner reports them: the last 2-4 KiB of a pytest run as the stdout tail.

Spool sizes depend on how well tails compress, so the spool tests measure them on output like a real
sheet's: varied test names, progress, tracebacks with paths, numbers and hex ids.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

MODULES = ("parser", "lexer", "cache", "api", "models", "cli", "auth", "storage", "render", "config", "jobs")
VERBS = ("handles", "rejects", "parses", "loads", "retries", "streams", "merges", "validates", "renders")
NOUNS = (
    "empty_input",
    "unicode",
    "large_file",
    "timeout",
    "nested_keys",
    "missing_field",
    "bad_token",
    "concurrent_writes",
    "utf8_bom",
    "zero_length",
    "redirect",
    "stale_entry",
)
ERRORS = (
    "AssertionError: assert {a} == {b}",
    "KeyError: '{word}'",
    "ValueError: unexpected token '{hex}'",
    "TimeoutError: operation timed out after {a}.{b}s",
    "TypeError: 'NoneType' object is not subscriptable",
)
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def pytest_tail(rng: random.Random, job: str, size: int) -> str:
    """The last ``size`` characters of a pytest session's output."""
    lines = [
        f"$ claude --model claude-sonnet-4 -p sheet-{rng.randrange(1, 40)}",
        f"cwd: /srv/work/{job}",
        "=" * 29 + " test session starts " + "=" * 30,
        "platform linux -- Python 3.12.3, pytest-8.2.0, pluggy-1.5.0",
        f"collected {rng.randrange(20, 400)} items",
    ]
    percent = 0
    while sum(len(line) + 1 for line in lines) < size:
        percent = min(100, percent + rng.randrange(1, 4))
        module, verb, noun = rng.choice(MODULES), rng.choice(VERBS), rng.choice(NOUNS)
        status = "PASSED" if rng.random() < 0.85 else "FAILED"
        lines.append(f"tests/test_{module}.py::test_{verb}_{noun} {status}".ljust(70) + f"[{percent:3d}%]")
        if status == "FAILED" and rng.random() < 0.5:
            error = rng.choice(ERRORS).format(
                a=rng.randrange(100),
                b=rng.randrange(100),
                word=rng.choice(NOUNS),
                hex=f"{rng.getrandbits(32):08x}",
            )
            lines += [
                f'  File "/srv/work/{job}/src/{module}.py", line {rng.randrange(10, 900)}, in {verb}',
                f"    return _{verb}(value, strict={rng.random() < 0.5})",
                f"E   {error}",
            ]
    lines.append(
        f"==== {rng.randrange(1, 9)} failed, {rng.randrange(20, 300)} passed in {rng.uniform(1, 90):.2f}s"
    )
    return "\n".join(lines)[-size:]


def runner_outcome(rng: random.Random, sheet: int, job: str = "job-real") -> dict[str, Any]:
    """A sheet outcome as ``Client.record_outcome`` takes it; 3 in 10 fail and carry a stderr tail too."""
    started = T0 + timedelta(seconds=sheet * 37)
    failed = rng.random() < 0.3
    duration = rng.uniform(20, 200)
    return {
        "sheet_id": f"{job}-sheet{sheet}",
        "sheet_num": sheet,
        "model": "claude-sonnet-4",
        "started_at": started,
        "completed_at": started + timedelta(seconds=duration),
        "execution_duration": duration,
        "retry_count": int(failed),
        "final_status": "failed" if failed else "completed",
        "validation_results": [{"validation_type": "tests_pass", "passed": not failed, "confidence": 0.9}],
        "validation_pass_rate": 0.0 if failed else 1.0,
        "success_without_retry": not failed,
        "stdout_tail": pytest_tail(rng, job, rng.randrange(2048, 4096)),
        "stderr_tail": pytest_tail(rng, job, 512) if failed else "",
    }

"""The main job: ``bash scripts/demo`` embedded when no server answers, and on the servers when they do."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN_URL, KEY_PREFIX, RUN_ID
from sqlalchemy import create_engine, text

from ostinato.demo.world import CHECKS_BY_TYPE, JobPlan, run_sheet

ROOT = Path(__file__).resolve().parents[1]
QUARTERS = re.compile(r"first quarter ([\d.]+)%\s+→\s+last quarter ([\d.]+)%")
CLOSED = "127.0.0.1:1"
"""Nothing listens on port 1: a connection is refused at once."""


def _first_try_rate(check: str, applied: list[str], n: int = 4000, *, drifted: bool = False) -> float:
    plan = JobPlan("job", "/home/alice/work/x", "claude-haiku", (check,))
    rng = random.Random(3)
    runs = (run_sheet(plan, 0, applied, rng, drifted=drifted) for _ in range(n))
    return sum(run.success_without_retry for run in runs) / n


def test_the_world_rewards_helpful_patterns_and_punishes_misleading_ones() -> None:
    helpful = CHECKS_BY_TYPE["file_exists"]
    misleading = CHECKS_BY_TYPE["content_regex"]
    assert _first_try_rate("file_exists", []) == pytest.approx(helpful.base_pass, abs=0.03)
    assert _first_try_rate("file_exists", [helpful.pattern_id]) == pytest.approx(0.90, abs=0.02)
    assert _first_try_rate("content_regex", [misleading.pattern_id]) == pytest.approx(0.25, abs=0.03)
    # Another check's pattern does nothing for this one.
    assert _first_try_rate("file_exists", [misleading.pattern_id]) == pytest.approx(0.30, abs=0.03)
    # Every pattern the store detects about a check carries its advice; several do no more than one.
    assert _first_try_rate("file_exists", sorted(helpful.pattern_ids)) == pytest.approx(0.90, abs=0.02)
    assert len(helpful.pattern_ids) == 5


def test_after_the_model_update_the_json_advice_misleads() -> None:
    advice = [CHECKS_BY_TYPE["json_schema"].pattern_id]
    assert _first_try_rate("json_schema", advice) == pytest.approx(0.90, abs=0.02)
    assert _first_try_rate("json_schema", advice, drifted=True) == pytest.approx(0.40, abs=0.03)
    assert _first_try_rate("json_schema", [], drifted=True) == pytest.approx(0.85, abs=0.02)
    # The others do not drift.
    advice = [CHECKS_BY_TYPE["file_exists"].pattern_id]
    assert _first_try_rate("file_exists", advice, drifted=True) == pytest.approx(0.90, abs=0.02)


def _demo(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _quarters(output: str) -> tuple[float, float]:
    found = QUARTERS.search(output)
    assert found, output[-3000:]
    return float(found.group(1)), float(found.group(2))


@pytest.mark.slow
def test_demo_runs_embedded_when_no_server_answers(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OSTINATO_BROKER_URL": f"redis://{CLOSED}/0",
        "OSTINATO_DATABASE_URL": f"postgresql+psycopg://postgres@{CLOSED}/nowhere",
        "OSTINATO_EMBEDDED_PATH": str(tmp_path / "embedded.db"),
        "OSTINATO_SPOOL_DIR": str(tmp_path / "spool"),
        "COLUMNS": "160",
    }
    done = _demo(["bash", "scripts/demo", "--duration", "20", "--seed", "7"], env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "embedded mode" in out.splitlines()[0]
    assert re.search(r"^discovery .+ from ", out, re.MULTILINE), out[-3000:]
    assert "top patterns" in out and "validation_failure" in out
    first, last = _quarters(out)
    assert last > first, (first, last)
    assert (tmp_path / "embedded.db").exists()
    listed = _demo(
        [sys.executable, "-m", "ostinato.cli", "patterns"],
        {**env, "OSTINATO_DATABASE_URL": f"sqlite:///{tmp_path / 'embedded.db'}", "COLUMNS": "200"},
    )
    assert listed.returncode == 0 and "validation_failure" in listed.stdout, listed.stdout + listed.stderr


@pytest.fixture
def demo_database() -> Iterator[str]:
    """A database of its own for the demo on the servers (it creates it), dropped afterwards."""
    name = f"ostinato_test_{RUN_ID}_demo"
    yield ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.mark.slow
def test_demo_uses_the_servers_when_they_answer(
    demo_database: str, redis_client: object, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "OSTINATO_DATABASE_URL": demo_database,
        "OSTINATO_KEY_PREFIX": f"{KEY_PREFIX}demo:",
        "OSTINATO_SPOOL_DIR": str(tmp_path / "spool"),
        "COLUMNS": "200",
    }
    done = _demo([sys.executable, "-m", "ostinato.cli", "demo", "--duration", "15", "--seed", "3"], env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:] + done.stderr[-3000:]
    assert "on the servers" in out.splitlines()[0]
    assert "top patterns" in out and "not applied in time" not in out
    listed = _demo([sys.executable, "-m", "ostinato.cli", "patterns"], env)
    assert listed.returncode == 0, listed.stderr
    assert "validation_failure" in listed.stdout
    stats = _demo([sys.executable, "-m", "ostinato.cli", "stats"], env)
    assert stats.returncode == 0 and "total_executions" in stats.stdout, stats.stdout

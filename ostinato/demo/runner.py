"""One simulated runner: asks the store what to inject, runs sheets, reports every outcome with the producer.

The same function runs in a thread (embedded mode) or in its own process (servers): either way it uses the
real ``Client``, and it tells the demo what it did through ``report`` (a queue in both cases).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from ostinato.demo.world import (
    DRIFT_AT,
    RATE_LIMIT_CHANCE,
    RATE_LIMIT_CODE,
    RATE_LIMIT_SECONDS,
    RATE_LIMITED_MODEL,
    JobPlan,
    run_sheet,
)
from ostinato.producers import BeforeSend, Client, PatternContext
from ostinato.schema.messages import Message, SheetOutcomeMessage
from ostinato.settings import Settings

RELEVANT_LIMIT = 5
SHEET_PACE = (0.04, 0.12)
"""Seconds between sheets: a real sheet takes minutes, the demo's a tenth of a second."""


def quiet_logs() -> None:
    """Warnings and errors only: the live panel is the demo's output, not the components' info logs."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


class Report(Protocol):
    def put(self, item: Any) -> None: ...


@dataclass(frozen=True)
class RunnerSpec:
    """What a runner needs, picklable for a runner process."""

    plan: JobPlan
    run_id: str
    seed: int
    duration: float
    """Seconds of sheets, counted from the runner's own start: a runner process that took long to start
    (a loaded machine) still runs its sheets for that long."""
    settings: dict[str, Any]
    embedded: str | None = None
    """The embedded store's path; None to publish through the servers of ``settings``."""


class SentTails:
    """A ``before_send`` hook that keeps each outcome's tail as it leaves the runner, after scrubbing."""

    def __init__(self) -> None:
        self.tails: dict[str, str] = {}

    def __call__(self, message: Message) -> Message:
        if isinstance(message, SheetOutcomeMessage):
            self.tails[str(message.payload.execution_id)] = message.payload.stdout_tail
        return message


def make_client(spec: RunnerSpec, before_send: BeforeSend | None = None) -> Client:
    return Client(
        spec.plan.name,
        spec.plan.workspace,
        settings=Settings(**spec.settings),
        config_hash=spec.run_id,
        embedded=Path(spec.embedded) if spec.embedded is not None else None,
        before_send=before_send,
    )


def run_runner(spec: RunnerSpec, report: Report, sleep: Callable[[float], None] = time.sleep) -> None:
    """Run sheets for ``spec.duration`` seconds; each event goes to ``report`` as (kind, job, time, data)."""
    if spec.embedded is None:
        quiet_logs()  # a runner process of its own: its logs go to the demo's terminal too
    rng = random.Random(spec.seed)
    plan = spec.plan
    sent = SentTails()
    with make_client(spec, sent) as client:
        started = time.time()
        deadline = started + spec.duration
        drift_at = started + spec.duration * DRIFT_AT
        report.put(("started", plan.name, started, {"job_hash": client.job_hash}))
        sheet_num = 0
        while time.time() < deadline:
            status = client.rate_limit_status(plan.model)
            if status.limited and status.seconds_left:
                waited = min(status.seconds_left, max(0.0, deadline - time.time()))
                sleep(waited)
                client.record_error_recovery(
                    status.error_code or RATE_LIMIT_CODE, RATE_LIMIT_SECONDS, waited, True, model=plan.model
                )
                report.put(("waited", plan.name, time.time(), {"model": plan.model, "seconds": waited}))
            check = plan.sheets[sheet_num % len(plan.sheets)]
            context = PatternContext(validation_types=[check])
            chosen = client.relevant_patterns(context, RELEVANT_LIMIT, rng=rng)
            drifted = time.time() >= drift_at
            run = run_sheet(plan, sheet_num, [p.pattern_id for p in chosen], rng, drifted=drifted)
            if plan.model == RATE_LIMITED_MODEL and rng.random() < RATE_LIMIT_CHANCE:
                client.report_rate_limit(plan.model, RATE_LIMIT_CODE, RATE_LIMIT_SECONDS)
                report.put(("rate_limited", plan.name, time.time(), {"model": plan.model}))
            client.record_outcome(run.outcome)
            execution_id = str(run.outcome["execution_id"])
            sent_tail = sent.tails.pop(execution_id, "")
            report.put(
                (
                    "sheet",
                    plan.name,
                    time.time(),
                    {
                        "success_without_retry": run.success_without_retry,
                        "applied": len(run.applied),
                        "secret": run.planted_secret,
                        "sent": sent_tail.splitlines()[-2] if run.planted_secret else None,
                    },
                )
            )
            sheet_num += 1
            sleep(rng.uniform(*SHEET_PACE))
        flushed = client.flush(15.0)
    report.put(("finished", plan.name, time.time(), {"flushed": flushed}))

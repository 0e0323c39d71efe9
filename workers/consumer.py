"""A Celery consumer that dead-letters the messages Celery cannot even hand to a task.

Celery logs and acknowledges a body it cannot decode (not JSON, or a refused content type such as pickle),
a message for an unknown task and a malformed one. ostinato's rule is that nothing is dropped silently, so
each of them is first kept in ``dead_letters`` with its reason and raw body.
"""

from __future__ import annotations

from typing import Any

import structlog
from celery.worker.consumer import Consumer

from ostinato.schema.identity import hash32
from ostinato.workers import runtime
from ostinato.workers.intake import raw_text
from ostinato.workers.redaction import scrub_body

log = structlog.get_logger(__name__)


def dead_letter_raw(message: Any, reason: str) -> None:
    """Keep the raw body of a broker message; never raises (the consumer must keep consuming)."""
    body = message.body
    headers = getattr(message, "headers", None) or {}
    task_name = headers.get("task") if isinstance(headers, dict) else None
    delivery = headers.get("id") if isinstance(headers, dict) else None
    try:
        text = raw_text(body)
        runtime.store().record_dead_letter(
            text,
            reason,
            letter_id=hash32(f"{delivery or ''}:{text}"),
            task_name=str(task_name)[:200] if task_name else None,
        )
    except Exception as error:
        # The log is then the body's only record: it is scrubbed as the stored dead letter would be.
        body_text = scrub_body(raw_text(body))[:2000]
        log.error("dead_letter_write_failed", reason=reason, error=repr(error), body=body_text)


class DeadLetteringConsumer(Consumer):  # type: ignore[misc]
    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_raw(message, f"undecodable body ({message.content_type}): {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_raw(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_raw(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_raw(message, f"refused task message ({message.content_type}): {exc}")
        super().on_invalid_task(body, message, exc)

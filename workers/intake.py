"""From raw task arguments to applied messages: validate, dead-letter, apply, isolate a poison message.

Plain functions over a store, so the whole path is testable without a worker; the Celery tasks only add
retries for an absent database and the broadcast after commit.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from billiard.exceptions import SoftTimeLimitExceeded  # type: ignore[import-untyped]
from pydantic import ValidationError
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError

from ostinato.schema.identity import hash32
from ostinato.schema.messages import Message, parse_message
from ostinato.workers.ingest import Detector, IngestReport, apply_messages
from ostinato.workers.store import Store

log = structlog.get_logger(__name__)

RAW_BODY_LIMIT = 1_000_000
UNDEFINED_TABLE = "42P01"


class SchemaMissingError(Exception):
    """The database answers but has no store tables yet (a migration is pending): retry, blame nobody."""


INFRASTRUCTURE_ERRORS = (OperationalError, InterfaceError, SchemaMissingError)
"""The database is away, its schema is not there yet, or the connection broke: the whole delivery is retried
later and nothing is blamed."""
NOT_THE_MESSAGES_FAULT = (*INFRASTRUCTURE_ERRORS, SoftTimeLimitExceeded)
"""Raised through: the delivery is retried whole. Celery raises ``SoftTimeLimitExceeded`` inside a task that
runs too long (most likely on a slow database); it must not be taken for a message the store refused."""


@dataclass(frozen=True)
class Rejected:
    index: int
    raw: object
    reason: str


def describe_validation_error(error: ValidationError) -> str:
    """A short, readable reason: each failing field and why."""
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '<envelope>'}: {e['msg']}" for e in error.errors()[:8]]
    return "invalid message: " + "; ".join(parts)


def raw_text(raw: object) -> str:
    """A body as storable text: UTF-8 as it is, other bytes as base64, NUL escaped (PostgreSQL refuses it)."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "base64:" + base64.b64encode(raw).decode("ascii")
    else:
        text = raw if isinstance(raw, str) else json.dumps(raw, default=str)
    return text.replace("\x00", "\\u0000")[:RAW_BODY_LIMIT]


def validate(raw_envelopes: object, expected_kind: str | None) -> tuple[list[Message], list[Rejected]]:
    """Split a delivery into valid messages and rejected envelopes with their reasons."""
    if expected_kind is not None:
        raw_envelopes = [raw_envelopes]
    if not isinstance(raw_envelopes, list):
        return [], [Rejected(0, raw_envelopes, "a batch must be a list of envelopes")]
    valid: list[Message] = []
    rejected: list[Rejected] = []
    for index, raw in enumerate(raw_envelopes):
        try:
            message = parse_message(raw)
        except ValidationError as error:
            rejected.append(Rejected(index, raw, describe_validation_error(error)))
            continue
        if expected_kind is not None and message.kind != expected_kind:
            reason = f"a {message.kind!r} envelope was sent to the task for {expected_kind!r}"
            rejected.append(Rejected(index, raw, reason))
            continue
        valid.append(message)
    return valid, rejected


@dataclass
class Intake:
    """One delivery (a task message) and where its effects go."""

    store: Store
    delivery_id: str
    task_name: str
    detector: Detector | None = None
    discovery_ttl_seconds: float = 300.0

    def __call__(self, raw_envelopes: object, expected_kind: str | None = None) -> IngestReport:
        """Apply the delivery once: valid messages in one transaction, the rest dead-lettered with reasons.

        If the store refuses the batch for a reason other than an absent database, the messages are applied
        one by one so that only the message at fault is dead-lettered. Raises only ``NOT_THE_MESSAGES_FAULT``.
        """
        valid, rejected = validate(raw_envelopes, expected_kind)
        try:
            return self.store.run(lambda: self._apply_all(valid, rejected))
        except NOT_THE_MESSAGES_FAULT:
            raise
        except Exception as error:
            _raise_if_schema_missing(error)
            log.warning(
                "ingest_batch_refused", error=repr(error), messages=len(valid), delivery=self.delivery_id
            )
        return self._one_by_one(valid, rejected)

    def _apply_all(self, valid: Sequence[Message], rejected: Sequence[Rejected]) -> IngestReport:
        self._letter_all(rejected)
        report = self._apply(valid)
        report.dead_lettered += len(rejected)
        return report

    def _one_by_one(self, valid: Sequence[Message], rejected: Sequence[Rejected]) -> IngestReport:
        total = IngestReport(dead_lettered=len(rejected))
        self.store.run(lambda: self._letter_all(rejected))
        for index, message in enumerate(valid):
            try:
                report = self._apply([message])
            except NOT_THE_MESSAGES_FAULT:
                raise
            except Exception as error:
                _raise_if_schema_missing(error)
                item = Rejected(
                    -1 - index, message.model_dump(mode="json"), f"store refused the message: {error!r}"
                )
                self.store.run(lambda item=item, m=message: self._letter(item, m))  # type: ignore[misc]
                total.dead_lettered += 1
                continue
            total.applied += report.applied
            total.duplicates += report.duplicates
            total.dead_lettered += report.dead_lettered
            total.discoveries.extend(report.discoveries)
        return total

    def _apply(self, messages: Sequence[Message]) -> IngestReport:
        return apply_messages(
            self.store, messages, detector=self.detector, discovery_ttl_seconds=self.discovery_ttl_seconds
        )

    def _letter_all(self, rejected: Sequence[Rejected]) -> None:
        for item in rejected:
            self._letter(item)

    def give_up(self, raw_envelopes: object, reason: str) -> None:
        """Dead-letter the whole delivery with ``reason``, once however often it is redelivered."""
        self.store.run(lambda: self._letter(Rejected(-1, raw_envelopes, reason)))

    def _letter(self, item: Rejected, message: Message | None = None) -> None:
        """Dead-letter one envelope; its id comes from the delivery, so a retried delivery writes it once."""
        self.store.record_dead_letter(
            raw_text(item.raw),
            item.reason,
            letter_id=hash32(f"{self.delivery_id}:{item.index}"),
            message_id=str(message.message_id) if message else None,
            kind=message.kind if message else _kind_of(item.raw),
            task_name=self.task_name,
        )


def _raise_if_schema_missing(error: Exception) -> None:
    if isinstance(error, ProgrammingError) and getattr(error.orig, "sqlstate", None) == UNDEFINED_TABLE:
        raise SchemaMissingError(str(error.orig)) from error


def _kind_of(raw: object) -> str | None:
    kind = raw.get("kind") if isinstance(raw, dict) else None
    return kind[:200] if isinstance(kind, str) else None

"""Dead letters: messages that could not be applied, kept with the reason and the raw body."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, update

from ostinato.schema.tables import dead_letters
from ostinato.workers.redaction import scrub_body, scrub_text
from ostinato.workers.store.base import new_id, transactional
from ostinato.workers.store.patterns import PatternsMixin


class DeadLettersMixin(PatternsMixin):
    """Nothing is dropped silently: what cannot be applied is kept here, to be read or replayed."""

    @transactional
    def record_dead_letter(
        self,
        raw_body: str,
        reason: str,
        *,
        letter_id: str | None = None,
        message_id: str | None = None,
        kind: str | None = None,
        task_name: str | None = None,
    ) -> str:
        """Keep a message that cannot be applied. A given ``letter_id`` is written once, however often
        the same delivery is retried. Body, reason, kind and task name are scrubbed first (the reason may
        quote the message, a store error its values); the body stays replayable (see ``redaction``)."""
        letter_id = letter_id or new_id()
        self.conn.execute(
            self.insert(dead_letters)
            .on_conflict_do_nothing(index_elements=["id"])
            .values(
                id=letter_id,
                message_id=message_id,
                kind=_short(kind),
                task_name=_short(task_name),
                reason=scrub_text(reason),
                raw_body=scrub_body(raw_body),
                received_at=self.now(),
            )
        )
        return letter_id

    @transactional
    def list_dead_letters(self, limit: int = 50, *, include_replayed: bool = False) -> list[dict[str, Any]]:
        """Newest first."""
        query = select(dead_letters).order_by(dead_letters.c.received_at.desc(), dead_letters.c.id.desc())
        if not include_replayed:
            query = query.where(dead_letters.c.replayed_at.is_(None))
        return [dict(row._mapping) for row in self.conn.execute(query.limit(limit))]

    @transactional
    def mark_dead_letters_replayed(self, ids: Sequence[str], at: datetime | None = None) -> int:
        result = self.conn.execute(
            update(dead_letters).where(dead_letters.c.id.in_(list(ids))).values(replayed_at=at or self.now())
        )
        return result.rowcount


def _short(value: str | None) -> str | None:
    """A scrubbed kind or task name, cut to its column's 200 characters (a token can lengthen it)."""
    return None if value is None else scrub_text(value)[:200]

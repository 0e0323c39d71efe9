"""Patterns: upsert with content-hash merge, applications with effectiveness, priority, queries."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple

import structlog
from sqlalchemy import (
    Row,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    exists,
    func,
    literal,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from ostinato.schema.identity import content_hash, pattern_id
from ostinato.schema.records import PatternRecord, QuarantineStatus
from ostinato.schema.tables import UTCDateTime, pattern_applications, patterns
from ostinato.workers.store import formulas
from ostinato.workers.store.base import StoreBase, new_id, transactional

log = structlog.get_logger(__name__)

RETIRED = QuarantineStatus.RETIRED.value
RESCORE_CHUNK = 100
"""Patterns whose recent applications one statement reads (each is one part of a ``UNION ALL``)."""
_SIGHTING_UPDATES: dict[str, Update] = {}

TextField = Literal["description", "suggested_action", "context_tags"]
TEXT_FIELDS: tuple[TextField, ...] = ("description", "suggested_action", "context_tags")
STAMP_COLUMNS: dict[TextField, str] = {
    "description": "description_stamp",
    "suggested_action": "action_stamp",
    "context_tags": "tags_stamp",
}
ORIGIN = "origin"
ORIGIN_COLUMNS = ("instrument_name", "provenance_job_hash", "provenance_sheet_num")


def _instant(at: datetime) -> str:
    """A time as fixed-width text in UTC, so stamps compare as the times do."""
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _digest(value: str | Sequence[object]) -> str:
    """A short fingerprint of a value: the last tie-break, so two different values never rank equal.

    A list (tags, an origin) is taken by its ``repr``, which tells ``None`` from ``"None"`` and is stable.
    """
    text = value if isinstance(value, str) else repr(value)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def origin_stamp(
    first_seen: datetime, instrument_name: str | None, job_hash: str | None, sheet_num: int | None
) -> str:
    """Where an instrument and provenance rank as a pattern's origin: the lowest stamp is the earliest.

    Ordered by time, then sheet number (none first), then the values, as plain text by code point.
    """
    sheet = "-" if sheet_num is None else f"{sheet_num:012d}"
    return f"{_instant(first_seen)}|{sheet}|{_digest([instrument_name, job_hash, sheet_num])}"


@dataclass(frozen=True)
class PatternSighting:
    """One or more sightings of a pattern, as ``record_pattern`` takes them.

    What the stored pattern ends up saying does not depend on the order workers apply sightings in (SPEC-store
    §0.1). Its description (with the content hash), suggested action and tags are each those of the latest
    sighting that carries one: latest by ``seen_at``, then by ``rank``, then by the value, so two different
    values never tie. Its instrument and provenance are those of the earliest sighting (by ``first_seen_at``,
    then by the values): upstream sets them when the first aggregation creates the row and never changes them.
    The store keeps each field's winning stamp beside it (``patterns.*_stamp``).
    """

    pattern_type: str
    pattern_name: str
    seen_at: datetime
    description: str | None = None
    context_tags: list[str] | None = None
    suggested_action: str | None = None
    provenance_job_hash: str | None = None
    provenance_sheet_num: int | None = None
    instrument_name: str | None = None
    count: int = 1
    first_seen_at: datetime | None = None
    """When the evidence behind the sighting began (``seen_at`` when None): ``first_seen`` and the origin."""
    rank: int = 0
    """Non-negative; among sightings seen at the same instant the higher rank's text wins (detection: how
    much evidence the text rests on, so a job's complete totals win over its partial ones)."""
    stamps: Mapping[str, str | None] = field(default_factory=dict)
    """Stamps that replace the computed ones: a combined sighting carries each field's winner's."""

    @property
    def id(self) -> str:
        return pattern_id(self.pattern_type, self.pattern_name)

    @property
    def first_seen(self) -> datetime:
        return self.first_seen_at or self.seen_at

    def stamp(self, name: TextField) -> str | None:
        """Where this sighting's value of a text field ranks; None when it leaves the field alone."""
        if name in self.stamps:
            return self.stamps[name]
        value = getattr(self, name)
        if value is None:
            return None
        return f"{_instant(self.seen_at)}|{self.rank:015d}|{_digest(value)}"

    @property
    def origin_stamp(self) -> str:
        """Where this sighting's instrument and provenance rank: the lowest stamp is the origin."""
        stamp = self.stamps.get(ORIGIN)
        if stamp is not None:
            return stamp
        return origin_stamp(
            self.first_seen, self.instrument_name, self.provenance_job_hash, self.provenance_sheet_num
        )


def merge_sightings(group: Sequence[PatternSighting]) -> PatternSighting:
    """Sightings of one pattern as one, leaving what applying them one by one leaves, in any order.

    Counts add up, each text field comes from the latest sighting that carries it, the instrument and
    provenance from the earliest.
    """
    if len(group) == 1:
        return group[0]
    origin = min(group, key=lambda s: s.origin_stamp)
    texts: dict[str, Any] = {}
    stamps: dict[str, str | None] = {ORIGIN: origin.origin_stamp}
    for name in TEXT_FIELDS:
        stamped = [(stamp, s) for s in group if (stamp := s.stamp(name)) is not None]
        stamp, latest = max(stamped, key=lambda pair: pair[0], default=(None, None))
        texts[name] = None if latest is None else getattr(latest, name)
        stamps[name] = stamp
    return PatternSighting(
        pattern_type=origin.pattern_type,
        pattern_name=origin.pattern_name,
        seen_at=max(s.seen_at for s in group),
        first_seen_at=min(s.first_seen for s in group),
        provenance_job_hash=origin.provenance_job_hash,
        provenance_sheet_num=origin.provenance_sheet_num,
        instrument_name=origin.instrument_name,
        count=sum(s.count for s in group),
        stamps=stamps,
        **texts,
    )


class UpsertResult(NamedTuple):
    id: str
    created: bool


@dataclass(slots=True)
class ApplicationInput:
    """One application of a pattern to a sheet, as the store records it."""

    pattern_id: str
    pattern_led_to_success: bool
    applied_at: datetime
    execution_id: str | None = None
    retry_count_before: int = 0
    retry_count_after: int = 0
    grounding_confidence: float | None = None
    application_mode: str = "exploitation"
    validation_passed: bool | None = None
    id: str = field(default_factory=new_id)


def log_unknown(event: str, missing: set[str]) -> None:
    """One log line per call for the pattern ids that do not exist (a batch can name many)."""
    if missing:
        log.info(event, reason="pattern_not_found", count=len(missing), pattern_ids=sorted(missing)[:10])


def _sighting_values(s: PatternSighting) -> dict[str, Any]:
    """The parameters of ``PatternsMixin._sighting_update`` for one sighting."""
    described = s.description is not None
    return {
        "b_id": s.id,
        "b_count": s.count,
        "b_seen": s.seen_at,
        "b_first_seen": s.first_seen,
        "b_description": s.description,
        "b_digest": content_hash(s.pattern_type, s.pattern_name, s.description) if described else None,
        "b_action": s.suggested_action,
        "b_tags": None if s.context_tags is None else list(s.context_tags),
        **{f"b_{STAMP_COLUMNS[name]}": s.stamp(name) for name in TEXT_FIELDS},
        "b_origin_stamp": s.origin_stamp,
        **{f"b_{name}": getattr(s, name) for name in ORIGIN_COLUMNS},
    }


class PatternsMixin(StoreBase):
    """Pattern rows: create, merge, apply, score and query."""

    def insert(self, table: Any) -> Any:
        """The dialect's INSERT, which knows ``ON CONFLICT``."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def bytewise(self, text_value: ColumnElement[Any]) -> ColumnElement[Any]:
        """Text that compares by code point, as Python's ``<`` does, whatever the database's collation."""
        return text_value.collate("C") if self.dialect == "postgresql" else text_value

    # -- create / update --------------------------------------------------------------------------------

    @transactional
    def record_pattern(
        self,
        pattern_type: str,
        pattern_name: str,
        description: str | None = None,
        context_tags: list[str] | None = None,
        suggested_action: str | None = None,
        provenance_job_hash: str | None = None,
        provenance_sheet_num: int | None = None,
        instrument_name: str | None = None,
        *,
        seen_at: datetime | None = None,
        count: int = 1,
    ) -> str:
        """Create a pattern or count another sighting of it; returns the id of the row that took it."""
        return self.upsert_pattern(
            PatternSighting(
                pattern_type=pattern_type,
                pattern_name=pattern_name,
                description=description,
                context_tags=context_tags,
                suggested_action=suggested_action,
                provenance_job_hash=provenance_job_hash,
                provenance_sheet_num=provenance_sheet_num,
                instrument_name=instrument_name,
                seen_at=seen_at or self.now(),
                count=count,
            )
        ).id

    def upsert_pattern(self, sighting: PatternSighting) -> UpsertResult:
        """Id match, else content-hash match, else insert: each step one atomic statement.

        ``count`` sightings are added at once (a batch combines its reports of one pattern into one update).
        Tags ``None`` keep the stored tags, ``[]`` clears them. Two writers racing to create the same pattern
        both land on one row: the loser's INSERT does nothing and it updates the winner's row instead.
        """
        s = sighting
        pid = s.id
        if self._add_sighting(s):
            return UpsertResult(pid, created=False)
        digest = content_hash(s.pattern_type, s.pattern_name, s.description)
        seen: dict[str, Any] = {
            "occurrence_count": patterns.c.occurrence_count + s.count,
            "last_seen": self.later(patterns.c.last_seen, s.seen_at),
            "first_seen": self.earlier(patterns.c.first_seen, s.first_seen),
            "active": True,
        }
        twin = (
            select(patterns.c.id)
            .where(patterns.c.content_hash == digest)
            .order_by(patterns.c.priority_score.desc(), patterns.c.id)
            .limit(1)
            .scalar_subquery()
        )
        merged = self._update_returning(patterns.c.id == twin, seen)
        if merged is not None:
            return UpsertResult(merged, created=False)
        inserted = self.conn.execute(
            self.insert(patterns)
            .values(
                id=pid,
                pattern_type=s.pattern_type,
                pattern_name=s.pattern_name,
                description=s.description,
                occurrence_count=max(s.count, 1),  # a row exists once something was seen
                first_seen=s.first_seen,
                last_seen=s.seen_at,
                last_confirmed=s.first_seen,
                suggested_action=s.suggested_action,
                context_tags=list(s.context_tags or []),
                provenance_job_hash=s.provenance_job_hash,
                provenance_sheet_num=s.provenance_sheet_num,
                trust_calculation_date=s.first_seen,
                content_hash=digest,
                instrument_name=s.instrument_name,
                **{STAMP_COLUMNS[name]: s.stamp(name) for name in TEXT_FIELDS},
                origin_stamp=s.origin_stamp,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(patterns.c.id)
        ).scalar()
        if inserted is not None:
            return UpsertResult(pid, created=True)
        self._add_sighting(s)
        return UpsertResult(pid, created=False)

    def add_sightings(self, sightings: Sequence[PatternSighting]) -> None:
        """What ``upsert_pattern`` does when the id matches, for many patterns in one statement.

        The patterns must exist and be locked by this transaction (``lock_patterns``).
        """
        if sightings:
            self.conn.execute(self._sighting_update(), [_sighting_values(s) for s in sightings])

    def _add_sighting(self, sighting: PatternSighting) -> bool:
        """Add one sighting to the pattern with its id; False when there is no such pattern."""
        statement = self._sighting_update().returning(patterns.c.id)
        return self.conn.execute(statement, _sighting_values(sighting)).scalar() is not None

    def _sighting_update(self) -> Update:
        """Count sightings into a pattern row: each text field follows its latest sighting, instrument and
        provenance the earliest (``PatternSighting``); a field the sighting leaves None keeps its value.

        Built once per dialect: the statement is large and every batch runs it.
        """
        cached = _SIGHTING_UPDATES.get(self.dialect)
        if cached is None:
            cached = _SIGHTING_UPDATES[self.dialect] = self._build_sighting_update()
        return cached

    def _build_sighting_update(self) -> Update:
        seen_at = bindparam("b_seen", type_=UTCDateTime())
        first_seen = bindparam("b_first_seen", type_=UTCDateTime())
        values: dict[str, Any] = {
            "occurrence_count": patterns.c.occurrence_count + bindparam("b_count"),
            "last_seen": self.later(patterns.c.last_seen, seen_at),
            "first_seen": self.earlier(patterns.c.first_seen, first_seen),
            "active": True,
        }
        # Times that start at the pattern's creation (its first sighting) and were not moved since follow
        # an earlier first sighting that arrives late, as if it had been applied first.
        for since_creation in (patterns.c.last_confirmed, patterns.c.trust_calculation_date):
            values[since_creation.name] = case(
                (since_creation == patterns.c.first_seen, self.earlier(patterns.c.first_seen, first_seen)),
                else_=since_creation,
            )
        texts: dict[TextField, dict[str, str]] = {
            "description": {"description": "b_description", "content_hash": "b_digest"},
            "suggested_action": {"suggested_action": "b_action"},
            "context_tags": {"context_tags": "b_tags"},
        }
        for name, columns in texts.items():
            stored_stamp = patterns.c[STAMP_COLUMNS[name]]
            stamp = cast(bindparam(f"b_{stored_stamp.name}"), Text())
            newer = and_(stamp.is_not(None), or_(stored_stamp.is_(None), self.bytewise(stored_stamp) < stamp))
            values[stored_stamp.name] = case((newer, stamp), else_=stored_stamp)
            for name_of_column, param in columns.items():
                stored = patterns.c[name_of_column]
                values[name_of_column] = case((newer, bindparam(param, type_=stored.type)), else_=stored)
        origin = cast(bindparam("b_origin_stamp"), Text())
        earlier = and_(patterns.c.origin_stamp.is_not(None), origin < self.bytewise(patterns.c.origin_stamp))
        values["origin_stamp"] = case((earlier, origin), else_=patterns.c.origin_stamp)
        for name_of_column in ORIGIN_COLUMNS:
            stored = patterns.c[name_of_column]
            values[name_of_column] = case(
                (earlier, bindparam(f"b_{name_of_column}", type_=stored.type)), else_=stored
            )
        return update(patterns).where(patterns.c.id == bindparam("b_id")).values(values)

    def _update_returning(self, where: ColumnElement[bool], values: dict[str, Any]) -> str | None:
        found = self.conn.execute(
            update(patterns).where(where).values(values).returning(patterns.c.id)
        ).scalar()
        return None if found is None else str(found)

    # -- applications -----------------------------------------------------------------------------------

    @transactional
    def record_pattern_application(
        self,
        pattern_id: str,
        execution_id: str | None,
        pattern_led_to_success: bool,
        retry_count_before: int = 0,
        retry_count_after: int = 0,
        application_mode: str = "exploitation",
        validation_passed: bool | None = None,
        grounding_confidence: float | None = None,
        *,
        applied_at: datetime | None = None,
    ) -> str:
        """Record one application and rescore the pattern; the id is returned even for an unknown pattern."""
        application = ApplicationInput(
            pattern_id=pattern_id,
            execution_id=execution_id,
            pattern_led_to_success=pattern_led_to_success,
            applied_at=applied_at or self.now(),
            retry_count_before=retry_count_before,
            retry_count_after=retry_count_after,
            application_mode=application_mode,
            validation_passed=validation_passed,
            grounding_confidence=grounding_confidence,
        )
        self.record_pattern_applications([application])
        return application.id

    @transactional
    def record_pattern_applications(self, applications: Sequence[ApplicationInput]) -> list[str]:
        """Record many applications with one locked counter update and one rescore per pattern.

        Pattern rows are locked in id order, so concurrent batches cannot deadlock on each other.
        Applications of unknown patterns are skipped (and logged), as upstream does.
        """
        by_pattern: dict[str, list[ApplicationInput]] = defaultdict(list)
        for application in applications:
            by_pattern[application.pattern_id].append(application)
        known = set(self.lock_patterns(by_pattern))
        log_unknown("pattern_application_skipped", set(by_pattern) - known)
        rows = [
            {
                "id": a.id,
                "pattern_id": a.pattern_id,
                "execution_id": a.execution_id,
                "applied_at": a.applied_at,
                "pattern_led_to_success": a.pattern_led_to_success,
                "retry_count_before": a.retry_count_before,
                "retry_count_after": a.retry_count_after,
                "grounding_confidence": a.grounding_confidence,
                "application_mode": a.application_mode,
                "validation_passed": a.validation_passed,
            }
            for pid in sorted(known)
            for a in by_pattern[pid]
        ]
        self.insert_rows(pattern_applications, rows)
        counters: list[dict[str, Any]] = []
        for pid in sorted(known):
            group = by_pattern[pid]
            successes = [a.applied_at for a in group if a.pattern_led_to_success]
            counters.append(
                {
                    "b_id": pid,
                    "b_successes": len(successes),
                    "b_failures": len(group) - len(successes),
                    "b_confirmed": max(successes, default=None),
                }
            )
        if counters:
            confirmed = bindparam("b_confirmed", type_=UTCDateTime())
            self.conn.execute(
                update(patterns)
                .where(patterns.c.id == bindparam("b_id"))
                .values(
                    led_to_success_count=patterns.c.led_to_success_count + bindparam("b_successes"),
                    led_to_failure_count=patterns.c.led_to_failure_count + bindparam("b_failures"),
                    last_confirmed=case(
                        (confirmed.is_(None), patterns.c.last_confirmed),
                        else_=self.later(patterns.c.last_confirmed, confirmed),
                    ),
                ),
                counters,
            )
        self.rescore_many(sorted(known))
        return [a.id for a in applications]

    def lock_patterns(self, ids: Iterable[str]) -> list[str]:
        """Lock the existing pattern rows among ``ids`` in id order; returns the ids that exist."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        query = (
            select(patterns.c.id).where(patterns.c.id.in_(wanted)).order_by(patterns.c.id).with_for_update()
        )
        return list(self.conn.execute(query).scalars())

    def rescore(self, pid: str, as_of: datetime | None = None) -> float | None:
        """Recompute and store a pattern's effectiveness and priority; None if it does not exist."""
        return self.rescore_many([pid], as_of).get(pid)

    def rescore_many(self, pids: Sequence[str], as_of: datetime | None = None) -> dict[str, float]:
        """Recompute and store the effectiveness and priority of many patterns, in three statements.

        ``as_of`` defaults to each pattern's newest application, so the stored score depends only on the
        recorded history, never on when a worker happened to apply the message.
        """
        rows = {
            row.id: row
            for row in self.conn.execute(
                select(
                    patterns.c.id,
                    patterns.c.led_to_success_count,
                    patterns.c.led_to_failure_count,
                    patterns.c.last_confirmed,
                    patterns.c.occurrence_count,
                    patterns.c.variance,
                    patterns.c.quarantine_status,
                ).where(patterns.c.id.in_(sorted(set(pids))))
            )
        }
        recent = self._recent_applications_of(sorted(rows), formulas.RECENT_WINDOW)
        scores: dict[str, float] = {}
        updates: list[dict[str, Any]] = []
        for pid, row in rows.items():
            history = recent[pid]
            decay_to = as_of or max([row.last_confirmed, *(r.applied_at for r in history)])
            score = formulas.effectiveness(
                row.led_to_success_count,
                row.led_to_failure_count,
                [r.pattern_led_to_success for r in history],
                [r.grounding_confidence for r in history],
                max(0, formulas.whole_days(decay_to, row.last_confirmed)),
            )
            rank = (
                0.0
                if row.quarantine_status == RETIRED
                else formulas.priority(score, row.occurrence_count, row.variance or 0.0)
            )
            scores[pid] = score
            updates.append({"b_id": pid, "b_score": score, "b_rank": rank})
        if updates:
            self.conn.execute(
                update(patterns)
                .where(patterns.c.id == bindparam("b_id"))
                .values(effectiveness_score=bindparam("b_score"), priority_score=bindparam("b_rank")),
                updates,
            )
        return scores

    def _recent_applications_of(self, pids: Sequence[str], limit: int) -> dict[str, list[Row[Any]]]:
        """Each pattern's newest applications, newest first: a ``UNION ALL`` of index scans per statement.

        At most ``RESCORE_CHUNK`` patterns go in one statement: SQLite refuses a compound SELECT of more than
        500 parts, and the beat rescores every pattern at once.
        """
        found: dict[str, list[Row[Any]]] = defaultdict(list)
        for first in range(0, len(pids), RESCORE_CHUNK):
            parts = [
                select(
                    pattern_applications.c.pattern_id,
                    pattern_applications.c.applied_at,
                    pattern_applications.c.pattern_led_to_success,
                    pattern_applications.c.grounding_confidence,
                )
                .where(pattern_applications.c.pattern_id == pid)
                .order_by(pattern_applications.c.applied_at.desc(), pattern_applications.c.id.desc())
                .limit(limit)
                .subquery()
                for pid in pids[first : first + RESCORE_CHUNK]
            ]
            query = union_all(*(select(part) for part in parts)) if len(parts) > 1 else select(parts[0])
            for row in self.conn.execute(query):
                found[row.pattern_id].append(row)
        return found

    def recent_applications(self, pid: str, limit: int) -> list[Row[Any]]:
        """A pattern's newest applications, newest first, in a deterministic order."""
        return self._recent_applications_of([pid], limit)[pid]

    @transactional
    def update_pattern_effectiveness(self, pattern_id: str) -> float | None:
        """Rescore one pattern now (decay up to the store's clock); None if it does not exist."""
        if not self.lock_patterns([pattern_id]):
            return None
        return self.rescore(pattern_id, as_of=self.now())

    @transactional
    def recalculate_all_pattern_priorities(self) -> int:
        """Rescore every pattern, inactive ones included; returns how many."""
        ids = self.lock_patterns(self.conn.execute(select(patterns.c.id)).scalars())
        self.rescore_many(ids, as_of=self.now())
        return len(ids)

    @transactional
    def soft_delete_pattern(self, pattern_id: str) -> bool:
        """Hide a pattern from default queries; True only if it was active."""
        result = self.conn.execute(
            update(patterns)
            .where(patterns.c.id == pattern_id, patterns.c.active.is_(True))
            .values(active=False)
        )
        return result.rowcount > 0

    # -- queries ----------------------------------------------------------------------------------------

    def tags_match(self, tags: Sequence[str]) -> ColumnElement[bool]:
        """True when a pattern shares at least one tag with ``tags``."""
        if self.dialect == "postgresql":
            return patterns.c.context_tags.op("?|")(postgresql.array(list(tags)))
        each = func.json_each(patterns.c.context_tags).table_valued("value")
        return exists(select(literal(1)).select_from(each).where(column("value").in_(list(tags))))

    @transactional
    def get_patterns(
        self,
        pattern_type: str | None = None,
        min_priority: float = 0.01,
        limit: int = 20,
        context_tags: Sequence[str] | None = None,
        quarantine_status: QuarantineStatus | str | None = None,
        exclude_quarantined: bool = False,
        min_trust: float | None = None,
        max_trust: float | None = None,
        include_inactive: bool = False,
        instrument_name: str | None = None,
        include_universal: bool = True,
    ) -> list[PatternRecord]:
        """Patterns by priority (then id), every filter ANDed, as upstream's ``get_patterns``."""
        conditions: list[ColumnElement[bool]] = [patterns.c.priority_score >= min_priority]
        if not include_inactive:
            conditions.append(patterns.c.active.is_(True))
        if pattern_type:
            conditions.append(patterns.c.pattern_type == pattern_type)
        if instrument_name is not None:
            scope = patterns.c.instrument_name == instrument_name
            conditions.append(
                or_(scope, patterns.c.instrument_name.is_(None)) if include_universal else scope
            )
        if quarantine_status is not None:
            conditions.append(patterns.c.quarantine_status == QuarantineStatus(quarantine_status).value)
        elif exclude_quarantined:
            conditions.append(patterns.c.quarantine_status != QuarantineStatus.QUARANTINED.value)
        if min_trust is not None:
            conditions.append(patterns.c.trust_score >= min_trust)
        if max_trust is not None:
            conditions.append(patterns.c.trust_score <= max_trust)
        if context_tags:
            conditions.append(self.tags_match(context_tags))
        query = (
            select(patterns)
            .where(and_(true(), *conditions))
            .order_by(patterns.c.priority_score.desc(), patterns.c.id)
            .limit(limit)
        )
        return [PatternRecord.model_validate(row._mapping) for row in self.conn.execute(query)]

    @transactional
    def get_pattern_by_id(self, pattern_id: str) -> PatternRecord | None:
        row = self.conn.execute(select(patterns).where(patterns.c.id == pattern_id)).first()
        return None if row is None else PatternRecord.model_validate(row._mapping)

    @transactional
    def get_pattern_provenance(self, pattern_id: str) -> dict[str, Any] | None:
        record = self.get_pattern_by_id(pattern_id)
        if record is None:
            return None
        return {
            "pattern_id": record.id,
            "pattern_name": record.pattern_name,
            "quarantine_status": record.quarantine_status.value,
            "first_seen": record.first_seen.isoformat(),
            "last_seen": record.last_seen.isoformat(),
            "last_confirmed": record.last_confirmed.isoformat(),
            "provenance_job_hash": record.provenance_job_hash,
            "provenance_sheet_num": record.provenance_sheet_num,
            "quarantined_at": record.quarantined_at.isoformat() if record.quarantined_at else None,
            "validated_at": record.validated_at.isoformat() if record.validated_at else None,
            "quarantine_reason": record.quarantine_reason,
            "trust_score": record.trust_score,
            "trust_calculation_date": (
                record.trust_calculation_date.isoformat() if record.trust_calculation_date else None
            ),
        }

    @transactional
    def get_retired_patterns(self, limit: int = 50) -> list[PatternRecord]:
        """Patterns whose priority retirement set to 0, newest sighting first."""
        query = (
            select(patterns)
            .where(patterns.c.priority_score == 0)
            .order_by(patterns.c.last_seen.desc(), patterns.c.id.desc())
            .limit(limit)
        )
        return [PatternRecord.model_validate(row._mapping) for row in self.conn.execute(query)]

"""Dead letters are scrubbed before they are stored, and a scrubbed JSON body can still be replayed."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Sequence
from typing import Any

from messages import outcome
from typer.testing import CliRunner

from ostinato.cli import app
from ostinato.schema.messages import SheetOutcomeMessage
from ostinato.workers.detection.jobs import detect_sightings
from ostinato.workers.intake import Intake, raw_text
from ostinato.workers.redaction import scrub_body
from ostinato.workers.store import Store
from ostinato.workers.store.patterns import PatternSighting

KEY = "sk-" + "proj-Ab12Cd34Ef56Gh78Ij90Kl12"
EMAIL = "jo.smith@example-corp.com"
HOME_FILE = "/home/jsmith/projects/acme/run.py"
ADDRESS = "203.0.113.9"
PLANTED = f"key {KEY} mailed {EMAIL}-7 from {ADDRESS}:8080 in {HOME_FILE}"
SCRUBBED = "key <redacted> mailed <email>-7 from <ip>:8080 in <path>/run.py"
SECRETS = (KEY, "Ab12Cd34", EMAIL, "jo.smith", "example-corp", ADDRESS, "jsmith", "acme")


def as_json(message: SheetOutcomeMessage) -> dict[str, Any]:
    return json.loads(message.model_dump_json())  # type: ignore[no-any-return]


def planted(raw: dict[str, Any], text: str) -> dict[str, Any]:
    """``raw`` with ``text`` in a tail, a failure reason, an error message and a failure category key."""
    raw = copy.deepcopy(raw)
    payload = raw["payload"]
    payload["stdout_tail"] = text
    payload["validation_results"][0]["failure_reason"] = text
    payload["error_history"] = [{"error_code": "E101", "category": "timeout", "message": text}]
    payload["failure_category_counts"] = {text: 2, "timeout": 1}
    return raw


def assert_clean(stored: str) -> None:
    for secret in SECRETS:
        assert secret not in stored, secret


def test_a_bad_message_is_stored_scrubbed_with_its_json_structure(store: Store) -> None:
    original = as_json(outcome(1))
    original["schema_version"] = 9  # not a version this store reads
    bad = planted(original, PLANTED)
    report = Intake(store, delivery_id="d-private", task_name="t")([bad])
    assert report.dead_lettered == 1
    (letter,) = store.list_dead_letters()
    assert_clean(letter["raw_body"])
    assert_clean(letter["reason"])
    assert json.loads(letter["raw_body"]) == planted(original, SCRUBBED)


def test_a_refused_message_is_scrubbed_and_replays(pg_store: Store) -> None:
    """A valid message the store refused is kept without secrets, and `dead-letters replay` applies it."""
    poison = SheetOutcomeMessage.model_validate(planted(as_json(outcome(13, "job-poison")), PLANTED))

    def refusing_detector(s: Store, outcomes: Sequence[SheetOutcomeMessage]) -> list[PatternSighting]:
        if any(o.message_id == poison.message_id for o in outcomes):
            raise ValueError(f"detector cannot handle {EMAIL} on {ADDRESS}")
        return detect_sightings(s, outcomes)

    report = Intake(pg_store, delivery_id="d-poison", task_name="t", detector=refusing_detector)(
        [as_json(poison)]
    )
    assert (report.applied, report.dead_lettered) == (0, 1)
    (letter,) = pg_store.list_dead_letters()
    assert_clean(letter["raw_body"])
    assert (
        letter["reason"] == "store refused the message: ValueError('detector cannot handle <email> on <ip>')"
    )

    result = CliRunner().invoke(app, ["dead-letters", "replay"])
    assert result.exit_code == 0, result.output
    assert "replayed 1 of 1 dead letters" in result.output
    assert pg_store.get_execution_stats()["total_executions"] == 1
    assert pg_store.list_dead_letters() == []


def test_text_and_binary_bodies_are_scrubbed() -> None:
    assert scrub_body(raw_text(PLANTED.encode())) == SCRUBBED
    binary = b"\x80\x04" + f"peer {ADDRESS} key {KEY}".encode()
    assert (
        scrub_body(raw_text(binary))
        == "base64:" + base64.b64encode(b"\x80\x04peer <ip> key <redacted>").decode()
    )
    assert scrub_body("base64:not base64!") == "base64:not base64!"


def test_json_bodies_keep_their_text_when_nothing_is_private() -> None:
    body = '{"kind": "sheet_outcome",  "n": [1, 2.5, null, true]}'
    assert scrub_body(body) is body
    assert scrub_body(json.dumps([{"a": EMAIL}, "x", 3])) == '[{"a": "<email>"}, "x", 3]'
    # Keys that become equal merge as the payload scrubber merges them: counts add up.
    merged = json.dumps({f"mail {EMAIL}": 2, "mail bo@example.org": 3, "other": "x"})
    assert json.loads(scrub_body(merged)) == {"mail <email>": 5, "other": "x"}


def test_kind_and_task_name_are_scrubbed_and_fit_their_columns(store: Store) -> None:
    store.record_dead_letter("{}", "bad", kind=f"k {EMAIL}", task_name="password=" + "x" * 195)
    (letter,) = store.list_dead_letters()
    assert (letter["kind"], letter["task_name"]) == ("k <email>", "password=<redacted>")
    store.record_dead_letter("{}", "bad", letter_id="long", kind="k" * 200 + f" {EMAIL}")
    assert store.list_dead_letters()[0]["kind"] == "k" * 200

"""Scrubbing (SPEC §4): nothing private leaves the runner; identifiers and ordinary text do, unchanged.

Token-shaped secrets are assembled from pieces so that no scanner mistakes this file for a leak.
"""

from __future__ import annotations

import getpass
import json
import re
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import pytest
from pydantic import BaseModel

from ostinato.needles import NeedleSet
from ostinato.producers import scrub
from ostinato.producers.scrub import EMAIL, HOST, IP, PATH, REDACTED, USER, Scrubber, tail
from ostinato.schema.messages import (
    TAIL_LIMIT,
    ErrorEntry,
    ErrorRecovery,
    EscalationDecision,
    EvolutionEntry,
    PatternApplication,
    PatternReport,
    PatternReportMessage,
    Provenance,
    RateLimit,
    SheetOutcome,
    SheetOutcomeMessage,
    SuccessContext,
    ValidationResult,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOME = "/home/alice"
HOSTNAMES = ("alice-laptop", "alice-laptop.corp.example.com")

SK = "sk-" + "abcDEF1234567890ghijKLMN"
SK_PROJ = "sk-" + "proj-Ab12Cd34Ef56Gh78Ij90Kl12"
SK_ANT = "sk-" + "ant-api03-Zy98Xw76Vu54Ts32Rq10-Po"
GHP = "gh" + "p_" + "A1b2C3d4" * 4 + "E5f6"
GHO = "gh" + "o_" + "Q9r8S7t6" * 4 + "U5v4"
GITHUB_PAT = "github" + "_pat_" + "11ABCDEFG0" + "x9Y8z7W6v5" * 5
AWS_KEY_ID = "AK" + "IA" + "Q3EGZXNMW5" + "TV7J2H"
SLACK_BOT = "xo" + "xb-" + "123456789012-abcdefghijkl"
SLACK_USER = "xo" + "xp-" + "1234-5678-abcdefABCDEF"
SLACK_APP = "xo" + "xa-" + "2-987654-ZYXWVU"
BEARER_TOKEN = "abc123def456" + "ghi789jkl0"
JWT = (
    "eyJ"
    + "hbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    + ".eyJzdWIiOiIxMjM0NTY3ODkwIn0"
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV"
)
LONG_HEX = "9f86d081884c7d659a2feaa0c55ad015" + "a3bf4f1b2b0b822cd15d6c15b0f00a08"
LONG_BASE64 = "wJalrXUtnFEMI/K7MDENG/" + "bPxRfiCY4Q9zLk2Vb8Hs"
BASE64_NO_DIGIT = "wJalrXUtnFEMIbKzMDENG" + "bPxRfiCYqQzLkVbHsWe"  # one random secret in a thousand has none
BASE64URL_SEPARATORS = "QkOsDdMJj5qNZKzy-1-2_" + "AF_N-pMFTku_nfwcm-7"  # seven of forty are "-" or "_"
PRIVATE_KEY_BODY = "MIIEpAIBAAKCAQEA7bq9" + "Zk3Lm8Qw2Er5Ty7Ui9Op"
PRIVATE_KEY = f"-----BEGIN RSA PRIVATE KEY-----\n{PRIVATE_KEY_BODY}\n-----END RSA PRIVATE KEY-----"

ENV = {
    "ACME_DEPLOY_TOKEN": "dpl-Q7w2-Zk91-xx",  # secret-looking name
    "DB_PASSWORD": "hunt2",  # secret-looking name, short value
    "PROJECT_CODENAME": "zephyr-7731",  # ordinary name, long enough
    "DATABASE_URL": "postgresql://app:dbpa55@db1.prod.internal:5432/app",
    "PATH": "/usr/local/bin:/usr/bin:/home/alice/.local/bin",
    "HOME": HOME,
    "USER": "alice",
    "DEBUG": "1",
    "COLOR": "true",
    "APP_ENV": "production",
    "XDG_SESSION_TYPE": "wayland",
    "LANG": "en_US.UTF-8",
    "HOSTTYPE": "x86_64",
    "MAX_TOKENS": "4096",
}

# kind -> (text planted in free-text fields, fragments that must not survive anywhere)
PLANTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "env secret-named": ("deploy with dpl-Q7w2-Zk91-xx failed", ("dpl-Q7w2-Zk91-xx",)),
    "env secret-named short": ("login hunt2 rejected", ("hunt2",)),
    "env long value": ("building zephyr-7731 now", ("zephyr-7731",)),
    "env url value": (f"connecting to {ENV['DATABASE_URL']}", ("dbpa55", "db1.prod")),
    "sk-": (f"key {SK} used", (SK, SK[3:])),
    "sk-proj-": (f"key {SK_PROJ} used", (SK_PROJ, SK_PROJ[8:])),
    "sk-ant-": (f"key {SK_ANT} used", (SK_ANT, SK_ANT[13:])),
    "ghp_": (f"push with {GHP}", (GHP, GHP[4:])),
    "gho_": (f"oauth {GHO}", (GHO, GHO[4:])),
    "github_pat_": (f"pat {GITHUB_PAT}", (GITHUB_PAT, GITHUB_PAT[11:])),
    "AKIA": (f"aws id {AWS_KEY_ID}", (AWS_KEY_ID, AWS_KEY_ID[4:])),
    "xoxb": (f"slack {SLACK_BOT}", (SLACK_BOT, SLACK_BOT[5:])),
    "xoxp": (f"slack {SLACK_USER}", (SLACK_USER, SLACK_USER[5:])),
    "xoxa": (f"slack {SLACK_APP}", (SLACK_APP, SLACK_APP[5:])),
    "Authorization: Bearer": (f"Authorization: Bearer {BEARER_TOKEN}", (BEARER_TOKEN,)),
    "Bearer": ("sent bearer tok_9f8e7d6c5b4a", ("tok_9f8e7d6c5b4a",)),
    "password=": ("password=Hunter2Pass!", ("Hunter2Pass!",)),
    "passwd:": ("passwd: s3cretpw", ("s3cretpw",)),
    "secret=": ("secret='v4lue-s3cret'", ("v4lue-s3cret",)),
    "token=": ("token=tk_77aa88bb", ("tk_77aa88bb",)),
    "api_key=": ('api_key="AKzz99yy88"', ("AKzz99yy88",)),
    "--password": ("mysql --password hunter3x", ("hunter3x",)),
    "cookie": ("Cookie: session=abc123; csrftoken=zz9", ("session=abc123", "zz9")),
    "JWT": (f"jwt {JWT}", (JWT, JWT.split(".")[1], JWT.split(".")[2])),
    "long hex": (f"digest {LONG_HEX}", (LONG_HEX, LONG_HEX[:20])),
    "long base64": (f"aws secret {LONG_BASE64}", (LONG_BASE64, "K7MDENG", "bPxRfiCY4Q9zLk2Vb8Hs")),
    "private key": (PRIVATE_KEY, (PRIVATE_KEY_BODY,)),
    "email": ("mail carol.smith+ci@example.org", ("carol.smith", "carol.smith+ci@example.org")),
    "ipv4": ("peer 10.20.30.40:8080 and 203.0.113.9", ("10.20.30.40", "203.0.113.9")),
    "ipv6": (
        "peer 2001:db8:85a3::8a2e:370:7334 and [fe80::1ff:fe23:4567:890a]:22",
        ("8a2e:370", "fe23:4567"),
    ),
    "url credentials": (
        "clone https://deploy:pa55word@git.example.com/r.git",
        ("deploy:pa55word", "pa55word"),
    ),
    "own host": ("on alice-laptop.corp.example.com and ALICE-LAPTOP", ("laptop",)),
    "host in own domain": ("ssh buildbox7.corp.example.com", ("buildbox7", "corp.example.com")),
    "internal host": ("resolve ip-10-0-0-5.ec2.internal", ("ip-10-0-0-5", "ec2.internal")),
    "home dir": ("open /home/alice/projects/acme/run.py", ("/home/alice",)),
    "user name": ("started by Alice, owner alice", ("alice",)),
    "absolute path": ("wrote /srv/payroll-data/jobs/nightly/export.py", ("payroll-data", "/srv/", "nightly")),
    "windows path": (r"saved C:\Users\bob\Documents\payroll\q3.xlsx", ("bob", "Documents", "payroll")),
    "other home": ("read /home/dave", ("dave",)),
    "runner rule": ("see ticket ACME-1234", ("ACME-1234",)),
}
BENIGN = "the room is fine: E101 HTTP 429 v1.2.3 at 12:30:45, retry 3 times, pattern rate_limit_backoff"
BLOB = "\n".join([BENIGN, *(text for text, _ in PLANTED.values()), BENIGN])
SHORT_BLOB = "timeout on alice-laptop at 10.20.30.40 for carol.smith+ci@example.org"  # fits 200 chars


def make_scrubber(extra_rules: Sequence[tuple[str, str]] = ((r"ACME-\d{4}", "<ticket>"),)) -> Scrubber:
    return Scrubber(home=HOME, user="alice", hostnames=HOSTNAMES, env=ENV, extra_rules=extra_rules)


@pytest.fixture(scope="module")
def scrubber() -> Scrubber:
    return make_scrubber()


def forbidden() -> list[str]:
    return [fragment for _, fragments in PLANTED.values() for fragment in fragments]


def assert_clean(dumped: str) -> None:
    """No planted fragment in the JSON, raw or JSON-escaped (Windows paths), nor the user name at all."""
    for fragment in forbidden():
        assert fragment not in dumped, fragment
        assert json.dumps(fragment)[1:-1] not in dumped, fragment
    assert "alice" not in dumped.lower()


def make_outcome() -> SheetOutcome:
    return SheetOutcome(
        execution_id=UUID("6f1c2a4e-1111-4222-8333-944455556666"),
        sheet_id="sheet-3",
        sheet_num=3,
        model="claude-sonnet-4",
        instrument_name="claude-cli",
        started_at=NOW,
        final_status="failed",
        validation_results=[
            ValidationResult(
                validation_type="file_exists",
                passed=False,
                failure_reason=BLOB,
                failure_category=SHORT_BLOB,
                suggested_fix=BLOB,
                error_code="E101",
            )
        ],
        failure_category_counts={SHORT_BLOB: 2, "timeout": 1},
        semantic_patterns=[BLOB, "plain pattern"],
        fix_suggestions=[BLOB],
        patterns_applied=["5d4dc4465839e7be", "cbb21a7e06210c94"],
        stdout_tail=BLOB,
        stderr_tail=BLOB,
        error_history=[ErrorEntry(error_code="E101", category=SHORT_BLOB, message=BLOB)],
        grounding_guidance=BLOB,
        success_context=SuccessContext(prior_sheet_status=SHORT_BLOB),
    )


# --- the whole payload ----------------------------------------------------------------------------------


def test_blob_really_contains_every_planted_secret() -> None:
    for fragment in forbidden():
        assert fragment in BLOB or fragment.lower() in BLOB.lower(), fragment
    assert len(BLOB) <= TAIL_LIMIT


def test_sheet_outcome_keeps_nothing_private(scrubber: Scrubber) -> None:
    outcome = make_outcome()
    scrubbed = scrubber.payload(outcome)
    assert_clean(scrubbed.model_dump_json())
    # The tokens are there, so the text was rewritten by the rules, not dropped.
    for token in (REDACTED, EMAIL, IP, HOST, USER, PATH, "~/projects/acme/run.py", "<ticket>"):
        assert token in scrubbed.stdout_tail, token


def test_sheet_outcome_keeps_identifiers_and_ordinary_text(scrubber: Scrubber) -> None:
    outcome = make_outcome()
    scrubbed = scrubber.payload(outcome)
    assert scrubbed.execution_id == outcome.execution_id
    assert scrubbed.patterns_applied == outcome.patterns_applied
    assert (scrubbed.model, scrubbed.instrument_name, scrubbed.final_status) == (
        "claude-sonnet-4",
        "claude-cli",
        "failed",
    )
    assert (scrubbed.started_at, scrubbed.sheet_num, scrubbed.validation_results[0].passed) == (NOW, 3, False)
    assert scrubbed.validation_results[0].validation_type == "file_exists"
    assert scrubbed.validation_results[0].error_code == "E101"
    assert scrubbed.error_history[0].error_code == "E101"
    result, error = scrubbed.validation_results[0], scrubbed.error_history[0]
    for text in (
        scrubbed.stdout_tail,
        scrubbed.stderr_tail,
        scrubbed.grounding_guidance,
        scrubbed.semantic_patterns[0],
        scrubbed.fix_suggestions[0],
        result.failure_reason,
        result.suggested_fix,
        error.message,
    ):
        assert text is not None
        assert text.startswith(BENIGN + "\n") and text.endswith("\n" + BENIGN)
    assert scrubbed.semantic_patterns[1] == "plain pattern"
    assert scrubbed.failure_category_counts["timeout"] == 1
    # Still a valid model, equal to itself after a trip through JSON; the input is untouched.
    assert SheetOutcome.model_validate_json(scrubbed.model_dump_json()) == scrubbed
    assert outcome.stdout_tail == BLOB


def test_short_fields_and_dict_keys_are_scrubbed(scrubber: Scrubber) -> None:
    scrubbed = scrubber.payload(make_outcome())
    expected = "timeout on <host> at <ip> for <email>"
    assert scrubbed.validation_results[0].failure_category == expected
    assert scrubbed.error_history[0].category == expected
    assert scrubbed.success_context is not None
    assert scrubbed.success_context.prior_sheet_status == expected
    assert scrubbed.failure_category_counts == {expected: 2, "timeout": 1}


def test_pattern_report_keeps_nothing_private(scrubber: Scrubber) -> None:
    report = PatternReport(
        pattern_type="validation_failure",
        pattern_name="retry on alice-laptop",
        reported_at=NOW,
        description=BLOB,
        context_tags=["host:alice-laptop", "peer 10.20.30.40"],
        suggested_action=BLOB,
        provenance=Provenance(job_hash="0123456789abcdef", sheet_num=4),
        instrument_name="claude-cli",
    )
    scrubbed = scrubber.payload(report)
    assert_clean(scrubbed.model_dump_json())
    assert scrubbed.pattern_name == "retry on <host>"
    assert scrubbed.context_tags == ["host:<host>", "peer <ip>"]
    assert scrubbed.description is not None and scrubbed.description.startswith(BENIGN)
    assert (scrubbed.pattern_type, scrubbed.instrument_name, scrubbed.provenance) == (
        "validation_failure",
        "claude-cli",
        Provenance(job_hash="0123456789abcdef", sheet_num=4),
    )
    assert PatternReport.model_validate_json(scrubbed.model_dump_json()) == scrubbed


def test_identifier_fields_are_never_scrubbed(scrubber: Scrubber) -> None:
    """Identifiers that WOULD be scrubbed as text stay exact, while the same text elsewhere is scrubbed."""
    private = "alice@example.org on 10.1.2.3 in /home/alice/x"
    outcome = SheetOutcome(
        sheet_id=private,
        model=private,
        instrument_name=private,
        started_at=NOW,
        final_status=private,
        patterns_applied=[private],
        validation_results=[
            ValidationResult(validation_type=private, error_code=private, failure_reason=private)
        ],
        error_history=[ErrorEntry(error_code=private, message=private)],
    )
    scrubbed = scrubber.payload(outcome)
    assert scrubbed.sheet_id == scrubbed.error_history[0].message == "<email> on <ip> in ~/x"
    assert scrubbed.validation_results[0].failure_reason == "<email> on <ip> in ~/x"
    assert (scrubbed.model, scrubbed.instrument_name, scrubbed.final_status) == (private, private, private)
    assert scrubbed.patterns_applied == [private]
    assert scrubbed.validation_results[0].validation_type == private
    assert scrubbed.validation_results[0].error_code == private
    assert scrubbed.error_history[0].error_code == private

    application = PatternApplication(
        pattern_id=private,
        execution_id=private,
        pattern_led_to_success=True,
        applied_at=NOW,
        application_mode="exploration",
    )
    assert scrubber.payload(application) == application
    rate_limit = RateLimit(error_code=private, recorded_at=NOW, model=private, retry_after_seconds=30)
    assert scrubber.payload(rate_limit) == rate_limit
    recovery = ErrorRecovery(
        error_code=private,
        suggested_wait=5,
        actual_wait=7,
        recovery_success=True,
        recorded_at=NOW,
        model=private,
    )
    assert scrubber.payload(recovery) == recovery
    escalation = EscalationDecision(
        sheet_num=2,
        confidence=0.4,
        action="retry",
        validation_pass_rate=0.5,
        retry_count=1,
        recorded_at=NOW,
        guidance=private,
        outcome_after_action="success",
        model=private,
    )
    scrubbed_escalation = scrubber.payload(escalation)
    assert scrubbed_escalation.guidance == "<email> on <ip> in ~/x"
    assert scrubbed_escalation.model_copy(update={"guidance": private}) == escalation
    report = PatternReport(pattern_type=private, pattern_name="p", reported_at=NOW, instrument_name=private)
    assert scrubber.payload(report) == report


def test_envelopes_keep_their_ids_and_scrub_the_payload(scrubber: Scrubber) -> None:
    message = SheetOutcomeMessage(
        workspace_hash="0123456789abcdef", job_hash="fedcba9876543210", payload=make_outcome()
    )
    scrubbed = scrubber.payload(message)
    assert (
        scrubbed.message_id,
        scrubbed.kind,
        scrubbed.job_hash,
        scrubbed.workspace_hash,
        scrubbed.sent_at,
    ) == (
        message.message_id,
        "sheet_outcome",
        "fedcba9876543210",
        "0123456789abcdef",
        message.sent_at,
    )
    assert_clean(scrubbed.model_dump_json())
    assert scrubbed.payload == scrubber.payload(make_outcome())
    report = PatternReportMessage(
        workspace_hash="0123456789abcdef",
        job_hash="fedcba9876543210",
        payload=PatternReport(pattern_type="t", pattern_name="n", reported_at=NOW, description=BLOB),
    )
    assert_clean(scrubber.payload(report).model_dump_json())


def test_every_kind_stays_valid(scrubber: Scrubber) -> None:
    models: list[BaseModel] = [
        make_outcome(),
        PatternApplication(pattern_id="p", execution_id="e", pattern_led_to_success=False, applied_at=NOW),
        PatternReport(pattern_type="t", pattern_name=SHORT_BLOB, reported_at=NOW, description=BLOB),
        RateLimit(error_code="E429", recorded_at=NOW, retry_after_seconds=30),
        ErrorRecovery(
            error_code="E429", suggested_wait=5, actual_wait=7, recovery_success=True, recorded_at=NOW
        ),
        EscalationDecision(
            sheet_num=1,
            confidence=0.5,
            action="abort",
            validation_pass_rate=0.0,
            retry_count=0,
            recorded_at=NOW,
            guidance=BLOB,
        ),
        EvolutionEntry(
            cycle=1,
            evolutions_completed=2,
            evolutions_deferred=0,
            issue_classes=[SHORT_BLOB],
            cv_avg=0.5,
            implementation_loc=10,
            test_loc=20,
            loc_accuracy=0.9,
            recorded_at=NOW,
            notes=BLOB,
        ),
    ]
    for model in models:
        scrubbed = scrubber.payload(model)
        assert type(scrubbed) is type(model)
        dumped = scrubbed.model_dump_json()
        assert_clean(dumped)
        assert type(model).model_validate_json(dumped) == scrubbed


def test_grown_text_is_cut_to_its_field_limit(scrubber: Scrubber) -> None:
    """Scrubbing lengthens "a@b.io" (6) into "<email>" (7); the copy must still fit the model's bounds."""
    emails = " ".join(["x@b.io"] * 700)  # 4899 chars once scrubbed
    head = emails[:4000]
    outcome = SheetOutcome(
        sheet_id=" ".join(["x@b.io"] * 28),  # 195 chars, 223 once scrubbed
        started_at=NOW,
        stderr_tail=head[: 4096 - 10] + " END-MARK",
        grounding_guidance="START " + head[: 4096 - 6],
        failure_category_counts={" ".join(["x@b.io"] * 28): 1},
    )
    scrubbed = scrubber.payload(outcome)
    assert len(scrubbed.stderr_tail) == TAIL_LIMIT
    assert scrubbed.stderr_tail.endswith(" END-MARK")
    assert scrubbed.grounding_guidance is not None
    assert len(scrubbed.grounding_guidance) == TAIL_LIMIT and scrubbed.grounding_guidance.startswith(
        "START <email>"
    )
    assert len(scrubbed.sheet_id) == 200 and scrubbed.sheet_id.startswith("<email> <email>")
    assert [len(key) for key in scrubbed.failure_category_counts] == [200]
    assert SheetOutcome.model_validate_json(scrubbed.model_dump_json()) == scrubbed


def test_keys_that_become_equal_add_up(scrubber: Scrubber) -> None:
    outcome = SheetOutcome(
        sheet_id="s",
        started_at=NOW,
        failure_category_counts={"timeout at 10.0.0.1": 2, "timeout at 10.0.0.2": 3, "other": 1},
    )
    assert scrubber.payload(outcome).failure_category_counts == {"timeout at <ip>": 5, "other": 1}


def test_nothing_to_scrub_returns_an_equal_model(scrubber: Scrubber) -> None:
    outcome = SheetOutcome(sheet_id="sheet-1", started_at=NOW, stdout_tail=BENIGN, semantic_patterns=["ok"])
    assert scrubber.payload(outcome) == outcome


# --- tails ----------------------------------------------------------------------------------------------


def test_tail_keeps_the_last_characters() -> None:
    text = "".join(str(i % 10) for i in range(5000)) + "END"
    cut = tail(text)
    assert len(cut) == TAIL_LIMIT == 4096
    assert cut == text[-4096:] and cut.endswith("END")
    assert tail("short") == "short"
    assert tail("abcdef", 3) == "def"
    assert tail("abcdef", 0) == ""


def test_scrubber_tail_scrubs_before_cutting(scrubber: Scrubber) -> None:
    raw = "x" * 5000 + " from 10.20.30.40"
    cut = scrubber.tail(raw)
    assert len(cut) == 4096 and cut.endswith("x from <ip>")
    # Cutting first would have left half an address for the rules to miss.
    assert scrubber.tail("key " + SK, limit=12) == "y <redacted>"


# --- rules, one by one ----------------------------------------------------------------------------------

RULE_CASES = [
    # environment values
    ("deploy dpl-Q7w2-Zk91-xx ok", "deploy <redacted> ok"),
    ("login hunt2 rejected; hunt20 is another word", "login <redacted> rejected; hunt20 is another word"),
    ("build zephyr-7731", "build <redacted>"),
    ("PATH=/usr/local/bin:/usr/bin", "PATH=<path>/bin:<path>/bin"),
    # a PATH-like value is handled entry by entry, not replaced wholesale
    (f"PATH={ENV['PATH']}", "PATH=<path>/bin:<path>/bin:~/.local/bin"),
    # provider keys and tokens
    (f"k={SK},", "k=<redacted>,"),
    (f"'{SK_PROJ}'", "'<redacted>'"),
    (SK_ANT, REDACTED),
    (f"{GHP} {GHO} {GITHUB_PAT}", "<redacted> <redacted> <redacted>"),
    (f"id {AWS_KEY_ID}.", "id <redacted>."),
    (f"{SLACK_BOT} {SLACK_USER} {SLACK_APP}", "<redacted> <redacted> <redacted>"),
    (f"jwt={JWT}", "jwt=<redacted>"),
    ("Authorization: Bearer abc.def-123_456", "Authorization: Bearer <redacted>"),
    ("authorization=token 1234567890abcdef", "authorization=token <redacted>"),
    ("header Bearer AbCdEf123456", "header Bearer <redacted>"),
    ("Set-Cookie: sid=31d4d96e407aad42; Path=/", "Set-Cookie: <redacted>"),
    ("password=hunter2 pwd", "password=<redacted> pwd"),
    ("PASSWD: hunter2", "PASSWD: <redacted>"),
    ('{"client_secret": "s3cr3t", "n": 1}', '{"client_secret": "<redacted>", "n": 1}'),
    ("db_token='abc', api-key=XYZ&x=1", "db_token='<redacted>', api-key=<redacted>&x=1"),
    ("apiKey: k123", "apiKey: <redacted>"),
    ("run --password hunter2 --token=t0k", "run --password <redacted> --token=<redacted>"),
    ("PASSWORD=--password hunter2", "PASSWORD=<redacted> <redacted>"),
    (f"{PRIVATE_KEY}\nnext line", "<redacted>\nnext line"),
    ("sha256:" + LONG_HEX, "sha256:<redacted>"),
    ("0x" + LONG_HEX, REDACTED),
    (f"key: {LONG_BASE64}==", "key: <redacted>"),
    (f"sig={LONG_BASE64}&x=1", "sig=<redacted>&x=1"),
    (f"k {BASE64_NO_DIGIT} and {BASE64URL_SEPARATORS}", "k <redacted> and <redacted>"),
    # addresses
    ("to carol.smith+ci@example.org.", "to <email>."),
    (
        "sheet-jo.smith@example-corp.com-7 sheet-jo.smith@example-corp.com_7 jo@example-corp.com:8080",
        "<email>-7 <email>_7 <email>:8080",
    ),
    ("jo@mail.example.com-eu.net", "<email>"),
    ("<carol@mail.example.co.uk>", "<<email>>"),
    ("peer 10.20.30.40:8080, 203.0.113.9/24", "peer <ip>:8080, <ip>/24"),
    ("peer [2001:db8::1]:443 and fe80::1ff:fe23:4567:890a%eth0", "peer [<ip>]:443 and <ip>"),
    ("mapped ::ffff:10.1.2.3 and full 2001:0db8:85a3:0000:0000:8a2e:0370:7334", "mapped <ip> and full <ip>"),
    ("at fe80::1: refused", "at <ip>: refused"),
    ("at fe80::: refused", "at <ip>: refused"),
    ("conn_10.20.30.40_8080.log and fe80::1ff:fe23:4567:890a_eth0", "conn_<ip>_8080.log and <ip>_eth0"),
    (
        "https://bob:pw@api.example.com/v1 ssh://git@host.example.com/x",
        "https://<redacted>@api.example.com/v1 ssh://<redacted>@host.example.com/x",
    ),
    # host names
    (
        "on alice-laptop, alice-laptop.corp.example.com:22 and Alice-Laptop.",
        "on <host>, <host>:22 and <host>.",
    ),
    ("http://wiki.corp.example.com/page and corp.example.com", "http://<host>/page and <host>"),
    ("ip-10-0-0-5.ec2.internal db1.prod.corp cache-2.lan", "<host> <host> <host>"),
    # the home directory, paths, the user
    ('File "/home/alice/proj/x.py", line 3', 'File "~/proj/x.py", line 3'),
    ("cd /home/alice", "cd ~"),
    ("/usr/lib/python3.11/site-packages/httpx/_client.py:1013", "<path>/_client.py:1013"),
    (
        "ls /var/log/app/ and /home/bob and /Users/bob/notes.txt",
        "ls <path>/app/ and <path> and <path>/notes.txt",
    ),
    ("open file:///opt/app/main.py", "open file://<path>/main.py"),
    ("/mnt/data/home/bob and /System/Volumes/Data/Users/bob/", "<path> and <path>"),
    (r"C:\Users\bob\AppData\x.txt and \\server\share\dir\f.txt", r"<path>\x.txt and <path>\f.txt"),
    (r"C:\Users\bob", PATH),
    ("D:/data/proj/out.csv", "D:<path>/out.csv"),
    (
        "/a/b/c/ and /a/b/c and /home/bob/ and /HOME/bob/x and /tmp/",
        "<path>/c/ and <path>/c and <path> and <path>/x and /tmp/",
    ),
    # long-token rules find their runs by offset, which non-ASCII text before them must not shift
    (
        "héllo wörld — key 0123456789abcdef0123456789abcdef · ghp_abcdefghijklmnopqrstuvwxyz0123 ✓",
        f"héllo wörld — key {REDACTED} · {REDACTED} ✓",
    ),
    ("🚀 " * 20 + "aGVsbG8gV29ybGQhIFRoaXMgaXMgcmFuZG9tIGRhdGEgZm9yIHRlc3RzIQ==", "🚀 " * 20 + REDACTED),
    ("Alice and alice_data and ALICE-dev", "<user> and <user>_data and <user>-dev"),
    # runner rules see the raw text first
    ("ticket ACME-1234 on alice-laptop", "ticket <ticket> on <host>"),
]


@pytest.mark.parametrize(("raw", "expected"), RULE_CASES)
def test_rule(scrubber: Scrubber, raw: str, expected: str) -> None:
    assert scrubber.text(raw) == expected
    assert scrubber.text(expected) == expected  # scrubbed text is a fixed point


BENIGN_CASES = [
    "room",
    "E101",
    "HTTP 429 Too Many Requests",
    "v1.2.3",
    "version 1.2.3 of python3.11",
    "12:30:45",
    "at 2026-06-01 12:30:45.123",
    "retry 3 times",
    "pattern rate_limit_backoff",
    "max_tokens=4096 prompt_tokens: 523 token_count=5",
    "sk-learn-compatible-estimators",
    "uses Bearer authentication.",
    "std::vector<int> and a::b and dead::beef",
    "MAC 00:1a:2b:3c:4d:5e",
    "v1.2.3.4 and OID 1.3.6.1.4.1",
    "connection refused on 127.0.0.1:6379 and ::1 and 0.0.0.0:80",
    "https://api.openai.com/v1/chat/completions",
    "see ./rel/path and src/app/main.py, ~/proj/x.py, and/or HTTP/1.1, 50 req/s",
    "cd /tmp",
    "job 5d4dc4465839e7be and id 550e8400-e29b-41d4-a716-446655440000",
    "com/api/v1/Users/GetAll/Items/Foo/Bar/Baz and AbstractSingletonProxyFactoryBeanImplementation",
    "threading.local() and db.internal",
    "production wayland en_US.UTF-8 x86_64 4096 true",
    "malice in wonderland",
    "a runner failed",
    "author: Carol",
]


@pytest.mark.parametrize("text", BENIGN_CASES)
def test_ordinary_text_survives(scrubber: Scrubber, text: str) -> None:
    assert scrubber.text(text) == text


def test_whole_blob_is_a_fixed_point(scrubber: Scrubber) -> None:
    once = scrubber.text(BLOB)
    assert once != BLOB
    assert scrubber.text(once) == once


# --- construction ---------------------------------------------------------------------------------------


def test_defaults_read_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/dana")
    monkeypatch.setenv("DANA_SERVICE_TOKEN", "svc-8812-QQ")
    monkeypatch.setattr(getpass, "getuser", lambda: "dana")
    monkeypatch.setattr(socket, "gethostname", lambda: "dana-box")
    monkeypatch.setattr(socket, "getfqdn", lambda: "dana-box.lab.example.net")
    scrubber = Scrubber()
    assert scrubber.text("/home/dana/x.py by dana on dana-box with svc-8812-QQ") == (
        "~/x.py by <user> on <host> with <redacted>"
    )
    assert scrubber.text("via gw.lab.example.net") == "via <host>"


def test_sources_can_be_switched_off() -> None:
    scrubber = Scrubber(home="", user="", hostnames=(), env={})
    assert scrubber.text("dana on dana-box") == "dana on dana-box"
    assert scrubber.text("/home/dana/x.py") == "<path>/x.py"
    assert scrubber.text("password=x") == "password=<redacted>"


def test_generic_and_short_names_are_not_replaced() -> None:
    scrubber = Scrubber(home="/root", user="runner", hostnames=("vm", "localhost"), env={})
    assert scrubber.text("the runner on vm and localhost") == "the runner on vm and localhost"
    assert scrubber.text("/root/app/x.py") == "~/app/x.py"


def test_trivial_and_path_environment_values_are_kept() -> None:
    env = {"DEBUG": "1", "FLAG": "true", "SIZE": "100000", "SHELL": "/bin/bash", "VERSION": "1.2.3"}
    scrubber = Scrubber(home="", user="", hostnames=(), env=env)
    assert scrubber.text("retry 1 true 100000 1.2.3 bash") == "retry 1 true 100000 1.2.3 bash"
    assert scrubber.text("using /bin/bash") == "using <path>/bash"


def test_min_env_value_length() -> None:
    env = {"PROJECT": "zeph-9"}
    assert Scrubber(home="", user="", hostnames=(), env=env).text("zeph-9") == REDACTED
    assert (
        Scrubber(home="", user="", hostnames=(), env=env, min_env_value_length=8).text("zeph-9") == "zeph-9"
    )


def test_add_rule(scrubber: Scrubber) -> None:
    custom = make_scrubber(extra_rules=())
    assert custom.text("order 12345-XY") == "order 12345-XY"
    custom.add_rule(r"order (\d+)-XY", r"order #\1")
    custom.add_rule(re.compile(r"#\d+"), "<order>")
    assert custom.text("order 12345-XY") == "order <order>"
    assert scrubber.text("order 12345-XY") == "order 12345-XY"


def test_needle_set_finds_exactly_the_literals_present() -> None:
    needles = NeedleSet(["sk-", "://", "a.b", "\\\\", "é", ""])
    assert needles.found("task-x at http://h a.b é \\\\ end") == {"sk-", "://", "a.b", "é", "\\\\"}
    assert needles.found("axb nothing") == frozenset()
    assert needles.found("") == frozenset()
    assert NeedleSet([]).found("anything") == frozenset()


def test_ascii_forms_of_the_rules_agree_on_plain_ascii_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain ASCII text runs each rule's ASCII-mode twin; forced onto the Unicode forms, nothing changes."""
    texts = [raw for raw, _ in RULE_CASES if raw.isascii()] + [BLOB, SHORT_BLOB]
    assert len(texts) > 40
    fast = make_scrubber()
    fast_results = [fast.text(text) for text in texts]
    monkeypatch.setattr(scrub, "_plain_ascii", lambda text: False)
    reference = make_scrubber()
    assert fast_results == [reference.text(text) for text in texts]


def test_separator_controls_keep_unicode_rules() -> None:
    """``\\s`` matches the separators \\x1c-\\x1f only in Unicode mode, so such text is not plain."""
    assert scrub._plain_ascii("ls /var/log/app/x")
    assert not scrub._plain_ascii("record\x1efield")
    assert not scrub._plain_ascii("café")
    text = "Set-Cookie:\x1fsid=31d4d96e407aad42"
    assert make_scrubber().text(text) == f"Set-Cookie:\x1f{REDACTED}"

"""Remove private data from free text and payload models before anything leaves the runner.

Learning data is shared between runners and teams, so a sheet's output tails, error messages and guidance
must not carry credentials, addresses, host names, the user's name or the layout of their disk. The rules
err on the side of removing too much, except where that would destroy what the store learns from (error
codes, HTTP statuses, versions, times, pattern names, public provider host names); each trade-off is noted
at its rule.

Rules run in a fixed order, most specific first, so a general rule never half-eats a secret that a specific
one removes whole: a ``sk-…`` key is not split by the path or base64 rules, URL credentials go before the
e-mail rule could read ``pass@host`` as an address, the home directory becomes ``~`` before absolute paths
are collapsed, and the user name goes last so it cannot break a longer match. Scrubbing scrubbed text
changes nothing.

Speed: CPython's regex engine only skips ahead quickly when a pattern starts with a literal or a plain
character class, so the patterns start with one and check the character before the match with a
lookbehind placed after it (``x(?<![A-Za-z0-9]x)``) rather than a leading lookbehind. Rules are skipped
outright when a literal they need is absent (all literals are looked for in one pass), long-token rules
when the text has no run of characters long enough, and addresses are found from their rarer ``.``/``:``.
Replacements are literal wherever possible, so ``re.sub`` never calls back into Python.
"""

from __future__ import annotations

import functools
import getpass
import ipaddress
import itertools
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel

from ostinato.needles import NeedleSet
from ostinato.schema.messages import TAIL_LIMIT

__all__ = [
    "EMAIL",
    "HOST",
    "IDENTIFIER_FIELDS",
    "IP",
    "PATH",
    "REDACTED",
    "TAIL_FIELDS",
    "USER",
    "Scrubber",
    "tail",
]

REDACTED = "<redacted>"
EMAIL = "<email>"
IP = "<ip>"
HOST = "<host>"
USER = "<user>"
PATH = "<path>"
_TOKENS = (REDACTED, EMAIL, IP, HOST, USER, PATH)

IDENTIFIER_FIELDS: frozenset[str] = frozenset(
    {
        "pattern_id",
        "execution_id",
        "patterns_applied",
        "error_code",
        "model",
        "instrument_name",
        "validation_type",
        "final_status",
        "action",
        "outcome_after_action",
        "application_mode",
        "pattern_type",
        "job_hash",
        "workspace_hash",
        "message_id",
        "kind",
    }
)
"""Fields the store joins and groups on: scrubbing them would split one pattern or model into several."""

TAIL_FIELDS: frozenset[str] = frozenset({"stdout_tail", "stderr_tail"})
"""Fields whose end matters (the last lines of output), so an over-long value loses its start."""

ModelT = TypeVar("ModelT", bound=BaseModel)
Replacement = str | Callable[[re.Match[str]], str]


def tail(text: str, limit: int = TAIL_LIMIT) -> str:
    """The last ``limit`` characters: the end of a sheet's output is where its failure is."""
    if limit <= 0:
        return ""
    return text if len(text) <= limit else text[-limit:]


def _prefixed(literal: str, rest: str, before: str = "A-Za-z0-9_-") -> str:
    """``literal`` + ``rest``, matched only where ``literal`` does not continue a longer word."""
    escaped = re.escape(literal)
    return f"{escaped}(?<![{before}]{escaped}){rest}"


# --- secrets with a recognisable shape -------------------------------------------------------------------

_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
# Userinfo of any URL, with or without a password: it is either a credential or an account name.
_URL_CREDENTIALS = re.compile(r"://[^\s/?#@\"'<>]+@")
# Provider keys, one alternation so the text is scanned once. ``sk-`` keys must contain a digit, which
# every real key does, so prose such as "sk-learn-compatible-estimators" survives.
_KNOWN_TOKENS = (
    ("eyJ", r"[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"),  # JWT: header.payload.signature
    ("sk-", r"(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{20,}"),  # OpenAI (sk-proj-…), Anthropic (sk-ant-…)
    ("sk_live_", r"[A-Za-z0-9]{16,}"),  # Stripe
    ("sk_test_", r"[A-Za-z0-9]{16,}"),
    ("rk_live_", r"[A-Za-z0-9]{16,}"),
    *((f"gh{kind}_", r"[A-Za-z0-9]{20,}") for kind in "pousr"),  # GitHub classic tokens
    ("github_pat_", r"[A-Za-z0-9_]{20,}"),  # GitHub fine-grained tokens
    ("AKIA", r"[0-9A-Z]{16}(?![0-9A-Za-z])"),  # AWS access key ids
    ("ASIA", r"[0-9A-Z]{16}(?![0-9A-Za-z])"),  # AWS temporary key ids
    *((f"xox{kind}-", r"[A-Za-z0-9-]{10,}") for kind in "abposr"),  # Slack
    ("glpat-", r"[A-Za-z0-9_-]{20,}"),  # GitLab
    ("AIza", r"[0-9A-Za-z_-]{35}"),  # Google API keys
    ("hf_", r"[A-Za-z0-9]{30,}"),  # Hugging Face
    ("npm_", r"[A-Za-z0-9]{36}"),  # npm
    ("pypi-", r"[A-Za-z0-9_-]{50,}"),  # PyPI
)
_KNOWN_TOKEN = re.compile("|".join(_prefixed(literal, rest) for literal, rest in _KNOWN_TOKENS))
_KNOWN_TOKEN_NEEDLES = tuple(sorted({literal.lower() for literal, _ in _KNOWN_TOKENS}))
"""Every provider key starts with its literal, so text without any of them is not scanned."""
_AUTH_SCHEMES = r"(?:bearer|basic|token|digest|negotiate)"
_AUTH_HEADER = re.compile(
    r"(?i)(?<![A-Za-z0-9-])((?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?)"
    rf"(?:({_AUTH_SCHEMES})\s+)?(?!{_AUTH_SCHEMES}\s)[^\s,;\"'<]+"
)
_COOKIE_HEADER = re.compile(r"(?i)(?<![A-Za-z0-9-])((?:set-)?cookie\s*:\s*)[^\r\n]+")
# A bearer token needs a digit or an inner symbol, so "Bearer authentication." is left alone.
_BEARER = re.compile(
    r"(?i)(?<![A-Za-z0-9])(bearer\s+)"
    r"(?=[A-Za-z0-9._~+/=-]*(?:[0-9]|[._~+/-][A-Za-z0-9]))[A-Za-z0-9._~+/=-]{8,}"
)
# ``key=value``, ``key: value``, ``"key": "value"`` where the key ENDS in a secret word, so that
# ``max_tokens=4096`` and ``token_count: 12`` keep their numbers. The match starts at the separator (quick
# to find) and looks back for the key; key and quotes stay, the value goes. Any letter case.
# Trade-off: prose like "password: must be 8 characters" loses its next word.
_SECRET_KEYS = (
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "secret",
    "token",
    "credential",
    "credentials",
    *(f"{prefix}{sep}key" for prefix in ("api", "access", "secret", "private") for sep in ("", "_", "-")),
)
_ASSIGNMENT = re.compile(
    r"(?i)[:=](?:"
    + "|".join(
        f"(?<={re.escape(key)}{q}[:=])" for key in _SECRET_KEYS for q in ("", '"', "'", " ", '" ', "' ")
    )
    + r")(\s*)(\"[^\"\n]*\"|'[^'\n]*'|[^\s,;&\"'<>)\]}]+)"
)
# Each absent needle costs a scan of the text, so a few short ones that cover every key.
_ASSIGNMENT_NEEDLES = ("password", "passwd", "passphrase", "pwd", "secret", "token", "credential", "key")
_CLI_FLAG = re.compile(
    r"-(?<![A-Za-z0-9-]-)(-?[A-Za-z0-9-]*(?i:password|passwd|token|secret|api-key|apikey)\s+)(?![-<])[^\s\"']+"
)
_CLI_FLAG_NEEDLES = ("password", "passwd", "token", "secret", "api-key", "apikey")
_LONG_HEX = re.compile(r"(?<![A-Za-z0-9])(?:0x)?[0-9A-Fa-f]{32,}(?![A-Za-z0-9])")
# "=" may come before a run ("sig=<base64>"): padding only ever ends one.
_BASE64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{40,}={0,2}(?![A-Za-z0-9+/_=-])")
MAX_NEEDLE_COMBINATIONS = 1024
"""Rule lists remembered, one per combination of needles seen (least recently used go first)."""
MEMO_LENGTH = 512
"""Strings up to this length are scrubbed once per scrubber and then remembered (up to 4,096 of them)."""


def _run_map(members: str) -> bytes:
    """A ``bytes.translate`` table: ``members`` become ``r``, every other byte a space."""
    return bytes(ord("r") if chr(byte) in members else ord(" ") for byte in range(256))


_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TOKEN_RUNS = _run_map(_ALNUM + "_-")
_HEX_RUNS = _run_map(_ALNUM)
_BASE64_RUNS = _run_map(_ALNUM + "+/_=-")
_MIN_TOKEN_RUN = 15
"""The shortest ``[A-Za-z0-9_-]`` run any provider key needs (``xoxb-`` and ten more); JWTs start ``eyJ``."""
_MIN_HEX_RUN = 32
_MIN_BASE64_RUN = 40
_END_OF_RUN = re.compile(rb"[^r]")


def _runs(text: str, table: bytes) -> bytes:
    """``text`` as one byte per character, ``r`` where the character is in the table's class.

    Searching this for ``r`` * n finds the runs a long-token rule needs in C, instead of a regex trying a
    repeated class at every position; non-ASCII characters become ``?`` first, so offsets stay the same.
    """
    return text.encode("ascii", "replace").translate(table)


def _may_hold_known_token(text: str) -> bool:
    return "eyJ" in text or b"r" * _MIN_TOKEN_RUN in _runs(text, _TOKEN_RUNS)


def _sub_in_runs(
    text: str, table: bytes, shortest: int, pattern: re.Pattern[str], replacement: Replacement
) -> str:
    """``pattern.sub`` applied inside the runs of the table's class at least ``shortest`` long.

    For a pattern whose matches lie inside such runs and whose lookarounds stop at their ends, this is
    ``pattern.sub`` on the whole text, without the regex scanning the rest of it.
    """
    runs = _runs(text, table)
    needle = b"r" * shortest
    start = runs.find(needle)
    if start < 0:
        return text
    pieces: list[str] = []
    last = 0
    while start >= 0:
        end_match = _END_OF_RUN.search(runs, start + shortest)
        end = end_match.start() if end_match else len(text)
        run = text[start:end]
        scrubbed = pattern.sub(replacement, run)
        if scrubbed != run:
            pieces += (text[last:start], scrubbed)
            last = end
        start = runs.find(needle, end)
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _long_secrets(text: str) -> str:
    """Long hex runs, then random-looking base64 runs (hex first, so a hex key is not judged as base64)."""
    if len(text) < _MIN_HEX_RUN:
        return text
    text = _sub_in_runs(text, _HEX_RUNS, _MIN_HEX_RUN, _LONG_HEX, REDACTED)
    return _sub_in_runs(text, _BASE64_RUNS, _MIN_BASE64_RUN, _BASE64_RUN, _base64)


# --- addresses ----------------------------------------------------------------------------------------

# Addresses are found from their rarer separator ("@", ".", ":") and extended backwards in Python (see
# ``_sub_back``): a pattern that has to start at the first character of a name scans far more slowly.
# A top-level domain is letters only, so "-" after one ends the address ("jo@example.com-7" is an address
# and "-7"), as "_", "." and ":" do; a longer domain such as "example.com-x.net" is matched whole first.
_EMAIL_DOMAIN = re.compile(
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}"
    r"(?![A-Za-z0-9])"
)
_EMAIL_LOCAL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")
# Candidates only: ``ipaddress`` decides, so times (12:30:45.123), MAC addresses, C++ scopes (std::x),
# versions (v1.2.3.4) and OIDs survive. Loopback and unspecified addresses stay: they identify no one and
# are what "connection refused on 127.0.0.1:6379" is about. A bare "1.2.3.4" version IS taken for an address.
# An underscore beside an address separates it, as in "conn_10.0.0.5_8080.log".
_IPV6_REST = re.compile(r":[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*(?:\.\d{1,3}){0,3}(?:%[\w.]+)?")
_IPV4_REST = re.compile(r"\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![^\W_]|\.\d)")
# Where the rest of an address starts: "." before a digit, ":" before a hex digit or another ":" (lower case,
# as needles are looked for in the lower-cased text). Most "." and ":" in output are punctuation.
_IPV4_NEEDLES = tuple(f".{digit}" for digit in "0123456789")
_IPV6_NEEDLES = (*(f":{digit}" for digit in "0123456789abcdef"), "::")
_DIGITS = frozenset("0123456789")
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
# Names under private top-level domains (AWS ``ip-10-0-0-5.ec2.internal``, ``db1.prod.corp``). Lower case
# only and at least three labels, or a digit or hyphen in one, so ``threading.local`` is code, not a host.
_INTERNAL_TLD = re.compile(r"\.(?:internal|intranet|localdomain|corp|lan|local)(?![\w-]|\.[A-Za-z0-9])")
_INTERNAL_TLD_NEEDLES = (".internal", ".intranet", ".localdomain", ".corp", ".lan", ".local")
_LOWER_LABEL = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-.")
_ANY_LABEL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ") | _LOWER_LABEL

# --- paths --------------------------------------------------------------------------------------------

# Backslash forms (``C:\Users\…``, ``\\server\share\…``); ``D:/data/x`` is left to the POSIX rule.
_WINDOWS_PATH = re.compile(r"(?<![\w\\/])(?:[A-Za-z]:\\+|\\\\)(?:[^\\/\s:*?\"<>|]+\\+)*[^\\/\s:*?\"<>|]*")
# An absolute path: "/" not preceded by a path character, so relative paths, URL paths ("host/v1/x"),
# "~/…", "and/or", "HTTP/1.1" and our own "<path>/x" are left as they are; "file:///x/y" is a path.
# Trade-off: API routes in logs ("GET /v1/users/42") are collapsed too ("GET <path>/42").
_PATH_START = r"/(?:(?<=file:///)|(?<![\w.~/\\@%+-]/)(?<!<path>/))"
_SEGMENT = r"[\w.@%+=-]++"
_SEGMENT_CHAR = r"[\w.@%+=-]"
# A path that ends at a home directory ("/home/bob", "/Users/bob/", "/mnt/data/home/bob") becomes
# ``<path>`` whole: the next rule keeps a path's last part, which here is the user's name.
_HOME_DIRECTORY = re.compile(
    rf"{_PATH_START}(?:{_SEGMENT}/)*(?i:home|users)/{_SEGMENT}(?!/{_SEGMENT_CHAR})/?"
)
# Paths keep their last part: the directories before it are replaced, "/a/b/c/" → "<path>/c/". A literal
# replacement keeps the substitution in C. One-level paths ("/tmp") do not match and stay.
_PATH_DIRECTORIES = re.compile(rf"{_PATH_START}(?:{_SEGMENT}/)+(?={_SEGMENT_CHAR})")
_HOME_PARENTS = frozenset({"home", "users"})

# --- environment --------------------------------------------------------------------------------------

_SECRET_ENV_WORDS = frozenset(
    {
        "KEY",
        "APIKEY",
        "TOKEN",
        "SECRET",
        "SECRETS",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "PASSPHRASE",
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "AUTH",
        "COOKIE",
        "PRIVATE",
        "SIGNATURE",
        "SALT",
        "DSN",
        "PAT",
        "JWT",
    }
)
_TRIVIAL_ENV_VALUE = re.compile(
    r"(?i)true|false|yes|no|on|off|none|null|nil|undefined|enabled?|disabled?"
    r"|[-+]?\d+(?:[.:,_-]\d+)*|v?\d+(?:\.\d+)+[\w.+-]*"
)
_LOCALE_VALUE = re.compile(r"[A-Za-z]{1,3}(?:_[A-Za-z]{2})?(?:\.[\w-]+)?(?:@\w+)?")
_PLAIN_WORD = re.compile(r"[A-Za-z]+")
_PLATFORM_VALUES = frozenset(
    {"x86_64", "aarch64", "arm64", "i686", "linux-gnu", "xterm-256color", "screen-256color", "tmux-256color"}
)
_MIN_SECRET_ENV_LENGTH = 4

# --- people and machines ------------------------------------------------------------------------------

_LOCAL_NAMES = frozenset(
    {"localhost", "localhost.localdomain", "localhost6", "ip6-localhost", "ip6-loopback", "localdomain"}
)
# Account names that say nothing about a person and are ordinary words: replacing "runner" or "admin"
# everywhere would wreck the text for no privacy gain.
_GENERIC_USERS = frozenset(
    {
        "root",
        "runner",
        "ubuntu",
        "admin",
        "administrator",
        "user",
        "app",
        "dev",
        "developer",
        "build",
        "builder",
        "ci",
        "jenkins",
        "gitlab-runner",
        "nobody",
        "www-data",
        "vscode",
        "codespace",
        "node",
        "docker",
        "default",
        "guest",
        "worker",
        "vagrant",
        "ec2-user",
        "azureuser",
        "cloud-user",
    }
)
_MIN_NAME_LENGTH = 3
"""Shorter host and user names ("vm", "al") are skipped: as whole words they are mostly something else."""


@dataclass(frozen=True, slots=True)
class _Rule:
    apply: Callable[[str], str]
    needles: tuple[str, ...] = ()
    """Lower-case strings of which one must occur for the rule to possibly match; () means always run."""
    gate: Callable[[str], bool] | None = None
    """A further test, after the needles and cheaper than the rule, that the text could hold a match."""
    apply_ascii: Callable[[str], str] | None = None
    """The same rule for plain ASCII text (see :func:`_plain_ascii`), where it can run faster."""


def _regex_rule(
    pattern: re.Pattern[str],
    replacement: Replacement,
    needles: tuple[str, ...] = (),
    gate: Callable[[str], bool] | None = None,
) -> _Rule:
    # Unicode classes cost a table lookup per character; on plain ASCII text ASCII classes match the same.
    ascii_pattern = re.compile(pattern.pattern, (pattern.flags & ~re.UNICODE) | re.ASCII)

    def apply(text: str) -> str:
        return pattern.sub(replacement, text)

    def apply_ascii(text: str) -> str:
        return ascii_pattern.sub(replacement, text)

    return _Rule(apply, needles, gate, apply_ascii)


_UNICODE_ONLY_SPACE = "\x1c\x1d\x1e\x1f"
"""ASCII control characters that ``\\s`` matches only in Unicode mode."""


def _plain_ascii(text: str) -> bool:
    """Whether ``\\w``, ``\\d``, ``\\s`` and caseless matching mean the same in ASCII mode for ``text``.

    They do for ASCII text, except that Unicode mode also counts four separator controls as space.
    """
    return text.isascii() and not any(control in text for control in _UNICODE_ONLY_SPACE)


def _base64(match: re.Match[str]) -> str:
    """A long base64/base64url run goes only if it looks random: long paths and identifiers do not.

    Random base64 has capitals and digits in about half its characters and one ``/_-`` in thirty; paths,
    slugs and CamelCase names have far fewer capitals and digits or many separators. One random run in
    a thousand has no digit; its letters still change case about every other character, words' do not.
    Of 100,000 random 40-character secrets 13 survive this, where requiring a digit and at most one separator
    in ten let about 950 base64url and 150 base64 ones through.
    """
    run = match.group(0)
    body = run.rstrip("=")
    upper = sum(1 for ch in body if ch.isupper())
    digits = sum(1 for ch in body if ch.isdigit())
    separators = sum(1 for ch in body if ch in "/_-")
    if separators * 5 > len(body) or not upper or upper + digits == len(body):
        return run
    if (upper + digits) * 4 < len(body):
        return run
    if digits:
        return REDACTED
    letters = [ch for ch in body if ch.isalpha()]
    changes = sum(1 for a, b in itertools.pairwise(letters) if a.isupper() != b.isupper())
    return REDACTED if changes * 5 >= (len(letters) - 1) * 2 else run


Decide = Callable[[str, int, re.Match[str]], tuple[int, str] | None]


def _sub_back(
    text: str, pattern: re.Pattern[str], head_chars: frozenset[str], max_head: int, decide: Decide
) -> str:
    """Like ``pattern.sub``, for items whose match starts after their first part.

    Each match is extended backwards over at most ``max_head`` characters from ``head_chars``; ``decide``
    gets the text, the start so found and the match, and returns (end, replacement) or None to keep it.
    """
    pieces: list[str] = []
    last = 0
    for match in pattern.finditer(text):
        start = head = match.start()
        while head > last and start - head < max_head and text[head - 1] in head_chars:
            head -= 1
        decision = decide(text, head, match)
        if decision is None:
            continue
        end, replacement = decision
        pieces += (text[last:head], replacement)
        last = end
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def _follows_word(text: str, index: int, also: str = "_") -> bool:
    """Whether the character before ``index`` continues a word (so a match there is part of it)."""
    return index > 0 and (text[index - 1].isalnum() or text[index - 1] in also)


def _email(text: str, head: int, match: re.Match[str]) -> tuple[int, str] | None:
    return None if head == match.start() else (match.end(), EMAIL)


def _ipv6(text: str, head: int, match: re.Match[str]) -> tuple[int, str] | None:
    end = match.end()
    if _follows_word(text, head, ".:") or (end < len(text) and text[end].isalnum()):
        return None
    candidate = text[head:end]
    # A colon after an address is punctuation: "at fe80::1: refused", "at fe80::: refused".
    bare = candidate.rstrip(":")
    candidate = bare + "::" if len(candidate) - len(bare) >= 2 else bare
    if "::" not in candidate and candidate.count(":") < 7:
        return None
    address = candidate.split("%", 1)[0]
    if not any(ch in _DIGITS for ch in address):  # "a::b", "dead::beef" are more likely code than hosts
        return None
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return None
    if parsed.is_loopback or parsed.is_unspecified:
        return None
    return head + len(candidate), IP


def _ipv4(text: str, head: int, match: re.Match[str]) -> tuple[int, str] | None:
    if head == match.start() or _follows_word(text, head, "."):
        return None
    try:
        parsed = ipaddress.IPv4Address(text[head : match.end()])
    except ValueError:
        return None
    if parsed.is_loopback or parsed.is_unspecified:
        return None
    return match.end(), IP


def _internal_host(text: str, head: int, match: re.Match[str]) -> tuple[int, str] | None:
    name = text[head : match.end()]
    if head == match.start() or _follows_word(text, head, "_") or name.startswith((".", "-")):
        return None
    if name.count(".") >= 2 or any(ch.isdigit() or ch == "-" for ch in name):
        return match.end(), HOST
    return None


def _domain_member(text: str, head: int, match: re.Match[str]) -> tuple[int, str] | None:
    """A name in the machine's own domain: the domain itself or ``<labels>.<domain>``."""
    start = match.start()
    if _follows_word(text, head, "_") or text[head:start].startswith((".", "-")):
        return None
    if head < start and text[start - 1] != ".":
        return None  # "notcorp.example.com" is not in "corp.example.com"
    return match.end(), HOST


def _back_rule(
    rest: re.Pattern[str], head_chars: frozenset[str], max_head: int, decide: Decide
) -> Callable[[str], str]:
    def apply(text: str) -> str:
        return _sub_back(text, rest, head_chars, max_head, decide)

    return apply


def _windows_path(match: re.Match[str]) -> str:
    path = match.group(0)
    parts = [part for part in re.split(r"\\+", path[2:] if path[1:2] == ":" else path) if part]
    if len(parts) < 2 and not path.startswith("\\\\"):
        return path
    if len(parts) == 2 and parts[0].lower() in _HOME_PARENTS:
        return PATH
    return f"{PATH}\\{parts[-1]}" if parts else PATH


def _keep_key(match: re.Match[str]) -> str:
    """Keep the separator and the value's quotes; the key is before the match and stays too."""
    head = match.group(0)[0] + match.group(1)
    value = match.group(2)
    if value[:1] in "\"'" and len(value) >= 2:
        return f"{head}{value[0]}{REDACTED}{value[-1]}"
    return f"{head}{REDACTED}"


def _auth_header(match: re.Match[str]) -> str:
    scheme = match.group(2)
    return f"{match.group(1)}{scheme + ' ' if scheme else ''}{REDACTED}"


def _longest_first(names: Sequence[str]) -> list[str]:
    """Longest first, so an alternation never stops at a shorter name that starts a longer one."""
    return sorted(set(names), key=lambda name: (-len(name), name))


class Scrubber:
    """Removes private data from text and payload models; build one per runner and share it between threads.

    Everything it knows about the machine (home, user, host names, environment) is read once at
    construction and can be injected, so tests and runners in containers control exactly what is private.
    ``None`` reads the real value; ``""``, ``()`` or ``{}`` switches that source off.
    """

    def __init__(
        self,
        *,
        home: str | None = None,
        user: str | None = None,
        hostnames: Sequence[str] | None = None,
        extra_rules: Sequence[tuple[str | re.Pattern[str], str]] = (),
        env: Mapping[str, str] | None = None,
        min_env_value_length: int = 6,
    ) -> None:
        real_home = os.path.expanduser("~")
        home = real_home if home is None else home
        user = _current_user() if user is None else user
        hosts = _machine_hostnames() if hostnames is None else list(hostnames)
        environment: Mapping[str, str] = os.environ if env is None else env

        self._extra: tuple[_Rule, ...] = ()
        self._short = functools.lru_cache(maxsize=4096)(self._scrub)
        for pattern, replacement in extra_rules:
            self.add_rule(pattern, replacement)

        homes = _home_variants(home, resolve=home == real_home)
        hosts = sorted(h for h in {h.strip().rstrip(".") for h in hosts} if _is_private_name(h))
        private_user = user if _is_private_name(user) and user.lower() not in _GENERIC_USERS else ""
        self._env_long, self._env_short = _env_secrets(
            environment, skip={*homes, *hosts, user, home}, min_length=min_env_value_length
        )

        rules = [
            _regex_rule(_PRIVATE_KEY, REDACTED, ("private key",)),
            _Rule(self._environment),
            _regex_rule(_URL_CREDENTIALS, f"://{REDACTED}@", ("://",)),
            _regex_rule(_KNOWN_TOKEN, REDACTED, _KNOWN_TOKEN_NEEDLES, _may_hold_known_token),
            _regex_rule(_AUTH_HEADER, _auth_header, ("authorization",)),
            _regex_rule(_COOKIE_HEADER, rf"\1{REDACTED}", ("cookie",)),
            _regex_rule(_BEARER, rf"\1{REDACTED}", ("bearer",)),
            # Flags first: in "PASSWORD=--password x" the assignment would take the flag as its value.
            _regex_rule(_CLI_FLAG, rf"-\1{REDACTED}", _CLI_FLAG_NEEDLES),
            _regex_rule(_ASSIGNMENT, _keep_key, _ASSIGNMENT_NEEDLES),
            _Rule(_long_secrets),
            _Rule(_back_rule(_EMAIL_DOMAIN, _EMAIL_LOCAL, 256, _email), ("@",)),
            _Rule(_back_rule(_IPV6_REST, _HEX_DIGITS, 4, _ipv6), _IPV6_NEEDLES),
            _Rule(_back_rule(_IPV4_REST, _DIGITS, 3, _ipv4), _IPV4_NEEDLES),
        ]
        if hosts:
            # The machine's own names, with any domain written after the short name.
            names = "|".join(_prefixed(h, "", r"\w.-") for h in _longest_first(hosts))
            own = re.compile(rf"(?i)(?:{names})(?:\.[A-Za-z0-9-]+)*(?![\w-])")
            rules.append(_regex_rule(own, HOST, tuple(h.lower() for h in hosts)))
            # Other hosts in the machine's own domain are private too. Public names (api.openai.com,
            # github.com) stay: which provider failed is what the store learns from, and they name no one.
            domains = [h.split(".", 1)[1] for h in hosts if h.count(".") >= 2]
            if domains:
                suffixes = "|".join(re.escape(d) for d in _longest_first(domains))
                in_domain = re.compile(rf"(?i)(?:{suffixes})(?![\w-]|\.[A-Za-z0-9])")
                members = _back_rule(in_domain, _ANY_LABEL, 253, _domain_member)
                rules.append(_Rule(members, tuple(d.lower() for d in domains)))
        internal = _back_rule(_INTERNAL_TLD, _LOWER_LABEL, 253, _internal_host)
        rules.append(_Rule(internal, _INTERNAL_TLD_NEEDLES))
        if homes:
            variants = "|".join(_prefixed(h, "", r"\w./~-") for h in _longest_first(homes))
            home_pattern = re.compile(rf"(?:{variants})(?![\w.-])")
            rules.append(_regex_rule(home_pattern, "~", tuple(h.lower() for h in homes)))
        rules.append(_regex_rule(_WINDOWS_PATH, _windows_path, (":\\", "\\\\")))
        rules.append(_regex_rule(_HOME_DIRECTORY, PATH, ("/home/", "/users/")))
        rules.append(_regex_rule(_PATH_DIRECTORIES, f"{PATH}/", ("/",)))
        if private_user:
            user_pattern = re.compile(rf"(?i){_prefixed(private_user, '', 'A-Za-z0-9')}(?![A-Za-z0-9])")
            rules.append(_regex_rule(user_pattern, USER, (private_user.lower(),)))
        self._rules: tuple[_Rule, ...] = tuple(rules)
        self._needles = NeedleSet(needle for rule in rules for needle in rule.needles)
        self._rules_for = functools.lru_cache(maxsize=MAX_NEEDLE_COMBINATIONS)(self._rules_needed)

    def add_rule(self, pattern: str | re.Pattern[str], replacement: str) -> None:
        """Add a runner-specific rule; runner rules run first, on the raw text, in the order added.

        ``replacement`` may use group references (``\\1``). Safe while other threads scrub: the rule tuple
        is replaced, never changed in place.
        """
        compiled = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        self._extra = (*self._extra, _regex_rule(compiled, replacement))
        self._short.cache_clear()

    def text(self, value: str) -> str:
        """``value`` with every private item replaced by its token, in the order the module describes.

        Short strings (failure reasons, error messages, tags) repeat across outcomes, so they are memoised.
        """
        if not value:
            return value
        if len(value) <= MEMO_LENGTH:
            return self._short(value)
        return self._scrub(value)

    def _scrub(self, value: str) -> str:
        for rule in self._extra:
            value = rule.apply(value)
        # Rules only remove text or insert tokens, so a needle missing from the text as it came is missing
        # now; a needle found there is looked for again in the current text before its rule runs.
        lowered = value.lower()
        found = self._needles.found(lowered)
        stale = False
        # Replacements are ASCII tokens, so plain ASCII text stays plain ASCII.
        plain = _plain_ascii(value)
        for rule, needed in self._rules_for(found):
            if stale and needed:
                lowered, stale = value.lower(), False
                if not any(needle in lowered for needle in needed):
                    continue
            if rule.gate is not None and not rule.gate(value):
                continue
            scrubbed = (rule.apply_ascii if plain and rule.apply_ascii else rule.apply)(value)
            if scrubbed != value:
                value, stale = scrubbed, True
        return value

    def _rules_needed(self, found: frozenset[str]) -> tuple[tuple[_Rule, tuple[str, ...]], ...]:
        """The rules a text holding the needles ``found`` needs, in order, each with the needles it needs.

        Texts hold few distinct combinations of needles, so ``_rules_for`` remembers each one's answer.
        """
        return tuple(
            (rule, tuple(sorted(found.intersection(rule.needles))))
            for rule in self._rules
            if not rule.needles or not found.isdisjoint(rule.needles)
        )

    def tail(self, value: str, limit: int = TAIL_LIMIT) -> str:
        """Scrub, then keep the last ``limit`` characters (scrubbing can lengthen text, so cut after)."""
        return tail(self.text(value), limit)

    def payload(self, model: ModelT) -> ModelT:
        """A copy of ``model`` with every free-text string scrubbed, nested models, lists and dicts included.

        Identifier fields (:data:`IDENTIFIER_FIELDS`), numbers, datetimes and bools stay exact. A string
        that grows past its field's ``max_length`` is cut (tails keep their end), so the copy is still a
        valid model. Dict keys that become equal are merged, adding their counts. When nothing changes the
        model itself is returned (payload models are frozen).
        """
        updates: dict[str, Any] = {}
        for plan in _plan(type(model)):
            current = getattr(model, plan.name)
            if not current:  # None, "", an empty list or dict: nothing to scrub
                continue
            scrubbed = self._value(current, plan)
            if scrubbed is not current and scrubbed != current:
                updates[plan.name] = scrubbed
        return model.model_copy(update=updates) if updates else model

    def _value(self, value: object, plan: _FieldPlan) -> object:
        kind = type(value)
        if kind in _ATOMS:
            return value
        if isinstance(value, str) and (kind is str or not isinstance(value, Enum)):
            scrubbed = self.text(value) or (REDACTED if value else value)
            if plan.limit is not None and len(scrubbed) > plan.limit:
                scrubbed = tail(scrubbed, plan.limit) if plan.keep_end else scrubbed[: plan.limit]
            return scrubbed
        if isinstance(value, BaseModel):
            return self.payload(value)
        if isinstance(value, list | tuple):
            items = [self._value(item, plan) for item in value]
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            merged: dict[object, object] = {}
            for key, item in value.items():
                new_key, new_item = self._value(key, plan), self._value(item, plan)
                if new_key not in merged:
                    merged[new_key] = new_item
                    continue
                previous = merged[new_key]
                if type(previous) is int and type(new_item) is int:
                    merged[new_key] = previous + new_item
            return merged
        return value

    def _environment(self, value: str) -> str:
        for secret in self._env_long:
            if secret in value:
                value = value.replace(secret, REDACTED)
        for secret, pattern in self._env_short:
            if secret in value:
                value = pattern.sub(REDACTED, value)
        return value


def _current_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name on this machine: nothing to remove
        return ""


def _machine_hostnames() -> list[str]:
    """The host name, the fully qualified name and its short form (read once; getfqdn may ask DNS)."""
    names = {socket.gethostname(), socket.getfqdn()}
    names |= {name.split(".", 1)[0] for name in names}
    return sorted(name for name in names if name)


def _home_variants(home: str, *, resolve: bool) -> list[str]:
    """The home directory as written and, for the real one, resolved (macOS /private, symlinked homes)."""
    home = home.rstrip("/\\")
    if len(home) <= 1 or ("/" not in home and "\\" not in home):
        return []
    variants = {home}
    if resolve:
        variants.add(os.path.realpath(home))
    return sorted(v for v in variants if len(v) > 1)


def _is_private_name(name: str) -> bool:
    return len(name) >= _MIN_NAME_LENGTH and name.lower() not in _LOCAL_NAMES and f"<{name}>" not in _TOKENS


def _is_path_like(value: str) -> bool:
    """PATH, HOME, PYTHONPATH and the like: the path rules treat each entry better than a wholesale swap."""
    if "://" in value:
        return False
    if re.match(r"[A-Za-z]:[\\/]", value):
        return True
    entries = [entry for entry in re.split(r"[:;]", value) if entry]
    return bool(entries) and all(entry.startswith(("/", "~", "\\")) for entry in entries)


def _is_secret_env_name(name: str) -> bool:
    upper = name.upper()
    return upper not in {"PWD", "OLDPWD"} and any(
        word in _SECRET_ENV_WORDS for word in re.split(r"[^A-Z0-9]+", upper)
    )


def _env_secrets(
    environment: Mapping[str, str], *, skip: set[str], min_length: int
) -> tuple[tuple[str, ...], tuple[tuple[str, re.Pattern[str]], ...]]:
    """Environment values to remove verbatim: (long values, short secret values matched as whole words).

    Variables with a secret-looking name (``*_TOKEN``, ``*_API_KEY``, ``DB_PASSWORD``…) lose any value of
    four or more characters that is not a boolean or a number, even a path or a plain word. Other variables
    lose values of at least ``min_length`` characters, except paths and path lists (the path rules handle
    them entry by entry), numbers, versions, booleans, single plain words ("production", "wayland":
    removing them everywhere would wreck prose, and they are not secret), locales and platform names. The
    home directory, user and host names are left to their own rules, which give a more useful token.
    """
    long_values: set[str] = set()
    short_values: set[str] = set()
    for name, raw in environment.items():
        value = raw.strip()
        if not value or value in skip or any(value in token for token in _TOKENS):
            continue
        if _TRIVIAL_ENV_VALUE.fullmatch(value):
            continue
        if _is_secret_env_name(name):
            if len(value) >= max(min_length, _MIN_SECRET_ENV_LENGTH):
                long_values.add(value)
            elif len(value) >= min(min_length, _MIN_SECRET_ENV_LENGTH):
                short_values.add(value)
            continue
        if len(value) < min_length or _is_path_like(value) or value.lower() in _PLATFORM_VALUES:
            continue
        if _PLAIN_WORD.fullmatch(value) or _LOCALE_VALUE.fullmatch(value):
            continue
        long_values.add(value)
    short = tuple(
        (value, re.compile(rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"))
        for value in sorted(short_values, key=len, reverse=True)
    )
    return tuple(sorted(long_values, key=len, reverse=True)), short


# --- payload plans ------------------------------------------------------------------------------------


_ATOMS = frozenset({type(None), bool, int, float})
"""Values that hold no text, skipped at once (most fields of a payload)."""


@dataclass(frozen=True, slots=True)
class _FieldPlan:
    name: str
    limit: int | None
    keep_end: bool


@functools.cache
def _plan(cls: type[BaseModel]) -> tuple[_FieldPlan, ...]:
    """Which fields of ``cls`` may hold free text, and the longest string each accepts (worked out once)."""
    plans: list[_FieldPlan] = []
    for name, info in cls.model_fields.items():
        if name in IDENTIFIER_FIELDS or not _may_hold_text(info.annotation):
            continue
        limits = _string_limits(info.annotation)
        if info.annotation is str:
            limits += [m for meta in info.metadata if (m := getattr(meta, "max_length", None)) is not None]
        plans.append(_FieldPlan(name, min(limits) if limits else None, name in TAIL_FIELDS))
    return tuple(plans)


def _may_hold_text(annotation: object) -> bool:
    if annotation is str or annotation is Any or annotation is object:
        return True
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return False
        return issubclass(annotation, BaseModel | str)
    origin = get_origin(annotation)
    if origin is None or origin is Literal:
        return False
    if origin is Annotated:
        return _may_hold_text(get_args(annotation)[0])
    return any(_may_hold_text(arg) for arg in get_args(annotation) if arg is not Ellipsis)


def _string_limits(annotation: object) -> list[int]:
    """Every ``max_length`` that applies to a string somewhere inside ``annotation``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        if base is str:
            return [m for meta in metadata if (m := getattr(meta, "max_length", None)) is not None]
        return _string_limits(base)
    if origin is not None:
        return [limit for arg in get_args(annotation) for limit in _string_limits(arg)]
    return []

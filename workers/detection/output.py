"""Known failure signatures in a sheet's stdout/stderr tails.

Phrases and exception names match as substrings, as upstream's do, because they are distinctive and are
wanted inside identifiers too (``ReadTimeout``, ``asyncio.TimeoutError``). Numeric codes and acronyms are
short enough to occur by accident, so they match only as whole words: "room" is not OOM and "4290" is not
429 (SPEC-store §0.11, §6.2.13).

Caseless signatures are written in lower case and matched against the lower-cased text: Python's regex
engine scans a case-insensitive alternation several times slower, as it cannot skip ahead to a first
letter (a 2.8 KiB tail: about 250 µs against 50 for the timeout signature).
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ostinato.needles import NeedleSet

CONTEXT_LINES = 2
_NEWLINE = re.compile("\n")

_I = re.IGNORECASE


@dataclass(frozen=True)
class Matcher:
    """A signature: its regex, and lower-case needles of which every alternative contains one.

    A tail is only searched with the regexes whose needle it contains: one pass for all needles is far
    cheaper than 21 regex scans, and most tails contain no signature at all.
    """

    name: str
    pattern: re.Pattern[str]
    confidence: float
    needles: tuple[str, ...]

    @functools.cached_property
    def scan(self) -> re.Pattern[str]:
        """What runs: a caseless pattern in lower case without the flag, for the lower-cased text."""
        if not self.pattern.flags & _I:
            return self.pattern
        source = _LETTERS_OR_ESCAPE.sub(_lower_unless_escape, self.pattern.pattern)
        return re.compile(source, self.pattern.flags & ~_I)


_LETTERS_OR_ESCAPE = re.compile(r"\\.|[A-Z]+")


def _lower_unless_escape(match: re.Match[str]) -> str:
    """Letters in lower case; escapes such as ``\\S`` or ``\\B`` kept, as their case is their meaning."""
    return match.group() if match.group().startswith("\\") else match.group().lower()


OUTPUT_MATCHERS: tuple[Matcher, ...] = (
    Matcher(
        "rate_limit",
        re.compile(r"rate\s*limit|too\s*many\s*requests|\b429\b|quota\s*exceeded", _I),
        0.95,
        ("rate", "too", "429", "quota"),
    ),
    Matcher(
        "api_error",
        re.compile(r"api\s*error|service\s*unavailable|\b503\b|\b500\s*internal", _I),
        0.90,
        ("api", "service", "503", "500"),
    ),
    Matcher(
        "timeout",
        re.compile(r"timeout|timed?\s*out|connection\s*timed?\s*out|deadline\s*exceeded", _I),
        0.90,
        ("time", "deadline"),
    ),
    Matcher(
        "import_error",
        re.compile(r"ImportError|ModuleNotFoundError|No\s*module\s*named", _I),
        0.95,
        ("importerror", "module"),
    ),
    Matcher(
        "syntax_error",
        re.compile(r"SyntaxError|IndentationError|TabError", _I),
        0.95,
        ("syntaxerror", "indentationerror", "taberror"),
    ),
    Matcher("type_error", re.compile(r"TypeError:\s*[^\n]+", _I), 0.90, ("typeerror",)),
    Matcher("attribute_error", re.compile(r"AttributeError:\s*[^\n]+", _I), 0.90, ("attributeerror",)),
    Matcher("key_error", re.compile(r"KeyError:\s*[^\n]+", _I), 0.85, ("keyerror",)),
    Matcher("value_error", re.compile(r"ValueError:\s*[^\n]+", _I), 0.85, ("valueerror",)),
    Matcher(
        "name_error",
        re.compile(r"NameError:\s*name\s*'[^']+'\s*is\s*not\s*defined", _I),
        0.95,
        ("nameerror",),
    ),
    Matcher(
        "permission_denied",
        re.compile(r"permission\s*denied|access\s*denied|\bEACCES\b", _I),
        0.95,
        ("permission", "access", "eacces"),
    ),
    Matcher(
        "file_not_found",
        re.compile(r"FileNotFoundError|No\s*such\s*file|\bENOENT\b", _I),
        0.95,
        ("filenotfounderror", "such", "enoent"),
    ),
    Matcher(
        "disk_full",
        re.compile(r"no\s*space\s*left|disk\s*full|\bENOSPC\b", _I),
        0.95,
        ("space", "disk", "enospc"),
    ),
    Matcher(
        "connection_refused",
        re.compile(r"connection\s*refused|\bECONNREFUSED\b", _I),
        0.90,
        ("refused",),
    ),
    Matcher("connection_reset", re.compile(r"connection\s*reset|\bECONNRESET\b", _I), 0.85, ("reset",)),
    Matcher(
        "dns_error",
        re.compile(r"could\s*not\s*resolve\s*host|dns\s*error|\bNXDOMAIN\b", _I),
        0.90,
        ("resolve", "dns", "nxdomain"),
    ),
    Matcher(
        "auth_failure",
        re.compile(r"authentication\s*fail|invalid\s*credential|unauthorized|\b401\b", _I),
        0.90,
        ("authentication", "credential", "unauthorized", "401"),
    ),
    Matcher(
        "token_expired",
        re.compile(r"token\s*expired|session\s*expired|jwt\s*expired", _I),
        0.90,
        ("expired",),
    ),
    Matcher("traceback", re.compile(r"Traceback\s*\(most\s*recent\s*call\s*last\)"), 0.75, ("traceback",)),
    Matcher("assertion_error", re.compile(r"AssertionError:\s*[^\n]*", _I), 0.85, ("assertionerror",)),
    Matcher(
        "out_of_memory",
        # OOMKilled and oom_kill are the kernel's and Kubernetes' spellings of the same event.
        re.compile(r"out\s*of\s*memory|MemoryError|\bOOM(?:_?kill\w*)?\b|killed\s*by\s*kernel", _I),
        0.95,
        ("memory", "oom", "killed"),
    ),
)
"""In the order hits on one line are reported."""
_NEEDLES = NeedleSet(needle for m in OUTPUT_MATCHERS for needle in m.needles)


@dataclass(frozen=True)
class OutputHit:
    """One signature found on one (1-based) line, with up to two lines of context each side."""

    name: str
    line: int
    confidence: float
    context_before: tuple[str, ...] = ()
    context_after: tuple[str, ...] = ()


def _lines(text: str) -> list[str]:
    """Lines split on "\\n" only, so they agree with the line numbers counted from match offsets."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


@functools.lru_cache(maxsize=1024)
def _matchers_for(present: frozenset[str]) -> tuple[tuple[Matcher, re.Pattern[str], bool], ...]:
    """The matchers a text holding the needles ``present`` needs: (matcher, what runs, caseless)."""
    return tuple(
        (matcher, matcher.scan, matcher.scan is not matcher.pattern)
        for matcher in OUTPUT_MATCHERS
        if not present.isdisjoint(matcher.needles)
    )


def _signature_lines(text: str) -> list[tuple[Matcher, int]]:
    """Each (signature, 1-based line) found in ``text`` once, by line, then in the order of the matchers."""
    if not text or not text.strip():
        return []
    lowered = text.lower()
    present = _NEEDLES.found(lowered)
    if not present:
        return []
    found: list[tuple[Matcher, int]] = []
    seen: set[tuple[str, int]] = set()
    newlines: dict[bool, list[int]] = {}
    for matcher, scan, caseless in _matchers_for(present):
        searched = lowered if caseless else text  # lower-casing can change lengths, never line breaks
        for match in scan.finditer(searched):
            if caseless not in newlines:
                newlines[caseless] = [newline.start() for newline in _NEWLINE.finditer(searched)]
            line = bisect.bisect_left(newlines[caseless], match.start()) + 1
            if (matcher.name, line) not in seen:
                seen.add((matcher.name, line))
                found.append((matcher, line))
    found.sort(key=lambda hit: hit[1])
    return found


def signature_names(text: str) -> list[str]:
    """The name of each signature hit in ``text``, one per name per line (what pattern detection counts)."""
    return [matcher.name for matcher, _ in _signature_lines(text)]


def extract_output_patterns(text: str) -> list[OutputHit]:
    """Every signature in ``text``, by line; one hit per name per line, different names all kept."""
    found = _signature_lines(text)
    if not found:
        return []
    lines = _lines(text)
    return [
        OutputHit(
            name=matcher.name,
            line=line,
            confidence=matcher.confidence,
            context_before=tuple(lines[max(0, line - 1 - CONTEXT_LINES) : line - 1]),
            context_after=tuple(lines[line : line + CONTEXT_LINES]),
        )
        for matcher, line in found
    ]


def summarize(hits: Iterable[OutputHit]) -> dict[str, int]:
    """How many hits each signature name has."""
    summary: dict[str, int] = {}
    for hit in hits:
        summary[hit.name] = summary.get(hit.name, 0) + 1
    return summary

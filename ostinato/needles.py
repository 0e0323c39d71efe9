"""Which of a fixed set of literal strings occur in a text, found in one pass.

The scrubber and the output-signature detector skip most of their regexes when a text lacks the literals
those regexes need. Testing each literal with ``in`` scans the text once per literal (dozens of scans of a
4 KiB tail); RE2's multi-pattern set scans it once, in C++, whatever the number of literals.
"""

from __future__ import annotations

from collections.abc import Iterable

import re2


class NeedleSet:
    """A compiled set of literals; ``found`` is safe to call from many threads at once."""

    def __init__(self, needles: Iterable[str]) -> None:
        self.needles: tuple[str, ...] = tuple(sorted({needle for needle in needles if needle}))
        self._set = re2.Set.SearchSet(re2.Options())
        for needle in self.needles:
            self._set.Add(re2.escape(needle))
        if self.needles:
            self._set.Compile()

    def found(self, text: str) -> frozenset[str]:
        """The needles that occur in ``text`` (case-sensitive: lower both sides for a caseless test)."""
        if not self.needles or not text:
            return frozenset()
        # Lone surrogates (output decoded with "surrogateescape") cannot be UTF-8; passed through as they
        # are, they match no needle, as with ``in``.
        encoded = text.encode("utf-8", "surrogatepass")
        return frozenset(self.needles[index] for index in self._set.Match(encoded) or ())

"""Dead letters keep no private data: the producer's free-text rules run on what a worker stores raw.

A dead letter is a message that never went through the runner's scrubber as a model (it failed validation,
was not a task at all, or came from a producer that does not scrub), so the worker scrubs it before storing.
Only the free-text rules apply: the worker does not know the runner's home, user, host or environment. A JSON
body stays JSON with the same structure, only its strings scrubbed, so ``ostinato dead-letters replay``
still reads it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ostinato.producers.scrub import Scrubber

BASE64_PREFIX = "base64:"
"""How ``raw_text`` stores a body that is not UTF-8."""


@functools.cache
def _scrubber() -> Scrubber:
    # Loaded on the first dead letter: the producer package takes a second to import, the store is read often.
    from ostinato.producers.scrub import Scrubber

    return Scrubber(home="", user="", hostnames=(), env={})


def scrub_text(text: str) -> str:
    """``text`` with the free-text rules applied (keys, tokens, addresses, paths, e-mail addresses)."""
    return _scrubber().text(text)


def scrub_body(body: str) -> str:
    """A stored body without private data: JSON string values (and keys) scrubbed, other text as text.

    Bytes that were not UTF-8 (stored as ``base64:…``) are scrubbed byte for byte: a secret in them is ASCII.
    An unchanged JSON body is returned as it came, so its formatting stays too.
    """
    if body.startswith(BASE64_PREFIX):
        return _scrub_binary(body)
    try:
        parsed = json.loads(body)
    except ValueError:
        return scrub_text(body)
    scrubbed = _scrub_json(parsed)
    return body if scrubbed == parsed else json.dumps(scrubbed)


def _scrub_binary(body: str) -> str:
    try:
        raw = base64.b64decode(body[len(BASE64_PREFIX) :], validate=True)
    except binascii.Error:
        return scrub_text(body)
    scrubbed = scrub_text(raw.decode("latin-1")).encode("latin-1")
    return body if scrubbed == raw else BASE64_PREFIX + base64.b64encode(scrubbed).decode("ascii")


def _scrub_json(value: object) -> object:
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list):
        return [_scrub_json(item) for item in value]
    if isinstance(value, dict):
        # Keys of free-text maps (failure categories) may hold private data. Two that become equal are
        # merged as ``Scrubber.payload`` merges them: counts add up, otherwise the first value stays.
        scrubbed: dict[str, object] = {}
        for key, item in value.items():
            new_key, new_item = scrub_text(key), _scrub_json(item)
            previous = scrubbed.setdefault(new_key, new_item)
            if previous is not new_item and type(previous) is int and type(new_item) is int:
                scrubbed[new_key] = previous + new_item
        return scrubbed
    return value

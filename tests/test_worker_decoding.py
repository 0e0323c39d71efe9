"""A delivery is decoded once, in the consumer, with a faster parser whose results are kombu's own."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from kombu import compression, serialization
from kombu.exceptions import DecodeError
from kombu.message import Message
from messages import outcome

from ostinato.broker import BATCH_COMPRESSION, BATCH_TASK
from ostinato.workers import app, json_codec
from ostinato.workers.request import DecodedOnceRequest
from ostinato.workers.tasks import ingest_batch

dumps: Callable[..., tuple[str, str, str]] = serialization.dumps
loads: Callable[..., Any] = serialization.loads
compress: Callable[[bytes, str], tuple[bytes, str]] = compression.compress
make_message: Callable[..., Message] = Message
BATCH = [outcome(sheet, "job-decode").model_dump_json() for sheet in range(1, 6)]

BODIES: list[str | bytes] = [
    json.dumps([[BATCH], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]),
    json.dumps([[[json.loads(envelope) for envelope in BATCH]], {}, {}]).encode(),
    json_codec.kombu_dumps({"at": datetime(2026, 6, 1, tzinfo=UTC), "id": UUID(int=7), "n": Decimal("1.5")}),
    json.dumps(["mentions _type__ inside a string", {"__type__": "x"}]),
    '{"big": 123456789012345678901234567890, "small": -0.0, "exp": 1e300, "nan": NaN, "inf": -Infinity}',
    '{"dup": 1, "dup": 2, "text": "caf\\u00e9 \\ud83d\\ude80 \\n"}',
]
REFUSED: list[str | bytes] = [
    b"\xff\xfe not utf-8",
    '["lone \\ud800 surrogate"]',
    "[1, 2] trailing",
    "{'single': 'quotes'}",
    "",
]


def kombu_result(body: str | bytes) -> tuple[str, Any]:
    try:
        return "value", json_codec.kombu_loads(body)
    except Exception as error:
        return "error", type(error)


@pytest.mark.parametrize("body", BODIES + REFUSED)
def test_decoder_returns_what_kombu_returns(body: str | bytes) -> None:
    expected = kombu_result(body)
    try:
        got: tuple[str, Any] = ("value", json_codec.loads(body))
    except Exception as error:
        got = ("error", type(error))
    assert repr(got) == repr(expected)  # repr: NaN is not equal to itself


def test_worker_decodes_json_with_it() -> None:
    content_type, encoding, body = dumps([[BATCH], {}, {}], serializer="json")
    assert content_type == json_codec.CONTENT_TYPE
    assert loads(body, content_type, encoding) == [[BATCH], {}, {}]
    with pytest.raises(DecodeError):
        loads(b"[1, 2] trailing", content_type, encoding)
    assert serialization.registry._decoders[json_codec.CONTENT_TYPE] is json_codec.loads


def test_request_hands_the_pool_decoded_arguments() -> None:
    """The pool process gets (args, kwargs, embed) itself, marked as decoded, not the compressed body."""
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    content_type, encoding, body = dumps([[BATCH], {}, embed], serializer="json")
    packed, compression_type = compress(body.encode(), BATCH_COMPRESSION)
    message = make_message(
        body=packed,
        content_type=content_type,
        content_encoding=encoding,
        headers={"id": "delivery-1", "task": BATCH_TASK, "compression": compression_type},
        delivery_info={"routing_key": "ostinato.ingest"},
        properties={},
        accept=["application/json"],
    )
    request = DecodedOnceRequest(message, app=app, task=ingest_batch, hostname="test")
    assert request.body == [[BATCH], {}, embed]
    assert request.content_type is None
    assert request.content_encoding is None
    assert request.args == [BATCH]
    assert ingest_batch.Request == "ostinato.workers.request:DecodedOnceRequest"

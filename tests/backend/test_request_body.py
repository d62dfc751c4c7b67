"""The JSON body reader on its own: depth counting, every 400, streaming cap and a client that leaves."""
import asyncio
import json
import random

import pytest
from fastapi import HTTPException
from starlette.requests import Request

from backend.request_body import MAX_DEPTH, nesting_depth, parse_json, read_capped


def _reference_depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_reference_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_reference_depth, value), default=0)
    return 0


def _random_value(rng: random.Random, depth: int):
    kind = rng.random()
    if depth == 0 or kind < 0.3:
        return rng.choice([1, "a[b", "}{", '"\\[', None, 2.5, "]]]]"])
    if kind < 0.65:
        return [_random_value(rng, depth - 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["k", "[", "{x"]) + str(i): _random_value(rng, depth - 1) for i in range(rng.randint(0, 3))}


def test_nesting_depth_matches_the_parsed_value_even_with_brackets_in_strings():
    rng = random.Random(0)
    for _ in range(300):
        value = _random_value(rng, rng.randint(0, 8))
        assert nesting_depth(json.dumps(value).encode()) == _reference_depth(value)
    for depth in range(MAX_DEPTH - 2, MAX_DEPTH + 3):  # around the limit, with brackets in strings
        value = "[x" * 100
        for i in range(depth):
            value = [value, "]]]}"] if i % 2 else {"[": value, "]": "}}}"}
        raw = json.dumps(value).encode()
        assert nesting_depth(raw) == depth
        if depth > MAX_DEPTH:
            with pytest.raises(HTTPException, match="nested deeper"):
                parse_json(raw)
        else:
            assert parse_json(raw) == value


@pytest.mark.parametrize("raw,message", [
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested deeper"),
    (b"[" * 100_000, "nested deeper"),
    (b"9" * 4301, "4300 digits"),
    (b"1e999", "out of range"),
    (b"[NaN]", "NaN is not a JSON value"),
    (b'{"a": -Infinity}', "Infinity is not a JSON value"),
    (b'"\\ud800"', "lone surrogate"),
    (b'{"\\udfff": 1}', "lone surrogate"),
    (b"\xc3\x28", "not UTF-8"),
    (b"{", "not valid JSON"),
    (b'"' + b'\\"' * 200_000, "not valid JSON"),  # parsed before the depth regex, which it would stall
])
def test_each_bad_text_is_a_400_naming_the_problem(raw, message):
    with pytest.raises(HTTPException) as e:
        parse_json(raw, what="extra_params")
    assert e.value.status_code == 400 and e.value.detail.startswith("extra_params: ") and message in e.value.detail


def test_good_texts_parse_as_json_does():
    for raw in [b"[" * MAX_DEPTH + b"]" * MAX_DEPTH, b'"\\ud83d\\ude00"', b'"\\\\ud800"', b"1.5e308", b"-0", b"{}"]:
        assert parse_json(raw) == json.loads(raw)


def _request(messages: list[dict], headers=()) -> Request:
    queue = list(messages)

    async def receive():
        return queue.pop(0)
    return Request({"type": "http", "method": "POST", "headers": list(headers)}, receive)


def test_the_streaming_cap_and_a_client_that_leaves():
    parts = [{"type": "http.request", "body": b"x" * 40, "more_body": True} for _ in range(5)]
    with pytest.raises(HTTPException) as e:
        asyncio.run(read_capped(_request(parts), limit=100))
    assert e.value.status_code == 413
    assert asyncio.run(read_capped(_request(parts[:2] + [{"type": "http.request", "body": b""}]), 100)) == b"x" * 80
    with pytest.raises(HTTPException) as e:
        asyncio.run(read_capped(_request(parts[:1] + [{"type": "http.disconnect"}]), limit=100))
    assert e.value.status_code == 400 and "disconnected" in e.value.detail
    with pytest.raises(HTTPException) as e:
        asyncio.run(read_capped(_request([], headers=[(b"content-length", b"12x")]), limit=100))
    assert e.value.status_code == 400

"""Reading a request's JSON body so that no body, however malformed, ends in a 5xx.

Too large: 413, decided from Content-Length before reading and enforced while streaming. Not sent as
JSON: 415 (a web page cannot post application/json cross-site without a CORS preflight, which this
server never grants). Not UTF-8, not JSON, NaN/Infinity, numbers that do not fit, nesting deeper than
``MAX_DEPTH`` or strings that cannot be encoded as UTF-8 (lone surrogates such as ``"\\ud800"``): 400.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

MAX_DEPTH = 64
"""Deepest nesting of objects and arrays accepted; Label Studio's payloads nest a handful of levels."""
_INLINE_BYTES = 256 * 1024
"""Bodies up to this size are parsed on the event loop; larger ones in a worker thread."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")


def _bad(message: str, what: str = "request body") -> HTTPException:
    return HTTPException(400, f"{what}: {message}")


def check_content_type(value: str | None) -> None:
    media = (value or "").split(";")[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise HTTPException(415, f"request body must be sent as JSON (Content-Type: application/json), "
                                 f"not {value or 'without a Content-Type'}")


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, refusing (413) one over ``limit`` bytes by its Content-Length or once that many arrived."""
    too_large = HTTPException(413, f"request body over the limit of {limit} bytes (MAX_BODY_BYTES)")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise HTTPException(400, f"invalid Content-Length {declared[:40]!r}")
        if int(declared) > limit:
            raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:  # nobody reads the answer, but it is a 4xx, not a traceback in the log
        raise HTTPException(400, "request body: the client disconnected before sending all of it") from None
    return b"".join(chunks)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _bracket_depth(text: bytes) -> int:
    """The deepest running count of ``[{`` minus ``]}``, brackets inside strings included. O(len), in C."""
    brackets = text.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    # '[' 0x5b and '{' 0x7b have bit 1 set; ']' 0x5d and '}' 0x7d do not: +1 opens, -1 closes.
    steps = (np.frombuffer(brackets, dtype=np.int8) & 2) - 1
    return int(np.cumsum(steps, dtype=np.int32).max())


def nesting_depth(raw: bytes) -> int:
    """How deep the objects and arrays of a valid JSON text nest: its strings are cut out, then the
    brackets counted. O(len(raw)) for valid JSON only (an unterminated string makes the regex quadratic),
    so ``json.loads`` (C, linear) checks the text first."""
    return _bracket_depth(_STRING.sub(b"", raw))


def parse_json(raw: bytes, what: str = "request body") -> Any:
    """Decode and check a JSON text (``what``, for messages); raises HTTPException(400) naming the problem.

    O(len(raw)).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad(f"not UTF-8 ({e.reason} at byte {e.start})", what) from None
    try:
        value = json.loads(text, parse_float=_finite, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise _bad(f"not valid JSON: {e}", what) from None
    except RecursionError:  # the C decoder stops near the interpreter's recursion limit (~1000 levels)
        raise _bad(f"nested deeper than {MAX_DEPTH} levels", what) from None
    except ValueError as e:  # an integer of more than sys.get_int_max_str_digits() digits, 1e999, NaN
        raise _bad(str(e), what) from None
    if nesting_depth(raw) > MAX_DEPTH:
        raise _bad(f"nested deeper than {MAX_DEPTH} levels", what)
    # Decoded UTF-8 holds no surrogates: only \uD800-\uDFFF escapes can put them in, paired or not.
    if _SURROGATE_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as e:
            near = e.object[max(0, e.start - 20):e.end + 20]
            raise _bad(f"a string cannot be encoded as UTF-8 (a lone surrogate) near {near!r}", what) from None
    return value


async def read_json(request: Request, limit: int) -> Any:
    """The checked JSON value of a request's body (see the module docstring for the 4xx answers)."""
    check_content_type(request.headers.get("content-type"))
    raw = await read_capped(request, limit)
    if len(raw) > _INLINE_BYTES:  # a big body must not hold up the event loop (and /health) while parsed
        return await run_in_threadpool(parse_json, raw)
    return parse_json(raw)

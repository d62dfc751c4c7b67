"""Fuzz: generated bodies (route-shaped, arbitrary JSON, raw bytes, hostile JSON texts) under various
content types, posted to every route; no answer may be a 5xx.

Real Redis and the tiny model: project 7 is set up first, so the generated requests reach the deep
paths too (counting changes, scoring a task on the spot with ``PREDICT_MAX_TASKS=1``).
"""
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings, strategies as st

from backend.server import HANDLED_EVENTS, app
from backend.settings import get_settings
from tests.backend.fakes import LABEL_CONFIG, TEST_PARAMS, backend_env  # noqa: F401

FUZZ = settings(max_examples=200, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SURROGATES = st.sampled_from(["\ud800", "a\udfff", "\udbff", "x\ud83d", "\udc00y"])
TEXT = st.one_of(st.text(max_size=20), SURROGATES,
                 st.sampled_from([LABEL_CONFIG, "<View", "7.1764212345", "-7.1", "0", "1e400", ""]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(-2 ** 70, 2 ** 70),
                    st.floats(allow_nan=False, allow_infinity=False), TEXT)
JSONISH = st.recursive(SCALARS, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                      st.dictionaries(TEXT, kids, max_size=4)), max_leaves=12)
IDS = st.one_of(st.sampled_from([7, "7.1764212345", 0, -1, -2 ** 63, 2 ** 63 - 1, 2 ** 63, 10 ** 50]),
                st.from_regex(r"-?[0-9]{1,22}(\.[0-9]{0,12})?", fullmatch=True), st.integers(), JSONISH)
PARAMS = st.dictionaries(st.sampled_from(list(TEST_PARAMS) + ["strategy", "metric", "rounds", "seed", "prompt_field",
                                                              "learning_rate", "bugdet"]), SCALARS, max_size=5)

SETUP = st.fixed_dictionaries({"project": IDS}, optional={
    "schema": st.one_of(st.just(LABEL_CONFIG), TEXT, JSONISH),
    "extra_params": st.one_of(st.just(TEST_PARAMS), st.just(json.dumps(TEST_PARAMS)), PARAMS,
                              PARAMS.map(json.dumps), JSONISH)})
TASKS = st.lists(st.fixed_dictionaries({"id": st.one_of(st.integers(), JSONISH)}, optional={
    "data": st.one_of(st.fixed_dictionaries({"prompt": st.one_of(TEXT, JSONISH)}), JSONISH)}), max_size=3)
PREDICT = st.fixed_dictionaries({"project": IDS, "tasks": st.one_of(TASKS, JSONISH)}, optional={
    "label_config": st.one_of(st.just(LABEL_CONFIG), TEXT, JSONISH), "params": JSONISH})
ANNOTATION = st.fixed_dictionaries({"id": st.one_of(st.integers(0, 5), JSONISH)},
                                   optional={"updated_at": st.one_of(TEXT, JSONISH)})
ACTIONS = st.one_of(st.sampled_from(sorted(HANDLED_EVENTS)), TEXT, JSONISH)
WEBHOOK = st.fixed_dictionaries({"action": ACTIONS}, optional={
    "project": st.one_of(IDS, st.fixed_dictionaries({"id": IDS})),
    "annotation": st.one_of(ANNOTATION, JSONISH), "annotations": st.one_of(st.lists(ANNOTATION, max_size=3), JSONISH),
    "tasks": JSONISH})

HOSTILE = st.one_of(
    st.binary(max_size=200),
    st.integers(0, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(0, 200).map(lambda n: '{"project": 7, "a": ' + '{"b": ' * n + "1" + "}" * n + "}"),
    st.integers(4290, 4400).map(lambda n: '{"project": 7, "action": "START_TRAINING", "n": 1' + "0" * n + "}"),
    st.sampled_from(['{"project": 7, "x": 1e999}', '{"project": NaN}', '{"action": Infinity}', "\ufeff{}",
                     '{"action": "\\ud800"}', '{"project": "7.1", "schema": "\\udfff"}', "null", "[]", "7",
                     '"string"', "{", '{"a": 1}}', '{"project": 7, "project": -1}']))


def _encoded(value) -> bytes:
    return value if isinstance(value, bytes) else (value if isinstance(value, str) else json.dumps(value)).encode(
        "utf-8", "surrogatepass")


def bodies(shaped):
    return st.one_of(shaped.map(json.dumps), JSONISH.map(json.dumps), HOSTILE).map(_encoded)


CONTENT_TYPES = st.sampled_from(["application/json", "application/json", "application/json; charset=utf-8",
                                 "text/plain", None, "application/x-www-form-urlencoded",
                                 "multipart/form-data; boundary=x", "application/problem+json"])
QUERIES = st.dictionaries(st.text(min_size=1, max_size=10), st.text(max_size=20), max_size=3)


@pytest.fixture
def client(backend_env, monkeypatch):
    monkeypatch.setenv("PREDICT_MAX_TASKS", "1")
    get_settings.cache_clear()
    c = TestClient(app)
    body = {"project": "7.1764212345", "schema": LABEL_CONFIG, "extra_params": {**TEST_PARAMS, "train_every": 2}}
    assert c.post("/setup", json=body).status_code == 200
    return c


@pytest.mark.parametrize("path,shaped", [("/setup", SETUP), ("/predict", PREDICT), ("/webhook", WEBHOOK)])
def test_no_body_gets_a_5xx(client, path, shaped):
    @FUZZ
    @given(body=bodies(shaped), content_type=CONTENT_TYPES, query=QUERIES)
    def check(body, content_type, query):
        headers = {"content-type": content_type} if content_type else {}
        r = client.post(path, content=body, headers=headers, params=query)
        assert r.status_code < 500, (r.status_code, r.text[:500])
        assert r.json()  # every answer, errors included, is JSON with a message

    check()


@pytest.mark.parametrize("path", ["/health", "/", "/metrics"])
def test_no_get_gets_a_5xx(client, path):
    @FUZZ
    @given(body=st.one_of(st.none(), st.binary(max_size=100)), content_type=CONTENT_TYPES, query=QUERIES)
    def check(body, content_type, query):
        headers = {"content-type": content_type} if content_type else {}
        r = client.request("GET", path, content=body, headers=headers, params=query)
        assert r.status_code == 200, (r.status_code, r.text[:500])

    check()

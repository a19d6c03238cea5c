"""Malformed bodies on every JSON route: lone surrogates, integer literals past Python's digit
limit, broken JSON; and an unexpected error inside the app. Every answer is a 4xx (5xx for the
unexpected error) in the route's API error shape, never plain text."""

from __future__ import annotations

import json

import pytest

from minerva.errors import RequestError
from minerva.server.config import ServerConfig
from minerva.server.json_body import lone_surrogate_path
from minerva.tokenizer import Tokenizer
from tests.e2e.tiny_server_model import build_server_model
from tests.reliability.input_app import (
    EMBEDDING_ROUTES,
    GENERATION_ROUTES,
    api_shaped,
    figure,
    serve,
    tiny_backend,
)
from tests.unit.test_server_fake_backend import FakeBackend

JSON = {"content-type": "application/json"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny"))


def _with_text(body: dict, text: str) -> dict:
    """``body`` with its prompt / message / input replaced by ``text``."""
    out = json.loads(json.dumps(body))
    if "messages" in out:
        out["messages"][0]["content"] = text
    elif "prompt" in out:
        out["prompt"] = text
    else:
        out["input"] = text
    return out


def _surrogate_raw(body: dict) -> bytes:
    # json.dumps writes a lone surrogate as the \ud800 escape, as a hostile client would send it
    return json.dumps(_with_text(body, "hello \ud800 world")).encode()


def test_malformed_bodies_get_400_in_the_apis_shape(model_dir):
    routes = {**GENERATION_ROUTES, **EMBEDDING_ROUTES}
    cases = {}
    for path, body in routes.items():
        cases[f"{path} lone surrogate"] = (path, _surrogate_raw(body))
        huge = json.dumps(body)[:-1] + ', "seed": ' + "9" * 5000 + "}"
        cases[f"{path} 5000-digit integer"] = (path, huge.encode())
        cases[f"{path} broken JSON"] = (path, b'{"model": ')
        cases[f"{path} invalid UTF-8"] = (path, b'{"model": "\xff"}')
        cases[f"{path} nested 100k deep"] = (path, b"[" * 100_000 + b"]" * 100_000)

    async def run(client):
        answers = {name: await client.post(p, content=raw, headers=JSON) for name, (p, raw) in
                   cases.items()}  # fmt: skip
        # a valid surrogate pair (an emoji) is text and must be served
        fine = {p: await client.post(p, json=_with_text(b, "hi \U0001f600")) for p, b in
                routes.items()}  # fmt: skip
        return answers, fine

    answers, fine = serve(tiny_backend(model_dir), run)
    bad = {n: (r.status_code, r.text[:120]) for n, r in answers.items()
           if r.status_code != 400 or not api_shaped(cases[n][0], r)}  # fmt: skip
    figure("malformed bodies", f"{len(answers) - len(bad)} of {len(answers)} answered 400 in "
           "the API's error shape (lone surrogates, 5000-digit integers, broken JSON, bad UTF-8, "
           "deep nesting)")  # fmt: skip
    assert not bad
    assert {p: r.status_code for p, r in fine.items()} == dict.fromkeys(routes, 200)
    surrogate = answers["/v1/chat/completions lone surrogate"].json()["error"]
    assert surrogate["param"] == "messages.0.content" and "surrogate" in surrogate["message"]


def test_the_tokenizer_refuses_a_lone_surrogate_as_a_request_error(model_dir):
    tokenizer = Tokenizer.from_folder(model_dir)
    assert len(tokenizer.encode("hi \U0001f600")) >= 2  # a surrogate pair is text
    with pytest.raises(RequestError, match="surrogate"):
        tokenizer.encode("hi \udfff")


def test_lone_surrogate_path_names_the_field():
    assert lone_surrogate_path({"a": [{"b": "ok"}, {"c": "x\udc00"}]}) == "a.1.c"
    assert lone_surrogate_path({"a": ["\U0001f600", 1, None, {"k": 2.5}]}) is None
    assert lone_surrogate_path({"\ud800": 1}) == "a key"


class _BrokenBackend(FakeBackend):
    """A backend with a bug: adding a request raises something no handler expects."""

    async def add_request(self, *args, **kwargs):
        raise RuntimeError("a bug")


def test_an_unexpected_error_is_a_json_500_not_plain_text():
    async def run(client):
        return {p: await client.post(p, json={**b, "model": "fake"}) for p, b in
                GENERATION_ROUTES.items()}  # fmt: skip

    answers = serve(_BrokenBackend(), run, ServerConfig(served_model_name="fake"))
    plain = [p for p, r in answers.items() if r.status_code != 500 or not api_shaped(p, r)]
    figure("unexpected errors", f"{len(answers) - len(plain)} of {len(answers)} answered a JSON "
           "500 in the API's shape (a backend raising RuntimeError)")  # fmt: skip
    assert not plain, {p: answers[p].text for p in plain}

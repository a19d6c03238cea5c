"""Stop strings as an attack: lists and lengths are capped on both APIs (and in Python), a single
/v1 stop string of any length up to the cap is one string (not "at most 16 items"), and the
per-token cost of matching grows with the new text, not with the stop list (the hold-back scan
was quadratic in the stop length; its automaton is compared with that slow twin here)."""

from __future__ import annotations

import random
import time

import pytest

from minerva.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS, SamplingParams
from minerva.server.config import ServerConfig
from minerva.tokenizer.stop_prefix import StopPrefixTracker, longest_stop_prefix
from tests.reliability.input_app import api_shaped, figure, serve
from tests.unit.test_server_fake_backend import FakeBackend

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
GENERATE = {"model": "fake", "prompt": "hi", "stream": False}


def _v1(stop) -> tuple[str, dict]:
    return "/v1/chat/completions", {**CHAT, "stop": stop}


def _ollama(stop) -> tuple[str, dict]:
    return "/api/generate", {**GENERATE, "options": {"stop": stop}}


ACCEPTED = {
    "/v1 one 40-char string": _v1("x" * 40),
    "/v1 one string at the length cap": _v1("x" * MAX_STOP_CHARS),
    "/v1 list at the count cap": _v1([f"s{i}" for i in range(MAX_STOP_STRINGS)]),
    "ollama list at the count cap": _ollama([f"s{i}" for i in range(MAX_STOP_STRINGS)]),
    "ollama one string": _ollama("x" * 40),
}
REFUSED = {
    "/v1 one string over the length cap": _v1("x" * (MAX_STOP_CHARS + 1)),
    "/v1 list over the count cap": _v1([f"s{i}" for i in range(MAX_STOP_STRINGS + 1)]),
    "ollama 100k stop strings": _ollama([f"s{i}" for i in range(100_000)]),
    "ollama list over the count cap": _ollama([f"s{i}" for i in range(MAX_STOP_STRINGS + 1)]),
    "ollama string over the length cap": _ollama(["y" * (MAX_STOP_CHARS + 1)]),
}


def test_stop_lists_are_capped_on_both_apis():
    async def run(client):
        cases = {**ACCEPTED, **REFUSED}
        return {name: await client.post(path, json=body) for name, (path, body) in cases.items()}

    answers = serve(FakeBackend(), run, ServerConfig(served_model_name="fake"))
    refused = [n for n in REFUSED if answers[n].status_code == 400
               and api_shaped(REFUSED[n][0], answers[n])]  # fmt: skip
    figure("stop-list caps", f"{len(refused)} of {len(REFUSED)} oversized stop lists refused "
           f"(400, API shape), {sum(answers[n].status_code == 200 for n in ACCEPTED)} of "
           f"{len(ACCEPTED)} at the caps served ({MAX_STOP_STRINGS} strings x "
           f"{MAX_STOP_CHARS} chars)")  # fmt: skip
    assert {n: answers[n].status_code for n in ACCEPTED} == dict.fromkeys(ACCEPTED, 200)
    assert refused == list(REFUSED), {n: answers[n].text[:200] for n in REFUSED}
    assert "at most 16 strings" in answers["ollama 100k stop strings"].json()["error"]


def test_python_api_caps_too():
    with pytest.raises(ValueError, match="at most"):
        SamplingParams(stop=["a"] * (MAX_STOP_STRINGS + 1))
    with pytest.raises(ValueError, match="characters"):
        SamplingParams(stop="z" * (MAX_STOP_CHARS + 1))
    assert SamplingParams(stop="z" * MAX_STOP_CHARS).stop == ["z" * MAX_STOP_CHARS]


@pytest.mark.parametrize("seed", range(6))
def test_stop_prefix_tracker_matches_the_slow_twin(seed):
    rng = random.Random(seed)
    alphabet = "ab" if seed % 2 else "abc "
    stops = ["".join(rng.choices(alphabet, k=rng.randint(1, 9))) for _ in range(rng.randint(1, 6))]
    tracker, text = StopPrefixTracker(stops), ""
    for _ in range(300):
        chunk = "".join(rng.choices(alphabet, k=rng.randint(0, 4)))
        text += chunk
        tracker.feed(chunk)
        # the twin counts proper prefixes; a full stop at the end is a match, held as its length
        full = max((len(s) for s in stops if text.endswith(s)), default=0)
        assert tracker.held == max(longest_stop_prefix(text, stops), full), (stops, text[-12:])


def test_hold_back_cost_does_not_grow_with_the_stop_length():
    """The figure: per-token time of the worst stop list (adversarial: every stop shares the
    text's tail) for the automaton and the old scan; printed, not asserted (no timing checks)."""
    stops = [("ab" * MAX_STOP_CHARS)[: MAX_STOP_CHARS - 1] + str(i % 10)
             for i in range(MAX_STOP_STRINGS)]  # fmt: skip
    tokens = ["ab"] * 400
    tracker, text = StopPrefixTracker(stops), ""
    start = time.perf_counter()
    for t in tokens:
        text += t
        tracker.feed(t)
        _ = tracker.held
    fast = (time.perf_counter() - start) / len(tokens)
    text, start = "", time.perf_counter()
    for t in tokens:
        text += t
        longest_stop_prefix(text, stops)
    slow = (time.perf_counter() - start) / len(tokens)
    figure("stop matching cost", f"worst-case stop list ({MAX_STOP_STRINGS} x {MAX_STOP_CHARS} "
           f"chars) holds back in {fast * 1e6:.1f} us per token (the quadratic scan it replaced: "
           f"{slow * 1e6:.0f} us)")  # fmt: skip
    assert tracker.held == longest_stop_prefix(text, stops)

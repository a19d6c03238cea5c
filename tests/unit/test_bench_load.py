"""Load shapes (Poisson / gamma arrivals, levels), target specs and the stream protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest

from minerva.bench.http_client import parse_target
from minerva.bench.load import LoadLevel, arrival_offsets, parse_levels
from minerva.bench.protocols import GenParams, build_payload, parse_line
from minerva.bench.workloads import BenchRequest
from minerva.errors import ConfigError


@pytest.mark.parametrize("rate", [0.5, 4.0, 50.0])
def test_poisson_arrivals_have_the_requested_rate_and_exponential_gaps(rate):
    n = 20_000
    offsets = np.asarray(arrival_offsets(n, rate, burstiness=1.0, seed=7))
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and np.all(gaps >= 0)
    # Mean gap 1/rate: the standard error of the mean over 20k exponential gaps is 0.7%.
    assert (n - 1) / offsets[-1] == pytest.approx(rate, rel=0.03)
    # Exponential gaps: coefficient of variation 1, and P(gap > mean) = 1/e.
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    assert np.mean(gaps > 1 / rate) == pytest.approx(math.exp(-1), abs=0.015)
    # Poisson counts: per window of length 1/rate the count has variance == mean == 1.
    counts = np.bincount((offsets * rate).astype(int))[:-1]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("burstiness", [0.25, 4.0])
def test_burstiness_keeps_the_rate_and_sets_the_spread(burstiness):
    offsets = np.asarray(arrival_offsets(20_000, 10.0, burstiness, seed=1))
    gaps = np.diff(offsets)
    assert gaps.mean() == pytest.approx(0.1, rel=0.04)
    # Gamma(shape k) gaps: coefficient of variation 1/sqrt(k).
    assert gaps.std() / gaps.mean() == pytest.approx(1 / math.sqrt(burstiness), rel=0.05)


def test_arrivals_are_seeded_and_inf_sends_at_once():
    assert arrival_offsets(50, 3.0, seed=5) == arrival_offsets(50, 3.0, seed=5)
    assert arrival_offsets(50, 3.0, seed=5) != arrival_offsets(50, 3.0, seed=6)
    assert arrival_offsets(4, math.inf) == [0.0] * 4
    assert len(arrival_offsets(1, 2.0)) == 1
    with pytest.raises(ConfigError, match="burstiness"):
        arrival_offsets(3, 1.0, burstiness=0)


def test_parse_levels():
    assert parse_levels("1,4,16", None) == [LoadLevel(1), LoadLevel(4), LoadLevel(16)]
    levels = parse_levels("1", "2.5,inf", max_concurrency=8)
    assert levels == [LoadLevel(8, 2.5), LoadLevel(8, math.inf)]
    assert [lv.label for lv in levels] == ["rate=2.5,c=8", "c=8"]
    assert LoadLevel(None, 3.0).label == "rate=3"
    assert LoadLevel(4).x == 4.0 and LoadLevel(None, 2.5).x == 2.5
    for bad in [("0", None), ("a", None), ("1", "-1")]:
        with pytest.raises(ConfigError, match="--concurrency takes"):
            parse_levels(*bad)


def test_parse_target():
    t = parse_target("ollama=http://127.0.0.1:11434/,api=ollama-chat,model=llama3,pid=42")
    assert (t.name, t.url, t.api, t.model, t.pid) == (
        "ollama",
        "http://127.0.0.1:11434",
        "ollama-chat",
        "llama3",
        42,
    )
    assert t.is_local and t.headers == {}
    remote = parse_target("vllm=https://gpu-box:8000,key=sk-1", api_key="ignored")
    assert remote.api == "openai" and not remote.is_local
    assert remote.headers == {"Authorization": "Bearer sk-1"}
    for bad, msg in [
        ("http://x", "use NAME=URL"),
        ("a=ftp://x", "use NAME=URL"),
        ("a=http://x,api=grpc", "api must be one of"),
        ("a=http://x,pid=me", "pid must be a process id"),
        ("a=http://x,colour=red", "unknown option"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            parse_target(bad)


def test_payloads_carry_only_standard_fields_unless_asked():
    req = BenchRequest("hi there", 7)
    body = build_payload("openai", "m", req, GenParams(temperature=0.0))
    assert body == {
        "model": "m",
        "prompt": "hi there",
        "max_tokens": 7,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chat = build_payload("openai-chat", "m", req, GenParams(ignore_eos=True, seed=3))
    assert chat["messages"] == [{"role": "user", "content": "hi there"}]
    assert chat["ignore_eos"] is True and chat["seed"] == 3 and "prompt" not in chat
    ollama = build_payload("ollama", "m", req, GenParams(ignore_eos=True, seed=3))
    assert ollama == {
        "model": "m",
        "stream": True,
        "prompt": "hi there",
        "options": {"num_predict": 7, "temperature": 0.0, "seed": 3},
    }
    assert "messages" in build_payload("ollama-chat", "m", req, GenParams())


def test_parse_stream_lines():
    role = parse_line(
        "openai-chat", 'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}'
    )
    assert role.text == "" and role.output_tokens is None
    assert parse_line("openai", 'data: {"choices":[{"text":"ab"}]}').text == "ab"
    usage = parse_line(
        "openai", 'data:{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9}}'
    )
    assert (usage.prompt_tokens, usage.output_tokens) == (5, 9)
    assert parse_line("openai", "data: [DONE]").done
    assert parse_line("openai", ": keep-alive") is None and parse_line("openai", "") is None
    err = parse_line("openai", 'data: {"error":{"message":"boom","type":"x"}}')
    assert err.error == "boom"
    final = parse_line("ollama", '{"response":"","done":true,"eval_count":4,"prompt_eval_count":6}')
    assert final.done and (final.prompt_tokens, final.output_tokens) == (6, 4)
    assert parse_line("ollama-chat", '{"message":{"content":"x"},"done":false}').text == "x"
    assert parse_line("ollama", '{"error":"model not found"}').error == "model not found"

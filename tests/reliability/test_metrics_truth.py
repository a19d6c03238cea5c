"""Metrics truth (issue #15, the suite's metrics row): after a known mix of requests on both
APIs, every counter of /metrics moved by exactly what the clients were told (usage, eval counts,
finish reasons, statuses), and the gauges are back at rest. The engine thread counts a step
after handing its outputs to the responses, so the test waits for the counters to settle. A dashboard built on these numbers
shows what happened, not an estimate."""

from __future__ import annotations

import asyncio
import json
import time

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.tiny_server_model import MODEL_NAME
from tests.reliability.input_app import figure, serve, tiny_backend

COMPLETIONS = [([10 + i for i in range(n)], m) for n, m in ((5, 4), (7, 6), (9, 8))]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def _total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and want <= set(lab))


def _sse(text: str) -> list[dict]:
    return [json.loads(ln[6:]) for ln in text.splitlines()
            if ln.startswith("data: ") and ln != "data: [DONE]"]  # fmt: skip


def test_counters_move_by_exactly_what_the_clients_saw(tiny_model):
    async def run(client):
        before = (await client.get("/metrics")).text
        answers = []
        for prompt, max_tokens in COMPLETIONS:
            body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                    "ignore_eos": True}  # fmt: skip
            answers.append(await client.post("/v1/completions", json=body))
        chat = await client.post("/v1/chat/completions", json={
            "model": MODEL_NAME, "messages": [{"role": "user", "content": "hi there"}],
            "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})  # fmt: skip
        ollama = await client.post("/api/generate", json={
            "model": MODEL_NAME, "prompt": "tell me", "stream": False,
            "options": {"num_predict": 3}})  # fmt: skip
        bad = [
            await client.post(
                "/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": -1}
            )
            for _ in range(2)
        ]
        # The engine thread counts a step's tokens just after handing its outputs to the
        # responses: wait for the counters to settle (a hang guard, not a speed check).
        after, deadline = "", time.monotonic() + 60
        while time.monotonic() < deadline:
            after = (await client.get("/metrics")).text
            if (
                _total(_samples(after), "minerva_requests_finished_total")
                - _total(_samples(before), "minerva_requests_finished_total")
                >= 5
            ):  # a request's last tokens are counted with its finish
                break
            await asyncio.sleep(0.02)
        return before, answers, chat, ollama, bad, after

    before, answers, chat, ollama, bad, after = serve(tiny_backend(tiny_model), run)
    assert [r.status_code for r in (*answers, chat, ollama)] == [200] * 5
    assert [r.status_code for r in bad] == [400, 400]
    usages = [r.json()["usage"] for r in answers] + [_sse(chat.text)[-1]["usage"]]
    o = ollama.json()
    prompt_tokens = sum(u["prompt_tokens"] for u in usages) + o["prompt_eval_count"]
    generated = sum(u["completion_tokens"] for u in usages) + o["eval_count"]
    reasons = [r.json()["choices"][0]["finish_reason"] for r in answers]
    reasons += [c["finish_reason"] for e in _sse(chat.text) for c in e["choices"]
                if c.get("finish_reason")]  # fmt: skip
    reasons.append(o["done_reason"])
    a, b = _samples(after), _samples(before)

    def delta(name: str, **labels: str) -> float:
        return _total(a, name, **labels) - _total(b, name, **labels)

    assert delta("minerva_prompt_tokens_total") == prompt_tokens
    assert delta("minerva_generation_tokens_total") == generated
    for reason in set(reasons):
        assert delta("minerva_requests_finished_total", finish_reason=reason) == reasons.count(
            reason
        ), reason
    assert delta("minerva_requests_finished_total") == 5
    assert delta("minerva_time_to_first_token_seconds_count") == 5
    assert delta("minerva_e2e_request_latency_seconds_count") == 5
    ok = {"method": "POST", "status": "200"}
    assert delta("minerva_http_requests_total", route="/v1/completions", **ok) == 3
    assert delta("minerva_http_requests_total", route="/v1/chat/completions", **ok) == 1
    assert delta("minerva_http_requests_total", route="/api/generate", **ok) == 1
    assert delta("minerva_http_requests_total", route="/v1/completions", status="400") == 2
    for gauge in ("minerva_requests_running", "minerva_requests_waiting",
                  "minerva_kv_cache_usage_ratio"):  # fmt: skip
        assert _total(a, gauge) == 0, gauge
    figure("metrics truth", f"5 requests on both APIs and 2 refused: prompt tokens +"
           f"{prompt_tokens:.0f}, generated +{generated:.0f}, finish reasons, TTFT and e2e "
           "counts, HTTP statuses all equal to what the clients were told; gauges back at 0")  # fmt: skip

"""Greedy runs on the GPU against their twin, where bf16 (or fp8) rounding may decide a near tie."""

from __future__ import annotations


def assert_agree_until_near_tie(runs, twins, near_tie: float) -> None:
    """runs, twins: per prompt (token ids, logprobs with top_logprobs). Each run's tokens equal
    its twin's up to a point where the twin's two most likely tokens are within `near_tie`;
    logprobs agree to `near_tie` before it."""
    for (tokens, lps), (ref_tokens, ref_lps) in zip(runs, twins, strict=True):
        div = next((i for i, (a, b) in enumerate(zip(tokens, ref_tokens)) if a != b), None)
        for i in range(len(tokens) if div is None else div):
            gap = abs(lps[i].logprob - ref_lps[i].logprob)
            assert gap < near_tie, f"token {i}: logprobs {lps[i].logprob} and {ref_lps[i].logprob}"
        if div is not None:
            first, second = ref_lps[div].top_logprobs[:2]
            assert first - second < near_tie, f"parted at token {div} without a near tie"


PROMPTS = [[1, 3088, 295, 263, 628, 327], [1, 450, 3996, 1354, 1701, 2916]]


def demo_greedy_runs(quantization: str, **kw):
    """(per prompt (token ids, logprobs), the LLM) of 16 greedy tokens of the demo model
    quantized in situ to `quantization`, with LLM keywords `kw` (device, dtype)."""
    from minerva import LLM, SamplingParams  # noqa: PLC0415
    from minerva.demo import demo_model_path  # noqa: PLC0415

    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, logprobs=2)
    llm = LLM(model=str(demo_model_path()), max_model_len=256, quantization=quantization, **kw)
    outs = [o.outputs[0] for o in llm.generate(PROMPTS, params)]
    return [(o.token_ids, o.logprobs) for o in outs], llm

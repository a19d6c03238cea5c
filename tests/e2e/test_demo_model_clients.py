"""The official ``openai`` and ``ollama`` clients against one server over the bundled demo model:
both APIs sample alike (the model's generation defaults fill what a request leaves unset), and
embeddings match transformers' mean-pooled hidden states on both APIs."""

from __future__ import annotations

import numpy as np
import ollama
import openai
import pytest

from tests.e2e.conftest import DEMO_NAME

MESSAGES = [{"role": "user", "content": "What is a tensor?"}]
TEXTS = ["A tensor is an array.", "hello", "The scheduler batches requests on a token budget."]


@pytest.fixture(scope="module")
def clients(demo_server):
    oai = openai.OpenAI(base_url=demo_server.url + "/v1", api_key="unused", timeout=120)
    oll = ollama.Client(host=demo_server.url, timeout=120)
    return oai, oll


def _both(clients, max_tokens: int, **options) -> tuple[list[str], list[str]]:
    """The same chat through both APIs; the tokens each one generated."""
    oai, oll = clients
    a = oai.chat.completions.create(
        model=DEMO_NAME, messages=MESSAGES, max_tokens=max_tokens, logprobs=True, **options
    )
    b = oll.chat(
        DEMO_NAME, messages=MESSAGES, options={"num_predict": max_tokens, **options}, logprobs=True
    )
    assert a.choices[0].message.content == b.message.content
    return [t.token for t in a.choices[0].logprobs.content], [t.token for t in b.logprobs]


@pytest.mark.parametrize(
    "options",
    [{"temperature": 0}, {"seed": 5}, {"temperature": 0.9, "seed": 7}],
    ids=["greedy", "seeded-defaults", "seeded-temperature"],
)
def test_both_apis_sample_alike(clients, options):
    """Only what the request sets differs from the model's defaults (top_k 40, top_p 0.95,
    repetition_penalty 1.1, temperature 0.7), on both APIs: the same tokens."""
    openai_tokens, ollama_tokens = _both(clients, 40, **options)
    assert len(openai_tokens) >= 10 and openai_tokens == ollama_tokens


@pytest.fixture(scope="module")
def hf():
    """transformers' model of the demo weights (float32) and the ``tokenizers`` tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    from minerva.demo import demo_model_path

    path = demo_model_path()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok


@pytest.fixture(scope="module")
def reference(hf):
    """The last hidden state (after the final norm), mean-pooled and L2-normalised; and each
    text's token count."""
    import torch

    model, tok = hf
    vectors, counts = [], []
    with torch.no_grad():
        for text in TEXTS:
            ids = tok.encode(text).ids
            hidden = model.model(torch.tensor([ids])).last_hidden_state[0]  # [T, hidden]
            vectors.append(torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy())
            counts.append(len(ids))
    return np.stack(vectors), counts


def test_echo_scores_the_prompt_like_transformers(clients, hf):
    """echo + logprobs: the prompt's token logprobs (the first has none) and top alternatives
    are transformers' log-softmax; the completion after it is the one without echo."""
    import torch

    oai, _ = clients
    model, tok = hf
    prompt = TEXTS[2]
    ids = tok.encode(prompt).ids
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
    kwargs = dict(model=DEMO_NAME, prompt=prompt, temperature=0, logprobs=2)
    scored = oai.completions.create(**kwargs, max_tokens=0, echo=True).choices[0]
    assert scored.text == prompt and scored.finish_reason == "length"
    lp = scored.logprobs
    assert (
        len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    )
    expected = ref.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
    np.testing.assert_allclose(lp.token_logprobs[1:], expected.numpy(), atol=1e-4)
    for top, row in zip(lp.top_logprobs[1:], ref):
        np.testing.assert_allclose(sorted(top.values()), sorted(row.topk(2).values), atol=1e-4)
    plain = oai.completions.create(**kwargs, max_tokens=6).choices[0]
    echoed = oai.completions.create(**kwargs, max_tokens=6, echo=True).choices[0]
    assert echoed.text == prompt + plain.text
    assert echoed.logprobs.tokens == lp.tokens + plain.logprobs.tokens
    assert echoed.logprobs.token_logprobs[len(ids) :] == pytest.approx(
        plain.logprobs.token_logprobs
    )
    streamed = oai.completions.create(**kwargs, max_tokens=6, echo=True, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == echoed.text


def test_openai_embeddings_match_transformers(clients, reference, demo_server):
    oai, _ = clients
    ref, counts = reference
    before = demo_server.wait_idle()["minerva_prompt_tokens_total"]
    batched = oai.embeddings.create(model=DEMO_NAME, input=TEXTS)  # the client asks for base64
    after = demo_server.wait_idle()["minerva_prompt_tokens_total"]
    assert after - before == sum(counts)  # the embedded inputs count as prompt tokens
    floats = oai.embeddings.create(model=DEMO_NAME, input=TEXTS, encoding_format="float")
    for r in (batched, floats):
        got = np.array([d.embedding for d in sorted(r.data, key=lambda d: d.index)])
        np.testing.assert_allclose(got, ref, atol=2e-5)
        assert r.usage.prompt_tokens == r.usage.total_tokens == sum(counts)
    for text, row in zip(TEXTS, ref):
        (single,) = oai.embeddings.create(model=DEMO_NAME, input=text).data
        np.testing.assert_allclose(single.embedding, row, atol=2e-5)  # batched equals single
    by_ids = oai.embeddings.create(model=DEMO_NAME, input=[[1, 2, 3]], encoding_format="float")
    assert len(by_ids.data[0].embedding) == ref.shape[1]
    assert demo_server.wait_idle()["minerva_kv_cache_usage_ratio"] == 0  # blocks are freed


def test_ollama_embed_and_legacy_embeddings_match_transformers(clients, reference):
    _, oll = clients
    ref, counts = reference
    out = oll.embed(DEMO_NAME, TEXTS)
    np.testing.assert_allclose(np.array(out.embeddings), ref, atol=2e-5)
    assert out.prompt_eval_count == sum(counts)
    (one,) = oll.embed(DEMO_NAME, TEXTS[1]).embeddings
    np.testing.assert_allclose(one, ref[1], atol=2e-5)
    legacy = oll.embeddings(DEMO_NAME, TEXTS[0]).embedding
    np.testing.assert_allclose(legacy, ref[0], atol=2e-5)
    assert oll.embed(DEMO_NAME, "").embeddings == []  # as in Ollama: only loads the model


def test_embedding_errors_name_the_field(clients):
    oai, oll = clients
    with pytest.raises(openai.BadRequestError, match="dimensions=8 is not supported") as e:
        oai.embeddings.create(model=DEMO_NAME, input="x", dimensions=8)
    assert e.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError, match="outside the vocabulary"):
        oai.embeddings.create(model=DEMO_NAME, input=[[10**7]])
    with pytest.raises(openai.NotFoundError):
        oai.embeddings.create(model="other", input="x")
    long_text = "word " * 2000  # over the demo model's 512-token context
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        oai.embeddings.create(model=DEMO_NAME, input=long_text)
    with pytest.raises(ollama.ResponseError, match="truncate=true") as e:
        oll.embed(DEMO_NAME, long_text, truncate=False)
    assert e.value.status_code == 400
    assert len(oll.embed(DEMO_NAME, long_text).embeddings[0]) > 0  # Ollama's default: truncate

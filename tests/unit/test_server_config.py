"""ServerConfig (defaults, env < flags, bind warning), the API-key check, and the OpenAI /
Ollama request models' translation to SamplingParams. No server, no torch."""

from __future__ import annotations

import pytest

from minerva.errors import ConfigError, RequestError
from minerva.server.config import ServerConfig, load_server_config
from minerva.server.ollama_protocol import GenerateRequest
from minerva.server.openai_protocol import ChatCompletionRequest, CompletionRequest
from minerva.server.security import api_key_matches, presented_key
from minerva.server.serve import served_model_name

DEFAULTS = {"temperature": 0.6, "top_p": 0.9, "top_k": 0, "repetition_penalty": 1.0}
MSGS = [{"role": "user", "content": "hi"}]


def test_safe_defaults():
    cfg = load_server_config(env={})
    assert cfg.host == "127.0.0.1" and cfg.api_key is None and cfg.cors_origins == []
    assert cfg.max_body_bytes == 8 * 1024 * 1024 and cfg.bind_warning() is None


def test_env_then_flags():
    env = {
        "MINERVA_PORT": "9000", "MINERVA_API_KEY": "k", "MINERVA_CORS_ORIGINS": "http://a, http://b",
        "MINERVA_MAX_BODY_BYTES": "1MiB", "MINERVA_SHUTDOWN_TIMEOUT": "2.5",
    }  # fmt: skip
    cfg = load_server_config({"port": 9100, "host": None}, env=env)
    assert (cfg.port, cfg.api_key, cfg.shutdown_timeout) == (9100, "k", 2.5)
    assert cfg.cors_origins == ["http://a", "http://b"] and cfg.max_body_bytes == 1024 * 1024
    with pytest.raises(ConfigError, match="MINERVA_PORT"):
        load_server_config(env={"MINERVA_PORT": "eighty"})
    with pytest.raises(ConfigError, match="port"):
        ServerConfig(port=70000)


@pytest.mark.parametrize(
    ("host", "key", "warns"),
    [("0.0.0.0", None, True), ("192.168.1.5", None, True), ("::", None, True),
     ("example.org", None, True), ("0.0.0.0", "k", False), ("127.0.0.1", None, False),
     ("::1", None, False), ("localhost", None, False), ("127.0.0.2", None, False)],
)  # fmt: skip
def test_bind_warning(host, key, warns):
    warning = ServerConfig(host=host, api_key=key).bind_warning()
    assert (warning is not None) == warns
    if warns:
        assert host in warning and "--api-key" in warning


def test_api_key_check():
    assert api_key_matches("secret", "secret")
    assert not api_key_matches("secreT", "secret") and not api_key_matches(None, "secret")
    assert not api_key_matches("", "secret") and not api_key_matches("secret2", "secret")
    scope = {"headers": [(b"authorization", b"Bearer abc")]}
    assert presented_key(scope) == "abc"
    assert presented_key({"headers": [(b"authorization", b"Basic abc")]}) is None
    assert presented_key({"headers": [(b"x-api-key", b"xyz")]}) == "xyz"


def test_served_model_name():
    assert served_model_name("given", "/m/llama") == "given"
    assert served_model_name(None, "/models/Mistral-7B/") == "Mistral-7B"


def test_chat_request_to_sampling_params():
    req = ChatCompletionRequest.model_validate(
        {"model": "m", "messages": MSGS, "max_tokens": 5, "max_completion_tokens": 7,
         "logprobs": True, "top_logprobs": 3, "stop": "x", "logit_bias": {"12": -100}}
    )  # fmt: skip
    p = req.to_sampling_params(DEFAULTS, vocab_size=100)
    assert (p.max_tokens, p.logprobs, p.stop, p.logit_bias) == (7, 3, ["x"], {12: -100.0})
    assert p.temperature == 0.6 and p.top_p == 0.9  # the model's defaults fill the gaps
    p = ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, "temperature": 0})
    p = p.to_sampling_params(DEFAULTS, 100)
    assert p.temperature == 0 and p.max_tokens is None and p.logprobs is None
    with pytest.raises(RequestError, match="outside the vocabulary"):
        ChatCompletionRequest.model_validate(
            {"model": "m", "messages": MSGS, "logit_bias": {"100": 1}}
        ).to_sampling_params(DEFAULTS, 100)


def test_completion_prompts():
    def prompts(p):
        return CompletionRequest.model_validate({"model": "m", "prompt": p}).prompts(100)

    assert prompts("a") == ["a"] and prompts([1, 2]) == [[1, 2]]
    assert prompts(["a", "b"]) == ["a", "b"] and prompts([[1], [2, 3]]) == [[1], [2, 3]]
    with pytest.raises(RequestError):
        prompts([[1], [200]])
    assert CompletionRequest.model_validate({"model": "m", "prompt": "a"}).max_tokens == 16


def test_ollama_options():
    def params(prompt_len, **options):
        req = GenerateRequest.model_validate({"model": "m", "prompt": "x", "options": options})
        return req.to_sampling_params(DEFAULTS, prompt_len, max_model_len=100)

    assert params(10).max_tokens == 90  # num_predict unset: until the context is full
    assert params(10, num_predict=-1).max_tokens == 90
    assert params(10, num_predict=5, num_ctx=12).max_tokens == 2
    p = params(10, num_predict=5, repeat_penalty=1.2, seed=3, stop=["a"])
    assert (p.max_tokens, p.repetition_penalty, p.seed, p.stop) == (5, 1.2, 3, ["a"])
    with pytest.raises(RequestError, match="num_ctx"):
        params(12, num_ctx=12)
    with pytest.raises(RequestError, match="num_predict"):
        params(10, num_predict=0)


def test_ollama_unset_options_keep_the_model_defaults_like_openai():
    defaults = {"temperature": 0.7, "top_p": 0.95, "top_k": 40, "repetition_penalty": 1.1}
    fields = ("temperature", "top_p", "top_k", "repetition_penalty", "seed")
    for options, openai_fields in [({}, {}), ({"temperature": 0}, {"temperature": 0}),
                                   ({"seed": 4, "top_k": 5}, {"seed": 4, "top_k": 5})]:  # fmt: skip
        ollama = GenerateRequest.model_validate({"model": "m", "prompt": "x", "options": options})
        ours = ollama.to_sampling_params(defaults, 3, max_model_len=100)
        body = {"model": "m", "messages": MSGS, **openai_fields}
        ref = ChatCompletionRequest.model_validate(body).to_sampling_params(defaults, 100)
        assert [getattr(ours, f) for f in fields] == [getattr(ref, f) for f in fields], options


def test_the_models_directory_settings_come_from_the_toml_file(tmp_path):
    """[server] models_dir / keep_alive / model_load_timeout (minerva serve --models-dir ...)."""
    path = tmp_path / "minerva.toml"
    path.write_text('[server]\nmodels_dir = "/srv/models"\nkeep_alive = "10m"\n'
                    "model_load_timeout = 45\n")  # fmt: skip
    cfg = load_server_config(env={}, config_file=str(path))
    assert (cfg.models_dir, cfg.keep_alive, cfg.model_load_timeout) == ("/srv/models", "10m", 45)
    path.write_text('[server]\nkeep_alive = "soon"\n')
    with pytest.raises(ConfigError, match="keep_alive"):
        load_server_config(env={}, config_file=str(path))

"""The MLX backend (mlx-lm) on tiny models made here: a Hugging Face folder, and MLX-format
folders written by mlx-lm's own convert (float16, and 4-bit MLX-quantized).

References: Minerva's engine on the same float32 weights (greedy tokens must agree), and for
the quantized folder, mlx-lm's own single-sequence generate_step (the batched engine must
give the tokens mlx-lm gives one request alone)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from minerva.backends.mlx import import_mlx_lm
from minerva.sampling_params import SamplingParams
from tests import backend_checks as checks
from tests.tiny_models import build_tiny_text_model

if importlib.util.find_spec("mlx_lm") is None:
    pytest.skip("mlx-lm is not installed (pip install minerva-llm[mlx])", allow_module_level=True)
mx = pytest.importorskip(
    "mlx.core", reason="MLX has no backend here (on Linux: pip install mlx[cpu])"
)
mlx_lm = import_mlx_lm()  # as the backend imports it: no second OpenMP runtime in this process

N = 16


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """hf: transformers' float32 save; f16: MLX float16; q4: MLX 4-bit, group 32."""
    from mlx_lm import convert

    root = tmp_path_factory.mktemp("mlx")
    hf = build_tiny_text_model(root / "hf")
    convert(str(hf), mlx_path=str(root / "f16"), dtype="float16")
    convert(str(hf), mlx_path=str(root / "q4"), quantize=True, q_bits=4, q_group_size=32)
    return {"hf": hf, "f16": root / "f16", "q4": root / "q4"}


@pytest.fixture(scope="module")
def hf_backend(folders):
    b = checks.blocking("mlx", folders["hf"], dtype="float32")
    yield b
    b.close()


@pytest.fixture(scope="module")
def prompt_ids(hf_backend):
    return hf_backend.backend.encode(checks.PROMPT)


@pytest.mark.parametrize("folder", ["hf", "f16"])
def test_greedy_tokens_agree_with_minervas_engine(folders, folder):
    """Same weights (the f16 folder's float16 values, upcast by both), float32 compute: the
    first 16 greedy tokens are Minerva's."""
    b = checks.blocking("mlx", folders[folder], dtype="float32")
    try:
        ids = b.backend.encode(checks.PROMPT)
        got = checks.greedy(b, ids, N)
        assert b.backend.model_info(digest=False).format == "safetensors"
    finally:
        b.close()
    reference = checks.minerva_greedy(folders[folder], ids, N)
    assert got == reference, f"first divergence at {checks.first_divergence(got, reference)}"


def test_mlx_quantized_folder_matches_mlx_lm_alone_and_batched(folders):
    """The 4-bit folder loads as MLX-quantized; greedy tokens are mlx-lm's generate_step's,
    alone and with two other requests in the batch."""
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load_model

    b = checks.blocking("mlx", folders["q4"])
    try:
        info = b.backend.model_info()
        assert info.quantization == "MLX_4BIT_G32" and info.digest.startswith("sha256:")
        ids = b.backend.encode(checks.PROMPT)
        params = SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True)
        other = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)
        batched = b.generate([ids[:2], ids, ids[:3]], [other, params, other])[1].token_ids
        alone = checks.greedy(b, ids, N)
    finally:
        b.close()
    model, _ = load_model(folders["q4"])
    steps = generate_step(mx.array(ids), model, max_tokens=N)
    reference = [int(token) for token, _ in steps]
    assert alone == reference and batched == reference


def test_generate_stream_abort_stop_and_seeds(hf_backend, prompt_ids):
    checks.check_stream_equals_generate(hf_backend, prompt_ids)
    checks.check_abort(hf_backend, prompt_ids)
    engine = hf_backend.backend.engine  # the aborted sequence left mlx-lm's batch too
    assert not engine._uid and not engine._gen._generation_batch.uids
    checks.check_stop_string(hf_backend, prompt_ids)
    checks.check_seeds(hf_backend, prompt_ids)


def test_penalties_and_logprobs_follow_minervas_definitions(hf_backend, folders, prompt_ids):
    """Greedy with repetition / frequency penalties and a logit bias gives Minerva's tokens;
    logprobs are the log-softmax of the processed logits, ranked."""
    params = SamplingParams(
        temperature=0.0, max_tokens=N, ignore_eos=True, repetition_penalty=1.3,
        frequency_penalty=0.5, presence_penalty=0.3, logit_bias={7: 3.0}, logprobs=3,
    )  # fmt: skip
    (out,) = hf_backend.generate([prompt_ids], [params])
    ref = checks.blocking("minerva", folders["hf"], dtype="float32", num_kv_blocks=64)
    try:
        (expected,) = ref.generate([prompt_ids], [params])
    finally:
        ref.close()
    assert out.token_ids == expected.token_ids
    for lp in out.outputs[0].logprobs:
        assert lp.rank == 1 and lp.top_token_ids[0] == lp.token_id  # greedy: the top token
        assert lp.top_logprobs == sorted(lp.top_logprobs, reverse=True) and lp.logprob < 0


def test_score_is_minervas(hf_backend, folders, prompt_ids):
    """Perplexity scoring (one forward pass): the per-token logprobs of Minerva's engine."""
    ref = checks.blocking("minerva", folders["hf"], dtype="float32", num_kv_blocks=64)
    try:
        expected = ref.score(prompt_ids)
    finally:
        ref.close()
    assert hf_backend.score(prompt_ids) == pytest.approx(expected, abs=1e-4)


def test_both_apis_through_the_official_clients(hf_backend, folders, prompt_ids):
    (out,) = hf_backend.generate([prompt_ids], [SamplingParams(temperature=0.0, max_tokens=8)])
    factory = lambda: checks.load_backend(  # noqa: E731
        "mlx", checks.EngineConfig.from_kwargs(model=str(folders["hf"]), dtype="float32")
    )
    checks.check_both_apis(factory, out.text)


def test_unsupported_request_fields_are_400s(hf_backend, prompt_ids):
    from minerva.errors import RequestError
    from minerva.sampling_params import StructuredOutputs

    structured = SamplingParams(structured=StructuredOutputs(json_object=True))
    for params in (structured, SamplingParams(pooling="mean", max_tokens=1)):
        with pytest.raises(RequestError, match="not supported by the mlx backend"):
            hf_backend.generate([prompt_ids], [params])


def test_a_missing_mlx_core_names_the_extra(monkeypatch, folders):
    """mlx-lm importable but MLX itself without a backend (Linux without mlx[cpu])."""
    from minerva.backends import BackendNotInstalled

    monkeypatch.setitem(sys.modules, "mlx.core", None)
    with pytest.raises(BackendNotInstalled, match=r'pip install "minerva-llm\[mlx\]"'):
        checks.blocking("mlx", folders["hf"])


def test_what_mlx_cannot_do_is_a_config_error(folders, tmp_path):
    from minerva.errors import ConfigError

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError, match="loads model folders"):
        checks.blocking("mlx", gguf)
    with pytest.raises(ConfigError, match="cannot run on the mlx backend"):
        checks.blocking("mlx", folders["hf"], speculative_method="ngram", num_speculative_tokens=2)
    with pytest.raises(ConfigError, match="8-bit KV cache"):
        checks.blocking("mlx", folders["hf"], kv_cache_dtype="fp8")
    if not mx.is_available(mx.gpu):
        with pytest.raises(ConfigError, match="CPU only"):
            checks.blocking("mlx", folders["hf"], device="cuda")


def test_cli_generate_and_doctor(hf_backend, folders, prompt_ids, capsys):
    (out,) = hf_backend.generate([prompt_ids], [SamplingParams(temperature=0.0, max_tokens=8)])
    checks.check_cli_generate("mlx", folders["hf"], out.text, capsys)
    probe = checks.check_doctor("mlx", "seeds are honoured per request")
    assert probe["version"].startswith(mlx_lm.__version__)


def test_cli_chat(hf_backend, folders, capsys, monkeypatch):
    checks.check_cli_chat(
        "mlx", folders["hf"], hf_backend, capsys, monkeypatch, "--dtype", "float32"
    )


def test_mlx_lm_is_imported_without_sentencepieces_openmp_runtime(tmp_path):
    """sentencepiece's wheel bundles its own libgomp, which turns Minerva's C kernels off for
    the process; the backend imports mlx-lm without it (a stand-in package records imports)."""
    import os
    import subprocess

    fake = tmp_path / "site"
    (fake / "sentencepiece").mkdir(parents=True)
    (fake / "sentencepiece" / "__init__.py").write_text(
        "import os\nopen(os.environ['SP_MARKER'], 'a').write('x')\n"
        "class SentencePieceProcessor: ...\n"
    )
    (fake / "sentencepiece-0.2.3.dist-info").mkdir()
    (fake / "sentencepiece-0.2.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: sentencepiece\nVersion: 0.2.3\n"
    )
    root = Path(__file__).resolve().parents[2]

    def run(code: str) -> str:
        marker = tmp_path / "marker"
        marker.unlink(missing_ok=True)
        env = {**os.environ, "SP_MARKER": str(marker),
               "PYTHONPATH": os.pathsep.join([str(fake), str(root / "src")])}  # fmt: skip
        subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
        return marker.read_text() if marker.exists() else ""

    assert run("import mlx_lm") == "x"  # unguarded, mlx-lm imports it
    guarded = (
        "import sys\nfrom minerva.backends.mlx import import_mlx_lm\nimport_mlx_lm()\n"
        "import mlx_lm.generate\nassert 'sentencepiece' not in sys.modules\n"
    )
    assert run(guarded) == ""
    assert run(guarded + "import sentencepiece\n") == "x"  # and it stays importable

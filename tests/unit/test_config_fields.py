"""The field machinery: choices and ranges on the field, read alike by validation, every source
(kwargs, TOML, env, CLI), ``config show`` and ``--help``; the server settings through the same
parser; the one dtype table; a new field or alias is one line."""

from __future__ import annotations

import argparse
import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from minerva import config_sources
from minerva.config import (
    FIELDS,
    SCHEMA,
    EngineConfig,
    add_config_arguments,
    load_config,
)
from minerva.config_cli import add_arguments
from minerva.config_command import add_config_subcommand
from minerva.config_fields import Field, Schema, specs_of
from minerva.dtypes import DTYPE_ALIASES, DTYPES
from minerva.errors import ConfigError
from minerva.server.config import (
    SERVER_SCHEMA,
    ServerConfig,
    add_server_arguments,
    load_server_config,
    server_overrides_from_args,
)

# What each constrained field allows, in the words every message and --help must use.
ALLOWED = {
    "dtype": "one of auto, float32, float16, bfloat16",
    "kv_cache_dtype": "one of auto, float32, float16, bfloat16, float8_e4m3fn, float8_e5m2",
    "load_format": "one of auto, dummy",
    "quantization": "one of q8_0, q8_1, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, "
    "q4_k_m, q5_k_m, iq4_nl, iq4_xs, fp8, int8, int4",
    "attention_backend": "one of auto, triton, torch",
    "async_scheduling": "one of auto, on, off",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "seed": "an integer in [0, 2**64)",
    "block_size": "a power of two from 1 to 256",
    "memory_fraction": "in (0, 1]",
    "kv_cache_memory": "a positive byte size",
    "memory_limit": "a positive byte size",
    "weight_cache_size": "a positive byte size",
    "kv_cache_tokens": "a positive integer",
    "max_model_len": "a positive integer",
    "num_threads": "a positive integer",
    "num_kv_blocks": "a positive integer",
    "max_num_seqs": "a positive integer",
    "max_num_batched_tokens": "a positive integer",
    "speculative_method": "one of draft, ngram",
    "num_speculative_tokens": "an integer from 0 to 16",
    "ngram_min": "a positive integer",
    "ngram_max": "a positive integer",
    "step_timeout": ">= 0",
    "tensor_parallel_size": "an integer from 1 to 64",
    "parallel_timeout": "a positive number",
    "pipeline_parallel_size": "an integer from 1 to 64",
    "devices": "GPU indices such as 0,1",
    "queue_timeout": ">= 0",
    "request_timeout": ">= 0",
    "backend": "one of minerva, llamacpp, mistralrs, mlx",
    "gpu_layers": "an integer >= 0",
    "flash_attention": "one of auto, on, off",
    "llamacpp_contexts": "an integer from 1 to 64",
    "mistralrs_paged_attn": "one of auto, on, off",
    "mistralrs_prefix_cache_n": "an integer >= 0",
}
SERVER_ALLOWED = {
    "port": "an integer from 0 to 65535",
    "max_queued_requests": "an integer >= 0",
    "max_body_bytes": "a byte size >= 1 KiB",
    "shutdown_timeout": ">= 0",
    "max_prompt_bytes": "a byte size >= 1 KiB",
    "write_timeout": ">= 0",
    "header_timeout": ">= 0",
    "body_timeout": ">= 0",
    "keep_alive": "a duration such as 5m, 300, 0 or -1",
    "model_load_timeout": "a positive number",
    "reasoning_parser": "one of auto, none, qwen3, deepseek_r1",
}
# A value each constrained field refuses, as text (env / CLI) and typed (TOML / kwargs).
BAD = {
    "dtype": "int3", "kv_cache_dtype": "int8", "load_format": "gguf", "quantization": "iq2_xs",
    "attention_backend": "cuda",
    "async_scheduling": "maybe", "device": "tpu", "seed": 2**64, "block_size": 24,
    "memory_fraction": 1.5, "kv_cache_memory": 0, "max_model_len": 0, "num_threads": 0,
    "num_kv_blocks": -1, "kv_cache_tokens": 0, "memory_limit": "0G", "weight_cache_size": "0G", "max_num_seqs": 0, "max_num_batched_tokens": 0,
    "speculative_method": "eagle", "num_speculative_tokens": 17, "ngram_min": 0, "ngram_max": 0,
    "step_timeout": -1, "queue_timeout": -1, "tensor_parallel_size": 0, "parallel_timeout": 0, "pipeline_parallel_size": 65, "devices": "0;1", "request_timeout": -0.5,
    "backend": "vllm", "gpu_layers": -1, "flash_attention": "maybe", "llamacpp_contexts": 65,
    "mistralrs_paged_attn": "maybe", "mistralrs_prefix_cache_n": -1,
}  # fmt: skip


def constrained(schema: Schema) -> set[str]:
    return {name for name, spec in schema.fields.items() if spec.constrained}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith("MINERVA_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def test_every_constrained_field_has_its_words_and_a_bad_value():
    # a new choice or range cannot land without a line here, so it cannot go untested
    assert constrained(SCHEMA) == set(ALLOWED) == set(BAD)
    assert constrained(SERVER_SCHEMA) == set(SERVER_ALLOWED)
    for name, words in ALLOWED.items():
        assert FIELDS[name].allowed == words
        assert FIELDS[name].help.endswith(f" Allowed: {words}.")
    for name, words in SERVER_ALLOWED.items():
        assert SERVER_SCHEMA.fields[name].allowed == words


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_value_names_field_allowed_and_source_in_every_source(name, tmp_path, capsys):
    bad, words, spec = BAD[name], ALLOWED[name], FIELDS[name]
    with pytest.raises(ConfigError) as exc:  # kwargs
        EngineConfig.from_kwargs(**{name: bad})
    assert f"{name}={bad!r}: must be {words}" in str(exc.value)

    var = f"MINERVA_{name.upper()}"  # environment
    with pytest.raises(ConfigError) as exc:
        load_config(env={var: str(bad)})
    assert f"{var}={str(bad)!r}: must be {words}" in str(exc.value)

    path = tmp_path / "c.toml"  # TOML
    path.write_text(f"[{spec.section}]\n{name} = {bad!r}\n".replace("'", '"'))
    with pytest.raises(ConfigError) as exc:
        load_config(str(path), env={})
    assert f"{path}: [{spec.section}] {name} = {bad!r}: must be {words}" in str(exc.value)

    with pytest.raises(ConfigError) as exc:  # overrides
        load_config(overrides={name: bad}, env={}, override_source="cli")
    assert f"{name}={bad!r} (from cli): must be {words}" in str(exc.value)

    parser = argparse.ArgumentParser(prog="minerva")  # CLI flag
    add_config_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args([f"--{name.replace('_', '-')}", str(bad)])
    assert f"--{name.replace('_', '-')}: must be {words}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "good"),
    [("seed", 2**64 - 1), ("block_size", 256), ("memory_fraction", 1.0), ("device", "cuda:7"),
     ("kv_cache_memory", 1), ("dtype", "BF16"), ("async_scheduling", "OFF")],
)  # fmt: skip
def test_values_at_the_edge_of_the_range_are_accepted(name, good):
    EngineConfig.from_kwargs(**{name: good})
    load_config(env={f"MINERVA_{name.upper()}": str(good)})


def test_cli_help_reads_the_field():
    parser = argparse.ArgumentParser(prog="minerva")
    add_config_arguments(parser)
    text = " ".join(parser.format_help().split())
    for words in ALLOWED.values():
        assert f"Allowed: {words}." in text


def test_config_show_verbose_prints_allowed(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    parser = argparse.ArgumentParser(prog="minerva")
    add_config_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["config", "show", "-v"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Allowed: a power of two from 1 to 256." in out and "Allowed: in (0, 1]." in out


# ---- the server settings: the same machinery ----------------------------------------------


def test_server_env_and_flags_go_through_the_field_rules(capsys):
    with pytest.raises(ConfigError) as exc:
        load_server_config(env={"MINERVA_MAX_BODY_BYTES": "512", "MINERVA_PORT": "70000"})
    msg = str(exc.value)
    assert msg.startswith("Invalid server config (2 problems)")
    assert "MINERVA_PORT='70000': must be an integer from 0 to 65535" in msg
    assert "MINERVA_MAX_BODY_BYTES='512': must be a byte size >= 1 KiB" in msg
    with pytest.raises(ConfigError, match=r"shutdown_timeout=-1 \(from flag\): must be >= 0"):
        load_server_config({"shutdown_timeout": -1}, env={})
    with pytest.raises(ConfigError, match="max_queued_requests=-1: must be an integer >= 0"):
        ServerConfig(max_queued_requests=-1)
    with pytest.raises(ConfigError, match="api_key=' ': must be a non-empty string"):
        ServerConfig(api_key=" ")
    with pytest.raises(ConfigError, match="MINERVA_API_KEY='': must be a non-empty string"):
        load_server_config(env={"MINERVA_API_KEY": ""})  # a blank key never turns auth off
    assert load_server_config(env={"MINERVA_API_KEY": "none"}).api_key == "none"  # a real key

    parser = argparse.ArgumentParser(prog="minerva")
    add_server_arguments(parser)
    args = parser.parse_args(
        ["--port", "9001", "--max-body-bytes", "2KiB", "--cors-origins", "a,b"]
    )
    assert server_overrides_from_args(args) == {
        "port": 9001, "max_body_bytes": 2048, "cors_origins": ["a", "b"],
    }  # fmt: skip
    assert "Env: MINERVA_SHUTDOWN_TIMEOUT." in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit):
        parser.parse_args(["--port", "-1"])
    assert "--port: must be an integer from 0 to 65535" in capsys.readouterr().err


def test_server_env_vars_are_known_to_the_engine_config():
    # config_sources may not import the server layer: its list of non-config vars must keep up
    server_vars = {v for v in config_sources.env_vars(SERVER_SCHEMA) if v.startswith("MINERVA_")}
    assert server_vars == {f"MINERVA_{n.upper()}" for n in SERVER_ALLOWED} | {
        "MINERVA_HOST", "MINERVA_API_KEY", "MINERVA_CORS_ORIGINS", "MINERVA_MODELS_DIR",
        "MINERVA_API_KEY_FILE", "MINERVA_ALLOWED_HOSTS",
    }  # fmt: skip
    assert server_vars <= config_sources.NON_CONFIG_ENV_VARS
    assert server_vars.isdisjoint(config_sources.env_vars(SCHEMA))


def test_server_config_ignores_the_engine_toml(tmp_path):
    path = tmp_path / "engine.toml"
    path.write_text("[cache]\nblock_size = 32\n")
    assert load_server_config(env={"MINERVA_CONFIG": str(path)}).port == 8000


# ---- a new field, choice or alias is one line ----------------------------------------------


@dataclass
class _Quant:
    quantization: str | None = Field(None, "Quantize at load.", choices=("q8_0", "q4_k_m"))
    threads: int = Field(4, "Threads.", ge=1, le=64)


_QUANT = Schema(
    fields=specs_of({"quant": _Quant}), sections={"quant": _Quant},
    build=lambda **kw: _Quant(**kw), flatten=vars,
    aliases={"MISTRAL_DEFAULT_QUANTIZATION": "quantization", "num_cpu_threads": "threads"},
)  # fmt: skip


def test_a_new_choice_field_and_aliases_need_no_other_code(tmp_path):
    cfg, sources = config_sources.load(_QUANT, env={})
    assert (cfg.quantization, sources["quantization"]) == (None, "default")
    env = {"MISTRAL_DEFAULT_QUANTIZATION": "q4_k_m"}
    cfg, sources = config_sources.load(_QUANT, env=env)
    assert (cfg.quantization, sources["quantization"]) == (
        "q4_k_m",
        "env:MISTRAL_DEFAULT_QUANTIZATION",
    )
    env["MINERVA_QUANTIZATION"] = "q8_0"  # MINERVA_* wins over an alias
    cfg, sources = config_sources.load(_QUANT, env=env)
    assert (cfg.quantization, sources["quantization"]) == ("q8_0", "env:MINERVA_QUANTIZATION")
    assert config_sources.env_warnings(_QUANT, env) == []
    cfg, _ = config_sources.load(_QUANT, overrides={"num_cpu_threads": "8"}, env={})
    assert cfg.threads == 8
    with pytest.raises(ConfigError) as exc:
        config_sources.load(_QUANT, env={"MISTRAL_DEFAULT_QUANTIZATION": "q5"})
    assert "MISTRAL_DEFAULT_QUANTIZATION='q5': must be one of q8_0, q4_k_m" in str(exc.value)
    path = tmp_path / "q.toml"
    path.write_text("[quant]\nthreads = 65\n")
    assert config_sources.check_file(_QUANT, str(path)) == [
        f"{path}: [quant] threads = 65: must be an integer from 1 to 64"
    ]
    parser = argparse.ArgumentParser()
    add_arguments(parser, _QUANT)
    assert "Allowed: one of q8_0, q4_k_m." in " ".join(parser.format_help().split())


# ---- one dtype table; no cycle; no torch --------------------------------------------------


def test_one_dtype_table_for_config_platform_and_loader():
    import torch

    from minerva.platform import parse_dtype

    for canonical, aliases in DTYPE_ALIASES.items():
        expected = {"float32": torch.float32, "float16": torch.float16}.get(
            canonical, torch.bfloat16
        )
        for name in (canonical, *aliases, canonical.upper(), f"torch.{canonical}"):
            assert EngineConfig.from_kwargs(dtype=name).model.dtype == canonical
            assert EngineConfig.from_kwargs(kv_cache_dtype=name).cache.kv_cache_dtype == canonical
            assert parse_dtype(name) is expected
    assert parse_dtype("auto") is None and DTYPES[0] == "auto"
    with pytest.raises(ConfigError, match="use auto, float32, float16, bfloat16"):
        parse_dtype("float64")


def test_config_machinery_imports_downwards_only_and_never_torch():
    src = Path(config_sources.__file__).parent
    lower = ("dtypes.py", "config_fields.py", "config_sources.py", "config_cli.py")
    for name in lower:
        tree = ast.parse((src / name).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert "minerva.config" not in imported, name  # the engine config sits on top of these
        assert not any(m.split(".")[0] == "torch" for m in imported), name
    code = "import sys, minerva.config, minerva.server.config; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(src.parent)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"

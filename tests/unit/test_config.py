"""Typed config: sections, precedence and sources, parsing, file checks, CLI glue."""

from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path

import pytest

from minerva import config_sources
from minerva.config import (
    FIELDS,
    SECTIONS,
    CacheConfig,
    EngineConfig,
    SchedulerConfig,
    add_config_arguments,
    check_config_file,
    coerce_value,
    config_show_rows,
    env_warnings,
    field_help,
    format_byte_size,
    load_config,
    overrides_from_args,
    parse_byte_size,
)
from minerva.config_command import add_config_subcommand
from minerva.errors import ConfigError

GiB = 1024**3


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    """No MINERVA_* from the developer's shell, and a cwd without minerva.toml."""
    import os

    for var in list(os.environ):
        if var.startswith("MINERVA_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "minerva.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- sections ------------------------------------------------------------------------------


def test_every_field_has_one_line_help_and_default_matches_its_section():
    expected = {
        "model": {
            "model",
            "tokenizer",
            "dtype",
            "quantization",
            "max_model_len",
            "seed",
            "served_model_name",
            "load_format",
            "backend",
            "weight_cache",
            "weight_cache_size",
        },
        "device": {"device", "num_threads", "attention_backend", "enforce_eager"}
        | {
            "fused_kernels",
            "pdl",
            "cpu_kernels",
            "tensor_parallel_size",
            "pipeline_parallel_size",
            "devices",
            "parallel_timeout",
        },
        "cache": {"block_size", "memory_fraction", "kv_cache_memory", "num_kv_blocks"}
        | {"kv_cache_tokens", "memory_limit", "kv_cache_dtype", "enable_prefix_caching"},
        "scheduler": {"max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill"}
        | {"async_scheduling", "step_timeout", "queue_timeout", "request_timeout"},
        "speculative": {"speculative_method", "draft_model", "num_speculative_tokens"}
        | {"ngram_min", "ngram_max", "speculative_adaptive"},
        "llamacpp": {"gpu_layers", "flash_attention", "llamacpp_contexts"},
        "mistralrs": {"mistralrs_paged_attn", "mistralrs_prefix_cache_n"},
    }
    for section, cls in SECTIONS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == expected[section]
        for f in dataclasses.fields(cls):
            assert FIELDS[f.name].section == section
            assert field_help(f.name) and "\n" not in field_help(f.name)
    flat = EngineConfig().flat()
    assert len(flat) == sum(len(names) for names in expected.values())
    assert flat["block_size"] == 16 and flat["memory_fraction"] == 0.9
    assert flat["max_num_seqs"] == 256 and flat["max_num_batched_tokens"] == 2048
    assert flat["enable_prefix_caching"] is True and flat["model"] is None


def test_from_kwargs_routes_flat_names_to_sections():
    cfg = EngineConfig.from_kwargs(block_size=32, dtype="bf16", device="CUDA:1", max_num_seqs=8)
    assert cfg.cache.block_size == 32
    assert cfg.model.dtype == "bfloat16"  # alias normalized
    assert cfg.device.device == "cuda:1"
    assert cfg.scheduler.max_num_seqs == 8
    assert cfg.flat()["block_size"] == 32


def test_from_kwargs_typo_suggests_the_right_name():
    with pytest.raises(ConfigError) as exc:
        EngineConfig.from_kwargs(max_num_seq=4)
    assert "'max_num_seq'" in str(exc.value)
    assert "did you mean 'max_num_seqs'" in str(exc.value)
    with pytest.raises(ConfigError, match="did you mean 'enable_prefix_caching'"):
        EngineConfig.from_kwargs(enable_prefix_cache=False)


def test_validate_lists_every_problem_with_key_value_and_allowed():
    with pytest.raises(ConfigError) as exc:
        EngineConfig(
            cache=CacheConfig(block_size=24, memory_fraction=0.0, kv_cache_dtype="int3"),
            scheduler=SchedulerConfig(max_num_seqs=0),
        )
    msg = str(exc.value)
    assert "4 problems" in msg
    assert "block_size=24: must be a power of two from 1 to 256" in msg
    assert "memory_fraction=0.0: must be in (0, 1]" in msg
    assert "kv_cache_dtype='int3': must be one of auto, float32, float16, bfloat16" in msg
    assert "max_num_seqs=0: must be a positive integer" in msg
    assert len(exc.value.problems) == 4


@pytest.mark.parametrize("block_size", [1, 2, 16, 256])
def test_block_size_powers_of_two_accepted(block_size):
    assert EngineConfig.from_kwargs(block_size=block_size).cache.block_size == block_size


@pytest.mark.parametrize("block_size", [0, 3, 24, 512])
def test_block_size_other_values_rejected(block_size):
    with pytest.raises(ConfigError, match="power of two"):
        EngineConfig.from_kwargs(block_size=block_size)


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_device_accepted(device):
    assert EngineConfig.from_kwargs(device=device).device.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "tpu"])
def test_device_rejected(device):
    with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:N or mps"):
        EngineConfig.from_kwargs(device=device)


def test_no_chunked_prefill_needs_budget_for_a_whole_prompt():
    EngineConfig.from_kwargs(max_model_len=2048, enable_chunked_prefill=False)  # equal: fine
    with pytest.raises(ConfigError, match="max_num_batched_tokens=2048 is below max_model_len"):
        EngineConfig.from_kwargs(max_model_len=4096, enable_chunked_prefill=False)
    EngineConfig.from_kwargs(max_model_len=4096, enable_chunked_prefill=True)


# ---- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4GiB", 4 * GiB),
        ("512MB", 512_000_000),
        ("1.5G", 1_610_612_736),
        ("1024", 1024),
        ("2 KiB", 2048),
        ("1kb", 1000),
        ("3m", 3 * 1024**2),
        ("100B", 100),
        ("1T", 1024**4),
        ("123456789012345678", 123456789012345678),  # exact, no float rounding
        (".5K", 512),
    ],
)
def test_parse_byte_size(text, expected):
    assert parse_byte_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "4XB", "-1G", "1.2.3G", "four GiB"])
def test_parse_byte_size_rejects(text):
    with pytest.raises(ValueError, match="byte size"):
        parse_byte_size(text)


def test_format_byte_size():
    assert format_byte_size(4 * GiB) == "4 GiB"
    assert format_byte_size(1536) == "1.5 KiB"
    assert format_byte_size(100) == "100 B"


@pytest.mark.parametrize(
    "var, text, field, expected",
    [
        ("MINERVA_ENABLE_PREFIX_CACHING", "false", "enable_prefix_caching", False),
        ("MINERVA_ENABLE_PREFIX_CACHING", "0", "enable_prefix_caching", False),
        ("MINERVA_ENABLE_PREFIX_CACHING", "No", "enable_prefix_caching", False),
        ("MINERVA_ENABLE_PREFIX_CACHING", "off", "enable_prefix_caching", False),
        ("MINERVA_ENABLE_CHUNKED_PREFILL", "OFF", "enable_chunked_prefill", False),
        ("MINERVA_ENABLE_CHUNKED_PREFILL", "1", "enable_chunked_prefill", True),
        ("MINERVA_ENABLE_CHUNKED_PREFILL", "TRUE", "enable_chunked_prefill", True),
        ("MINERVA_ENABLE_CHUNKED_PREFILL", "yes", "enable_chunked_prefill", True),
        ("MINERVA_ENABLE_CHUNKED_PREFILL", "on", "enable_chunked_prefill", True),
        ("MINERVA_BLOCK_SIZE", "32", "block_size", 32),
        ("MINERVA_SEED", " 7 ", "seed", 7),
        ("MINERVA_MEMORY_FRACTION", "0.5", "memory_fraction", 0.5),
        ("MINERVA_MEMORY_FRACTION", "1", "memory_fraction", 1.0),
        ("MINERVA_MAX_MODEL_LEN", "none", "max_model_len", None),
        ("MINERVA_MAX_MODEL_LEN", "4096", "max_model_len", 4096),
        ("MINERVA_NUM_THREADS", "None", "num_threads", None),
        ("MINERVA_KV_CACHE_MEMORY", "4GiB", "kv_cache_memory", 4 * GiB),
        ("MINERVA_KV_CACHE_MEMORY", "512MB", "kv_cache_memory", 512_000_000),
        ("MINERVA_DTYPE", "fp16", "dtype", "float16"),
        ("MINERVA_MODEL", "/models/x", "model", "/models/x"),
    ],
)
def test_env_parses_each_type(var, text, field, expected):
    cfg, sources = load_config(env={var: text})
    value = cfg.flat()[field]
    assert value == expected and type(value) is type(expected)
    assert sources[field] == f"env:{var}"


@pytest.mark.parametrize(
    "var, text, allowed",
    [
        ("MINERVA_BLOCK_SIZE", "big", "must be an integer"),
        ("MINERVA_BLOCK_SIZE", "24", "power of two"),
        ("MINERVA_ENABLE_PREFIX_CACHING", "maybe", "true/false"),
        ("MINERVA_MEMORY_FRACTION", "1.5", "(0, 1]"),
        ("MINERVA_KV_CACHE_MEMORY", "4 lots", "byte size"),
        ("MINERVA_SEED", "none", "must be an integer"),  # seed is not optional
    ],
)
def test_bad_env_value_names_the_variable(var, text, allowed):
    with pytest.raises(ConfigError) as exc:
        load_config(env={var: text})
    assert f"{var}={text!r}" in str(exc.value) and allowed in str(exc.value)


def test_unknown_env_vars_are_ignored_but_warned():
    env = {"MINERVA_BLOK_SIZE": "32", "MINERVA_API_KEY": "secret", "OTHER": "1"}
    cfg, sources = load_config(env=env)
    assert cfg.cache.block_size == 16 and set(sources.values()) == {"default"}
    warnings = env_warnings(env)
    assert len(warnings) == 1  # MINERVA_API_KEY is a known non-config var
    assert "MINERVA_BLOK_SIZE" in warnings[0] and "MINERVA_BLOCK_SIZE" in warnings[0]


def test_coerce_is_strict_for_toml_but_parses_strings_elsewhere():
    assert coerce_value("block_size", "32") == 32
    with pytest.raises(ValueError, match="must be an integer"):
        coerce_value("block_size", "32", strict=True)
    assert coerce_value("kv_cache_memory", "1G", strict=True) == GiB  # byte sizes: always
    with pytest.raises(ValueError):
        coerce_value("enable_prefix_caching", 1, strict=True)  # an int is not a TOML bool


# ---- sources and precedence ----------------------------------------------------------------


def test_precedence_default_file_env_override_and_sources(tmp_path):
    path = write(
        tmp_path,
        """
        [cache]
        block_size = 32
        kv_cache_memory = "2GiB"
        [scheduler]
        max_num_seqs = 8
        max_num_batched_tokens = 1024
        """,
    )
    env = {"MINERVA_BLOCK_SIZE": "64", "MINERVA_MAX_NUM_SEQS": "4", "MINERVA_DTYPE": "float16"}
    cfg, sources = load_config(path, overrides={"block_size": 128, "seed": 5}, env=env)
    got = {k: (cfg.flat()[k], sources[k]) for k in sources}
    assert got["block_size"] == (128, "override")  # file < env < override
    assert got["max_num_seqs"] == (4, "env:MINERVA_MAX_NUM_SEQS")  # file < env
    assert got["dtype"] == ("float16", "env:MINERVA_DTYPE")
    assert got["max_num_batched_tokens"] == (1024, f"file:{path}")
    assert got["kv_cache_memory"] == (2 * GiB, f"file:{path}")
    assert got["seed"] == (5, "override")
    assert got["memory_fraction"] == (0.9, "default")
    assert set(sources) == set(FIELDS)
    changed = {"block_size", "max_num_seqs", "dtype", "max_num_batched_tokens"}
    changed |= {"kv_cache_memory", "seed"}
    assert {k for k, s in sources.items() if s == "default"} == set(FIELDS) - changed


def test_config_file_from_env_var(tmp_path):
    path = write(tmp_path, "block_size = 8\n", name="other.toml")
    cfg, sources = load_config(env={"MINERVA_CONFIG": path})
    assert cfg.cache.block_size == 8 and sources["block_size"] == f"file:{path}"


def test_override_typo_and_bad_value(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'num_kv_blocks'"):
        load_config(overrides={"num_kv_block": 10}, env={})
    with pytest.raises(ConfigError, match=r"block_size=7 \(from cli\): must be a power of two"):
        load_config(overrides={"block_size": 7}, env={}, override_source="cli")


def test_toml_sections_and_flat_keys(tmp_path):
    path = write(
        tmp_path,
        """
        dtype = "bfloat16"
        enable_prefix_caching = false
        [device]
        device = "cpu"
        num_threads = 2
        [cache]
        memory_fraction = 1
        """,
    )
    cfg, sources = load_config(path, env={})
    assert (cfg.model.dtype, cfg.cache.enable_prefix_caching) == ("bfloat16", False)
    assert (cfg.device.device, cfg.device.num_threads) == ("cpu", 2)
    assert cfg.cache.memory_fraction == 1.0 and isinstance(cfg.cache.memory_fraction, float)
    assert sources["num_threads"] == sources["dtype"] == f"file:{path}"


def test_toml_unknown_key_raises_with_suggestion_and_file(tmp_path):
    path = write(tmp_path, "[cache]\nblok_size = 32\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    msg = str(exc.value)
    assert path in msg and "'blok_size' in [cache]" in msg
    assert "did you mean 'block_size'" in msg


def test_toml_bad_value_names_file_and_key(tmp_path):
    path = write(tmp_path, "[scheduler]\nmax_num_seqs = -1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert f"{path}: [scheduler] max_num_seqs = -1: must be a positive integer" in str(exc.value)


# ---- check_config_file ---------------------------------------------------------------------


def test_check_config_file_lists_every_problem(tmp_path):
    path = write(
        tmp_path,
        """
        max_num_seq = 4
        [cache]
        block_size = "32"
        memory_fraction = 1.5
        enable_prefix_caching = true
        dtype = "float16"
        [shceduler]
        max_num_seqs = 4
        """,
    )
    problems = check_config_file(path)
    assert problems == [
        f"{path}: unknown key 'max_num_seq' (did you mean 'max_num_seqs'?)",
        f"{path}: [cache] block_size = '32': must be an integer",
        f"{path}: [cache] memory_fraction = 1.5: must be in (0, 1]",
        f"{path}: 'dtype' belongs in [model], not [cache]",
        f"{path}: unknown section [shceduler] (did you mean 'scheduler'?)",
    ]


def test_check_config_file_fine_missing_and_unparseable(tmp_path):
    good = write(tmp_path, '[model]\ndtype = "bf16"\n[cache]\nkv_cache_memory = "1.5G"\n')
    assert check_config_file(good) == []
    missing = str(tmp_path / "nope.toml")
    assert check_config_file(missing) == [f"{missing}: config file not found"]
    bad = write(tmp_path, "[cache]\nblock_size = 16\nthis is not toml\n", name="bad.toml")
    (problem,) = check_config_file(bad)
    assert problem.startswith(f"{bad}: invalid TOML") and "line 3" in problem


def test_check_config_file_reports_duplicates_and_combinations(tmp_path):
    dup = write(tmp_path, "block_size = 8\n[cache]\nblock_size = 16\n", name="dup.toml")
    assert check_config_file(dup) == [f"{dup}: 'block_size' is set twice (flat and in [cache])"]
    combo = "max_model_len = 4096\nenable_chunked_prefill = false\n"
    path = write(tmp_path, combo, name="combo.toml")
    (problem,) = check_config_file(path)
    assert problem.startswith(f"{path}: max_num_batched_tokens=2048 is below max_model_len=4096")


# ---- CLI glue ------------------------------------------------------------------------------


def make_parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minerva")
    add_config_arguments(parser, **kwargs)
    return parser


def test_argparse_flags_round_trip_to_overrides():
    args = make_parser().parse_args(
        ["--block-size", "32", "--no-enable-prefix-caching", "--kv-cache-memory", "4GiB"]
    )
    assert overrides_from_args(args) == {
        "block_size": 32,
        "enable_prefix_caching": False,
        "kv_cache_memory": 4 * GiB,
    }
    assert args.config is None
    args = make_parser().parse_args(["--enable-chunked-prefill", "--max-model-len", "none"])
    assert overrides_from_args(args) == {"enable_chunked_prefill": True, "max_model_len": None}
    assert overrides_from_args(make_parser().parse_args([])) == {}  # nothing given, no overrides


def test_argparse_flags_carry_help_and_reject_bad_values(capsys):
    parser = make_parser(exclude=("model",))
    help_text = parser.format_help()
    for name in FIELDS:
        flag = "--" + name.replace("_", "-")
        assert (flag in help_text) == (name != "model")
    assert "--no-enable-prefix-caching" in help_text and "--config" in help_text
    assert "Tokens per KV cache block" in help_text
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--block-size", "24"])
    assert exc.value.code == 2
    assert "--block-size: must be a power of two" in capsys.readouterr().err


def test_cli_overrides_beat_env_and_file(tmp_path):
    path = write(tmp_path, "block_size = 8\nmax_num_seqs = 2\n")
    args = make_parser().parse_args(["--config", path, "--block-size", "32"])
    cfg, sources = load_config(
        args.config,
        overrides_from_args(args),
        env={"MINERVA_BLOCK_SIZE": "64"},
        override_source="cli",
    )
    assert (cfg.cache.block_size, sources["block_size"]) == (32, "cli")
    assert (cfg.scheduler.max_num_seqs, sources["max_num_seqs"]) == (2, f"file:{path}")


def test_config_show_rows():
    cfg, sources = load_config(overrides={"block_size": 64}, env={})
    rows = config_show_rows(cfg, sources)
    assert len(rows) == len(FIELDS)
    by_field = {row[1]: row for row in rows}
    assert by_field["block_size"] == (
        "cache",
        "block_size",
        64,
        "override",
        field_help("block_size"),
    )
    assert by_field["device"][:4] == ("device", "device", "auto", "default")


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="minerva")
    add_config_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_config_check_exit_codes(tmp_path, capsys, monkeypatch):
    good = write(tmp_path, "[cache]\nblock_size = 32\n", name="good.toml")
    assert run_cli(["config", "check", good]) == 0
    assert capsys.readouterr().out.strip() == f"OK: {good}"

    bad = write(tmp_path, "[cache]\nblock_size = 3\nblocksize = 1\n", name="bad.toml")
    assert run_cli(["config", "check", bad]) == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{bad}: [cache] block_size = 3: must be a power of two from 1 to 256",
        f"{bad}: unknown key 'blocksize' in [cache] (did you mean 'block_size'?)",
    ]

    monkeypatch.setenv("MINERVA_SEED", "-1")  # env problems are listed with the file's
    assert run_cli(["config", "check", bad]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[2] == "MINERVA_SEED='-1': must be an integer in [0, 2**64)"
    monkeypatch.delenv("MINERVA_SEED")

    missing = str(tmp_path / "missing.toml")
    assert run_cli(["config", "check", missing]) == 1
    assert capsys.readouterr().out.strip() == f"{missing}: config file not found"


def test_config_check_without_file_uses_cwd_toml_then_env(tmp_path, capsys, monkeypatch):
    assert run_cli(["config", "check"]) == 0  # no ./minerva.toml, clean env
    assert capsys.readouterr().out.strip() == "OK: environment (no config file)"

    monkeypatch.setenv("MINERVA_MEMORY_FRACTION", "2")
    monkeypatch.setenv("MINERVA_BLOK_SIZE", "2")
    assert run_cli(["config", "check"]) == 1
    out = capsys.readouterr()
    assert out.out.strip() == "MINERVA_MEMORY_FRACTION='2': must be in (0, 1]"
    assert "warning: MINERVA_BLOK_SIZE is not a config field" in out.err
    monkeypatch.delenv("MINERVA_MEMORY_FRACTION")

    write(tmp_path, "[cache]\nblock_size = 5\n")  # ./minerva.toml is picked up
    assert run_cli(["config", "check"]) == 1
    assert "minerva.toml: [cache] block_size = 5" in capsys.readouterr().out

    # each source alone is fine, but together chunked prefill off cannot fit max_model_len
    write(tmp_path, "max_model_len = 4096\n")
    monkeypatch.setenv("MINERVA_ENABLE_CHUNKED_PREFILL", "false")
    assert run_cli(["config", "check"]) == 1
    assert "is below max_model_len=4096" in capsys.readouterr().out


def test_config_show_prints_values_and_sources(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, "[scheduler]\nmax_num_seqs = 3\n", name="show.toml")
    monkeypatch.setenv("MINERVA_KV_CACHE_MEMORY", "2GiB")
    monkeypatch.setenv("COLUMNS", "200")  # rich: one line per row
    assert run_cli(["config", "show", "--config", path, "--block-size", "64"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def row(field: str) -> list[str]:
        (line,) = [ln for ln in lines if f" {field} " in ln]
        return [cell.strip() for cell in line.strip("│┃| ").split("│")]

    assert row("block_size") == ["cache", "block_size", "64", "cli"]
    assert row("max_num_seqs") == ["scheduler", "max_num_seqs", "3", f"file:{path}"]
    assert row("kv_cache_memory") == [
        "cache",
        "kv_cache_memory",
        f"2 GiB ({2 * GiB})",
        "env:MINERVA_KV_CACHE_MEMORY",
    ]
    assert row("enable_prefix_caching") == ["cache", "enable_prefix_caching", "true", "default"]

    monkeypatch.setenv("MINERVA_BLOCK_SIZE", "x")
    assert run_cli(["config", "show"]) == 1
    assert "MINERVA_BLOCK_SIZE='x': must be an integer" in capsys.readouterr().err


def test_config_modules_do_not_import_torch():
    src = Path(config_sources.__file__).parent
    for name in ("config.py", "config_sources.py"):
        tree = ast.parse((src / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[0] == "torch" for m in imported), name


def test_speculative_combinations_are_checked():
    with pytest.raises(ConfigError, match="needs a draft_model"):
        EngineConfig.from_kwargs(num_speculative_tokens=3)
    with pytest.raises(ConfigError, match="ngram_min=3 is above ngram_max=2"):
        EngineConfig.from_kwargs(ngram_min=3, ngram_max=2)
    config = EngineConfig.from_kwargs(speculative_method="ngram", num_speculative_tokens=3)
    assert config.speculative.num_speculative_tokens == 3
    assert EngineConfig.from_kwargs(speculative_method="draft").speculative.draft_model is None

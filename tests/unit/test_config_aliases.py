"""The seeds' settings: every row of the alias table maps (tests generated from the table), the
seeds' .env and TOML load, unknown names get a did-you-mean, conflicts and inert settings are
reported, and the precedence defaults < profile < TOML < .env < environment < flags holds."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from minerva import config_sources
from minerva.config import FIELDS, env_warnings, load_config
from minerva.config_aliases import ALIAS_TABLE, BY_ENV, NO_EFFECT, Alias, render_markdown
from minerva.config_command import add_config_subcommand
from minerva.config_dotenv import parse_env_text
from minerva.errors import ConfigError
from minerva.server.config import SERVER_SCHEMA, load_server_config

FIXTURES = Path(__file__).parent.parent / "fixtures"
REPO = Path(__file__).parents[2]
GiB = 2**30

# The settings the issue lists by name: each must be a row of the table.
ISSUE_NAMES = """MISTRAL_DEVICE MISTRAL_METAL_DEVICE_ID MISTRAL_USE_FLASH_ATTENTION
MISTRAL_MAX_BATCH_SIZE MISTRAL_MAX_SEQ_LEN MISTRAL_MEMORY_FRACTION MISTRAL_KV_CACHE_DTYPE
MISTRAL_NUM_THREADS MISTRAL_TENSOR_PARALLEL_SIZE MISTRAL_PIPELINE_PARALLEL_SIZE
MISTRAL_DEFAULT_QUANTIZATION MISTRAL_DYNAMIC_QUANTIZATION MISTRAL_ENABLE_MEMORY_POOLING
MISTRAL_MEMORY_POOL_SIZE MISTRAL_PREFIX_CACHE_SIZE MISTRAL_QUANTIZATION_CACHE_SIZE
MISTRAL_ENABLE_CONTINUOUS_BATCHING MISTRAL_MAX_RUNNING_REQUESTS MISTRAL_MAX_TOTAL_TOKENS
MISTRAL_PREFILL_CHUNK_SIZE MISTRAL_DECODE_CHUNK_SIZE MISTRAL_USE_GRAPH_CAPTURE
MISTRAL_ENABLE_PREFIX_CACHING MISTRAL_MEMORY_LIMIT MISTRAL_MEMORY_RESERVATION
MISTRAL_METAL_HEAP_SIZE MISTRAL_METAL_COMMAND_BUFFER_SIZE MISTRAL_METAL_SHADER_VARIANT
MISTRAL_METAL_SIMD_REDUCTION MISTRAL_METAL_ASYNC_DISPATCH MISTRAL_METAL_COMMAND_QUEUE_SIZE
MISTRALRS_ISQ MISTRALRS_PAGED_ATTN MISTRALRS_PAGED_ATTN_BLOCK_SIZE MISTRALRS_PREFIX_CACHE_N
MISTRALRS_SPECULATIVE_DRAFT_MODEL MISTRALRS_SPECULATIVE_GAMMA""".split()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in list(os.environ):
        if var.startswith(("MINERVA_", "MISTRAL_", "MISTRALRS_")):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)


def _value(alias: Alias, env: dict[str, str], config_file: str | None = None):
    """(value, source, notices) of the alias's field after loading ``env`` / the file."""
    notices: list[str] = []
    if alias.field in SERVER_SCHEMA.fields:
        cfg, sources = config_sources.load(SERVER_SCHEMA, config_file, env=env)
        return getattr(cfg, alias.field), sources[alias.field], notices
    cfg, sources = load_config(config_file, env=env, notices=notices)
    if alias.field is None:
        return NO_EFFECT, None, notices
    return cfg.flat()[alias.field], sources[alias.field], notices


def _toml_literal(text: str) -> str:
    if text in ("true", "false") or text.isdigit():
        return text
    try:
        float(text)
        return text
    except ValueError:
        return f'"{text}"'


def test_every_named_seed_setting_is_a_row_and_every_field_exists():
    assert set(ISSUE_NAMES) <= set(BY_ENV)
    for alias in ALIAS_TABLE:
        assert alias.env or alias.toml
        assert alias.field is None or alias.field in FIELDS or alias.field in SERVER_SCHEMA.fields
        assert alias.note and alias.example
        assert (alias.expect is NO_EFFECT) == (alias.field is None) or alias.convert is not None


# Rows whose field is only valid beside another setting (checked combinations).
COMPANIONS = {"MISTRALRS_SPECULATIVE_GAMMA": {"MISTRALRS_SPECULATIVE_DRAFT_MODEL": "/models/d"}}


@pytest.mark.parametrize("alias", [a for a in ALIAS_TABLE if a.env], ids=lambda a: a.env)
def test_each_seed_variable_maps_or_is_reported(alias):
    env = {alias.env: alias.example, **COMPANIONS.get(alias.env, {})}
    value, source, notices = _value(alias, env)
    if alias.expect is NO_EFFECT:
        assert any(n.startswith(f"{alias.env}=") and "has no effect here" in n for n in notices)
    else:
        assert value == alias.expect and type(value) is type(alias.expect)
        assert source == f"env:{alias.env}" and notices == []
    assert env_warnings({alias.env: alias.example}) == []  # known: never "unknown"


@pytest.mark.parametrize("alias", [a for a in ALIAS_TABLE if a.toml], ids=lambda a: a.toml)
def test_each_seed_toml_key_maps_or_is_reported(alias, tmp_path):
    section, key = alias.toml.split(".")
    path = tmp_path / "seed.toml"
    path.write_text(f"[{section}]\n{key} = {_toml_literal(alias.example)}\n")
    value, source, notices = _value(alias, {}, str(path))
    if alias.expect is NO_EFFECT:
        assert any(f"[{section}] {key}" in n and "has no effect here" in n for n in notices)
    else:
        assert value == alias.expect and source.startswith(f"file:{path}")
    assert config_sources.check_file(config_sources_schema(alias), str(path)) == []


def config_sources_schema(alias: Alias):
    from minerva.config import SCHEMA

    return SERVER_SCHEMA if alias.field in SERVER_SCHEMA.fields else SCHEMA


def test_seed_env_file_loads_with_the_expected_fields(tmp_path):
    notices: list[str] = []
    env_file = str(FIXTURES / "seed.env.example")
    cfg, sources = load_config(env={}, env_file=env_file, notices=notices)
    got = cfg.flat()
    assert (got["device"], got["attention_backend"], got["enforce_eager"]) == ("mps", "auto", False)
    assert (got["max_model_len"], got["memory_fraction"], got["kv_cache_dtype"]) == (
        32768, 0.9, "float16",
    )  # fmt: skip
    assert (got["max_num_seqs"], got["max_num_batched_tokens"]) == (16, 2048)
    assert (got["num_threads"], got["quantization"], got["memory_limit"]) == (
        None,
        "q5_k_m",
        64 * GiB,
    )
    assert (got["kv_cache_tokens"], got["enable_prefix_caching"]) == (131072, True)
    assert sources["max_num_seqs"] == f"dotenv:{env_file}:MISTRAL_MAX_RUNNING_REQUESTS"
    # the batch size loses to the running-requests count, and says so
    assert any(n.startswith("MISTRAL_MAX_BATCH_SIZE='8'") and "wins" in n for n in notices)
    inert = {n.split("=")[0] for n in notices if "has no effect here" in n}
    assert {"MISTRAL_METAL_HEAP_SIZE", "MISTRAL_MEMORY_RESERVATION", "MISTRAL_LOG_LEVEL"} <= inert
    warnings = env_warnings(parse_env_text((FIXTURES / "seed.env.example").read_text()), env_file)
    assert warnings == [f"ENABLE_METAL (in {env_file}) is not a config field and is ignored"]
    server = load_server_config(env={}, env_file=env_file)
    assert (server.host, server.port) == ("0.0.0.0", 8080)


def test_seed_toml_loads_with_the_expected_fields():
    path = str(FIXTURES / "seed_config.toml")
    notices: list[str] = []
    cfg, sources = load_config(path, env={}, notices=notices)
    got = cfg.flat()
    assert (got["device"], got["max_num_seqs"], got["max_model_len"]) == ("mps", 16, 32768)
    assert (got["quantization"], got["kv_cache_dtype"], got["num_threads"]) == (
        "q5_k_m", "float16", None,
    )  # fmt: skip
    assert (got["max_num_batched_tokens"], got["kv_cache_tokens"]) == (2048, 131072)
    assert sources["quantization"] == f"file:{path} ([quantization] default_quantization)"
    assert any("[metal] heap_size" in n and "no effect" in n for n in notices)
    assert any("[inference] max_batch_size" in n and "wins" in n for n in notices)
    server = load_server_config(env={}, config_file=path)
    assert (server.host, server.port) == ("0.0.0.0", 8080)


def test_unknown_seed_names_get_a_did_you_mean(tmp_path):
    env = {"MISTRAL_MAX_BATCH_SIZ": "8", "MISTRALRS_PAGED_ATN": "1", "MINERVA_MAX_BATCH_SIZE": "2"}
    warnings = env_warnings(env)
    assert warnings == [
        "MINERVA_MAX_BATCH_SIZE is not a config field and is ignored "
        "(did you mean 'MINERVA_MAX_NUM_SEQS'?)",
        "MISTRALRS_PAGED_ATN is not a config field and is ignored "
        "(did you mean 'MISTRALRS_PAGED_ATTN'?)",
        "MISTRAL_MAX_BATCH_SIZ is not a config field and is ignored "
        "(did you mean 'MISTRAL_MAX_BATCH_SIZE'?)",
    ]
    path = tmp_path / "x.toml"
    path.write_text("[metal]\nheap_sise = 1\n")
    assert config_sources.check_file(config_sources_schema(ALIAS_TABLE[0]), str(path)) == [
        f"{path}: unknown key 'heap_sise' in [metal] (did you mean 'heap_size'?)"
    ]


def test_minerva_name_wins_over_a_seed_name_and_the_conflict_is_reported():
    notices: list[str] = []
    env = {"MISTRAL_MAX_BATCH_SIZE": "8", "MINERVA_MAX_NUM_SEQS": "4"}
    cfg, sources = load_config(env=env, notices=notices)
    assert (cfg.scheduler.max_num_seqs, sources["max_num_seqs"]) == (4, "env:MINERVA_MAX_NUM_SEQS")
    assert notices == [
        "MISTRAL_MAX_BATCH_SIZE='8' conflicts with env:MINERVA_MAX_NUM_SEQS, which also sets "
        "max_num_seqs and wins: max_num_seqs=4"
    ]
    notices.clear()  # the same value is no conflict
    load_config(env={"MISTRAL_MAX_BATCH_SIZE": "4", "MINERVA_MAX_NUM_SEQS": "4"}, notices=notices)
    assert notices == []


def test_precedence_profile_toml_dotenv_env_flags(tmp_path):
    toml = tmp_path / "m.toml"
    toml.write_text(
        'profile = "low-latency"\n[inference]\nmax_batch_size = 3\n[cache]\nblock_size = 32\n'
    )
    dotenv = tmp_path / "m.env"
    dotenv.write_text("MISTRAL_MAX_BATCH_SIZE=5\nMINERVA_BLOCK_SIZE=64\nMISTRAL_MAX_SEQ_LEN=300\n")
    env = {"MISTRAL_MAX_SEQ_LEN": "400"}
    cfg, sources = load_config(
        str(toml), {"block_size": 8}, env, override_source="cli", env_file=str(dotenv)
    )
    assert (cfg.scheduler.max_num_seqs, sources["max_num_seqs"]) == (
        5, f"dotenv:{dotenv}:MISTRAL_MAX_BATCH_SIZE",
    )  # fmt: skip
    assert (cfg.model.max_model_len, sources["max_model_len"]) == (400, "env:MISTRAL_MAX_SEQ_LEN")
    assert (cfg.cache.block_size, sources["block_size"]) == (8, "cli")
    assert (cfg.scheduler.max_num_batched_tokens, sources["max_num_batched_tokens"]) == (
        4096, "profile:low-latency",
    )  # fmt: skip
    toml.write_text('profile = "low-latency"\nmax_num_batched_tokens = 1024\n')
    cfg, sources = load_config(str(toml), env={})
    assert sources["max_num_batched_tokens"] == f"file:{toml}"  # explicit beats the profile
    with pytest.raises(ConfigError, match="unknown profile 'fast'"):
        load_config(env={"MINERVA_PROFILE": "fast"})


def test_bad_seed_values_name_the_variable():
    with pytest.raises(ConfigError) as exc:
        load_config(env={"MISTRAL_TENSOR_PARALLEL_SIZE": "2", "MISTRAL_MAX_BATCH_SIZE": "x"})
    msg = str(exc.value)
    assert "MISTRAL_TENSOR_PARALLEL_SIZE='2': tensor parallelism is not supported yet" in msg
    assert "MISTRAL_MAX_BATCH_SIZE='x' (-> max_num_seqs): must be an integer" in msg


def test_env_file_syntax():
    text = "A=1\nexport B=\"two # three\"\nC=4  # four\n\n# comment\nD='x'\n"
    assert parse_env_text(text) == {"A": "1", "B": "two # three", "C": "4", "D": "x"}
    with pytest.raises(ConfigError, match=r"x.env:2: not a KEY=VALUE line"):
        parse_env_text("A=1\nnonsense\n", "x.env")
    with pytest.raises(ConfigError, match="x.env:1: not a KEY=VALUE line"):
        parse_env_text('A="open\n', "x.env")


def test_docs_table_is_generated_from_the_table():
    path = REPO / "docs" / "config-aliases.md"
    assert path.read_text() == render_markdown(), "regenerate: python -m minerva.config_aliases"


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="minerva")
    add_config_subcommand(parser.add_subparsers(dest="command"), extra_schemas=(SERVER_SCHEMA,))
    args = parser.parse_args(argv)
    return args.func(args)


def test_config_show_lists_server_settings_and_notes(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    (tmp_path / ".env").write_text("MISTRAL_PORT=9001\nMISTRAL_METAL_HEAP_SIZE=1\n")
    assert run_cli(["config", "show", "--profile", "memory-constrained"]) == 0
    out = capsys.readouterr()
    line = next(ln for ln in out.out.splitlines() if " port " in ln)
    assert "9001" in line and "dotenv:.env:MISTRAL_PORT" in line
    line = next(ln for ln in out.out.splitlines() if " memory_fraction " in ln)
    assert "0.6" in line and "profile:memory-constrained" in line
    assert "MISTRAL_METAL_HEAP_SIZE='1' (in .env): accepted, has no effect here" in out.err
    assert run_cli(["config", "show", "--aliases"]) == 0
    assert "MISTRALRS_SPECULATIVE_GAMMA" in capsys.readouterr().out


def test_config_check_covers_the_server_settings(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINERVA_PORT", "abc")
    assert run_cli(["config", "check"]) == 1
    assert "MINERVA_PORT='abc': must be an integer" in capsys.readouterr().out
    monkeypatch.delenv("MINERVA_PORT")
    path = tmp_path / "s.toml"
    path.write_text("[server]\nport = 70000\n[cache]\nblock_size = 32\n")
    assert run_cli(["config", "check", str(path)]) == 1
    assert "[server] port = 70000: must be an integer from 0 to 65535" in capsys.readouterr().out
    path.write_text('[server]\nport = 7000\nhost = "0.0.0.0"\n')
    assert run_cli(["config", "check", str(path)]) == 0
    assert load_server_config(env={}, config_file=str(path)).port == 7000


def test_the_api_key_is_never_printed(capsys, monkeypatch, tmp_path):
    """config show says a key is set without its value; errors and the repr leave it out."""
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.chdir(tmp_path)  # no ./minerva.toml or ./.env of the checkout's
    key = "sk-secret-0123456789"
    monkeypatch.setenv("MINERVA_API_KEY", key)
    assert run_cli(["config", "show"]) == 0
    out = capsys.readouterr()
    line = next(ln for ln in out.out.splitlines() if " api_key " in ln)
    assert "*** (set)" in line and "env:MINERVA_API_KEY" in line
    assert key not in out.out + out.err
    assert run_cli(["config", "show", "-v"]) == 0
    assert key not in capsys.readouterr().out
    # A key of the wrong type in TOML is refused without echoing it; a blank one is named.
    path = tmp_path / "s.toml"
    path.write_text("[server]\napi_key = 987654321\nport = 99999\n")
    monkeypatch.delenv("MINERVA_API_KEY")
    assert run_cli(["config", "check", str(path)]) == 1
    printed = capsys.readouterr().out
    assert "api_key = '***': must be a string" in printed and "987654321" not in printed
    assert "port = 99999" in printed  # other values are still shown
    with pytest.raises(ConfigError) as e:
        load_server_config({"api_key": 123456789}, env={})
    assert "api_key='***' (from flag)" in str(e.value) and "123456789" not in str(e.value)
    with pytest.raises(ConfigError, match="MINERVA_API_KEY='': must be a non-empty string"):
        load_server_config(env={"MINERVA_API_KEY": ""})
    cfg = load_server_config(env={"MINERVA_API_KEY": key})
    assert cfg.effective_api_key == key and key not in repr(cfg)


def test_server_seed_names_conflict_is_reported():
    notices: list[str] = []
    cfg = load_server_config(env={"MINERVA_PORT": "9000", "MISTRAL_PORT": "8080"}, notices=notices)
    assert cfg.port == 9000
    assert notices == [
        "MISTRAL_PORT='8080' conflicts with env:MINERVA_PORT, which also sets port and wins: "
        "port=9000"
    ]

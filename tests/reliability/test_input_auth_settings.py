"""Auth settings that would silently disable the key: a blank --api-key / MINERVA_API_KEY /
TOML value refuses to start naming the setting; --api-key-file reads the key (kept out of the
process list and of `minerva config show`) and refuses a missing or blank file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from minerva.errors import ConfigError
from minerva.server.config import ServerConfig, load_server_config
from tests.reliability.input_app import figure, serve
from tests.unit.test_server_fake_backend import FakeBackend

ROOT = Path(__file__).resolve().parents[2]

BLANK = {  # how a blank key can be given -> the setting the error must name
    "flag ''": ({"api_key": ""}, {}, "api_key="),
    "flag ' '": ({"api_key": " "}, {}, "api_key="),
    "env ''": ({}, {"MINERVA_API_KEY": ""}, "MINERVA_API_KEY"),
    "env ' '": ({}, {"MINERVA_API_KEY": " "}, "MINERVA_API_KEY"),
    "env tab": ({}, {"MINERVA_API_KEY": "\t"}, "MINERVA_API_KEY"),
}


def test_a_blank_api_key_refuses_to_start_naming_the_setting(tmp_path):
    refused = 0
    for name, (flags, env, setting) in BLANK.items():
        with pytest.raises(ConfigError, match="non-empty") as err:
            load_server_config(flags, env=env)
        assert setting in str(err.value), name
        refused += 1
    toml = tmp_path / "minerva.toml"
    toml.write_text('[server]\napi_key = "  "\n')
    with pytest.raises(ConfigError, match="api_key"):
        load_server_config({}, env={}, config_file=str(toml))
    figure("blank API key", f"{refused + 1} of {len(BLANK) + 1} blank-key spellings refused at "
           "start, each naming its setting")  # fmt: skip


def test_a_blank_key_flag_exits_non_zero_before_loading():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = [sys.executable, "-m", "minerva.cli", "serve", "--model", "demo", "--api-key", ""]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "--api-key" in done.stderr and "non-empty" in done.stderr


def test_api_key_file(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\nignored second line\n")
    cfg = load_server_config({}, env={"MINERVA_API_KEY_FILE": str(key_file)})
    assert cfg.effective_api_key == "s3cret-key" and cfg.api_key is None
    assert "s3cret" not in repr(cfg)  # never on a config dump

    async def run(client):
        no_key = await client.get("/v1/models")
        key = await client.get("/v1/models", headers={"Authorization": "Bearer s3cret-key"})
        return no_key.status_code, key.status_code

    assert serve(FakeBackend(), run, ServerConfig(served_model_name="fake",
                 api_key_file=str(key_file))) == (401, 200)  # fmt: skip
    (tmp_path / "blank").write_text("\n  \n")
    for path, words in ((tmp_path / "blank", "no key"), (tmp_path / "missing", "cannot read")):
        with pytest.raises(ConfigError, match=words) as err:
            load_server_config({"api_key_file": str(path)}, env={})
        assert "api_key_file" in str(err.value)
    with pytest.raises(ConfigError, match="not both"):
        load_server_config({"api_key": "k", "api_key_file": str(key_file)}, env={})

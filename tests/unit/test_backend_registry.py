"""The backend registry: every name the config accepts has a loader, an unknown name and a
missing engine package are one-line user errors naming the fix, and the CLI reports them."""

from __future__ import annotations

import sys

import pytest

from minerva.backends import BACKENDS, BackendNotInstalled, install_hint, is_installed, load_backend
from minerva.cli import main
from minerva.config import BACKEND_NAMES, EngineConfig
from minerva.errors import ConfigError


def test_the_registry_and_the_config_name_the_same_backends():
    assert tuple(BACKENDS) == BACKEND_NAMES
    assert EngineConfig().model.backend == "minerva"
    assert EngineConfig.from_kwargs(backend="LlamaCpp").model.backend == "llamacpp"
    with pytest.raises(ConfigError, match="one of minerva, llamacpp, mistralrs, mlx"):
        EngineConfig.from_kwargs(backend="vllm")


@pytest.mark.parametrize("name", [n for n in BACKENDS if BACKENDS[n].package])
def test_a_missing_engine_package_names_the_extra(name, monkeypatch):
    monkeypatch.setitem(sys.modules, BACKENDS[name].package, None)  # import fails: not installed
    assert not is_installed(name)
    with pytest.raises(BackendNotInstalled) as e:
        load_backend(name, EngineConfig())
    assert f'pip install "minerva-llm[{BACKENDS[name].extra}]"' in str(e.value)
    assert install_hint(name) in str(e.value) and isinstance(e.value, ConfigError)


def test_an_unknown_backend_lists_the_known_ones():
    with pytest.raises(ConfigError, match="choose from minerva, llamacpp, mistralrs, mlx"):
        load_backend("vllm", EngineConfig())


def test_the_cli_reports_a_missing_backend_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    assert main(["generate", "hi", "--backend", "llamacpp", "--max-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("minerva: error: backend 'llamacpp' needs the package 'llama_cpp'")
    assert 'pip install "minerva-llm[llamacpp]"' in err[-1]


def test_doctor_reports_every_backend_and_the_chosen_ones_findings(monkeypatch):
    from minerva import doctor

    monkeypatch.setitem(sys.modules, "mistralrs", None)
    config = EngineConfig.from_kwargs(device="cpu", backend="llamacpp")
    report = doctor.collect(config, with_model=False)
    assert set(report["backends"]) == set(BACKENDS) and report["backend"] == "llamacpp"
    assert report["backends"]["minerva"]["installed"] == "yes"
    missing = report["backends"]["mistralrs"]
    assert missing == {"installed": "no", "install": 'pip install "minerva-llm[mistralrs]"'}
    lines = dict(doctor.rows(report))
    assert "mistralrs -" in lines["backends"]
    if is_installed("llamacpp"):
        import llama_cpp

        assert report["backends"]["llamacpp"]["version"] == llama_cpp.__version__
        assert "logprobs" in lines["llamacpp: not supported"]


def test_what_a_backend_cannot_do_is_a_400_naming_the_fix():
    from minerva.errors import NotSupportedError
    from minerva.server.api_errors import to_api_error

    err = to_api_error(NotSupportedError("no prompt logprobs here: use --backend minerva"))
    assert (err.status, err.code) == (400, "not_supported") and "--backend minerva" in str(err)


def test_one_setting_picks_the_backend_from_toml_environment_or_flag(tmp_path, monkeypatch):
    """[model] backend in minerva.toml < MINERVA_BACKEND < --backend, as docs/backends.md
    shows; ``minerva serve`` reads it the same way."""
    import argparse

    from minerva.config import load_config, load_config_from_args
    from minerva.server.serve import add_serve_subcommand

    toml = tmp_path / "minerva.toml"
    toml.write_text('[model]\nbackend = "mlx"\n')
    cfg, sources = load_config(str(toml), env={})
    assert (cfg.model.backend, sources["backend"]) == ("mlx", f"file:{toml}")
    cfg, _ = load_config(str(toml), env={"MINERVA_BACKEND": "llamacpp"})
    assert cfg.model.backend == "llamacpp"

    parser = argparse.ArgumentParser()
    add_serve_subcommand(parser.add_subparsers())
    monkeypatch.setenv("MINERVA_BACKEND", "llamacpp")
    monkeypatch.chdir(tmp_path)  # no ./.env of the developer's
    args = parser.parse_args(["serve", "--config", str(toml), "--backend", "mistralrs"])
    cfg, sources = load_config_from_args(args, notices=[])
    assert (cfg.model.backend, sources["backend"]) == ("mistralrs", "cli")

"""Reliability scenarios: each test attacks one promise of docs/reliability.md and prints one
figure line. The fast ones run in the default test command; benchmarks/reliability.py runs the
long ones (stalled readers at scale, the soak)."""

from __future__ import annotations

import pytest

from tests.e2e.tiny_server_model import build_server_model


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return build_server_model(tmp_path_factory.mktemp("tiny-reliability"))

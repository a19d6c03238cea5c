"""Ollama's keep_alive values, as Ollama reads them (seconds, Go durations, negative = forever)."""

from __future__ import annotations

import math

import pytest

from minerva.errors import RequestError
from minerva.server.keep_alive import parse_keep_alive


@pytest.mark.parametrize(
    "value, seconds",
    [(None, 42.0), (0, 0.0), ("0", 0.0), (300, 300.0), (2.5, 2.5), ("300", 300.0),
     ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("1.5h", 5400.0), ("10s", 10.0),
     (-1, math.inf), ("-1", math.inf), ("-1m", math.inf), ("24h", 86400.0)],
)  # fmt: skip
def test_values(value, seconds):
    assert parse_keep_alive(value, 42.0) == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["soon", "5 m", "m", "", "5x", True, float("nan"), "1h-5m"])
def test_bad_values_name_the_field_and_the_forms(value):
    with pytest.raises(RequestError) as e:
        parse_keep_alive(value, 0.0)
    assert e.value.param == "keep_alive" and "'5m'" in str(e.value)

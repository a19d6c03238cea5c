"""Secrets out of benchmark artefacts: API keys given with --api-key, ``key=`` in --target and
Authorization headers never reach report.md, results.json, the CSVs or the logs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
_PATTERNS = (
    re.compile(r"(--api-key[= ])(\S+)"),  # a command line
    re.compile(r"((?:^|[,\s'\"])key=)([^,\s'\"]+)"),  # NAME=URL,key=SECRET
    re.compile(  # an Authorization header, any scheme
        r"(authorization['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|token)\s+)?)([^\s'\",}]+)", re.I
    ),
    re.compile(r"((?<![\w-])Bearer\s+)(?!\*\*\*)([^\s'\",]+)", re.IGNORECASE),
    re.compile(r"(api[_-]?key['\"]?\s*[:=]\s*['\"]?)([^\s'\",}]+)", re.IGNORECASE),
)


class Redactor:
    """Replaces the known secret values, and anything shaped like one, with ``***``."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        # Longest first, so a key that contains another is masked whole.
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + MASK, text)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with every string inside it redacted (dicts, lists, tuples)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {k: self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        return value

    def argv(self, argv: list[str]) -> list[str]:
        """A command line with the value after ``--api-key`` and every ``key=`` masked."""
        out, hide_next = [], False
        for arg in argv:
            if hide_next:
                out.append(MASK)
                hide_next = False
                continue
            hide_next = arg == "--api-key"
            out.append(self.text(arg))
        return out

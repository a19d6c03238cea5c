"""Read a ``.env`` file (KEY=VALUE lines) as the seeds' stacks write them. No torch.

Blank lines and ``#`` comments are skipped, ``export KEY=VALUE`` is accepted, a value may be
quoted ('...' or "...") and an unquoted value ends at `` #`` (the seeds annotate values:
``MISTRAL_METAL_HEAP_SIZE=68719476736  # 64GB``). A line that is none of these is an error
naming the file and line, never skipped.
"""

from __future__ import annotations

import re

from minerva.config_fields import config_error

DEFAULT_ENV_FILE = ".env"
_LINE_RE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def parse_env_text(text: str, path: str = DEFAULT_ENV_FILE) -> dict[str, str]:
    """The variables ``text`` sets, in file order (a later line wins); ConfigError on a bad line."""
    values: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE_RE.match(stripped)
        value = _value(match.group(2)) if match else None
        if match is None or value is None:
            problems.append(f"{path}:{number}: not a KEY=VALUE line: {stripped!r}")
            continue
        values[match.group(1)] = value
    if problems:
        raise config_error(problems, "Invalid env file")
    return values


def _value(raw: str) -> str | None:
    """The value of one line: quoted as written, else up to an inline comment; None if a quote
    is never closed."""
    raw = raw.strip()
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        if end < 0:
            return None
        rest = raw[end + 1 :].strip()
        return raw[1:end] if not rest or rest.startswith("#") else None
    return re.split(r"\s+#", raw, maxsplit=1)[0].strip()


def read_env_file(path: str) -> dict[str, str]:
    """The variables a .env file sets; ConfigError naming the file if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise config_error([f"{path}: env file not found"], "Invalid env file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise config_error([f"{path}: cannot read env file: {e}"], "Invalid env file") from None
    return parse_env_text(text, path)

"""What a string must be to reach a column or a log line, and how free text is made safe for both.

Both databases refuse NUL in text (PostgreSQL always; SQLite's driver and every tool that reads it
treat it as the end), and no database driver can encode a lone surrogate. Identifiers are checked
against a pattern; free text from outside is either refused by the codec or cleaned here before it
is written anywhere.
"""

from __future__ import annotations

import re

NAME = re.compile(r"\A[A-Za-z][A-Za-z0-9_]{0,63}\Z")
"""An object name: what ``String(64)`` object columns hold."""
SOURCE = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,62}\Z")
"""A district id (or ``state``): what ``String(64)`` district columns hold."""
CODE = re.compile(r"\A\d{1,2}\.\d{1,3}\Z")
"""A SIF error code such as ``9.1``."""


def storable(value: str) -> bool:
    """Whether both databases take ``value`` as it is."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def clean(value: str, limit: int) -> str:
    """``value`` cut to ``limit`` characters, with NUL and lone surrogates spelled out as escapes."""
    if not storable(value):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
    return value if len(value) <= limit else value[: limit - 1] + "…"

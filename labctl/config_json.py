"""Reading clusters.json as JSON, before any field is looked at: nesting depth, duplicate keys, syntax errors by
line and column; and how a value and its place in the file are written in a problem message.

Python's json module silently keeps the last of two equal keys and recurses once per nesting level, so both are
checked here, where the text is read, and a hostile file costs time linear in its size.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .errors import ConfigError, Problem

SHOW_MAX = 60  # characters of an invalid value echoed back in a problem
# Python's json and pydantic recurse once per nesting level; a clusters.json (Helm values included) never needs
# more than a few dozen, and a hostile one must not reach the interpreter's recursion limit.
MAX_DEPTH = 100


def show(value: Any) -> str:
    """repr() of an invalid value for a message, cut to SHOW_MAX characters (a value may be a megabyte long)."""
    text = repr(value[: SHOW_MAX * 2] if isinstance(value, str) else value)
    return text if len(text) <= SHOW_MAX else text[: SHOW_MAX - 1] + "…"


def json_path(loc: tuple) -> str:
    """A location as a JSON path: ("clusters", 0, "name") → "clusters[0].name"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def read(text: str, source: str) -> dict:
    """clusters.json text → the raw top-level object (dicts, lists, strings, numbers), not yet validated.

    Raises ConfigError naming `source`: nested deeper than MAX_DEPTH, a syntax error (line and column), a number
    Python cannot convert, keys named twice in one object (each at its JSON path), or a top level that is not an
    object."""
    deep = _too_deep(text)
    if deep is not None:
        raise ConfigError(source, [deep])
    try:
        raw = json.loads(text, object_pairs_hook=_keep_duplicates)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem("", f"line {exc.lineno}, column {exc.colno}: {exc.msg}")]) from None
    except ValueError as exc:  # a number of more than 4300 digits (sys.get_int_max_str_digits)
        raise ConfigError(source, [Problem("", f"not a usable JSON number: {str(exc)[:200]}")]) from None
    duplicates = _duplicate_problems(raw)
    if duplicates:
        raise ConfigError(source, duplicates)
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem("", "the top level must be a JSON object with a `clusters` list")])
    return raw


class _Duplicates(dict):
    """A JSON object that named some key twice (json keeps the last value silently); `duplicates` lists them."""

    duplicates: list[str]


def _keep_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    marked = _Duplicates(out)
    seen: set[str] = set()
    marked.duplicates = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    return marked


def _duplicate_problems(raw: Any) -> list[Problem]:
    """Every key a JSON object names twice, at its JSON path (walks the tree once; depth is bounded by MAX_DEPTH)."""
    problems: list[Problem] = []
    todo: list[tuple[tuple, Any]] = [((), raw)]
    while todo:
        loc, value = todo.pop()
        if isinstance(value, _Duplicates):
            problems += [Problem(json_path((*loc, key)), f"duplicate key {show(key)}: JSON keeps only the last value; "
                                 "write the key once") for key in dict.fromkeys(value.duplicates)]
        if isinstance(value, dict):
            todo += [((*loc, k), v) for k, v in value.items() if isinstance(v, (dict, list))]
        elif isinstance(value, list):
            todo += [((*loc, i), v) for i, v in enumerate(value) if isinstance(v, (dict, list))]
    return sorted(problems, key=lambda p: p.path)


def _too_deep(text: str) -> Problem | None:
    """The first place where `text` nests objects/lists deeper than MAX_DEPTH, as a line/column problem.

    One linear scan that skips string literals (a bracket inside a string is not nesting). The possessive `*+`
    and the optional closing quote keep it linear on an unterminated string too (json.loads reports that one)."""
    depth = 0
    for match in re.finditer(r'"(?:[^"\\]|\\.)*+"?|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, match.start()) + 1
                column = match.start() - (text.rfind("\n", 0, match.start()) + 1) + 1
                return Problem("", f"line {line}, column {column}: nested deeper than {MAX_DEPTH} levels of objects "
                               "and lists; clusters.json never needs that many")
        elif token in "]}":
            depth -= 1
    return None

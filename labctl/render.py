"""One jinja2 Environment over templates/. StrictUndefined: a missing value is an error, never an empty string."""

from __future__ import annotations

import shlex
from functools import lru_cache
from typing import Any

from .remote.base import Script
from .resources import TEMPLATES


@lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    # Every value that lands in a shell script goes through `q` (shlex.quote); never format shell by hand.
    env.filters["q"] = lambda value: shlex.quote(str(value))
    env.filters["qwords"] = lambda values: " ".join(shlex.quote(str(v)) for v in values)
    return env


def render(template: str, **params: Any) -> str:
    return environment().get_template(template).render(**params)


def script(script_id: str, template: str, **params: Any) -> Script:
    """A node script: its identity, the rendered text, and the parameters (the simulated lab reads those)."""
    return Script(script_id, render(template, **params), params)

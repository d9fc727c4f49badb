"""Data → HCL text, deterministic and already in `terraform fmt`'s layout (so a rendered file never differs from its
formatted self; tests/unit/test_terraform.py proves it with real Terraform's fmt).

The layout rules followed are those of hclwrite's formatter (hashicorp/hcl hclwrite/format.go), as Terraform 1.x
applies them: two-space indentation; within a body or an object, the `=` of consecutive single-line attributes is
aligned one space after the longest key, and a multi-line attribute, a nested block or a blank line ends such a run.
Values: a dict is a multi-line object, a list of scalars one line, any other list one element a line with a comma
after each. `Raw` is an expression written as is (a reference, a function call); `Type` a type constraint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Union

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*\Z")
# a bare `true`/`false`/`null`/`for` key would be read as that keyword, not as the name
KEYWORDS = {"true", "false", "null", "for", "in", "if"}


class Raw(str):
    """An HCL expression written verbatim: `terraform_data.x`, `path.module`, `var.ssh_password == null ? … : …`."""


@dataclass(frozen=True)
class Type:
    """A type constraint: kind is a primitive (`string`, `number`, `bool`, `any`), or `list`/`map` (of `of`), `tuple`
    (of the list `of`) or `object` (of the dict `of`, attribute name → Type)."""

    kind: str
    of: Any = None


@dataclass
class Block:
    type: str
    labels: list[str] = field(default_factory=list)
    body: list[Union[tuple[str, Any], Block]] = field(default_factory=list)


def string(text: str) -> str:
    """`text` as an HCL quoted string: JSON's escapes (HCL shares them) plus `${`/`%{` made literal."""
    return json.dumps(text, ensure_ascii=False).replace("${", "$${").replace("%{", "%%{")


def key(name: str) -> str:
    return name if IDENT.match(name) and name not in KEYWORDS else string(name)


def expr(value: Any, indent: int = 0) -> str:
    """One value as an HCL expression; lines after the first are indented for a value that starts at `indent`."""
    pad = " " * indent
    if isinstance(value, Type):
        return type_expr(value, indent)
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return string(value)
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{\n" + body([(key(k), v) for k, v in value.items()], indent + 2) + pad + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        if all(not isinstance(v, (dict, list, tuple, Raw)) for v in value):
            return "[" + ", ".join(expr(v) for v in value) + "]"
        inner = " " * (indent + 2)
        return "[\n" + "".join(f"{inner}{expr(v, indent + 2)},\n" for v in value) + pad + "]"
    raise TypeError(f"no HCL for {type(value).__name__}")


def type_expr(t: Type, indent: int = 0) -> str:
    pad = " " * indent
    if t.kind in ("list", "map"):
        return f"{t.kind}({type_expr(t.of, indent)})"
    if t.kind == "object":
        if not t.of:
            return "object({})"
        return "object({\n" + body([(key(k), v) for k, v in t.of.items()], indent + 2) + pad + "})"
    if t.kind == "tuple":
        inner = " " * (indent + 2)
        return "tuple([\n" + "".join(f"{inner}{type_expr(v, indent + 2)},\n" for v in t.of) + pad + "])"
    return t.kind


def body(items: list[tuple[str, Any] | Block], indent: int) -> str:
    """Attributes (already-rendered key, value) and blocks, one a line, with fmt's `=` alignment."""
    pad = " " * indent
    rendered: list[tuple[str, str] | str] = []
    for item in items:
        if isinstance(item, Block):
            rendered.append(block(item, indent))
        else:
            rendered.append((item[0], expr(item[1], indent)))
    out: list[str] = []
    run: list[tuple[str, str]] = []

    def flush() -> None:
        width = max((len(k) for k, _ in run), default=0)
        out.extend(f"{pad}{k.ljust(width)} = {v}\n" for k, v in run)
        run.clear()

    for item in rendered:
        if isinstance(item, tuple) and "\n" not in item[1]:
            run.append(item)
            continue
        flush()
        out.append(f"{pad}{item[0]} = {item[1]}\n" if isinstance(item, tuple) else item)
    flush()
    return "".join(out)


def block(b: Block, indent: int = 0) -> str:
    pad = " " * indent
    head = " ".join([b.type, *(string(label) for label in b.labels)])
    if not b.body:
        return f"{pad}{head} {{\n{pad}}}\n"
    return f"{pad}{head} {{\n" + body(b.body, indent + 2) + f"{pad}}}\n"


def document(blocks: list[Block], header: str = "") -> str:
    """A whole .tf file: the `#` comment lines of `header`, then the blocks separated by blank lines."""
    lines = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    return (lines + "\n" if lines else "") + "\n".join(block(b) for b in blocks)

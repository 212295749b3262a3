"""Which tables a Python source writes and reads, found in its SQL strings (a test helper).

Every string in the source counts: plain, implicitly concatenated, joined with ``+``, and f-strings (a
``{...}`` part reads as ``?``); docstrings do not. A write is ``INSERT [OR ...] INTO t``, ``REPLACE INTO
t``, ``UPDATE [OR ...] t`` or ``DELETE FROM t`` in any case, and sqlite-utils' table API
(``db["t"].insert(...)``, ``db.table("t").update(...)``, ...). Only names of tables in the schema
count, so English such as "update the config" in a message is not a write.
"""

from __future__ import annotations

import ast
import re

from sealong.store.db import MIGRATIONS

TABLES = frozenset(
    m.lower()
    for _, sql in MIGRATIONS
    for m in re.findall(r"CREATE\s+TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", sql, re.I)
)
_NAME = r"""["`\[]?(\w+)["`\]]?"""
_WRITE = re.compile(
    r"\b(?:INSERT(?:\s+OR\s+\w+)?\s+INTO|REPLACE\s+INTO|UPDATE(?:\s+OR\s+\w+)?|DELETE\s+FROM)\s+" + _NAME,
    re.I,
)
_READ = re.compile(r"\b(?<!DELETE\s)(?:FROM|JOIN)\s+" + _NAME, re.I)
_TABLE_WRITES = {"insert", "insert_all", "upsert", "upsert_all", "update", "delete", "delete_where"}


def _text(node: ast.expr) -> str | None:
    """The string an expression spells, if it is made of string literals (f-string values read as ?)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(_text(v) or "?" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _text(node.left), _text(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def _docstrings(tree: ast.Module) -> set[int]:
    owners = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, owners)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }


def sql_strings(source: str) -> list[str]:
    """Every string the source spells outside docstrings, the largest joined form of each."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    found: list[str] = []
    inner: set[int] = set()  # parts of a string already taken whole
    for node in ast.walk(tree):  # breadth first: a joined string comes before its parts
        if id(node) in skip or id(node) in inner or not isinstance(node, ast.expr):
            continue
        text = _text(node)
        if text is not None:
            found.append(text)
            inner.update(id(n) for n in ast.walk(node))
    return found


def _api_writes(source: str) -> set[str]:
    """Tables written through sqlite-utils: db["t"].insert(...), db.table("t").update(...), ..."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _TABLE_WRITES
        ):
            continue
        target = node.func.value
        if isinstance(target, ast.Subscript):
            name = _text(target.slice)
        elif isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.args:
            name = _text(target.args[0]) if target.func.attr == "table" else None
        else:
            name = None
        if name and name.lower() in TABLES:
            out.add(name.lower())
    return out


def written_tables(source: str) -> set[str]:
    """The schema's tables that the source's SQL (or sqlite-utils calls) write."""
    out = _api_writes(source)
    for text in sql_strings(source):
        out.update(t.lower() for t in _WRITE.findall(text) if t.lower() in TABLES)
    return out


def read_tables(source: str) -> set[str]:
    """The schema's tables that the source's SQL reads (FROM or JOIN; not DELETE FROM)."""
    out = set()
    for text in sql_strings(source):
        out.update(t.lower() for t in _READ.findall(text) if t.lower() in TABLES)
    return out

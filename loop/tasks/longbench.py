"""LongBench JSONL loader for evaluation.

Each line: {input, context, answers: [str], length, dataset, language, all_classes, _id}. The task name is
the record's `dataset` field, else the file's stem.
"""

from __future__ import annotations

from pathlib import Path

from sealong.loop.errors import DataError
from sealong.loop.tasks.records import (
    QuestionRecord,
    approx_tokens,
    check_text,
    check_unique_ids,
    read_jsonl,
    require,
)


def _optional(obj: dict, key: str, kinds: tuple[type, ...], p: str, lineno: int):
    """An optional field: absent or null gives None, else it must have one of `kinds` (never a bool)."""
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, kinds) or isinstance(value, bool):
        names = "/".join(k.__name__ for k in kinds)
        raise DataError(p, lineno, key, f"expected {names} or null, got {type(value).__name__}")
    check_text(value, p, lineno, key)
    return value


def load_longbench(path: str | Path, limit: int | None = None) -> list[QuestionRecord]:
    path = Path(path)
    records, lines = [], []
    for lineno, obj in read_jsonl(path):
        p = str(path)
        question = require(obj, "input", str, p, lineno, nonempty=True)
        context = require(obj, "context", str, p, lineno, nonempty=True)
        answers = require(obj, "answers", list, p, lineno, nonempty=True)
        if not all(isinstance(a, str) for a in answers):
            raise DataError(p, lineno, "answers", "expected a list of strings")
        rid = _optional(obj, "_id", (str, int), p, lineno)
        task = _optional(obj, "dataset", (str,), p, lineno) or path.stem
        length = _optional(obj, "length", (int,), p, lineno)
        if length is not None and length < 0:
            raise DataError(p, lineno, "length", f"must be >= 0 (got {length})")
        records.append(
            QuestionRecord(
                id=f"lb-{task}-{rid if rid is not None else f'{path.stem}-{lineno}'}",
                context=context,
                question=question,
                answers=list(answers),
                source="longbench",
                task=task,
                n_tokens=length or approx_tokens(context),
            )
        )
        lines.append(lineno)
        if limit is not None and len(records) >= limit:
            break
    check_unique_ids(records, str(path), lines)
    return records

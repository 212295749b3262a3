"""LongBench JSONL loader for evaluation.

Each line: {input, context, answers: [str], length, dataset, language, all_classes, _id}. The task name is
the record's `dataset` field, else the file's stem.
"""

from __future__ import annotations

from pathlib import Path

from sealong.loop.tasks.records import QuestionRecord, approx_tokens, check_unique_ids, read_jsonl, require


def load_longbench(path: str | Path, limit: int | None = None) -> list[QuestionRecord]:
    path = Path(path)
    records, lines = [], []
    for lineno, obj in read_jsonl(path):
        p = str(path)
        question = require(obj, "input", str, p, lineno, nonempty=True)
        context = require(obj, "context", str, p, lineno, nonempty=True)
        answers = require(obj, "answers", list, p, lineno, nonempty=True)
        if not all(isinstance(a, str) for a in answers):
            from sealong.loop.errors import DataError

            raise DataError(p, lineno, "answers", "expected a list of strings")
        rid = obj.get("_id", f"{path.stem}-{lineno}")
        task = obj.get("dataset") or path.stem
        records.append(
            QuestionRecord(
                id=f"lb-{task}-{rid}", context=context, question=question, answers=list(answers),
                source="longbench", task=str(task), n_tokens=int(obj.get("length") or approx_tokens(context)),
            )
        )
        lines.append(lineno)
        if limit is not None and len(records) >= limit:
            break
    check_unique_ids(records, str(path), lines)
    return records

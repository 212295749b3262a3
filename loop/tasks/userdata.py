"""Your own data: question records from local JSONL (or Parquet) files, or a folder of documents.

Two shapes, both read into the same QuestionRecord as the built-in sources:

- Records (`train_source = "jsonl"`, `eval_source = "jsonl"`): one object per line with a question and a
  context, given inline (a string), as a list of passages (strings, or objects with `text` and an
  optional `title`), or as the path of a text/Markdown file (relative to the records file). An id and
  every other field are kept (the id names the question in lineage; the rest is stored as metadata).
  Training needs no answers; an eval file needs them (`answers`: a list of strings, or one string).
  `.parquet` files are read the same way when the optional `parquet` extra (pyarrow) is installed.
- A folder (`train_source = "folder"`): every .txt/.md/.markdown/.rst file under `train_path` is a
  document, and `questions_path` holds the questions, one record per line. A question that names a
  document (`document`: its path relative to the folder) is asked about that document; one that names
  none is asked about every document.

Field names default to the common ones (the first present wins) and each can be set in [data]
(`id_field`, `question_field`, `context_field`, `context_file_field`, `answers_field`,
`document_field`). A bad record raises DataError naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealong.loop.errors import DataError
from sealong.loop.tasks.records import (
    QuestionRecord,
    approx_tokens,
    check_text,
    read_jsonl,
    read_text_file,
)

# The names each field is looked up under when [data] does not name it, in order.
COMMON_NAMES: dict[str, tuple[str, ...]] = {
    "id": ("id", "_id", "qid", "question_id"),
    "question": ("question", "input", "query"),
    "context": ("context", "passages", "contexts", "text"),
    "context_file": ("context_file", "context_path", "file"),
    "answers": ("answers", "answer"),
    "document": ("document", "doc", "path"),
}
DOCUMENT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")


@dataclass
class FieldMap:
    """Which field holds what; "" looks the field up under its COMMON_NAMES."""

    id: str = ""
    question: str = ""
    context: str = ""
    context_file: str = ""
    answers: str = ""
    document: str = ""

    @classmethod
    def from_config(cls, d: Any) -> FieldMap:
        return cls(
            id=d.id_field,
            question=d.question_field,
            context=d.context_field,
            context_file=d.context_file_field,
            answers=d.answers_field,
            document=d.document_field,
        )

    def names(self, role: str) -> tuple[str, ...]:
        chosen = getattr(self, role)
        return (chosen,) if chosen else COMMON_NAMES[role]

    def find(self, obj: dict[str, Any], role: str) -> str | None:
        """The field of `obj` that holds `role` (present and not null), or None."""
        return next((k for k in self.names(role) if obj.get(k) is not None), None)

    def missing(self, role: str) -> str:
        names = self.names(role)
        if len(names) == 1:
            return "missing"
        return f"missing (looked for {', '.join(names)}; set [data] {role}_field to name another)"


def read_records(
    path: str | Path, unfinished: list[int] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, object) from a JSONL file, or from a Parquet file (rows numbered from 1).
    `unfinished`: see read_jsonl (a Parquet file has no unfinished rows)."""
    path = Path(path)
    if path.suffix.lower() != ".parquet":
        yield from read_jsonl(path, unfinished)
        return
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            str(path),
            None,
            None,
            "reading Parquet needs pyarrow, the optional 'parquet' extra: pip install 'sealong-loop[parquet]' "
            "(or convert the file to JSONL)",
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError family
        raise DataError(str(path), None, None, f"not a readable Parquet file ({e})") from None
    yield from enumerate(table.to_pylist(), 1)


def _question(obj: dict, fields: FieldMap, p: str, lineno: int) -> tuple[str, str]:
    """The record's question and the field it came from; a missing one names the field names tried."""
    qkey = fields.find(obj, "question")
    if qkey is None:
        raise DataError(p, lineno, fields.names("question")[0], fields.missing("question"))
    return _text(obj, qkey, p, lineno), qkey


def _text(obj: dict, key: str, p: str, lineno: int) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(p, lineno, key, f"expected str, got {type(value).__name__}")
    if not value.strip():
        raise DataError(p, lineno, key, "must not be empty")
    check_text(value, p, lineno, key)
    return value


def _passages(value: list, key: str, p: str, lineno: int) -> str:
    if not value:
        raise DataError(p, lineno, key, "must not be empty")
    docs = []
    for i, item in enumerate(value):
        if isinstance(item, str):
            title, text = "", item
        elif isinstance(item, dict):
            text = item.get("text", item.get("paragraph_text"))
            title = item.get("title") or ""
            if not isinstance(text, str):
                raise DataError(p, lineno, f"{key}[{i}].text", "missing or not a string")
            if not isinstance(title, str):
                raise DataError(p, lineno, f"{key}[{i}].title", "expected str")
        else:
            raise DataError(
                p, lineno, f"{key}[{i}]", f"expected a string or an object, got {type(item).__name__}"
            )
        check_text([title, text], p, lineno, f"{key}[{i}]")
        if text.strip():
            docs.append(f"{title}\n{text}" if title else text)
    if not docs:
        raise DataError(p, lineno, key, "every passage is empty")
    return "\n\n".join(f"Passage {i + 1}:\n{d}" for i, d in enumerate(docs))


def _context(obj: dict, fields: FieldMap, p: str, lineno: int, base: Path) -> str:
    key = fields.find(obj, "context")
    if key is not None:
        value = obj[key]
        if isinstance(value, list):
            return _passages(value, key, p, lineno)
        return _text(obj, key, p, lineno)
    fkey = fields.find(obj, "context_file")
    if fkey is None:
        raise DataError(
            p,
            lineno,
            fields.names("context")[0],
            "missing: give the context inline (" + ", ".join(fields.names("context")) + ") or as the path "
            "of a text/Markdown file (" + ", ".join(fields.names("context_file")) + ")",
        )
    rel = _text(obj, fkey, p, lineno)
    text = read_text_file(base / rel, p, lineno, fkey)
    if not text.strip():
        raise DataError(p, lineno, fkey, f"{rel} is empty")
    return text


def _answers(
    obj: dict, fields: FieldMap, p: str, lineno: int, required: bool
) -> tuple[list[str], str | None]:
    key = fields.find(obj, "answers")
    if key is None:
        if required:
            raise DataError(
                p,
                lineno,
                fields.names("answers")[0],
                fields.missing("answers") + " (an eval record needs answers)",
            )
        return [], None
    value = obj[key]
    answers = [value] if isinstance(value, str) else value
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise DataError(p, lineno, key, "expected a string or a list of strings")
    check_text(answers, p, lineno, key)
    answers = [a for a in answers if a.strip()]
    if required and not answers:
        raise DataError(p, lineno, key, "must not be empty (an eval record needs at least one answer)")
    return answers, key


def _id(obj: dict, fields: FieldMap, p: str, lineno: int, default: str) -> tuple[str, str | None]:
    key = fields.find(obj, "id")
    if key is None:
        return default, None
    value = obj[key]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise DataError(p, lineno, key, f"expected str or int, got {type(value).__name__}")
    value = str(value)
    if not value.strip():
        raise DataError(p, lineno, key, "must not be empty")
    check_text(value, p, lineno, key)
    return value, key


def _meta(obj: dict, used: set[str | None]) -> dict[str, Any]:
    """Every field not read as id, question, context or answers; JSON-safe (Parquet may carry dates)."""
    extra = {k: v for k, v in obj.items() if k not in used}
    return json.loads(json.dumps(extra, default=str, ensure_ascii=False))


def _task(obj: dict, default: str) -> str:
    task = obj.get("task")
    return task if isinstance(task, str) and task.strip() else default


def iter_records(
    path: str | Path, fields: FieldMap, split: str, unfinished: list[int] | None = None
) -> Iterator[tuple[int, QuestionRecord]]:
    """(line, record) from one JSONL/Parquet file, in file order; DataError at the first bad record (the
    records before it have been yielded). split 'eval' requires answers and prefixes ids with 'eval:'
    (one file may serve both roles)."""
    path = Path(path)
    p, base = str(path), path.parent
    seen: dict[str, int] = {}
    for lineno, obj in read_records(path, unfinished):
        question, qkey = _question(obj, fields, p, lineno)
        context = _context(obj, fields, p, lineno, base)
        answers, akey = _answers(obj, fields, p, lineno, required=split == "eval")
        rid, ikey = _id(obj, fields, p, lineno, f"{path.stem}-{lineno}")
        used = {qkey, akey, ikey, fields.find(obj, "context") or fields.find(obj, "context_file"), "task"}
        rec = QuestionRecord(
            id=f"eval:{rid}" if split == "eval" else rid,
            context=context,
            question=question,
            answers=answers,
            source="jsonl",
            task=_task(obj, path.stem),
            n_tokens=approx_tokens(context),
            meta={"file": p, "line": lineno, **_meta(obj, used)},
        )
        _check_new_id(rec.id, seen, p, lineno)
        yield lineno, rec


def _check_new_id(rid: str, seen: dict[str, int], p: str, lineno: int) -> None:
    if rid in seen:
        raise DataError(p, lineno, "id", f"duplicate id {rid!r} (first on line {seen[rid]})")
    seen[rid] = lineno


def load_records(
    path: str | Path,
    fields: FieldMap,
    split: str,
    limit: int | None = None,
) -> list[QuestionRecord]:
    """Records from one JSONL/Parquet file (iter_records), all of them or the first `limit`."""
    records = []
    for _, rec in iter_records(path, fields, split):
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError(str(path), None, None, "no records")
    return records


def list_documents(folder: str | Path) -> list[Path]:
    """The folder's documents (relative paths, sorted), hidden files and folders skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), None, None, "folder not found")
    return sorted(
        f.relative_to(folder)
        for f in folder.rglob("*")
        if f.suffix.lower() in DOCUMENT_SUFFIXES
        and f.is_file()
        and not any(part.startswith(".") for part in f.relative_to(folder).parts)
    )


def iter_folder(
    folder: str | Path,
    questions_path: str | Path,
    fields: FieldMap,
    docs: list[Path] | None = None,
    unfinished: list[int] | None = None,
) -> Iterator[tuple[int, QuestionRecord]]:
    """(line, record) for questions about a folder of documents, in question-file order: each question
    names its document, or applies to every one of `docs` (default: list_documents). DataError at the
    first bad question (the records before it have been yielded)."""
    folder, qpath = Path(folder), Path(questions_path)
    docs = list_documents(folder) if docs is None else docs
    if not docs:
        raise DataError(
            str(folder), None, None, f"no documents (files ending {', '.join(DOCUMENT_SUFFIXES)})"
        )
    texts: dict[Path, str] = {}

    def text_of(rel: Path, lineno: int | None, key: str | None) -> str:
        if rel not in texts:
            texts[rel] = read_text_file(folder / rel, str(qpath), lineno, key)
        return texts[rel]

    p = str(qpath)
    seen: dict[str, int] = {}
    for lineno, obj in read_records(qpath, unfinished):
        question, qkey = _question(obj, fields, p, lineno)
        answers, akey = _answers(obj, fields, p, lineno, required=False)
        rid, ikey = _id(obj, fields, p, lineno, f"{qpath.stem}-{lineno}")
        dkey = fields.find(obj, "document")
        if dkey is not None:
            rel = Path(_text(obj, dkey, p, lineno))
            if rel not in docs:
                raise DataError(
                    p,
                    lineno,
                    dkey,
                    f"no document {str(rel)!r} in {folder} (documents: "
                    + ", ".join(map(str, docs[:5]))
                    + (", …" if len(docs) > 5 else "")
                    + ")",
                )
            targets = [(rel, rid)]
        else:
            targets = [(rel, f"{rid}@{rel}") for rel in docs]
        meta = _meta(obj, {qkey, akey, ikey, dkey, "task"})
        out = []
        for rel, qid in targets:
            context = text_of(rel, lineno, dkey)
            if not context.strip():
                raise DataError(str(folder / rel), None, None, "the document is empty")
            _check_new_id(qid, seen, p, lineno)
            out.append(
                QuestionRecord(
                    id=qid,
                    context=context,
                    question=question,
                    answers=answers,
                    source="folder",
                    task=_task(obj, qpath.stem),
                    n_tokens=approx_tokens(context),
                    meta={"file": p, "line": lineno, "document": str(rel), **meta},
                )
            )
        for rec in out:  # a question line's records all at once: never part of a line
            yield lineno, rec


def load_folder(folder: str | Path, questions_path: str | Path, fields: FieldMap) -> list[QuestionRecord]:
    """Questions about a folder of documents (iter_folder), all of them."""
    records = [rec for _, rec in iter_folder(folder, questions_path, fields)]
    if not records:
        raise DataError(str(questions_path), None, None, "no questions")
    return records

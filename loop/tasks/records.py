"""The internal question record and a JSONL reader that names the file, line and field of bad input."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sealong.loop.errors import DataError

# One record per line. A longer line is refused before it is parsed (memory stays bounded by this), since
# prompts keep only max_prompt_tokens of a context anyway: 16 MiB is ~4M tokens.
MAX_LINE_BYTES = 16 << 20


@dataclass
class QuestionRecord:
    id: str
    context: str
    question: str
    answers: list[str] = field(default_factory=list)  # may be empty for training; never shown to training
    source: str = "synthetic"
    task: str = "synthetic"
    n_tokens: int = 0  # approximate context tokens (whitespace words × 1.3); the sampler records exact ones
    meta: dict[str, Any] = field(default_factory=dict)  # your own data: file, line, its other fields

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def approx_tokens(text: str) -> int:
    return int(len(text.split()) * 1.3)


def read_jsonl(path: str | Path, unfinished: list[int] | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; raise DataError on the first bad line.

    Files as editors and spreadsheets write them are read: a UTF-8 byte-order mark on the first line and
    CRLF line ends. A last line with no line end that is not valid JSON is reported as an unfinished
    record (a file still being written), never parsed as half a record. With `unfinished` (a list), a
    last line with no line end is not read at all, valid JSON or not: its number is appended to the list
    (a file that grows while the run reads it: the line is read once its line end is written)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), None, None, "file not found")
    with open(path, "rb") as f:
        lineno = 0
        while raw := f.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if len(raw) > MAX_LINE_BYTES:
                raise DataError(
                    str(path),
                    lineno,
                    None,
                    f"line is longer than the {MAX_LINE_BYTES >> 20} MiB limit for one "
                    "record; shorten it (prompts keep max_prompt_tokens of a context)",
                )
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(str(path), lineno, None, f"not valid UTF-8 (byte {e.start})") from None
            if not text.strip():
                continue
            if unfinished is not None and not raw.endswith(b"\n"):
                unfinished.append(lineno)
                return
            try:
                obj = json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                if not raw.endswith(b"\n") and len(raw) <= MAX_LINE_BYTES:
                    raise DataError(
                        str(path),
                        lineno,
                        None,
                        "unfinished record: the last line has no line end and is not valid JSON "
                        "(is the file still being written?)",
                    ) from None
                raise DataError(
                    str(path), lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"
                ) from None
            if not isinstance(obj, dict):
                raise DataError(str(path), lineno, None, f"expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require(
    obj: dict[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    path: str,
    lineno: int,
    nonempty: bool = False,
) -> Any:
    """Fetch a field, checking presence, type and (optionally) non-emptiness."""
    if key not in obj:
        raise DataError(path, lineno, key, "missing")
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = "/".join(k.__name__ for k in kinds)
        raise DataError(path, lineno, key, f"expected {names}, got {type(value).__name__}")
    if nonempty and (value == "" or (isinstance(value, str) and not value.strip()) or value == []):
        raise DataError(path, lineno, key, "must not be empty")
    check_text(value, path, lineno, key)
    return value


def check_text(value: Any, path: str, lineno: int, key: str) -> None:
    """Strings (also inside lists) must be storable text: JSON's \\ud800-style escapes can encode unpaired
    surrogates, which are not UTF-8 and would fail later, far from the file."""
    for i, s in enumerate(value if isinstance(value, list) else [value]):
        if isinstance(s, str):
            try:
                s.encode("utf-8")
            except UnicodeEncodeError as e:
                where = f"{key}[{i}]" if isinstance(value, list) else key
                raise DataError(
                    path,
                    lineno,
                    where,
                    f"holds an unpaired surrogate {s[e.start]!r} (a \\u escape that is not a character)",
                ) from None


def check_unique_ids(records: list[QuestionRecord], path: str, lines: list[int]) -> None:
    seen: dict[str, int] = {}
    for rec, lineno in zip(records, lines):
        if rec.id in seen:
            raise DataError(path, lineno, "id", f"duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = lineno


def read_text_file(path: str | Path, where: str, lineno: int | None, key: str | None) -> str:
    """A text or Markdown document as UTF-8, with a byte-order mark dropped and CRLF/CR ends made LF.
    Errors name the record (`where`:`lineno` field `key`) that points at the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(where, lineno, key, f"file not found: {path}") from None
    except IsADirectoryError:
        raise DataError(where, lineno, key, f"is a directory, not a text file: {path}") from None
    except OSError as e:
        raise DataError(where, lineno, key, f"cannot read {path}: {e.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(where, lineno, key, f"{path} is not valid UTF-8 (byte {e.start})") from None
    return text.replace("\r\n", "\n").replace("\r", "\n")

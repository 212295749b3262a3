"""Your own data as it keeps arriving, and which questions each round trains on.

Between rounds the controller calls `Intake.sync`: when train_path (a records file, or the documents
folder and its questions file) changed since the last look, it is read again and every record the run
has not recorded yet (appended lines, new question lines, new documents) is recorded, numbered on after
the pool. Nothing recorded is ever changed or deleted: recorded questions that are no longer in the file
(truncated or rewritten) and records whose text changed are reported as one warning event; a bad record
is reported as an error event in the usual form, `file:line: field 'x': problem`, and the records from
it on wait until it is fixed. A last line with no line end is never read (a record being written; it is
read once its line end is), nor a document or Parquet file modified in the last SETTLE_S seconds.

`choose_questions` picks a new round's training questions ([data] new_questions) and `record_round`
writes them to round_questions in the transaction that creates the round: a resumed stage sees the same
set however the pool has grown since, and lineage knows which questions trained which adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import sqlite_utils
from sealong.loop.config import Config
from sealong.loop.errors import DataError
from sealong.store.db import Transaction, log_event, one, rows

GROWING = ("jsonl", "folder")  # the sources that are read again between rounds
SETTLE_S = 1.0  # a document (or Parquet file) modified this recently may still be being written


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class Intake:
    """The controller's view of a growing source: what it last saw, and what it has already reported."""

    def __init__(self, cfg: Config, run_id: int):
        self.cfg, self.run_id = cfg, run_id
        self.signature: tuple | None = None  # the source's files (size, mtime, inode) at the last read
        self.sizes: dict[str, int] = {}
        self.reported: set[str] = set()
        self.note = ""  # why something there is not read yet (for the waiting status line)

    @property
    def growing(self) -> bool:
        return self.cfg.data.train_source in GROWING

    @property
    def source(self) -> str:
        d = self.cfg.data
        return d.train_path if d.train_source == "jsonl" else d.questions_path

    def _signature(self) -> tuple[tuple, list[Path] | None]:
        """The source's files and their stats; for a folder also its documents (None: folder gone)."""
        from sealong.loop.tasks.userdata import list_documents

        d = self.cfg.data
        sig = [(self.source, _stat(Path(self.source)))]
        docs = None
        if d.train_source == "folder":
            try:
                docs = list_documents(d.train_path)
            except DataError:
                docs = None
            for rel in docs or []:
                sig.append((str(rel), _stat(Path(d.train_path) / rel)))
        return tuple(sig), docs

    def _unsettled(self, sig: tuple) -> str | None:
        d = self.cfg.data
        settle = sig[1:] if d.train_source == "folder" else sig if self.source.endswith(".parquet") else ()
        now = time.time_ns()
        for name, st in settle:
            if st is not None and now - st[1] < SETTLE_S * 1e9:
                return name
        return None

    def sync(self, db: sqlite_utils.Database) -> int:
        """Record the source's new questions, if it changed; report what changed under the run. Returns
        how many questions were recorded."""
        if not self.growing:
            return 0
        sig, docs = self._signature()
        if sig == self.signature:
            return 0
        busy = self._unsettled(sig)
        if busy is not None:
            self.note = f"{busy} changed in the last second; it is read once it settles"
            return 0
        self.note = ""
        read, error, unfinished = self._read(docs)
        stop = error.line if error is not None and error.line else (unfinished[0] if unfinished else None)
        if unfinished:
            self.note = (
                f"{self.source}:{unfinished[0]} has no line end yet (a record being written?); "
                "it is read once its line ends"
            )
        recorded = {
            r["id"]: r
            for r in rows(db, "SELECT id, question, context, meta_json FROM questions WHERE split = 'train'")
        }
        texts = {_text_key(r["question"], r["context"]) for r in recorded.values()}
        new, moved = [], []
        for r in read:
            if r.id in recorded:
                continue
            key = _text_key(r.question, r.context)
            # the same question about the same text under another id (a default id, FILE-LINE, moves
            # with its line when lines are inserted above it): already recorded, never trained twice
            (moved if key in texts else new).append(r)
            texts.add(key)
        self._report_changes(db, sig, read, recorded, stop, [r.id for r in moved])
        if error is not None:
            self._report(
                db,
                f"{error} (new records from there on wait until it is fixed; nothing recorded is affected)",
                "error",
            )
            self.note = f"new records wait for a fix: {error}"
        if new:
            from sealong.loop.engine.workdir import insert_questions

            with Transaction(db):
                last = one(db, "SELECT MAX(pool_index) AS i FROM questions WHERE split = 'train'")["i"]
                insert_questions(db, [("train", r) for r in new], {"train": (last or 0) + 1})
                lines = [r.meta.get("line") for r in new if r.meta.get("line")]
                where = f" (lines {min(lines)}–{max(lines)})" if lines else ""
                log_event(db, f"{len(new)} new question(s) from {self.source}{where}", run_id=self.run_id)
        self.signature = sig
        return len(new)

    def _read(self, docs: list[Path] | None) -> tuple[list, DataError | None, list[int]]:
        """Every complete record, in file order, up to the first bad one."""
        from sealong.loop.tasks.userdata import FieldMap, iter_folder, iter_records

        d = self.cfg.data
        fields = FieldMap.from_config(d)
        read, unfinished = [], []
        try:
            if d.train_source == "jsonl":
                records = iter_records(d.train_path, fields, "train", unfinished)
            else:
                if docs is None:
                    raise DataError(d.train_path, None, None, "folder not found")
                records = iter_folder(d.train_path, d.questions_path, fields, docs, unfinished)
            for _, rec in records:
                read.append(rec)
        except DataError as e:
            return read, e, unfinished
        except OSError as e:  # removed or made unreadable between the look and the read
            return (
                read,
                DataError(e.filename or self.source, None, None, f"cannot read: {e.strerror}"),
                unfinished,
            )
        return read, None, unfinished

    def _report_changes(
        self,
        db: sqlite_utils.Database,
        sig: tuple,
        read: list,
        recorded: dict,
        stop: int | None,
        moved: list[str],
    ) -> None:
        """One warning when the file shrank, lost recorded questions or changed recorded ones."""
        size = (sig[0][1] or (0,))[0]
        shrank = self.sizes.get(self.source, 0) > size
        self.sizes[self.source] = size
        ids = {r.id for r in read}
        missing = []
        for qid, row in recorded.items():
            meta = json.loads(row["meta_json"] or "{}")
            if qid in ids or meta.get("file") != self.source:
                continue
            if stop is not None and (meta.get("line") or 0) >= stop:
                continue  # not read this time: an unfinished or bad line, or after one
            missing.append(qid)
        changed = [
            r.id
            for r in read
            if r.id in recorded
            and (recorded[r.id]["question"], recorded[r.id]["context"]) != (r.question, r.context)
        ]
        parts = []
        if shrank or not Path(self.source).exists():
            parts.append("it is gone" if sig[0][1] is None else "it shrank (truncated or rewritten)")
        if missing:
            parts.append(f"{len(missing)} recorded question(s) are no longer in it ({_ids(missing)})")
        if changed:
            parts.append(f"{len(changed)} record(s) differ from their recorded text ({_ids(changed)})")
        if moved:
            parts.append(f"{len(moved)} record(s) are recorded already under another id ({_ids(moved)})")
        if parts:
            self._report(
                db,
                f"{self.source} changed under the run: {'; '.join(parts)}. Every recorded question is kept "
                "as recorded, with what it trained; a changed record is not trained again (give it a new id "
                "to train on it)",
                "warn",
            )

    def _report(self, db: sqlite_utils.Database, message: str, level: str) -> None:
        if message not in self.reported:  # once per controller (a restarted one may say it again)
            self.reported.add(message)
            log_event(db, message, level, run_id=self.run_id)


def _text_key(question: str, context: str) -> str:
    return hashlib.sha256(f"{question}\0{context}".encode()).hexdigest()


def _ids(ids: list[str]) -> str:
    return ", ".join(ids[:3]) + (", …" if len(ids) > 3 else "")


# -- a round's questions ---------------------------------------------------------------------------------
def _rotation(pool: list[str], round_idx: int, k: int) -> list[str]:
    """The built-in sources' rule: a slice of the pool, rotating each round."""
    if not pool:
        return []
    start = (round_idx * k) % len(pool)
    return [pool[(start + i) % len(pool)] for i in range(min(k, len(pool)))]


def trained(db: sqlite_utils.Database, run_id: int) -> dict[str, int]:
    """Question id -> the last round (index) of the run that trained on it."""
    return {
        r["question_id"]: r["last"]
        for r in rows(
            db,
            "SELECT rq.question_id, MAX(r.idx) AS last FROM round_questions rq "
            "JOIN rounds r ON r.id = rq.round_id WHERE r.run_id = ? GROUP BY rq.question_id",
            (run_id,),
        )
    }


def choose_questions(
    db: sqlite_utils.Database, cfg: Config, run_id: int, round_idx: int
) -> list[tuple[str, bool]]:
    """A new round's training questions, (id, new?) each; [] when the rule needs a new one and none is."""
    d = cfg.data
    pool = [r["id"] for r in rows(db, "SELECT id FROM questions WHERE split = 'train' ORDER BY pool_index")]
    last = trained(db, run_id)
    mode = d.new_questions if d.train_source in GROWING else "rotate"
    k = d.questions_per_round
    for r in rows(  # rounds from before round_questions trained on the rotating slice
        db,
        "SELECT idx FROM rounds WHERE run_id = ? AND id NOT IN (SELECT round_id FROM round_questions)",
        (run_id,),
    ):
        for q in _rotation(pool, r["idx"], k):
            last[q] = max(last.get(q, -1), r["idx"])
    if mode == "rotate":
        return [(q, q not in last) for q in _rotation(pool, round_idx, k)]
    fresh = [q for q in pool if q not in last]
    if not fresh:
        return []
    n_old = min(round(k * d.old_question_fraction), k - 1) if mode == "mix" else 0
    position = {q: i for i, q in enumerate(pool)}
    old = sorted(last, key=lambda q: (last[q], position.get(q, 0)))[:n_old]  # least recently trained first
    return [(q, True) for q in fresh[: k - len(old)]] + [(q, False) for q in old]  # too few old: more new


def record_round(db: sqlite_utils.Database, round_id: int, chosen: list[tuple[str, bool]]) -> None:
    """Write a round's questions, in the caller's transaction (the one that creates the round)."""
    for position, (qid, is_new) in enumerate(chosen):
        db.execute(
            "INSERT INTO round_questions (round_id, question_id, position, is_new) VALUES (?, ?, ?, ?)",
            (round_id, qid, position, int(is_new)),
        )


def waiting_message(db: sqlite_utils.Database, run_id: int, since: float, note: str = "") -> str:
    """The status line while a run waits for new data."""
    n = len(trained(db, run_id))
    return (
        f"waiting for new data since {time.strftime('%H:%M', time.localtime(since))} "
        f"({n} question(s) trained, 0 new)" + (f"; {note}" if note else "")
    )


def rounds_question_ids(db: sqlite_utils.Database, round_id: int) -> list[str]:
    """The recorded questions of a round, in order ([] for a round from before round_questions)."""
    return [
        r["question_id"]
        for r in rows(
            db, "SELECT question_id FROM round_questions WHERE round_id = ? ORDER BY position", (round_id,)
        )
    ]

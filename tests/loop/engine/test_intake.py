"""Your own data that keeps arriving (engine/intake.py), on a real store: appended records are recorded
once, a half-written last line never, a truncated or rewritten file is reported and loses nothing, a bad
record is the usual one line; each rule picks a round's questions ([data] new_questions)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from sealong.loop.config import config_from_dict
from sealong.loop.engine.intake import Intake, choose_questions, record_round, waiting_message
from sealong.loop.engine.workdir import ensure_run, questions_for
from sealong.loop.stages.registry import STAGE_NAMES
from sealong.store import state
from sealong.store.db import Transaction, connect, rows


def _rec(i: int, **extra) -> dict:
    return {"id": f"q{i}", "question": f"What is item {i}?", "context": f"Item {i} is a thing.", **extra}


def _append(path: Path, *records, raw: bytes = b"") -> None:
    with open(path, "ab") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in records) + raw)


def _run(tmp_path: Path, n: int = 2, **data):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "mine.jsonl"
    _append(path, *[_rec(i) for i in range(n)])
    cfg = config_from_dict(
        {
            "run": {"max_rounds": 0},
            "data": {"train_source": "jsonl", "train_path": str(path), "questions_per_round": 2, **data},
        },
        check_paths=False,
    )
    db = connect(tmp_path / "wd")
    run_id = ensure_run(db, cfg, tmp_path / "wd", None, questions_for(cfg))
    return cfg, db, run_id, path, Intake(cfg, run_id)


def _round(db, cfg, run_id: int) -> list[str]:
    """Start the next round as the controller does, and finish it; its question ids ([] = none to train)."""
    idx = len(rows(db, "SELECT id FROM rounds WHERE run_id = ?", (run_id,)))
    chosen = choose_questions(db, cfg, run_id, idx)
    if chosen:
        with Transaction(db):
            rid = state.start_round(db, run_id, idx, None, STAGE_NAMES)
            record_round(db, rid, chosen)
            state.mark_round_done(db, rid)
    return [q for q, _ in chosen]


def _ids(db) -> list[str]:
    return [r["id"] for r in rows(db, "SELECT id FROM questions WHERE split = 'train' ORDER BY pool_index")]


def _events(db, level: str) -> list[str]:
    return [
        r["message"] for r in rows(db, "SELECT message FROM events WHERE level = ? ORDER BY id", (level,))
    ]


def test_appended_records_train_once_and_a_half_line_waits_for_its_line_end(tmp_path: Path):
    cfg, db, run_id, path, intake = _run(tmp_path)
    assert cfg.run.max_rounds == 0 and intake.sync(db) == 0
    assert _round(db, cfg, run_id) == ["q0", "q1"]
    assert intake.sync(db) == 0 and _round(db, cfg, run_id) == []  # nothing new: the controller waits
    assert "(2 question(s) trained, 0 new)" in waiting_message(db, run_id, time.time())
    half = b'{"id": "q3", "question": "What is item 3?", "context": "Item 3'
    _append(path, _rec(2), raw=half)  # q3 is being written right now
    assert intake.sync(db) == 1 and _ids(db) == ["q0", "q1", "q2"]
    assert f"{path}:4 has no line end yet" in intake.note
    assert _round(db, cfg, run_id) == ["q2"]
    _append(path, raw=b' is a thing."}')  # finished, but still no line end: complete JSON is not enough
    assert intake.sync(db) == 0 and _round(db, cfg, run_id) == []
    _append(path, raw=b"\r\n")
    assert intake.sync(db) == 1 and _round(db, cfg, run_id) == ["q3"]
    assert intake.note == "" and not _events(db, "warn") and not _events(db, "error")
    trained = rows(db, "SELECT question_id, COUNT(*) AS n FROM round_questions GROUP BY question_id")
    assert {r["question_id"]: r["n"] for r in trained} == {"q0": 1, "q1": 1, "q2": 1, "q3": 1}
    (meta,) = [
        json.loads(r["meta_json"]) for r in rows(db, "SELECT meta_json FROM questions WHERE id = 'q3'")
    ]
    assert meta == {"file": str(path), "line": 4}
    assert any("1 new question(s) from" in m and "(lines 4–4)" in m for m in _events(db, "info"))


def test_a_truncated_or_rewritten_file_is_reported_and_loses_nothing(tmp_path: Path):
    cfg, db, run_id, path, intake = _run(tmp_path, n=3)
    intake.sync(db)
    _round(db, cfg, run_id)
    before = rows(db, "SELECT * FROM questions ORDER BY pool_index")
    path.write_bytes(json.dumps(_rec(0)).encode() + b"\n")  # truncated to its first record
    assert intake.sync(db) == 0
    (warn,) = _events(db, "warn")
    assert f"{path} changed under the run: it shrank (truncated or rewritten); 2 recorded question(s)" in warn
    assert "(q1, q2)" in warn and "Every recorded question is kept" in warn
    assert rows(db, "SELECT * FROM questions ORDER BY pool_index") == before
    # rewritten: q0's text changed (kept as recorded, not trained again), q7 is new
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in [_rec(0, context="New."), _rec(7)]))
    assert intake.sync(db) == 1 and _ids(db) == ["q0", "q1", "q2", "q7"]
    assert "1 record(s) differ from their recorded text (q0)" in _events(db, "warn")[-1]
    assert rows(db, "SELECT context FROM questions WHERE id = 'q0'")[0]["context"] == "Item 0 is a thing."
    assert _round(db, cfg, run_id) == ["q2", "q7"]  # q2, gone from the file, is still recorded
    os.unlink(path)
    assert intake.sync(db) == 0 and "it is gone" in _events(db, "warn")[-1]
    assert len(_ids(db)) == 4


def test_a_bad_appended_record_is_one_line_and_what_follows_waits(tmp_path: Path):
    cfg, db, run_id, path, intake = _run(tmp_path)
    intake.sync(db)
    _append(path, _rec(2), {"id": "q3", "question": "Q?", "context": 5}, _rec(4))
    assert intake.sync(db) == 1 and _ids(db) == ["q0", "q1", "q2"]
    (err,) = _events(db, "error")
    assert err.startswith(f"{path}:4: field 'context': expected str, got int (new records from there on wait")
    assert intake.sync(db) == 0 and len(_events(db, "error")) == 1  # said once
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = json.dumps(_rec(3)).encode() + b"\n"  # fixed in place
    path.write_bytes(b"".join(lines))
    assert intake.sync(db) == 2 and _ids(db) == ["q0", "q1", "q2", "q3", "q4"]
    _append(path, _rec(1))
    assert intake.sync(db) == 0
    assert _events(db, "error")[-1].startswith(f"{path}:6: field 'id': duplicate id 'q1' (first on line 2)")


def test_mix_and_rotate(tmp_path: Path):
    cfg, db, run_id, path, intake = _run(tmp_path, n=4, new_questions="mix", old_question_fraction=0.5)
    intake.sync(db)
    assert _round(db, cfg, run_id) == ["q0", "q1"]  # nothing old yet: new ones only
    assert _round(db, cfg, run_id) == ["q2", "q0"]  # one new, one old (least recently trained first)
    assert _round(db, cfg, run_id) == ["q3", "q1"]
    assert _round(db, cfg, run_id) == []  # old ones alone are no round
    _append(path, _rec(4))
    intake.sync(db)
    assert _round(db, cfg, run_id) == ["q4", "q0"]
    new = {(r["question_id"], r["is_new"]) for r in rows(db, "SELECT * FROM round_questions")}
    assert ("q0", 1) in new and ("q0", 0) in new and ("q4", 1) in new
    cfg2, db2, run2, _, _ = _run(tmp_path / "rot", n=3, new_questions="rotate")
    assert [_round(db2, cfg2, run2) for _ in range(3)] == [["q0", "q1"], ["q2", "q0"], ["q1", "q2"]]


def test_a_folder_picks_up_new_documents_once_they_settle(tmp_path: Path, monkeypatch):
    from sealong.loop.engine import intake as intake_module

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Alpha is red.")
    qpath = tmp_path / "q.jsonl"
    _append(qpath, {"id": "c", "question": "What colour?"})
    cfg = config_from_dict(
        {"data": {"train_source": "folder", "train_path": str(docs), "questions_path": str(qpath)}},
        check_paths=False,
    )
    db = connect(tmp_path / "wd")
    run_id = ensure_run(db, cfg, tmp_path / "wd", None, questions_for(cfg))
    intake = Intake(cfg, run_id)
    monkeypatch.setattr(intake_module, "SETTLE_S", 60.0)
    os.utime(docs / "a.md", (time.time() - 120, time.time() - 120))
    (docs / "b.md").write_text("Beta is bl")  # being written
    assert intake.sync(db) == 0 and "b.md changed in the last second" in intake.note
    monkeypatch.setattr(intake_module, "SETTLE_S", 0.0)
    _append(qpath, {"id": "d", "question": "Which?", "document": "a.md"})
    assert intake.sync(db) == 2 and _ids(db) == ["c@a.md", "c@b.md", "d"]
    assert not _events(db, "warn")


@pytest.mark.parametrize(
    ("run", "data", "needle"),
    [
        ({"max_rounds": -1}, {}, "[run] max_rounds: must be >= 0, 0 = until stopped (got -1)"),
        ({"poll_seconds": 0}, {}, "[run] poll_seconds: must be > 0 (got 0.0)"),
        ({}, {"old_question_fraction": 1.0}, "[data] old_question_fraction: must be in [0, 1)"),
        ({}, {"new_questions": "newest"}, "new_questions"),
    ],
)
def test_the_new_settings_are_checked(run: dict, data: dict, needle: str):
    from sealong.loop.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        config_from_dict({"run": run, "data": data}, check_paths=False)
    assert needle in str(exc.value)


def test_a_line_inserted_above_never_trains_a_record_twice(tmp_path: Path):
    """Default ids (FILE-LINE) move with their lines: a record that moved is matched by its text."""
    cfg, _, _, path, _ = _run(tmp_path)
    plain = [{k: v for k, v in _rec(i).items() if k != "id"} for i in range(3)]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in plain[1:]))
    db2 = connect(tmp_path / "wd2")
    run2 = ensure_run(db2, cfg, tmp_path / "wd2", None, questions_for(cfg))
    intake2 = Intake(cfg, run2)
    assert _ids(db2) == ["mine-1", "mine-2"] and _round(db2, cfg, run2) == ["mine-1", "mine-2"]
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in plain))  # a line inserted on top
    assert intake2.sync(db2) == 0 and _round(db2, cfg, run2) == []
    (warn,) = _events(db2, "warn")
    assert "2 record(s) differ from their recorded text (mine-1, mine-2)" in warn
    assert "1 record(s) are recorded already under another id (mine-3)" in warn

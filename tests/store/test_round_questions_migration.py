"""0008_round_questions: a store from before keeps its rounds; their questions are still known (the rotating
slice of the pool, and for lineage the questions of their pairs); a new round records its own."""

import sqlite3
from pathlib import Path

import pytest
from sealong.loop.config import config_from_dict
from sealong.loop.stages.base import StageContext
from sealong.store import db as db_module
from sealong.store.db import MIGRATIONS, connect, migrate, rows
from sealong.store.queries import trained_questions


def test_old_rounds_keep_their_questions_and_new_ones_record_theirs(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(db_module, "MIGRATIONS", [m for m in MIGRATIONS if m[0] < "0008"])
    db = connect(tmp_path)
    c = db.conn
    c.execute("INSERT INTO runs (id, name, config_json, created_at, max_rounds) VALUES (1, 'r', '{}', 0, 2)")
    c.execute("INSERT INTO rounds (id, run_id, idx, started_at) VALUES (1, 1, 1, 0)")
    for i in range(3):
        c.execute(
            "INSERT INTO questions (id, split, task, source, question, context, answers_json, n_tokens, "
            "pool_index) VALUES (?, 'train', 't', 's', ?, 'C', '[]', 1, ?)",
            (f"q{i}", f"Question {i}?", i),
        )
    c.execute(
        "INSERT INTO samples (id, round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, seed) "
        "VALUES (1, 1, 'q2', 0, 's', 1, 1, 0)"
    )
    c.execute(
        "INSERT INTO pairs (round_id, question_id, chosen_sample_id, rejected_sample_id) VALUES (1, 'q2', 1, 1)"
    )
    c.commit()
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)
    assert migrate(db) == ["0008_round_questions"]
    cfg = config_from_dict({"data": {"train_pool_size": 3, "questions_per_round": 2}}, check_paths=False)
    ctx = StageContext(db, cfg, tmp_path, 1, 1, 1, 0, "sample")
    assert [q["id"] for q in ctx.round_questions()] == ["q2", "q0"]  # round 1's rotating slice, as before
    assert trained_questions(db, 1) == [{"id": "q2", "question": "Question 2?", "new": None, "from": None}]
    c.execute("INSERT INTO round_questions (round_id, question_id, position, is_new) VALUES (1, 'q1', 0, 1)")
    assert [q["id"] for q in ctx.round_questions()] == ["q1"]  # recorded: the recorded set, nothing else
    assert [q["new"] for q in trained_questions(db, 1)] == [True]
    with pytest.raises(sqlite3.IntegrityError):  # a question is in a round once
        c.execute(
            "INSERT INTO round_questions (round_id, question_id, position, is_new) VALUES (1, 'q1', 1, 0)"
        )
    assert rows(db, "SELECT name FROM _migrations WHERE name = '0008_round_questions'")

"""0006_pairs_selection: pairs from before keep their rows; a chosen answer may be the greedy one."""

import sqlite3
from pathlib import Path

import pytest
from sealong.store import db as db_module
from sealong.store.db import MIGRATIONS, connect, migrate, rows


def _fill(db) -> None:
    c = db.conn
    c.execute("INSERT INTO runs (id, name, config_json, created_at, max_rounds) VALUES (1, 'r', '{}', 0, 1)")
    c.execute("INSERT INTO rounds (id, run_id, idx, started_at) VALUES (1, 1, 0, 0)")
    c.execute(
        "INSERT INTO questions (id, split, task, source, question, context, answers_json, n_tokens, pool_index) "
        "VALUES ('q', 'train', 't', 's', 'Q?', 'C', '[]', 1, 0)"
    )
    for i in (1, 2):
        c.execute(
            "INSERT INTO samples (id, round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, seed) "
            "VALUES (?, 1, 'q', ?, ?, 1, 1, 0)",
            (i, i, f"s{i}"),
        )


def test_old_pairs_survive_and_greedy_chosen_pairs_fit(tmp_path: Path, monkeypatch):
    before = [m for m in MIGRATIONS if m[0] < "0006"]
    monkeypatch.setattr(db_module, "MIGRATIONS", before)
    db = connect(tmp_path)
    _fill(db)
    db.conn.execute(
        "INSERT INTO pairs (round_id, question_id, chosen_sample_id, rejected_sample_id) VALUES (1, 'q', 1, 2)"
    )
    db.conn.commit()
    monkeypatch.setattr(db_module, "MIGRATIONS", MIGRATIONS)
    assert migrate(db) == [m[0] for m in MIGRATIONS if m[0] >= "0006"]
    (p,) = rows(db, "SELECT * FROM pairs")
    assert (p["chosen_sample_id"], p["rejected_sample_id"], p["chosen_greedy_id"], p["selection"]) == (
        1,
        2,
        None,
        None,
    )
    db.conn.execute("DELETE FROM pairs")
    db.conn.execute(
        "INSERT INTO greedy (id, round_id, question_id, text, n_tokens) VALUES (7, 1, 'q', 'g', 1)"
    )
    db.conn.execute(
        "INSERT INTO pairs (round_id, question_id, chosen_sample_id, rejected_sample_id, chosen_greedy_id, selection) "
        "VALUES (1, 'q', NULL, 2, 7, 'greedy-as-chosen')"
    )
    from sealong.loop.stages.train import PAIRS_SQL

    (t,) = rows(db, PAIRS_SQL, (1,))
    assert (t["chosen"], t["rejected"]) == ("g", "s2")
    with pytest.raises(sqlite3.IntegrityError):  # exactly one chosen answer
        db.conn.execute("UPDATE pairs SET chosen_sample_id = 1 WHERE chosen_greedy_id = 7")

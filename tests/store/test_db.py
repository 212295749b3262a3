import sqlite3
import time
from pathlib import Path

import pytest
from sealong.store import lineage
from sealong.store.artifacts import atomic_dir, sha256_dir
from sealong.store.db import MIGRATIONS, Transaction, connect, migrate, rows


def test_migrations_are_named_recorded_and_idempotent(tmp_path: Path):
    db = connect(tmp_path)
    names = [r["name"] for r in rows(db, "SELECT name FROM _migrations")]
    assert names == [m[0] for m in MIGRATIONS]
    assert migrate(db) == []
    assert {"runs", "rounds", "stages", "adapters", "samples", "pairs", "evals", "events"} <= set(
        db.table_names()
    )


def test_readonly_connection_refuses_writes(tmp_path: Path):
    connect(tmp_path)
    ro = connect(tmp_path, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("INSERT INTO events (ts, level, message) VALUES (1, 'info', 'x')")


def test_transaction_rolls_back_and_nests(tmp_path: Path):
    db = connect(tmp_path)
    with pytest.raises(RuntimeError):
        with Transaction(db):
            db.execute("INSERT INTO events (ts, level, message) VALUES (1, 'info', 'lost')")
            raise RuntimeError
    with Transaction(db):
        db.execute("INSERT INTO events (ts, level, message) VALUES (1, 'info', 'kept')")
        with pytest.raises(ValueError):
            with Transaction(db):
                db.execute("INSERT INTO events (ts, level, message) VALUES (1, 'info', 'inner lost')")
                raise ValueError
    assert [r["message"] for r in rows(db, "SELECT message FROM events")] == ["kept"]


def test_atomic_dir_leaves_nothing_on_failure(tmp_path: Path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "a") as tmp:
            (tmp / "w.bin").write_bytes(b"half")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "a") as tmp:
        (tmp / "w.bin").write_bytes(b"whole")
    assert (tmp_path / "a" / "w.bin").read_bytes() == b"whole"
    digest = sha256_dir(tmp_path / "a")
    (tmp_path / "a" / "w.bin").write_bytes(b"whole!")
    assert sha256_dir(tmp_path / "a") != digest


def _seed_lineage(db):
    now = time.time()
    db.execute(
        "INSERT INTO runs (id, name, config_json, created_at, max_rounds) VALUES (1, 't', '{}', ?, 3)", (now,)
    )
    for i in range(3):
        db.execute("INSERT INTO rounds (id, run_id, idx, started_at) VALUES (?, 1, ?, ?)", (i + 1, i, now))
    for qid in ("q1", "q2", "e1"):
        db.execute(
            "INSERT INTO questions (id, split, task, source, question, context, answers_json, n_tokens, pool_index) "
            "VALUES (?, ?, 't', 's', 'Q', 'C', '[]', 1, 0)",
            (qid, "eval" if qid == "e1" else "train"),
        )
    parents = {"a0": None, "a1": "a0", "a2": "a1"}
    for i, (aid, parent) in enumerate(parents.items()):
        db.execute(
            "INSERT INTO adapters (id, run_id, round_id, parent_id, path, sha256, status, created_at) "
            "VALUES (?, 1, ?, ?, 'p', 'h', 'candidate', ?)",
            (aid, i + 1, parent, now + i),
        )
        for qid in ("q1", "q2"):
            c = db.execute(
                "INSERT INTO samples (round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, seed, mbr_score) "
                "VALUES (?, ?, 0, 'good', 1, 1, 0, 0.9)",
                (i + 1, qid),
            ).lastrowid
            r = db.execute(
                "INSERT INTO samples (round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, seed, mbr_score) "
                "VALUES (?, ?, 1, 'bad', 1, 1, 0, 0.1)",
                (i + 1, qid),
            ).lastrowid
            if not (i == 2 and qid == "q2"):
                db.execute(
                    "INSERT INTO pairs (round_id, question_id, chosen_sample_id, rejected_sample_id) VALUES (?, ?, ?, ?)",
                    (i + 1, qid, c, r),
                )
        db.execute(
            "INSERT INTO evals (model_key, round_id, question_id, task, output, n_tokens, subem) "
            "VALUES (?, ?, 'e1', 't', 'o', 5, ?)",
            (aid, i + 1, float(i % 2)),
        )


def test_lineage_queries(tmp_path: Path):
    db = connect(tmp_path)
    _seed_lineage(db)
    assert [r["id"] for r in lineage.parent_chain(db, "a2")] == ["a2", "a1", "a0"]
    assert lineage.parent_chain(db, "nope") == []
    metrics = {m["model_key"]: m for m in lineage.adapter_metrics(db)}
    assert metrics["a1"]["mean_subem"] == 100.0 and metrics["a0"]["mean_subem"] == 0.0
    data = lineage.training_data(db, "a2")
    assert [d["question_id"] for d in data] == ["q1"] and data[0]["chosen_score"] == 0.9

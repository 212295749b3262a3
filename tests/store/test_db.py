import os
import re
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sealong.loop.errors import IntegrityError, SealongError
from sealong.store import db as db_module
from sealong.store import queries
from sealong.store.artifacts import atomic_dir, sha256_dir
from sealong.store.db import (
    EMPTY_WAIT_S,
    MIGRATIONS,
    Transaction,
    connect,
    has_schema,
    migrate,
    rows,
)


def test_migrations_are_named_recorded_and_idempotent(tmp_path: Path):
    db = connect(tmp_path)
    names = [r["name"] for r in rows(db, "SELECT name FROM _migrations")]
    assert names == [m[0] for m in MIGRATIONS]
    assert migrate(db) == []
    assert {"runs", "rounds", "stages", "adapters", "samples", "pairs", "evals", "events"} <= set(
        db.table_names()
    )


def test_a_migration_with_semicolons_and_dashes_in_strings_and_a_trigger_body_applies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    db = connect(tmp_path)
    tricky = """
        CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL DEFAULT 'a; b -- not a comment');
        CREATE TABLE note_log (note_id INTEGER, what TEXT);  -- a comment; with a semicolon
        CREATE TRIGGER notes_logged AFTER INSERT ON notes BEGIN
            INSERT INTO note_log (note_id, what) VALUES (new.id, 'added; -- logged');
            UPDATE note_log SET what = what || ';' WHERE note_id = new.id;
        END;
        INSERT INTO notes (id) VALUES (1)
    """
    monkeypatch.setattr(db_module, "MIGRATIONS", [*MIGRATIONS, ("9999_tricky", tricky)])
    assert migrate(db) == ["9999_tricky"]
    assert rows(db, "SELECT body FROM notes") == [{"body": "a; b -- not a comment"}]
    assert rows(db, "SELECT note_id, what FROM note_log") == [{"note_id": 1, "what": "added; -- logged;"}]


def test_what_the_monitor_reads_every_second_is_answered_from_covering_indexes(tmp_path: Path):
    from sealong.store.queries import ADAPTER_METRICS_SQL

    db = connect(tmp_path)

    def plan(sql: str) -> str:
        return " ".join(r[3] for r in db.execute(f"EXPLAIN QUERY PLAN {sql}").fetchall())

    assert "COVERING INDEX samples_round_tokens" in plan(
        "SELECT COALESCE(SUM(n_tokens), 0) AS n FROM samples WHERE round_id = 1"
    )
    assert "COVERING INDEX evals_model_task" in plan(ADAPTER_METRICS_SQL)


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
    assert [r["id"] for r in queries.parent_chain(db, "a2")] == ["a2", "a1", "a0"]
    assert queries.parent_chain(db, "nope") == []
    metrics = {m["model_key"]: m for m in queries.adapter_metrics(db)}
    assert metrics["a1"]["mean_subem"] == 100.0 and metrics["a0"]["mean_subem"] == 0.0
    data = queries.training_data(db, "a2")
    assert [d["question_id"] for d in data] == ["q1"] and data[0]["chosen_score"] == 0.9


# -- files that are not our database: refused with the file's name, never written to --------------------------


def _foreign(path: Path, *statements: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as c:
        for s in statements or ("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)",):
            c.execute(s)
    c.close()
    return path


def _age(path: Path, seconds: float = 60.0) -> Path:
    t = time.time() - seconds
    os.utime(path, (t, t))
    return path


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as c:
        names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    c.close()
    return names


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path, readonly: bool):
    db = tmp_path / "sealong.db"
    db.write_text("junk\n")
    with pytest.raises(
        IntegrityError, match=rf"^{re.escape(str(db))} is not a SQLite database \(file is not"
    ):
        connect(tmp_path, readonly=readonly)
    assert db.read_text() == "junk\n" and sorted(p.name for p in tmp_path.iterdir()) == ["sealong.db"]


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
@pytest.mark.parametrize(
    "statements,why",
    [
        ((), r"holds tables \(notes\) but no `_migrations` table"),
        (
            ("CREATE TABLE _migrations (version INTEGER)", "CREATE TABLE runs (x)"),
            r"holds tables \(runs\) but its `_migrations` table does not record 0001_initial",
        ),
        (
            ("CREATE TABLE _migrations (name TEXT, applied_at REAL)", "CREATE TABLE users (id)"),
            r"holds tables \(users\) but its `_migrations` table does not record 0001_initial",
        ),
    ],
    ids=["no _migrations", "_migrations of another shape", "_migrations without ours"],
)
def test_another_applications_database_is_refused_and_left_alone(
    tmp_path: Path, readonly: bool, statements: tuple, why: str
):
    db = _foreign(tmp_path / "sealong.db", *statements)
    before = _tables(db)
    with pytest.raises(
        IntegrityError, match=rf"^{re.escape(str(db))} is not a sealong-loop database: it {why}"
    ):
        connect(tmp_path, readonly=readonly)
    assert _tables(db) == before, "our tables were migrated into another application's database"


def test_a_stale_empty_database_is_refused_by_readers_and_migrated_by_a_writer(tmp_path: Path):
    db = tmp_path / "sealong.db"
    db.touch()
    _age(db)
    t0 = time.monotonic()
    with pytest.raises(
        IntegrityError, match=rf"^{re.escape(str(db))} is empty or not a sealong-loop database"
    ):
        connect(tmp_path, readonly=True)
    assert time.monotonic() - t0 < 0.4, "a stale empty database is refused at once"
    _age(_foreign(db, "CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"))
    with pytest.raises(IntegrityError, match="no `runs` table"):
        connect(tmp_path, readonly=True)
    connect(tmp_path).conn.close()  # what a controller killed between creating the file and migrating left
    assert has_schema(connect(tmp_path, readonly=True))


def test_a_reader_waits_for_the_first_migration_of_a_database_being_created(tmp_path: Path):
    (tmp_path / "sealong.db").touch()  # the controller has created the file; its first migration follows
    timer = threading.Timer(0.15, lambda: connect(tmp_path).conn.close())
    timer.start()
    try:
        ro = connect(tmp_path, readonly=True)
    finally:
        timer.join()
    assert has_schema(ro) and rows(ro, "SELECT COUNT(*) AS n FROM runs") == [{"n": 0}]


def test_a_reader_of_a_database_being_created_sees_no_tables_yet(tmp_path: Path):
    (tmp_path / "sealong.db").touch()
    t0 = time.monotonic()
    ro = connect(tmp_path, readonly=True)
    assert not has_schema(ro) and time.monotonic() - t0 >= EMPTY_WAIT_S  # it waited for a migration


@pytest.mark.parametrize("readonly", [True, False], ids=["reader", "writer"])
def test_a_workdir_that_is_a_file_is_a_usage_error(tmp_path: Path, readonly: bool):
    wd = tmp_path / "wd"
    wd.write_text("x")
    with pytest.raises(
        SealongError, match=rf"^--workdir {re.escape(str(wd))} is a file, not a directory$"
    ) as e:
        connect(wd, readonly=readonly)
    assert type(e.value) is SealongError and e.value.exit_code == 2
    with pytest.raises(SealongError, match=rf"cannot create workdir .*: {re.escape(str(wd))} is a file"):
        connect(wd / "sub")
    assert wd.read_text() == "x"


def test_a_database_path_that_is_a_directory_is_refused(tmp_path: Path):
    (tmp_path / "sealong.db").mkdir()
    for readonly in (True, False):
        with pytest.raises(IntegrityError, match="sealong.db is a directory, not a SQLite database"):
            connect(tmp_path, readonly=readonly)

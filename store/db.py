"""SQLite store: schema, named migrations, connections.

One database per workdir (``<workdir>/sealong.db``), WAL mode so the monitor and `query` read while the
controller and a stage child write. Migrations are named, applied in order inside a transaction, and
recorded in ``_migrations``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlite_utils

DB_NAME = "sealong.db"

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE runs (
            id INTEGER PRIMARY KEY,
            name TEXT NOT NULL,
            config_json TEXT NOT NULL,
            config_path TEXT,
            created_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',      -- running | finished | failed | stopped
            stop_requested INTEGER NOT NULL DEFAULT 0,
            max_rounds INTEGER NOT NULL,
            finished_at REAL,
            message TEXT
        );
        CREATE TABLE questions (
            id TEXT PRIMARY KEY,
            split TEXT NOT NULL,                          -- train | eval
            task TEXT NOT NULL,
            source TEXT NOT NULL,
            question TEXT NOT NULL,
            context TEXT NOT NULL,
            answers_json TEXT NOT NULL,                   -- gold answers; never read by training
            n_tokens INTEGER NOT NULL,
            pool_index INTEGER NOT NULL
        );
        CREATE INDEX questions_split ON questions(split, pool_index);
        CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            round_id INTEGER NOT NULL,
            parent_id TEXT REFERENCES adapters(id),       -- the champion that sampled its data (NULL: base)
            path TEXT NOT NULL,
            sha256 TEXT NOT NULL,
            status TEXT NOT NULL,                         -- candidate | champion | rejected | retired
            created_at REAL NOT NULL,
            train_json TEXT NOT NULL DEFAULT '{}'
        );
        CREATE TABLE rounds (
            id INTEGER PRIMARY KEY,
            run_id INTEGER NOT NULL REFERENCES runs(id),
            idx INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'running',       -- running | done | failed
            policy_adapter_id TEXT REFERENCES adapters(id),  -- champion at round start (NULL: base)
            candidate_adapter_id TEXT REFERENCES adapters(id),
            promoted INTEGER,
            decision_json TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            UNIQUE (run_id, idx)
        );
        CREATE TABLE stages (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            name TEXT NOT NULL,                           -- sample | score | pairs | train | eval | promote
            seq INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',       -- pending | running | done | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            pid INTEGER,
            started_at REAL,
            finished_at REAL,
            error TEXT,
            output_json TEXT,
            progress_done REAL NOT NULL DEFAULT 0,
            progress_total REAL NOT NULL DEFAULT 0,
            progress_unit TEXT NOT NULL DEFAULT '',
            progress_note TEXT NOT NULL DEFAULT '',
            UNIQUE (round_id, name)
        );
        CREATE TABLE samples (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            sample_idx INTEGER NOT NULL,
            text TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            truncated INTEGER NOT NULL DEFAULT 0,
            seed INTEGER NOT NULL,
            mbr_score REAL,
            UNIQUE (round_id, question_id, sample_idx)
        );
        CREATE TABLE pairs (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            chosen_sample_id INTEGER NOT NULL REFERENCES samples(id),
            rejected_sample_id INTEGER NOT NULL REFERENCES samples(id),
            UNIQUE (round_id, question_id)
        );
        CREATE TABLE evals (
            id INTEGER PRIMARY KEY,
            model_key TEXT NOT NULL,                      -- 'base' or an adapter id
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            task TEXT NOT NULL,
            output TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            subem REAL NOT NULL,
            UNIQUE (model_key, question_id)
        );
        CREATE TABLE train_steps (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            step INTEGER NOT NULL,
            loss REAL, nll REAL, or_loss REAL, log_odds_ratio REAL, lr REAL, grad_norm REAL,
            tokens_per_s REAL, ts REAL NOT NULL
        );
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            ts REAL NOT NULL,
            run_id INTEGER,
            round_id INTEGER,
            stage TEXT,
            level TEXT NOT NULL,                          -- info | warn | error
            message TEXT NOT NULL
        );
        CREATE VIEW eval_summary AS
            SELECT model_key, task, COUNT(*) AS n, 100.0 * AVG(subem) AS subem, AVG(n_tokens) AS mean_tokens
            FROM evals GROUP BY model_key, task;
        """,
    ),
    (
        "0002_diagnostics",
        """
        CREATE TABLE greedy (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            text TEXT NOT NULL,
            n_tokens INTEGER NOT NULL,
            UNIQUE (round_id, question_id)
        );
        CREATE TABLE sample_scores (
            sample_id INTEGER NOT NULL REFERENCES samples(id),
            utility TEXT NOT NULL,                        -- embedding | bertscore | rouge-l | random
            score REAL NOT NULL,
            PRIMARY KEY (sample_id, utility)
        );
        CREATE TABLE diagnostics (
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            utility TEXT NOT NULL,                        -- '-' for metrics that do not depend on a utility
            metric TEXT NOT NULL,                         -- greedy | random_sample | mean_sample | oracle | mbr | chosen | rejected
            value REAL NOT NULL,                          -- SubEM in percent
            n INTEGER NOT NULL,                           -- questions it is computed over
            PRIMARY KEY (round_id, utility, metric)
        );
        """,
    ),
    (
        "0003_eval_truncation",
        """
        ALTER TABLE evals ADD COLUMN prompt_tokens INTEGER;
        ALTER TABLE evals ADD COLUMN truncated INTEGER NOT NULL DEFAULT 0;
        """,
    ),
]


def db_path(workdir: str | Path) -> Path:
    return Path(workdir) / DB_NAME


def connect(workdir: str | Path, readonly: bool = False) -> sqlite_utils.Database:
    """Open the workdir's database. Read-only connections refuse writes in SQLite itself."""
    path = db_path(workdir)
    if readonly:
        if not path.exists():
            from sealong.loop.errors import SealongError

            raise SealongError(f"no sealong database in {workdir} (expected {path}); start a run there first")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=60000")
    conn.row_factory = sqlite3.Row
    db = sqlite_utils.Database(conn)
    if not readonly:
        migrate(db)
    return db


def migrate(db: sqlite_utils.Database) -> list[str]:
    """Apply pending migrations, each in its own transaction. Returns the names applied."""
    db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    done = {r[0] for r in db.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, sql in MIGRATIONS:
        if name in done:
            continue
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("ROLLBACK")
                continue
            for statement in _split_sql(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _split_sql(sql: str) -> list[str]:
    lines = [ln.split("--", 1)[0] for ln in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


class Transaction:
    """`with Transaction(db):` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error. Nested uses savepoints."""

    def __init__(self, db: sqlite_utils.Database):
        self.conn = db.conn
        self.savepoint: str | None = None

    def __enter__(self) -> Transaction:
        if self.conn.in_transaction:
            self.savepoint = f"sp{id(self)}"
            self.conn.execute(f"SAVEPOINT {self.savepoint}")
        else:
            self.conn.execute("BEGIN IMMEDIATE")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.savepoint:
            if exc_type is None:
                self.conn.execute(f"RELEASE {self.savepoint}")
            else:
                self.conn.execute(f"ROLLBACK TO {self.savepoint}")
                self.conn.execute(f"RELEASE {self.savepoint}")
        elif exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def log_event(
    db: sqlite_utils.Database,
    message: str,
    level: str = "info",
    run_id: int | None = None,
    round_id: int | None = None,
    stage: str | None = None,
) -> None:
    db.execute(
        "INSERT INTO events (ts, run_id, round_id, stage, level, message) VALUES (?, ?, ?, ?, ?, ?)",
        (time.time(), run_id, round_id, stage, level, message),
    )


def rows(db: sqlite_utils.Database, sql: str, params: tuple | dict = ()) -> list[dict[str, Any]]:
    cur = db.execute(sql, params)
    cols = [c[0] for c in cur.description] if cur.description else []
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def one(db: sqlite_utils.Database, sql: str, params: tuple | dict = ()) -> dict[str, Any] | None:
    r = rows(db, sql, params)
    return r[0] if r else None


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)

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
    (
        "0004_progress_phase",
        """
        -- when the current progress unit (questions, greedy, steps, ...) began, and how much of it was done
        -- then (a resumed stage starts with some done): the monitor's rate and ETA are over this phase only
        ALTER TABLE stages ADD COLUMN progress_since REAL;
        ALTER TABLE stages ADD COLUMN progress_since_done REAL NOT NULL DEFAULT 0;
        """,
    ),
    (
        "0005_read_indexes",
        """
        -- covering indexes for what `status --watch` reads every second: at the paper's scale (65,536
        -- samples a round, 20 rounds) a frame took up to 160 ms without them and ~40 ms with them
        CREATE INDEX samples_round_tokens ON samples(round_id, n_tokens, mbr_score);
        CREATE INDEX evals_model_task ON evals(model_key, task, subem, n_tokens);
        """,
    ),
    (
        "0006_pairs_selection",
        """
        -- the selection arm that made each pair ([pairs] selection), and a chosen answer that may be the
        -- round's greedy answer (selection = 'greedy-as-chosen') instead of a sample: SQLite cannot drop
        -- NOT NULL, so the table is rebuilt; pairs from before are the MBR arm of their run's utility
        CREATE TABLE pairs_v6 (
            id INTEGER PRIMARY KEY,
            round_id INTEGER NOT NULL REFERENCES rounds(id),
            question_id TEXT NOT NULL REFERENCES questions(id),
            chosen_sample_id INTEGER REFERENCES samples(id),
            rejected_sample_id INTEGER NOT NULL REFERENCES samples(id),
            chosen_greedy_id INTEGER REFERENCES greedy(id),
            selection TEXT,                               -- NULL: a pair from before this column
            UNIQUE (round_id, question_id),
            CHECK ((chosen_sample_id IS NULL) <> (chosen_greedy_id IS NULL))
        );
        INSERT INTO pairs_v6 (id, round_id, question_id, chosen_sample_id, rejected_sample_id)
            SELECT id, round_id, question_id, chosen_sample_id, rejected_sample_id FROM pairs;
        DROP TABLE pairs;
        ALTER TABLE pairs_v6 RENAME TO pairs;
        """,
    ),
    (
        "0007_question_meta",
        """
        -- your own data (train_source = 'jsonl' / 'folder'): the record's file, line, and every field that
        -- is not its id, question, context or answers, as a JSON object; '{}' for the built-in sources
        ALTER TABLE questions ADD COLUMN meta_json TEXT NOT NULL DEFAULT '{}';
        """,
    ),
]


def db_path(workdir: str | Path) -> Path:
    return Path(workdir) / DB_NAME


# A database without our tables is what a controller's first `connect` leaves for the moment before its
# first migration commits. A reader waits up to EMPTY_WAIT_S for that migration; one still empty after
# that is handed over as it is (the monitor shows "not started") while its file changed within the last
# EMPTY_GRACE_S, and refused as empty once it has stayed unchanged for longer: nothing is creating it.
EMPTY_WAIT_S = 0.5
EMPTY_GRACE_S = 2.0


def require_not_a_file(workdir: Path) -> None:
    """A workdir path naming an existing regular file is a usage error (exit 2)."""
    from sealong.loop.errors import SealongError

    if workdir.exists() and not workdir.is_dir():
        raise SealongError(f"--workdir {workdir} is a file, not a directory")


def connect(workdir: str | Path, readonly: bool = False) -> sqlite_utils.Database:
    """Open the workdir's database. Read-only connections refuse writes in SQLite itself.

    A file that is not a SQLite database, or another application's database (tables, but no `_migrations`),
    raises IntegrityError naming the file, for readers and writers alike; a writer never migrates our tables
    into someone else's database. A reader refuses a database without our schema (empty) that has not
    changed for EMPTY_GRACE_S; one that has (a controller is creating it) it waits for, up to EMPTY_WAIT_S,
    then returns as it is: check `has_schema`. A workdir that is a file raises SealongError. A writer creates
    a missing database (and workdir) and migrates it; a reader of a missing database raises SealongError.
    """
    from sealong.loop.errors import SealongError

    wd = Path(workdir)
    path = db_path(workdir)
    require_not_a_file(wd)
    if path.is_dir():
        from sealong.loop.errors import IntegrityError

        raise IntegrityError(f"{path} is a directory, not a SQLite database")
    if readonly:
        if not path.exists():
            raise SealongError(f"no sealong database in {workdir} (expected {path}); start a run there first")
        deadline = time.monotonic() + EMPTY_WAIT_S
        while True:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout=60000")
            try:
                if _check_ours(conn, path):
                    break
                if time.time() - _last_change(path) > EMPTY_GRACE_S:
                    from sealong.loop.errors import IntegrityError

                    raise IntegrityError(f"{path} is empty or not a sealong-loop database (no `runs` table)")
            except BaseException:
                conn.close()
                raise
            if time.monotonic() > deadline:
                break  # being created: the caller sees no tables yet
            conn.close()
            time.sleep(0.05)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            blocker = next((p for p in (wd, *wd.parents) if p.exists() and not p.is_dir()), None)
            raise SealongError(
                f"cannot create workdir {wd}: {blocker or 'a part of it'} is a file, not a directory"
            ) from None
        conn = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA busy_timeout=60000")
            _check_ours(conn, path)  # before anything writes: never migrate into a foreign file
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
    conn.row_factory = sqlite3.Row
    db = sqlite_utils.Database(conn)
    if not readonly:
        migrate(db)
    return db


def _check_ours(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the database holds our schema (its `runs` table, created by migration 0001). False for one
    without tables yet, or with only `_migrations` (a first migration not yet committed); IntegrityError
    for a file SQLite cannot read as a database, and for another application's database: tables, but no
    `_migrations` table (every migration records itself there) that records our first migration."""
    from sealong.loop.errors import IntegrityError

    try:
        names = {
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
            if not r[0].startswith("sqlite_")
        }
    except sqlite3.DatabaseError as e:
        code = getattr(e, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_NOTADB:
            raise IntegrityError(f"{path} is not a SQLite database ({e})") from None
        if code == sqlite3.SQLITE_CORRUPT:
            raise IntegrityError(f"{path} is damaged ({e})") from None
        raise
    others = names - {"_migrations"}
    if not others:
        return False  # no tables yet, or a first migration not yet committed
    shown = ", ".join(sorted(others)[:5]) + (", ..." if len(others) > 5 else "")
    if "_migrations" not in names:
        raise IntegrityError(
            f"{path} is not a sealong-loop database: it holds tables ({shown}) but no `_migrations` table"
        )
    try:
        applied = {r[0] for r in conn.execute("SELECT name FROM _migrations")}
    except sqlite3.OperationalError:  # another application's table of that name, without our columns
        applied = set()
    if MIGRATIONS[0][0] not in applied:
        raise IntegrityError(
            f"{path} is not a sealong-loop database: it holds tables ({shown}) but its `_migrations` "
            f"table does not record {MIGRATIONS[0][0]}"
        )
    return "runs" in names


def has_schema(db: sqlite_utils.Database) -> bool:
    """Whether the database holds our tables: False only for one a controller is creating right now."""
    return (
        db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone()
        is not None
    )


def _last_change(path: Path) -> float:
    """The newest modification time of the database file and its write-ahead log."""
    times = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(times, default=0.0)


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
    """A migration's statements, one by one (`execute` takes one; `executescript` would commit). A
    statement ends at the first `;` where SQLite deems it complete, so a `;` or `--` inside a string
    literal, a comment or a trigger body ends nothing."""
    statements, start = [], 0
    for end, char in enumerate(sql, 1):
        if char == ";" and sqlite3.complete_statement(sql[start:end]):
            statements.append(sql[start:end].strip())
            start = end
    statements.append(sql[start:].strip())  # a last statement without `;`, or only space and comments
    return [s for s in statements if s]


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

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
from sealong.store.migrations import MIGRATIONS

DB_NAME = "sealong.db"


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

"""The run, round and stage tables (`runs`, `rounds`, `stages`): the only code that writes them.

A run is created once per workdir; each round inserts its six stage rows at once (`start_round`); a
stage goes pending → running (`claim_stage`) → done (`mark_stage_done`, by the stage itself, in the
transaction that holds its last writes) or failed (`mark_stage_failed`). Nothing here turns a done stage
back: every stage transition but `mark_stage_done` is guarded by ``status != 'done'`` (or asks for
``status = 'running'``).

None of these functions commits or opens a transaction of its own unless its docstring says so: each
runs inside whatever transaction its caller holds (`store.db.Transaction`), so the order of writes and
commits, which the fault-injection tests (`store/faults.py`) kill processes between, is the caller's.

sqlite-utils' table API is not used for these writes: its `update` addresses a row by primary key only
(these updates are guarded by status), and it wraps each call in its own deferred `BEGIN`, where a
writer here must hold `BEGIN IMMEDIATE` so the controller and a stage process never deadlock upgrading
a read lock.
"""

from __future__ import annotations

import time
from enum import StrEnum

import sqlite_utils


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    STOPPED = "stopped"


class RoundStatus(StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class StageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


# -- runs ------------------------------------------------------------------------------------------------
def create_run(
    db: sqlite_utils.Database, name: str, config_json: str, config_path: str | None, max_rounds: int
) -> int:
    """Insert the workdir's run (status running); returns its id."""
    cur = db.execute(
        "INSERT INTO runs (name, config_json, config_path, created_at, max_rounds) VALUES (?, ?, ?, ?, ?)",
        (name, config_json, config_path, time.time(), max_rounds),
    )
    return cur.lastrowid


def set_max_rounds(db: sqlite_utils.Database, run_id: int, max_rounds: int) -> None:
    db.execute("UPDATE runs SET max_rounds = ? WHERE id = ?", (max_rounds, run_id))


def set_run_message(db: sqlite_utils.Database, run_id: int, message: str | None) -> None:
    """A running run's note for `status` (waiting for new data); None clears it. Finished runs keep theirs."""
    db.execute("UPDATE runs SET message = ? WHERE id = ? AND status = 'running'", (message, run_id))


def request_stop(db: sqlite_utils.Database) -> None:
    """Ask every run in the workdir to stop; the controller checks this before each stage."""
    db.execute("UPDATE runs SET stop_requested = 1")


def finish_run(
    db: sqlite_utils.Database,
    run_id: int,
    status: RunStatus,
    message: str,
    finished_at: float | None = None,
) -> None:
    """Record how the run ended (finished_at: now unless given, e.g. a finish being restated as it was)."""
    db.execute(
        "UPDATE runs SET status = ?, finished_at = ?, message = ? WHERE id = ?",
        (status, time.time() if finished_at is None else finished_at, message, run_id),
    )


def reopen_failed(db: sqlite_utils.Database, run_id: int) -> None:
    """A restart: failed stages are pending again with their attempts reset, failed rounds running, and
    the run running with no stop request and no end. Call inside a transaction: all of it or none."""
    db.execute(
        "UPDATE stages SET status = ?, attempts = 0 WHERE status = ?",
        (StageStatus.PENDING, StageStatus.FAILED),
    )
    db.execute("UPDATE rounds SET status = ? WHERE status = ?", (RoundStatus.RUNNING, RoundStatus.FAILED))
    db.execute(
        "UPDATE runs SET status = ?, stop_requested = 0, finished_at = NULL, message = NULL WHERE id = ?",
        (RunStatus.RUNNING, run_id),
    )


# -- rounds ----------------------------------------------------------------------------------------------
def start_round(
    db: sqlite_utils.Database,
    run_id: int,
    idx: int,
    policy_adapter_id: str | None,
    stage_names: list[str] | tuple[str, ...],
) -> int:
    """Insert round `idx` (status running) and its stages, pending, in the given order; returns the
    round's id. Call inside a transaction: a round never exists without its stages."""
    cur = db.execute(
        "INSERT INTO rounds (run_id, idx, policy_adapter_id, started_at) VALUES (?, ?, ?, ?)",
        (run_id, idx, policy_adapter_id, time.time()),
    )
    for seq, name in enumerate(stage_names):
        db.execute("INSERT INTO stages (round_id, name, seq) VALUES (?, ?, ?)", (cur.lastrowid, name, seq))
    return cur.lastrowid


def mark_round_done(db: sqlite_utils.Database, round_id: int) -> None:
    db.execute(
        "UPDATE rounds SET status = ?, finished_at = ? WHERE id = ?",
        (RoundStatus.DONE, time.time(), round_id),
    )


def mark_round_failed(db: sqlite_utils.Database, round_id: int) -> None:
    db.execute("UPDATE rounds SET status = ? WHERE id = ?", (RoundStatus.FAILED, round_id))


def set_candidate(db: sqlite_utils.Database, round_id: int, adapter_id: str) -> None:
    """The adapter the round's train stage produced."""
    db.execute("UPDATE rounds SET candidate_adapter_id = ? WHERE id = ?", (adapter_id, round_id))


def record_decision(db: sqlite_utils.Database, round_id: int, promoted: bool, decision_json: str) -> None:
    """The promotion gate's verdict on the round's candidate."""
    db.execute(
        "UPDATE rounds SET promoted = ?, decision_json = ? WHERE id = ?",
        (int(promoted), decision_json, round_id),
    )


# -- stages ----------------------------------------------------------------------------------------------
def claim_stage(db: sqlite_utils.Database, stage_id: int, attempt: int) -> None:
    """Running, attempt `attempt`, before its process exists (no pid yet); progress and error cleared.
    A done stage is left as it is."""
    db.execute(
        "UPDATE stages SET status = ?, attempts = ?, pid = NULL, started_at = ?, error = NULL, "
        "progress_done = 0, progress_total = 0, progress_note = '' WHERE id = ? AND status != ?",
        (StageStatus.RUNNING, attempt, time.time(), stage_id, StageStatus.DONE),
    )


def set_stage_pid(db: sqlite_utils.Database, stage_id: int, pid: int) -> None:
    """The process running a stage; only while the stage is running."""
    db.execute("UPDATE stages SET pid = ? WHERE id = ? AND status = ?", (pid, stage_id, StageStatus.RUNNING))


def mark_stage_done(db: sqlite_utils.Database, stage_id: int, output_json: str) -> None:
    """Call inside the transaction that holds the stage's last writes: they commit with `done`."""
    db.execute(
        "UPDATE stages SET status = ?, finished_at = ?, output_json = ?, error = NULL WHERE id = ?",
        (StageStatus.DONE, time.time(), output_json, stage_id),
    )


def mark_stage_failed(db: sqlite_utils.Database, stage_id: int, error: str) -> None:
    """Failed with `error`, unless already done (a stage that committed done stays done)."""
    db.execute(
        "UPDATE stages SET status = ?, error = ?, finished_at = ? WHERE id = ? AND status != ?",
        (StageStatus.FAILED, error, time.time(), stage_id, StageStatus.DONE),
    )


def release_stage(db: sqlite_utils.Database, stage_id: int) -> None:
    """Pending again after an interruption the user asked for: the attempt does not count."""
    db.execute(
        "UPDATE stages SET status = ?, pid = NULL, attempts = MAX(attempts - 1, 0) WHERE id = ? AND status != ?",
        (StageStatus.PENDING, stage_id, StageStatus.DONE),
    )


def reset_interrupted(db: sqlite_utils.Database, stage_id: int) -> None:
    """A stage left running by a controller that is gone: pending again (the attempt counts)."""
    db.execute(
        "UPDATE stages SET status = ?, pid = NULL WHERE id = ? AND status = ?",
        (StageStatus.PENDING, stage_id, StageStatus.RUNNING),
    )


def start_progress_phase(db: sqlite_utils.Database, stage_id: int, done: float) -> None:
    """A new progress unit begins now with `done` of it done: the monitor's rate and ETA start here."""
    db.execute(
        "UPDATE stages SET progress_since = ?, progress_since_done = ? WHERE id = ?",
        (time.time(), done, stage_id),
    )


def record_progress(
    db: sqlite_utils.Database, stage_id: int, done: float, total: float, unit: str, note: str
) -> None:
    db.execute(
        "UPDATE stages SET progress_done = ?, progress_total = ?, progress_unit = ?, progress_note = ? WHERE id = ?",
        (done, total, unit, note, stage_id),
    )

"""What every stage gets: the store, the config, the round, and progress/event reporting.

A stage is a function ``run(ctx) -> None`` in its own module. It writes its outputs and then, in the
same transaction as its last writes, calls ``ctx.mark_done(summary)``. The controller never runs stage
code itself: each stage runs in a child process (`python -m sealong.loop.engine.stage_main`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils
from sealong.loop.config import Config
from sealong.store import faults, state
from sealong.store.db import dumps, log_event, one, rows


@dataclass
class StageContext:
    db: sqlite_utils.Database
    cfg: Config
    workdir: Path
    run_id: int
    round_id: int
    round_idx: int
    stage_id: int
    name: str
    controller_pid: int = 0  # the controller that launched this stage (0: none, e.g. a test)
    lock_fd: int | None = None  # the stage lock's descriptor (replicas inherit it: the lock outlives none)
    _last_progress: float = 0.0
    _progress_unit: str | None = None  # the unit of the phase in progress (a new unit: a new phase)

    @property
    def round(self) -> dict[str, Any]:
        return one(self.db, "SELECT * FROM rounds WHERE id = ?", (self.round_id,))  # type: ignore[return-value]

    def progress(
        self,
        done: float,
        total: float,
        unit: str = "",
        note: str = "",
        force: bool = False,
        fault_point: bool = True,
    ) -> None:
        """Record progress for the monitor (throttled to a few writes a second). fault_point=False: a
        coordinator's reading of its replicas' progress, which is not a point where this process committed."""
        if done > 0 and fault_point:
            faults.point("progress")  # tests: the stage has committed some of its rows
        now = time.monotonic()
        if not force and now - self._last_progress < 0.5 and done < total:
            return
        self._last_progress = now
        if unit != self._progress_unit:  # a new phase: the monitor's rate and ETA start from here
            self._progress_unit = unit
            state.start_progress_phase(self.db, self.stage_id, done)
        state.record_progress(self.db, self.stage_id, done, total, unit, note)

    def event(self, message: str, level: str = "info") -> None:
        log_event(self.db, message, level, self.run_id, self.round_id, self.name)

    def mark_done(self, summary: dict[str, Any]) -> None:
        """Call inside the transaction that holds the stage's last writes."""
        state.mark_stage_done(self.db, self.stage_id, dumps(summary))
        faults.point("mark-done")  # tests: killed here, the whole transaction rolls back

    def round_questions(self) -> list[dict[str, Any]]:
        """This round's training questions, as the controller recorded them when the round started
        (engine/intake.py); a round from before round_questions: the slice of the pool, rotating each round."""
        chosen = rows(
            self.db,
            "SELECT q.* FROM round_questions rq JOIN questions q ON q.id = rq.question_id "
            "WHERE rq.round_id = ? ORDER BY rq.position",
            (self.round_id,),
        )
        if chosen:
            return chosen
        pool = rows(self.db, "SELECT * FROM questions WHERE split = 'train' ORDER BY pool_index")
        k = self.cfg.data.questions_per_round
        start = (self.round_idx * k) % len(pool)
        return [pool[(start + i) % len(pool)] for i in range(min(k, len(pool)))]

    def stage_output(self, name: str) -> dict[str, Any]:
        r = one(
            self.db, "SELECT output_json FROM stages WHERE round_id = ? AND name = ?", (self.round_id, name)
        )
        return json.loads(r["output_json"]) if r and r["output_json"] else {}


def adapter_id_for_round(round_idx: int) -> str:
    return f"adapter-r{round_idx:03d}"


def champion(db: sqlite_utils.Database, run_id: int) -> dict[str, Any] | None:
    return one(db, "SELECT * FROM adapters WHERE run_id = ? AND status = 'champion'", (run_id,))

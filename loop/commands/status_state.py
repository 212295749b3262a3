"""The terminal view's data: a state object read from the store, and the process probes behind it.

`load_state(db)` reads everything the view needs over a read-only connection, in one read transaction
(a consistent snapshot that never blocks the controller: SQLite's WAL lets readers and the writer run side
by side). The display is built from it by the pure functions in `sealong.loop.commands.status_render`; the loops that
show it live are in `sealong.loop.commands.status_watch`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils
from sealong.store.db import has_schema, one, rows
from sealong.store.liveness import process_alive
from sealong.store.queries import adapter_metrics, diagnostics_by_round


@dataclass
class MonitorState:
    workdir: str | None = None
    run: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # round id -> stages in order
    current: dict[str, Any] | None = None  # the running stage
    next_stage: dict[str, Any] | None = None  # the first pending stage of the unfinished round
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # model key -> metrics
    champion: str = "base"
    events: list[dict[str, Any]] = field(default_factory=list)  # newest first
    errors: list[dict[str, Any]] = field(default_factory=list)  # stages that recorded an error, newest first
    last_train_step: dict[str, Any] | None = None
    recent_losses: list[float] = field(default_factory=list)  # the running train stage's last steps
    sampled_tokens: int | None = None  # tokens generated so far in the sampling round
    controller_pid: int | None = None
    stage_alive: bool | None = None  # whether the running stage's process exists
    rss_mb: float | None = None  # the running stage's process and its children
    controller_rss_mb: float | None = None
    gpu: list[dict[str, Any]] = field(default_factory=list)  # per GPU: index, used_mb, total_mb, stage_mb
    # round idx -> {"greedy": %, "oracle": %, "mbr/embedding": %, ...}: SubEM of the round's samples
    diagnostics: dict[int, dict[str, float]] = field(default_factory=dict)
    now: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "phase": phase(self)}


def phase(s: MonitorState) -> str:
    """not started | running | between stages | waiting | crashed | finished | failed | stopped (waiting:
    for new data, the run's message says since when)."""
    if s.run is None:
        return "not started"
    if s.run["status"] != "running":
        return s.run["status"]
    if s.current is not None and s.stage_alive:
        return "running"
    if s.controller_pid:
        if s.current is None and (s.run.get("message") or "").startswith("waiting for new data"):
            return "waiting"
        return "running" if s.current is not None else "between stages"
    # The store says running, but neither a controller nor the stage process is alive: killed or crashed.
    return "crashed"


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Direct children (a torchrun launcher's ranks), from /proc/<pid>/task/*/children."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return out


def process_rss_mb(pid: int | None, with_children: bool = True) -> float | None:
    """Resident memory of a process (and its direct children) in MB, from /proc; None if it is gone."""
    if not process_alive(pid):
        return None
    pids = [pid] + (_children(pid) if with_children else [])
    return sum(_rss_kb(p) for p in pids) / 1024


_GPU_CACHE: dict[str, Any] = {"at": 0.0, "gpus": [], "apps": []}


def gpu_memory(pids: list[int], max_age: float = 5.0) -> list[dict[str, Any]]:
    """Memory per GPU (used / total) and the part the given processes hold, from nvidia-smi.

    Not torch.cuda: in this process it would only see its own (empty) allocations and would create a CUDA
    context on the device just to look. Queried at most every `max_age` seconds; [] without nvidia-smi.
    """
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    now = time.monotonic()
    if now - _GPU_CACHE["at"] > max_age:
        _GPU_CACHE.update(
            at=now,
            gpus=_smi(smi, "--query-gpu=index,uuid,memory.used,memory.total"),
            apps=_smi(smi, "--query-compute-apps=gpu_uuid,pid,used_memory"),
        )
    out = []
    for g in _GPU_CACHE["gpus"]:
        if len(g) < 4:
            continue
        stage_mb = sum(
            float(a[2])
            for a in _GPU_CACHE["apps"]
            if len(a) == 3 and a[0] == g[1] and a[1].isdigit() and int(a[1]) in pids
        )
        out.append(
            {"index": int(g[0]), "used_mb": float(g[2]), "total_mb": float(g[3]), "stage_mb": stage_mb}
        )
    return out


def _smi(smi: str, query: str) -> list[list[str]]:
    try:
        proc = subprocess.run(
            [smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=3
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return [[c.strip() for c in line.split(",")] for line in proc.stdout.splitlines() if line.strip()]


class _Snapshot:
    """One read transaction around the queries of a tick, so the view is consistent."""

    def __init__(self, db: sqlite_utils.Database):
        self.conn = db.conn
        self.began = False

    def __enter__(self) -> None:
        if not self.conn.in_transaction:
            self.conn.execute("BEGIN")
            self.began = True

    def __exit__(self, *exc) -> None:
        if self.began:
            self.conn.execute("COMMIT")


def load_state(
    db: sqlite_utils.Database,
    controller_pid: int | None = None,
    n_events: int = 8,
    workdir: str | Path | None = None,
    probe_processes: bool = True,
) -> MonitorState:
    """Read the view's state. `probe_processes=False` skips /proc and nvidia-smi (for tests)."""
    s = MonitorState(
        now=time.time(), controller_pid=controller_pid, workdir=str(workdir) if workdir else None
    )
    with _Snapshot(db):
        _read_store(db, s, n_events)
    if probe_processes and s.current is not None:
        pid = s.current["pid"]
        s.stage_alive = process_alive(pid)
        s.rss_mb = process_rss_mb(pid)
        s.gpu = gpu_memory([pid, *_children(pid)] if pid else [])
    elif probe_processes:
        s.gpu = gpu_memory([])
    if probe_processes and controller_pid:
        s.controller_rss_mb = process_rss_mb(controller_pid, with_children=False)
    return s


def stage_eta(st: dict[str, Any], now: float) -> float | None:
    """Seconds left for a running stage's phase in progress (its current unit), at the rate of what that
    phase did since it began: not the stage's whole time over a count that an earlier phase or a resumed
    attempt filled. None until the phase has done something."""
    done, total = st.get("progress_done") or 0, st.get("progress_total") or 0
    since, done0 = st.get("progress_since"), st.get("progress_since_done") or 0
    base_t, base_done = (since, done0) if since else (st.get("started_at") or now, 0)
    gained = done - base_done
    return (now - base_t) / gained * (total - done) if gained > 0 and total and done < total else None


def _read_store(db: sqlite_utils.Database, s: MonitorState, n_events: int) -> None:
    if not has_schema(db):
        return
    s.run = one(
        db,
        "SELECT id, name, status, created_at, finished_at, max_rounds, message FROM runs ORDER BY id LIMIT 1",
    )
    if s.run is None:
        return
    s.rounds = rows(db, "SELECT * FROM rounds WHERE run_id = ? ORDER BY idx", (s.run["id"],))
    # every column: a workdir that an older version made (not migrated until its next start) lacks the newer
    for st in rows(db, "SELECT * FROM stages ORDER BY round_id, seq"):
        s.stages.setdefault(st["round_id"], []).append(st)
    every = [st for r in s.rounds for st in s.stages.get(r["id"], [])]
    s.current = next((st for st in every if st["status"] == "running"), None)
    unfinished = next((r for r in s.rounds if r["status"] != "done"), None)
    if unfinished is not None:
        s.next_stage = next(
            (st for st in s.stages.get(unfinished["id"], []) if st["status"] in ("pending", "failed")), None
        )
    idx = {r["id"]: r["idx"] for r in s.rounds}
    s.errors = [
        {
            "round": idx.get(st["round_id"]),
            "stage": st["name"],
            "status": st["status"],
            "attempts": st["attempts"],
            "error": st["error"],
            "at": st["finished_at"],
        }
        for st in reversed(every)
        if st["error"]
    ]
    for m in adapter_metrics(db):
        m["per_task"] = json.loads(m.pop("per_task_json") or "{}")
        s.metrics[m["model_key"]] = m
    champ = one(db, "SELECT id FROM adapters WHERE run_id = ? AND status = 'champion'", (s.run["id"],))
    s.champion = champ["id"] if champ else "base"
    s.events = rows(db, "SELECT ts, stage, level, message FROM events ORDER BY id DESC LIMIT ?", (n_events,))
    s.diagnostics = diagnostics_by_round(db, s.run["id"])
    cur = s.current
    if cur and cur["name"] == "train":
        steps = rows(
            db, "SELECT * FROM train_steps WHERE round_id = ? ORDER BY step DESC LIMIT 40", (cur["round_id"],)
        )
        s.last_train_step = steps[0] if steps else None
        s.recent_losses = [st["loss"] for st in reversed(steps) if st["loss"] is not None]
    if cur and cur["name"] == "sample":
        s.sampled_tokens = one(
            db, "SELECT COALESCE(SUM(n_tokens), 0) AS n FROM samples WHERE round_id = ?", (cur["round_id"],)
        )["n"]

"""The terminal view: a state object read from the store, and pure render functions over it.

`load_state(db)` reads everything the view needs (read-only); `render(state)` builds a rich renderable.
`start` shows it live in the foreground; `status` prints it once (or `--json`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlite_utils
from rich.console import Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sealong.loop.stages.base import STAGES
from sealong.store.db import one, rows
from sealong.store.lineage import adapter_metrics


@dataclass
class MonitorState:
    run: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[int, list[dict[str, Any]]] = field(default_factory=dict)  # round id -> stages
    current: dict[str, Any] | None = None  # the running (or next pending) stage
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # model key -> metrics
    champion: str = "base"
    events: list[dict[str, Any]] = field(default_factory=list)
    last_train_step: dict[str, Any] | None = None
    controller_pid: int | None = None
    rss_mb: float | None = None
    now: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def load_state(db: sqlite_utils.Database, controller_pid: int | None = None, n_events: int = 8) -> MonitorState:
    s = MonitorState(now=time.time(), controller_pid=controller_pid)
    s.run = one(db, "SELECT id, name, status, created_at, finished_at, max_rounds, message FROM runs ORDER BY id LIMIT 1")
    if s.run is None:
        return s
    s.rounds = rows(db, "SELECT * FROM rounds WHERE run_id = ? ORDER BY idx", (s.run["id"],))
    for st in rows(db, "SELECT * FROM stages ORDER BY round_id, seq"):
        s.stages.setdefault(st["round_id"], []).append(st)
    running = [st for sts in s.stages.values() for st in sts if st["status"] == "running"]
    s.current = running[0] if running else None
    for m in adapter_metrics(db):
        m["per_task"] = json.loads(m.pop("per_task_json") or "{}")
        s.metrics[m["model_key"]] = m
    champ = one(db, "SELECT id FROM adapters WHERE status = 'champion'")
    s.champion = champ["id"] if champ else "base"
    s.events = rows(db, "SELECT ts, stage, level, message FROM events ORDER BY id DESC LIMIT ?", (n_events,))
    if s.current and s.current["name"] == "train":
        s.last_train_step = one(db, "SELECT * FROM train_steps WHERE round_id = ? ORDER BY step DESC LIMIT 1",
                                (s.current["round_id"],))
    s.rss_mb = _rss_mb(s.current["pid"]) if s.current else None
    return s


def _fmt_secs(sec: float | None) -> str:
    if sec is None:
        return "-"
    sec = int(sec)
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


def render_header(s: MonitorState) -> Text:
    if s.run is None:
        return Text("No run in this workdir yet. Start one with `sealong-loop start --config configs/tiny-cpu.toml`.")
    r = s.run
    style = {"running": "bold green", "finished": "bold blue", "failed": "bold red", "stopped": "yellow"}.get(r["status"], "")
    t = Text.assemble(("sealong-loop ", "bold"), (f"run '{r['name']}' ", ""), (r["status"], style),
                      f"  ·  round {len(s.rounds)}/{r['max_rounds']}  ·  champion {s.champion}")
    if s.controller_pid:
        t.append(f"  ·  controller pid {s.controller_pid}")
    if r.get("message") and r["status"] != "running":
        t.append(f"\n{r['message']}", style="dim" if r["status"] != "failed" else "red")
    return t


def render_current(s: MonitorState) -> Panel | Text:
    st = s.current
    if st is None:
        return Text("")
    done, total = st["progress_done"], st["progress_total"]
    elapsed = s.now - (st["started_at"] or s.now)
    eta = elapsed / done * (total - done) if done and total and done < total else None
    bar = ProgressBar(total=max(total, 1), completed=min(done, total or 1), width=40)
    idx = next((r["idx"] for r in s.rounds if r["id"] == st["round_id"]), "?")
    line = Text(f"round {idx} · {st['name']} (attempt {st['attempts']})  ")
    detail = Text(f"  {done:g}/{total:g} {st['progress_unit']}  elapsed {_fmt_secs(elapsed)}  ETA {_fmt_secs(eta)}  "
                  f"{st['progress_note']}")
    if s.rss_mb:
        detail.append(f"  RSS {s.rss_mb:,.0f} MB")
    return Panel(Group(line, bar, detail), title="now", border_style="green")


def _stage_cell(st: dict | None) -> str:
    if st is None:
        return "·"
    if st["status"] == "done":
        return f"{(st['finished_at'] or 0) - (st['started_at'] or 0):.0f}"
    return {"running": "▶", "failed": "✗", "pending": "·"}.get(st["status"], st["status"])


def render_rounds(s: MonitorState) -> Table:
    t = Table(title="rounds", caption="wall s = seconds per stage: " + "·".join(STAGES))
    for col, justify in (("#", "right"), ("candidate", "left"), ("pairs", "right"), ("SubEM vs champ", "right"),
                         ("gain", "right"), ("decision", "left"), ("wall s", "left")):
        t.add_column(col, justify=justify)
    for r in s.rounds:
        stages = {st["name"]: st for st in s.stages.get(r["id"], [])}
        decision = json.loads(r["decision_json"]) if r["decision_json"] else {}
        pairs = json.loads(stages["pairs"]["output_json"] or "{}").get("pairs", "") if "pairs" in stages else ""
        t.add_row(
            str(r["idx"]),
            r["candidate_adapter_id"] or "…",
            str(pairs),
            f"{decision['candidate_subem']:.1f} vs {decision['champion_subem']:.1f}" if decision else "-",
            f"{decision['gain']:+.1f}" if decision else "-",
            ("promoted" if decision.get("promoted") else "kept") if decision else r["status"],
            "·".join(_stage_cell(stages.get(n)) for n in STAGES),
        )
    return t


def render_metrics(s: MonitorState) -> Table:
    tasks = sorted({t for m in s.metrics.values() for t in m["per_task"]})
    t = Table(title="eval (SubEM %, held-out)")
    for col in ("model", "status", "mean", *tasks, "tokens"):
        t.add_column(col, justify="left" if col in ("model", "status") else "right")
    for key, m in s.metrics.items():
        status = "champion" if key == s.champion else (m["status"] or "base")
        t.add_row(key, status, f"{m['mean_subem']:.1f}", *[f"{m['per_task'].get(k, float('nan')):.1f}" for k in tasks],
                  f"{m['mean_tokens']:.0f}")
    return t


def render_events(s: MonitorState) -> Table:
    t = Table(title="recent events", show_header=False, box=None)
    t.add_column("time")
    t.add_column("message")
    for e in s.events:
        style = {"error": "red", "warn": "yellow"}.get(e["level"], "")
        t.add_row(time.strftime("%H:%M:%S", time.localtime(e["ts"])), Text(e["message"], style=style))
    return t


def render(s: MonitorState) -> Group:
    parts: list[Any] = [render_header(s)]
    if s.run is not None:
        parts += [render_current(s), render_rounds(s)]
        if s.metrics:
            parts.append(render_metrics(s))
        parts.append(render_events(s))
    return Group(*parts)


def controller_pid_of(workdir) -> int | None:
    from sealong.loop.controller import holder_pid

    return holder_pid(workdir)

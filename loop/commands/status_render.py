"""Pure render functions: a `MonitorState` in, a rich renderable out. No I/O, no clock.

Tests print them to `Console(record=True, width=...)` and read the text; `status` prints `render(state)`
once, `status --watch` and `start` refresh it live (sealong.loop.commands.status_watch).
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sealong.loop.commands.status_state import MonitorState, phase, stage_eta
from sealong.loop.stages.registry import STAGE_NAMES

PHASE_STYLE = {
    "running": "bold green",
    "between stages": "green",
    "waiting": "green",
    "finished": "bold blue",
    "failed": "bold red",
    "crashed": "bold red",
    "stopped": "yellow",
    "not started": "yellow",
}
SPARKS = "▁▂▃▄▅▆▇█"


def fmt_secs(sec: float | None) -> str:
    if sec is None or sec < 0:
        return "-"
    sec = int(sec)
    return f"{sec // 3600}h{sec % 3600 // 60:02d}m" if sec >= 3600 else f"{sec // 60}m{sec % 60:02d}s"


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(SPARKS[min(len(SPARKS) - 1, int((v - lo) / span * len(SPARKS)))] for v in values)


def _round_idx(s: MonitorState, round_id: int | None) -> Any:
    return next((r["idx"] for r in s.rounds if r["id"] == round_id), "?")


def _mean(s: MonitorState, key: str | None) -> float | None:
    m = s.metrics.get(key) if key else None
    return m["mean_subem"] if m else None


def render_header(s: MonitorState) -> Text:
    ph = phase(s)
    if s.run is None:
        return Text.assemble(
            ("sealong-loop ", "bold"), (ph.upper(), PHASE_STYLE[ph]), f"  ·  {s.workdir or ''}"
        )
    r = s.run
    t = Text.assemble(
        ("sealong-loop ", "bold"), f"run '{r['name']}'  ", (ph.upper(), PHASE_STYLE.get(ph, ""))
    )
    if s.rounds:
        t.append(
            f"  ·  round {s.rounds[-1]['idx']} ({len(s.rounds)} of {r['max_rounds'] or 'until stopped'})"
        )
    champ = _mean(s, s.champion)
    t.append(f"  ·  champion {s.champion}" + (f" (SubEM {champ:.1f})" if champ is not None else ""))
    if s.controller_pid:
        t.append(f"  ·  controller pid {s.controller_pid}")
    if s.now:
        t.append(f"  ·  {time.strftime('%H:%M:%S', time.localtime(s.now))}", style="dim")
    return t


def _progress(st: dict[str, Any], now: float) -> tuple[ProgressBar, Text]:
    done, total = st["progress_done"], st["progress_total"]
    elapsed = now - (st["started_at"] or now)
    eta = stage_eta(st, now)
    bar = ProgressBar(total=max(total, 1), completed=min(done, total), width=40)
    count = f"{done:g}/{total:g} {st['progress_unit']}  {100 * done / total:.0f}%" if total else "starting"
    return bar, Text(f"  {count}   elapsed {fmt_secs(elapsed)}  ETA {fmt_secs(eta)}")


def activity(s: MonitorState) -> Text:
    """What the running stage is doing, in its own units: rates, loss, learning rate."""
    st = s.current
    if st is None:
        return Text("")
    elapsed = max(s.now - (st["started_at"] or s.now), 1e-9)
    done, total, unit, name = st["progress_done"], st["progress_total"], st["progress_unit"], st["name"]
    if not total and name in ("sample", "score", "train", "eval"):
        return Text(f"{name}: starting (loading models and data)")
    if name == "sample" and unit == "questions":
        line = f"sampling: {done:g}/{total:g} questions  {done / elapsed:.2f} q/s"
        if s.sampled_tokens is not None:
            line += f"  ·  {s.sampled_tokens:,} tokens  {s.sampled_tokens / elapsed:.1f} tok/s"
        # Rates above count from the stage's start (model loading included); the stage's own is from its first token.
        return Text(line + (f"  (stage: {st['progress_note']})" if st["progress_note"] else ""))
    if name == "sample":
        return Text(f"sampling: greedy diagnostic answers {done:g}/{total:g}")
    if name == "train" and s.last_train_step:
        ts = s.last_train_step
        line = (
            f"training: step {ts['step']}/{total:g}  loss {ts['loss']:.4f}  lr {ts['lr']:.2e}  "
            f"grad norm {ts['grad_norm']:.3g}  {ts['tokens_per_s']:.0f} tok/s"
        )
        return Text(
            line + (f"\n          loss {sparkline(s.recent_losses)}" if len(s.recent_losses) > 1 else "")
        )
    if name == "train":
        return Text("training: waiting for the first optimizer step")
    if name == "score":
        return Text(f"scoring: utility {st['progress_note'] or '-'} ({done:g} of {total:g} done)")
    if name == "eval":
        return Text(
            f"evaluating: {done:g}/{total:g} questions  {done / elapsed:.2f} q/s  {st['progress_note']}".rstrip()
        )
    return Text(f"{name}: {st['progress_note']}".rstrip(": "))


def memory(s: MonitorState) -> Text:
    parts = []
    if s.current is not None:
        rss = f"RSS {s.rss_mb:,.0f} MB" if s.rss_mb is not None else "process gone"
        parts.append(f"stage pid {s.current['pid']} {rss}")
    if s.controller_rss_mb is not None:
        parts.append(f"controller RSS {s.controller_rss_mb:,.0f} MB")
    for g in s.gpu:
        mine = f" (stage {g['stage_mb'] / 1024:.1f})" if g["stage_mb"] else ""
        parts.append(f"GPU{g['index']} {g['used_mb'] / 1024:.1f}/{g['total_mb'] / 1024:.1f} GB{mine}")
    return Text("memory: " + "  ·  ".join(parts), style="dim") if parts else Text("")


def render_now(s: MonitorState) -> Panel:
    """The panel about what is happening now, for every phase of a run."""
    ph = phase(s)
    wd = s.workdir or "DIR"
    if ph == "not started":
        return Panel(
            Text(f"No run in {wd} yet; waiting for `sealong-loop start --workdir {wd}`."),
            title="not started",
            border_style="yellow",
        )
    if ph == "running" and s.current is not None:
        st = s.current
        bar, line = _progress(st, s.now)
        body = [bar, line, activity(s), memory(s)]
        title = f"now: round {_round_idx(s, st['round_id'])} · {st['name']} (attempt {st['attempts']})"
        return Panel(
            Group(*[b for b in body if not (isinstance(b, Text) and not b.plain)]),
            title=title,
            border_style="green",
        )
    if ph == "between stages":
        nxt = s.next_stage
        what = f"next: {nxt['name']} of round {_round_idx(s, nxt['round_id'])}" if nxt else "between rounds"
        return Panel(Text(f"between stages; {what}"), title="now", border_style="green")
    if ph == "waiting":
        return Panel(Text(s.run["message"]), title="waiting", border_style="green")
    if ph == "crashed":
        st = s.current
        if st is not None:
            what = (
                f"{st['name']} of round {_round_idx(s, st['round_id'])} was running (pid {st['pid']}) but that "
                "process is gone and no controller holds the workdir lock."
            )
        else:
            what = "the run is marked running but no controller holds the workdir lock (killed?)."
        body = Text(f"CRASHED: {what}\nResume it with: sealong-loop start --workdir {wd}", style="red")
        return Panel(body, title="crashed", border_style="red")
    message = s.run.get("message") or ""
    if ph == "failed":
        err = s.errors[0] if s.errors else None
        extra = (
            f"\nlast error ({err['stage']} of round {err['round']}, attempt {err['attempts']}): {err['error']}"
            if err
            else ""
        )
        body = Text(
            f"FAILED: {message}{extra}\nRetry from that stage with: sealong-loop start --workdir {wd}",
            style="red",
        )
        return Panel(body, title="failed", border_style="red")
    if ph == "finished":
        champ, base = _mean(s, s.champion), _mean(s, "base")
        best = f"\nchampion: {s.champion}" + (f", SubEM {champ:.1f}" if champ is not None else "")
        if champ is not None and base is not None and s.champion != "base":
            best += f" ({champ - base:+.1f} vs the base model's {base:.1f})"
        return Panel(
            Text(f"FINISHED: {message.removeprefix('finished: ')}{best}"),
            title="finished",
            border_style="blue",
        )
    return Panel(Text(f"{ph.upper()}: {message}"), title=ph, border_style="yellow")


def _tasks(s: MonitorState) -> list[str]:
    return sorted({t for m in s.metrics.values() for t in m["per_task"]})


def task_labels(tasks: list[str]) -> list[str]:
    """Column headers: the tasks' shared prefix dropped (synthetic-1hop, synthetic-2hop -> 1hop, 2hop)."""
    if len(tasks) < 2:
        return tasks
    prefix = tasks[0]
    for t in tasks[1:]:
        while not t.startswith(prefix):
            prefix = prefix[:-1]
    cut = max(prefix.rfind(c) for c in "-_/:") + 1
    return [t[cut:] or t for t in tasks]


def _table(title: str, **kw: Any) -> Table:
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, **kw)


def _candidate(s: MonitorState) -> str | None:
    for r in reversed(s.rounds):
        if r["candidate_adapter_id"]:
            return r["candidate_adapter_id"]
    return None


def render_models(s: MonitorState) -> Table:
    """Champion and the latest candidate (and the base model for reference), SubEM per task."""
    tasks = _tasks(s)
    t = _table("champion and candidate (held-out SubEM %)")
    for col in ("role", "model", "mean", *task_labels(tasks), "Δ champ", "tokens"):
        t.add_column(col, justify="left" if col in ("role", "model") else "right", no_wrap=col != "model")
    champ_mean = _mean(s, s.champion)
    cand = _candidate(s)
    roles = [("champion", s.champion)]
    if cand and cand != s.champion:
        roles.append(("candidate", cand))
    if s.champion != "base":
        roles.append(("base", "base"))
    for role, key in roles:
        m = s.metrics.get(key)
        if m is None:
            t.add_row(role, key, "not evaluated yet", *[""] * len(tasks), "", "")
            continue
        delta = f"{m['mean_subem'] - champ_mean:+.1f}" if champ_mean is not None and key != s.champion else ""
        t.add_row(
            role,
            key,
            f"{m['mean_subem']:.1f}",
            *[_pct(m["per_task"].get(k)) for k in tasks],
            delta,
            f"{m['mean_tokens']:.0f}",
        )
    return t


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _stage_cell(st: dict | None, now: float) -> str:
    if st is None:
        return "-"
    if st["status"] == "done":
        return f"{(st['finished_at'] or 0) - (st['started_at'] or 0):.0f}"
    if st["status"] == "running":
        return f"▶{now - (st['started_at'] or now):.0f}"
    return {"failed": "✗", "pending": "-"}.get(st["status"], st["status"])


def render_rounds(s: MonitorState, limit: int | None = None) -> Table:
    """Past rounds: pairs, the candidate's SubEM per task, its change vs the champion, the decision, wall times."""
    tasks = _tasks(s)
    shown = s.rounds[-limit:] if limit else s.rounds
    hidden = len(s.rounds) - len(shown)
    t = _table(
        "rounds" + (f" (last {len(shown)}; {hidden} earlier)" if hidden else ""),
        caption="SubEM % of each round's candidate; wall s per stage: " + "·".join(STAGE_NAMES),
        caption_justify="left",
    )
    for col in ("#", "candidate", "pairs", *task_labels(tasks), "mean", "Δ champ", "decision", "wall s"):
        t.add_column(
            col,
            justify="left" if col in ("candidate", "decision", "wall s") else "right",
            no_wrap=col != "wall s",
            overflow="fold",
        )
    for r in shown:
        stages = {st["name"]: st for st in s.stages.get(r["id"], [])}
        decision = json.loads(r["decision_json"]) if r["decision_json"] else {}
        out = json.loads(stages["pairs"]["output_json"] or "{}") if "pairs" in stages else {}
        skipped = sum(out.get("skipped", {}).values())
        pairs = f"{out['pairs']}" + (f" (-{skipped})" if skipped else "") if "pairs" in out else ""
        m = s.metrics.get(r["candidate_adapter_id"] or "")
        if decision:
            verdict = (
                Text("promoted", style="green") if decision.get("promoted") else Text("kept", style="dim")
            )
        else:
            running = next(
                (st["name"] for st in stages.values() if st["status"] in ("running", "failed")), None
            )
            verdict = Text(
                f"{r['status']}" + (f" ({running})" if running else ""),
                style="red" if r["status"] == "failed" else "",
            )
        t.add_row(
            str(r["idx"]),
            r["candidate_adapter_id"] or "…",
            pairs,
            *[_pct(m["per_task"].get(k)) if m else "" for k in tasks],
            _pct(m["mean_subem"]) if m else "",
            f"{decision['gain']:+.1f}" if decision else "",
            verdict,
            "·".join(_stage_cell(stages.get(n), s.now) for n in STAGE_NAMES),
        )
    return t


SIGNAL_COLUMNS = (
    ("greedy", "greedy"),
    ("random", "random_sample"),
    ("mean", "mean_sample"),
    ("oracle@N", "oracle"),
)


def render_signal(s: MonitorState, limit: int | None = None) -> Table | None:
    """Per round: does the self-supervision carry signal (SubEM of the samples, judged with gold answers
    that training never reads), and the promotion gate's gain, confidence interval and p-value."""
    if not s.diagnostics and not any(r["decision_json"] for r in s.rounds):
        return None
    shown = s.rounds[-limit:] if limit else s.rounds
    utilities = sorted(
        {k.split("/", 1)[1] for d in s.diagnostics.values() for k in d if k.startswith("mbr/")}
    )
    t = _table(
        "signal and gate",
        caption="SubEM % on the round's training questions (gold answers judge only; training never reads them); "
        "gate: gain in mean SubEM over eval tasks [CI], p",
        caption_justify="left",
    )
    cols = [
        "#",
        *(c for c, _ in SIGNAL_COLUMNS),
        *(f"MBR {u}" for u in utilities),
        "chosen",
        "rejected",
        "gate",
    ]
    for col in cols:
        t.add_column(
            col, justify="left" if col == "gate" else "right", no_wrap=col != "gate", overflow="fold"
        )
    for r in shown:
        d = s.diagnostics.get(r["idx"], {})
        decision = json.loads(r["decision_json"]) if r["decision_json"] else {}
        gate = ""
        if decision:
            lo, hi, p = decision.get("ci_low"), decision.get("ci_high"), decision.get("p_value")
            gate = f"{decision.get('gain', 0):+.1f}"
            if lo is not None and hi is not None:
                gate += f" [{lo:+.1f}, {hi:+.1f}]"
            if p is not None:
                gate += f" p={p:.2f}"
            gate += f" {decision.get('rule', '')}"
            if decision.get("length_flag"):
                gate += " LENGTH"
        t.add_row(
            str(r["idx"]),
            *[_pct(d.get(key)) for _, key in SIGNAL_COLUMNS],
            *[_pct(d.get(f"mbr/{u}")) for u in utilities],
            _pct(d.get("chosen")),
            _pct(d.get("rejected")),
            gate,
        )
    return t


def render_events(s: MonitorState, limit: int | None = None) -> Group:
    """The last events, newest first, then the errors the stages recorded."""
    t = Table(title="recent events", title_justify="left", show_header=False, box=None)
    t.add_column("time", style="dim")
    t.add_column("stage")
    t.add_column("message")
    for e in s.events[:limit]:
        style = {"error": "red", "warn": "yellow"}.get(e["level"], "")
        t.add_row(
            time.strftime("%H:%M:%S", time.localtime(e["ts"])),
            e["stage"] or "-",
            Text(e["message"], style=style),
        )
    parts: list[RenderableType] = [t]
    if s.errors:
        errs = Table(title="errors", title_justify="left", show_header=False, box=None, title_style="red")
        errs.add_column("where")
        errs.add_column("error", style="red")
        for e in s.errors[:3]:
            errs.add_row(f"round {e['round']} {e['stage']} (attempt {e['attempts']})", e["error"][:400])
        parts.append(errs)
    return Group(*parts)


def render(s: MonitorState, height: int | None = None) -> Group:
    """The whole view. With a terminal `height`, older rounds and events are dropped to fit."""
    parts: list[RenderableType] = [render_header(s), render_now(s)]
    if s.run is None:
        return Group(*parts)
    n_rounds = n_events = None
    if height:
        budget = max(6, height - 26 - (4 if s.errors else 0))
        signal_shown = bool(s.diagnostics) or any(r["decision_json"] for r in s.rounds)
        if signal_shown:
            budget = max(6, budget - 6)  # the signal table's title, header, rule and caption
        n_rounds = max(3, budget // 3 if signal_shown else budget * 2 // 3)
        shown = min(n_rounds, len(s.rounds))
        n_events = max(2, budget - shown * (2 if signal_shown else 1))
    if s.metrics:
        parts.append(render_models(s))
    parts.append(render_rounds(s, n_rounds))
    signal = render_signal(s, n_rounds)
    if signal is not None:
        parts.append(signal)
    parts.append(render_events(s, n_events))
    return Group(*parts)

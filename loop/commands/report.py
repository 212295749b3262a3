"""`sealong-loop report`: PNG plots of a run and a Markdown summary that links them.

    sealong-loop report --workdir runs/demo                  # writes runs/demo/report/report.md + *.png
    sealong-loop report --workdir runs/demo --out /tmp/rep

Plots (matplotlib, Agg backend, no display needed):
- subem_per_round.png: each round's candidate (mean and per task) against the champion it faced and the
  base model, promotion decisions marked;
- mbr_per_round.png: the distribution of MBR scores per round with the chosen and rejected answers'
  scores, pairs made and questions skipped, and (when recorded) the SubEM diagnostics of the samples;
- stage_times.png: wall time per stage per round;
- training_loss.png: ORPO loss per optimizer step, one line per round.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import sqlite_utils
from sealong.loop.commands import common
from sealong.loop.errors import SealongError
from sealong.loop.stages.registry import STAGE_NAMES
from sealong.store.artifacts import atomic_write_text
from sealong.store.db import one, rows
from sealong.store.queries import adapter_metrics, diagnostics_by_round

PLOTS = {
    "subem_per_round.png": "Held-out SubEM per round",
    "mbr_per_round.png": "MBR diagnostics per round",
    "stage_times.png": "Wall time per stage",
    "training_loss.png": "Training loss",
}


def collect(db: sqlite_utils.Database) -> dict[str, Any]:
    """Everything the report draws, read once."""
    run = one(
        db,
        "SELECT id, name, status, message, max_rounds, created_at, finished_at FROM runs ORDER BY id LIMIT 1",
    )
    metrics = {
        m["model_key"]: {**m, "per_task": json.loads(m["per_task_json"] or "{}")} for m in adapter_metrics(db)
    }
    rounds = []
    diagnostics = diagnostics_by_round(db)
    for r in rows(db, "SELECT * FROM rounds ORDER BY idx"):
        stages = {
            s["name"]: s for s in rows(db, "SELECT * FROM stages WHERE round_id = ? ORDER BY seq", (r["id"],))
        }
        pairs_out = json.loads((stages.get("pairs") or {}).get("output_json") or "{}")
        rounds.append(
            {
                "idx": r["idx"],
                "status": r["status"],
                "candidate": r["candidate_adapter_id"],
                "policy": r["policy_adapter_id"] or "base",
                "decision": json.loads(r["decision_json"]) if r["decision_json"] else None,
                "stage_seconds": {
                    n: (s["finished_at"] - s["started_at"])
                    for n, s in stages.items()
                    if s["status"] == "done" and s["started_at"] and s["finished_at"]
                },
                "pairs": pairs_out.get("pairs"),
                "skipped": sum(pairs_out.get("skipped", {}).values()),
                "mbr_scores": [
                    x["mbr_score"]
                    for x in rows(
                        db,
                        "SELECT mbr_score FROM samples WHERE round_id = ? AND mbr_score IS NOT NULL",
                        (r["id"],),
                    )
                ],
                "chosen_rejected": rows(
                    db,
                    "SELECT cs.mbr_score AS chosen, rs.mbr_score AS rejected FROM pairs p "
                    "LEFT JOIN samples cs ON cs.id = p.chosen_sample_id "
                    "JOIN samples rs ON rs.id = p.rejected_sample_id WHERE p.round_id = ?",
                    (r["id"],),
                ),
                "losses": [
                    (x["step"], x["loss"])
                    for x in rows(
                        db, "SELECT step, loss FROM train_steps WHERE round_id = ? ORDER BY step", (r["id"],)
                    )
                ],
                "diagnostics": diagnostics.get(r["idx"], {}),
            }
        )
    champ = one(db, "SELECT id FROM adapters WHERE status = 'champion'")
    evals = rows(
        db,
        "SELECT model_key, task, COUNT(*) AS n, SUM(subem) AS hits, AVG(n_tokens) AS mean_tokens FROM evals "
        "GROUP BY model_key, task ORDER BY model_key, task",
    )
    return {
        "run": run,
        "metrics": metrics,
        "rounds": rounds,
        "champion": champ["id"] if champ else "base",
        "evals": evals,
    }


def wilson(hits: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / (1 + z * z / n)
    return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


SIGNAL = [
    ("greedy", "greedy"),
    ("random sample", "random_sample"),
    ("mean sample", "mean_sample"),
    ("oracle@N", "oracle"),
]


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "" if v is None else format(v, spec)


def _section(title: str, head: list[str], align: str, body: list[list[str]], note: str = "") -> list[str]:
    """A Markdown section: '## title', an optional note, and a table; align has 'l' or 'r' per column."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align)
    return (
        [f"## {title}", ""]
        + ([note, ""] if note else [])
        + ["| " + " | ".join(head) + " |", rule]
        + ["| " + " | ".join(cells) + " |" for cells in body]
        + [""]
    )


def tables(data: dict[str, Any]) -> list[str]:
    """The numbers behind the plots as Markdown tables: signal, gate, held-out eval with CIs, stage times."""
    out: list[str] = []
    diag = [r for r in data["rounds"] if r["diagnostics"]]
    if diag:
        utilities = sorted(
            {k.split("/", 1)[1] for r in diag for k in r["diagnostics"] if k.startswith("mbr/")}
        )
        keys = [k for _, k in SIGNAL] + [f"mbr/{u}" for u in utilities] + ["chosen", "rejected"]
        head = ["round", *(c for c, _ in SIGNAL), *(f"MBR {u}" for u in utilities), "chosen", "rejected"]
        out += _section(
            "Self-supervision signal (SubEM % of the round's samples on its training questions)",
            head,
            "r" * len(head),
            [[str(r["idx"]), *(_fmt(r["diagnostics"].get(k)) for k in keys)] for r in diag],
            "Gold answers only judge here; training never reads them. MBR u = the sample that utility u ranks first.",
        )
    decided = [r for r in data["rounds"] if r["decision"]]
    if decided:
        body = []
        for r in decided:
            d = r["decision"]
            ci = (
                f"[{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] @ {d['confidence']:.0%}"
                if d.get("ci_low") is not None
                else ""
            )
            body.append(
                [
                    str(r["idx"]),
                    d.get("candidate", ""),
                    d.get("champion", ""),
                    d.get("rule", ""),
                    f"{d['gain']:+.1f}",
                    ci,
                    _fmt(d.get("p_value"), ".3f"),
                    str(d.get("n_questions", "")),
                    _fmt(d.get("length_ratio"), ".2f") + (" FLAG" if d.get("length_flag") else ""),
                    "yes" if d["promoted"] else "no",
                    d.get("reason", ""),
                ]
            )
        head = "round candidate champion rule gain CI p n".split() + ["length ratio", "promoted", "reason"]
        out += _section(
            "Promotion gate (gain in mean-over-tasks SubEM, candidate vs champion, same eval questions)",
            head,
            "rlllrlrrrll",
            body,
        )
    if data.get("evals"):
        tasks = sorted({e["task"] for e in data["evals"]})
        by_model: dict[str, dict[str, dict]] = {}
        for e in data["evals"]:
            by_model.setdefault(e["model_key"], {})[e["task"]] = e
        body = []
        for model, per in by_model.items():
            cells = [model]
            for t in tasks:
                e = per.get(t)
                lo, hi = wilson(e["hits"], e["n"]) if e else (0.0, 0.0)
                cells.append(
                    f"{100.0 * e['hits'] / e['n']:.1f} [{lo:.0f}, {hi:.0f}] (n={e['n']})" if e else ""
                )
            means = [100.0 * e["hits"] / e["n"] for e in per.values()]
            tokens = sum(e["mean_tokens"] * e["n"] for e in per.values()) / sum(e["n"] for e in per.values())
            cells.append(f"{sum(means) / len(means):.1f}" if len(per) == len(tasks) else "(partial)")
            cells.append(f"{tokens:.0f}")
            body.append(cells)
        out += _section(
            "Held-out eval (SubEM %, 95% Wilson interval; mean output tokens)",
            ["model", *tasks, "mean", "tokens"],
            "l" * (len(tasks) + 1) + "rr",
            body,
        )
    timed = [r for r in data["rounds"] if r["stage_seconds"]]
    if timed:
        out += _section(
            "Wall time per stage (s)",
            ["round", *STAGE_NAMES, "total"],
            "r" * (len(STAGE_NAMES) + 2),
            [
                [
                    str(r["idx"]),
                    *(_fmt(r["stage_seconds"].get(n), ".0f") for n in STAGE_NAMES),
                    f"{sum(r['stage_seconds'].values()):.0f}",
                ]
                for r in timed
            ],
        )
    return out


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _percent_axis(ax, values: list[float | None]) -> None:
    top = max([v for v in values if v is not None] + [0.0])
    upper = max(5.0, min(100.0, top * 1.15 + 1))
    ax.set_ylim(-0.04 * upper, upper)  # a little room below 0 so markers at 0 stay whole


def plot_subem(data: dict[str, Any], ax) -> None:
    decided = [r for r in data["rounds"] if r["decision"]]
    if not decided:
        _no_data(ax, "decided rounds")
        return
    xs = [r["idx"] for r in decided]
    cand = [r["decision"]["candidate_subem"] for r in decided]
    champ = [r["decision"]["champion_subem"] for r in decided]
    ax.step(xs, champ, where="mid", color="tab:blue", linestyle="--", label="champion it faced")
    ax.plot(xs, cand, color="tab:gray", linewidth=1)
    tasks = sorted({t for r in decided for t in data["metrics"].get(r["candidate"], {}).get("per_task", {})})
    for t in tasks:
        ys = [data["metrics"].get(r["candidate"], {}).get("per_task", {}).get(t) for r in decided]
        ax.plot(xs, ys, linewidth=0.8, alpha=0.5, label=f"candidate, {t}")
    for promoted, marker, color, label in (
        (True, "^", "tab:green", "promoted"),
        (False, "x", "tab:red", "not promoted"),
    ):
        pts = [(x, y) for x, y, r in zip(xs, cand, decided) if bool(r["decision"]["promoted"]) == promoted]
        if pts:
            ax.scatter(
                *zip(*pts), marker=marker, color=color, s=70, zorder=3, label=f"candidate mean, {label}"
            )
    for x, y, r in zip(xs, cand, decided):
        ax.annotate(
            f"{r['decision']['gain']:+.1f}",
            (x, y),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=7,
        )
    base = data["metrics"].get("base")
    if base:
        ax.axhline(base["mean_subem"], color="black", linestyle=":", linewidth=1, label="base model")
    _percent_axis(ax, [*cand, *champ, base["mean_subem"] if base else 0.0])
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("SubEM % (held-out, mean over tasks)")
    ax.legend(fontsize=7, loc="best")


def plot_mbr(data: dict[str, Any], axes) -> None:
    ax_scores, ax_pairs, ax_diag = axes
    scored = [r for r in data["rounds"] if r["mbr_scores"]]
    if scored:
        xs = [r["idx"] for r in scored]
        ax_scores.boxplot([r["mbr_scores"] for r in scored], positions=xs, widths=0.5, showfliers=True)
        for key, marker, color in (("chosen", "^", "tab:green"), ("rejected", "v", "tab:red")):
            pts = [  # a greedy chosen answer ([pairs] selection) has no MBR score
                (r["idx"], p[key]) for r in scored for p in r["chosen_rejected"] if p[key] is not None
            ]
            if pts:
                ax_scores.scatter(
                    *zip(*pts), marker=marker, color=color, s=25, zorder=3, label=key, alpha=0.7
                )
        ax_scores.set_xticks(xs, [str(x) for x in xs])
        ax_scores.set_ylabel("MBR score")
        ax_scores.set_title("MBR scores of all samples", fontsize=9)
        ax_scores.legend(fontsize=7)
    else:
        _no_data(ax_scores, "scored samples")
    paired = [r for r in data["rounds"] if r["pairs"] is not None]
    if paired:
        xs = [r["idx"] for r in paired]
        made = [r["pairs"] for r in paired]
        ax_pairs.bar(xs, made, color="tab:blue", label="pairs")
        ax_pairs.bar(
            xs, [r["skipped"] for r in paired], bottom=made, color="tab:orange", label="skipped (degenerate)"
        )
        ax_pairs.set_xticks(xs)
        ax_pairs.yaxis.get_major_locator().set_params(integer=True)
        ax_pairs.set_ylabel("questions")
        ax_pairs.set_title("pairs made / skipped", fontsize=9)
        ax_pairs.legend(fontsize=7)
    else:
        _no_data(ax_pairs, "pairs")
    diag = [r for r in data["rounds"] if r["diagnostics"]]
    if diag:
        xs = [r["idx"] for r in diag]
        for key in sorted({k for r in diag for k in r["diagnostics"]}):
            ax_diag.plot(xs, [r["diagnostics"].get(key) for r in diag], marker="o", markersize=3, label=key)
        _percent_axis(ax_diag, [v for r in diag for v in r["diagnostics"].values()])
        ax_diag.set_xticks(xs)
        ax_diag.set_ylabel("SubEM % on training questions")
        ax_diag.set_title("does the selection carry signal?", fontsize=9)
        ax_diag.legend(fontsize=6)
    else:
        _no_data(ax_diag, "diagnostics")
    for ax in axes:
        ax.set_xlabel("round")


def plot_stage_times(data: dict[str, Any], ax) -> None:
    timed = [r for r in data["rounds"] if r["stage_seconds"]]
    if not timed:
        _no_data(ax, "finished stages")
        return
    xs = [r["idx"] for r in timed]
    bottom = [0.0] * len(timed)
    for name in STAGE_NAMES:
        secs = [r["stage_seconds"].get(name, 0.0) for r in timed]
        ax.bar(xs, secs, bottom=bottom, label=name)
        bottom = [b + s for b, s in zip(bottom, secs)]
    ax.set_xticks(xs)
    ax.set_xlabel("round")
    ax.set_ylabel("wall seconds")
    ax.legend(fontsize=7)


def plot_loss(data: dict[str, Any], ax) -> None:
    trained = [r for r in data["rounds"] if r["losses"]]
    if not trained:
        _no_data(ax, "training steps")
        return
    for r in trained:
        ax.plot(*zip(*r["losses"]), marker=".", label=f"round {r['idx']}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("ORPO loss")
    ax.legend(fontsize=7)


def write_plots(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawers = {
        "subem_per_round.png": ((8, 4.5), 1, plot_subem),
        "mbr_per_round.png": ((14, 4.2), 3, plot_mbr),
        "stage_times.png": ((8, 4), 1, plot_stage_times),
        "training_loss.png": ((8, 4), 1, plot_loss),
    }
    written = []
    for name, (size, n_axes, draw) in drawers.items():
        fig, axes = plt.subplots(1, n_axes, figsize=size)
        draw(data, axes)
        fig.suptitle(f"{PLOTS[name]} — run '{data['run']['name']}'", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        written.append(out / name)
    return written


def markdown(data: dict[str, Any]) -> str:
    run = data["run"]
    champ = data["metrics"].get(data["champion"])
    base = data["metrics"].get("base")
    lines = [
        f"# sealong-loop report: run '{run['name']}'",
        "",
        f"- status: **{run['status']}**" + (f" ({run['message']})" if run["message"] else ""),
        f"- rounds: {len(data['rounds'])} of {run['max_rounds'] or 'until stopped'}",
        f"- champion: **{data['champion']}**"
        + (f", SubEM {champ['mean_subem']:.1f}" if champ else "")
        + (f" (base model {base['mean_subem']:.1f})" if base and data["champion"] != "base" else ""),
        f"- generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `sealong-loop report`",
        "",
        "| round | policy | candidate | pairs (skipped) | candidate SubEM | champion SubEM | gain | decision | wall s |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in data["rounds"]:
        d = r["decision"]
        verdict = ("promoted" if d["promoted"] else "not promoted") if d else r["status"]
        pairs = "" if r["pairs"] is None else f"{r['pairs']} ({r['skipped']})"
        cells = [
            str(r["idx"]),
            r["policy"],
            r["candidate"] or "",
            pairs,
            f"{d['candidate_subem']:.1f}" if d else "",
            f"{d['champion_subem']:.1f}" if d else "",
            f"{d['gain']:+.1f}" if d else "",
            verdict,
            f"{sum(r['stage_seconds'].values()):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += tables(data)
    for name, title in PLOTS.items():
        lines += [f"## {title}", "", f"[![{title}]({name})]({name})", ""]
    return "\n".join(lines)


def write_report(db: sqlite_utils.Database, out: Path) -> list[Path]:
    """Write the PNGs and report.md into `out`; returns the paths written."""
    data = collect(db)
    if data["run"] is None:
        from sealong.loop.errors import SealongError

        raise SealongError("the database holds no run yet; nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    written = write_plots(data, out)
    atomic_write_text(out / "report.md", markdown(data))
    return [*written, out / "report.md"]


@click.command("report")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", default=None, help="Output directory. Default: <workdir>/report.")
def report_command(workdir: str, out: str | None) -> None:
    """Write PNG plots (SubEM per round with promotion decisions, MBR diagnostics, stage wall times, training
    loss) and a Markdown summary, report.md, that links them.

    Example: sealong-loop report --workdir runs/demo --out runs/demo/report
    """
    wd, db = common.readonly_db(workdir, need_schema=True)
    target = Path(out) if out else wd / "report"
    if target.exists() and not target.is_dir():
        raise SealongError(f"--out {target} is a file; give a directory (it is created if missing)")
    try:
        written = write_report(db, target)
    except OSError as e:
        raise SealongError(f"cannot write the report to {target}: {e.strerror or e}") from None
    click.echo(f"wrote {len(written)} files to {target}: " + ", ".join(p.name for p in written))

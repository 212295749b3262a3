"""The report of `sealong-loop ablate`: <workdir>/report/ablation.md, ablation.json and ablation.png.

Read from each arm's database (read-only), computed by sealong.loop.recipe.ablation.analyse: per arm and
round the candidate's held-out SubEM with a 95% bootstrap CI, the paired difference of each arm against
the first arm (same eval questions) per round and pooled over the rounds every arm finished, the
selection diagnostics (SubEM of the answers each arm chose, on its training questions), and how many eval
questions a 5- or 10-point difference needs, with what they would cost at the measured eval speed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sealong.loop.recipe import ablation
from sealong.store.artifacts import atomic_write_text
from sealong.store.db import connect, db_path, has_schema, rows
from sealong.store.queries import diagnostics_by_round


def collect_arm(workdir: Path) -> dict[str, Any] | None:
    """One arm's rounds and per-question eval rows; None before its run exists."""
    if not db_path(workdir).exists():
        return None
    db = connect(workdir, readonly=True)
    if not has_schema(db):
        return None
    diagnostics = diagnostics_by_round(db)
    out: dict[str, Any] = {"rounds": [], "evals": {}, "eval_seconds": 0.0, "eval_rows": 0}
    for r in rows(db, "SELECT * FROM rounds ORDER BY idx"):
        stages = {s["name"]: s for s in rows(db, "SELECT * FROM stages WHERE round_id = ?", (r["id"],))}
        seconds = {
            n: s["finished_at"] - s["started_at"]
            for n, s in stages.items()
            if s["status"] == "done" and s["started_at"] and s["finished_at"]
        }
        decision = json.loads(r["decision_json"]) if r["decision_json"] else None
        out["rounds"].append(
            {
                "idx": r["idx"],
                "status": r["status"],
                "policy": r["policy_adapter_id"] or "base",
                "candidate": r["candidate_adapter_id"],
                "promoted": r["promoted"],
                "gain": decision.get("gain") if decision else None,
                "seconds": seconds,
                "diagnostics": diagnostics.get(r["idx"], {}),
            }
        )
        if "eval" in seconds:
            out["eval_seconds"] += seconds["eval"]
            out["eval_rows"] += rows(db, "SELECT COUNT(*) AS n FROM evals WHERE round_id = ?", (r["id"],))[0][
                "n"
            ]
    model_round = {"base": -1} | {
        r["candidate"]: r["idx"] for r in out["rounds"] if r["candidate"] and r["status"] == "done"
    }
    for e in rows(db, "SELECT model_key, question_id, task, subem FROM evals"):
        if e["model_key"] in model_round:
            out["evals"].setdefault(model_round[e["model_key"]], {})[e["question_id"]] = (
                e["task"],
                e["subem"],
            )
    return out


def collect(workdir: Path, plan: ablation.Plan) -> dict[str, Any]:
    arms = {a: collect_arm(workdir / a) for a in plan.arms}
    evals = {a: d["evals"] for a, d in arms.items() if d}
    result = ablation.analyse(evals, plan.arms)
    seconds = sum(d["eval_seconds"] for d in arms.values() if d)
    n = sum(d["eval_rows"] for d in arms.values() if d)
    result["eval_seconds_per_question"] = seconds / n if n else None
    result["plan"] = plan.to_dict()
    result["arm_rounds"] = {a: (d["rounds"] if d else []) for a, d in arms.items()}
    return result


def _ci(r: dict) -> str:
    return f"{r['subem']:.1f} [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def _diff(d: dict) -> str:
    return f"{d['diff']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}]"


def _minutes(n: int | None, per_q: float | None) -> str:
    return "" if n is None or per_q is None else f"{n * per_q / 60:.0f}"


def markdown(res: dict[str, Any]) -> str:
    plan, arms = res["plan"], res["arms"]
    ref = arms[0]
    lines = [
        "# sealong-loop ablation",
        "",
        f"- arms: {', '.join(arms)} (reference: **{ref}**); {plan['rounds']} round(s) each",
        f"- base config: {plan['base_config']} (sha256 {plan['base_config_sha256'][:12]})",
        f"- generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `sealong-loop ablate`",
        "",
        "## Held-out SubEM of each round's candidate (95% bootstrap CI over eval questions)",
        "",
        "Round -1 is the base model (every arm evaluates it; the numbers agree).",
        "",
        "| arm | round | SubEM [95% CI] | n | promoted | chosen SubEM (train) | round minutes |",
        "|---|---:|---|---:|---|---:|---:|",
    ]
    meta = {(a, r["idx"]): r for a in arms for r in res["arm_rounds"].get(a, [])}
    for row in res["rows"]:
        m = meta.get((row["arm"], row["round"]), {})
        chosen = m.get("diagnostics", {}).get("chosen")
        promoted = {1: "yes", 0: "no"}.get(m.get("promoted"), "")
        minutes = sum(m["seconds"].values()) / 60 if m.get("seconds") else None
        lines.append(
            f"| {row['arm']} | {row['round']} | {_ci(row)} | {row['n']} | {promoted} | "
            f"{'' if chosen is None else f'{chosen:.1f}'} | {'' if minutes is None else f'{minutes:.1f}'} |"
        )
    lines += [
        "",
        f"## Paired difference against {ref} (same eval questions; 95% paired-bootstrap CI, sign-flip p)",
        "",
        "| arm | round | difference [95% CI] | p | wins / losses | n |",
        "|---|---:|---|---:|---|---:|",
    ]
    for d in res["diffs"]:
        lines.append(
            f"| {d['arm']} − {d['vs']} | {d['round']} | {_diff(d)} | {d['p_value']:.3f} | "
            f"{d['wins']} / {d['losses']} | {d['n']} |"
        )
    for d in res["pooled"]:
        lines.append(
            f"| {d['arm']} − {d['vs']} | mean of rounds {', '.join(map(str, d['rounds']))} | {_diff(d)} | "
            f"{d['p_value']:.3f} | {d['wins']} / {d['losses']} | {d['n']} |"
        )
    per_q = res.get("eval_seconds_per_question")
    lines += [
        "",
        "Pooled: each question's SubEM averaged over the rounds every arm finished, then paired.",
        "",
        "## Power: eval questions needed (two-sided α = 0.05, power 0.8, from the measured spread)",
        "",
        "| comparison | sd of per-question difference (points) | n for 5 points | minutes per model | "
        "n for 10 points | minutes per model |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in res["power"]:
        lines.append(
            f"| {p['arm']} − {p['vs']}, mean of {len(res['pooled'][0]['rounds'])} round(s) (n = {p['n']}) | "
            f"{p['sd_points']:.1f} | {p['n_for_5_points'] or '—'} | {_minutes(p['n_for_5_points'], per_q)} | "
            f"{p['n_for_10_points'] or '—'} | {_minutes(p['n_for_10_points'], per_q)} |"
        )
        lines.append(
            f"| {p['arm']} − {p['vs']}, one round | {p['sd_points_one_round']:.1f} | "
            f"{p['n_for_5_points_one_round'] or '—'} | {_minutes(p['n_for_5_points_one_round'], per_q)} | | |"
        )
    if per_q:
        lines += ["", f"Measured eval speed: {per_q:.2f} s per question per model (greedy), this machine."]
    lines += ["", "— : every question tied (no spread to estimate from)."]
    lines += ["", "![SubEM per round and arm](ablation.png)", ""]
    return "\n".join(lines)


def plot(res: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    arms = res["arms"]
    width = 0.08  # arms side by side around each round
    for i, arm in enumerate(arms):
        pts = [r for r in res["rows"] if r["arm"] == arm]
        xs = [r["round"] + (i - (len(arms) - 1) / 2) * width for r in pts]
        ys = [r["subem"] for r in pts]
        err = [[r["subem"] - r["ci_low"] for r in pts], [r["ci_high"] - r["subem"] for r in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=arm, linestyle="-")
        diag = [(r["idx"], r["diagnostics"].get("chosen")) for r in res["arm_rounds"].get(arm, [])]
        diag = [(x, y) for x, y in diag if y is not None]
        if diag:
            ax2.plot(*zip(*diag), marker="o", label=f"{arm}: chosen")
    ticks = sorted({r["round"] for r in res["rows"]})
    ax.set_xticks(ticks, ["base" if t < 0 else str(t) for t in ticks])
    ax2.set_xticks([t for t in ticks if t >= 0])
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax.set_xlabel("round's candidate")
    ax.set_ylabel("held-out SubEM % (95% CI)")
    ax.set_title("Candidate per round", fontsize=10)
    ax.legend(fontsize=8)
    ax2.set_xlabel("round")
    ax2.set_ylabel("SubEM % of the chosen answers")
    ax2.set_title("What each arm trained on (training questions)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle("sealong-loop ablation: " + " vs ".join(arms), fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def write_ablation_report(workdir: Path, plan: ablation.Plan) -> list[Path]:
    res = collect(workdir, plan)
    out = workdir / "report"
    out.mkdir(parents=True, exist_ok=True)
    plot(res, out / "ablation.png")
    atomic_write_text(out / "ablation.json", json.dumps(res, indent=2, default=str) + "\n")
    atomic_write_text(out / "ablation.md", markdown(res))
    return [out / "ablation.md", out / "ablation.json", out / "ablation.png"]

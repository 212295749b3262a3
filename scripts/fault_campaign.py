"""Fault campaign: many kill-and-resume trials across every stage, then one summary table.

    .venv/bin/python -P scripts/fault_campaign.py --trials 60            # ~30-60 min on 2 CPU cores
    .venv/bin/python -P scripts/fault_campaign.py --trials 8 --rounds 1  # a quick look

First an uninterrupted reference run (tiny random Llama, 2 rounds, every candidate promoted so the
lineage changes). Then runs of the same config with random faults
(tests/reliability/harness.py): SIGKILL of the stage process or of the controller, at a named point
inside a stage (mid-stage after rows committed, inside atomic writes, between an adapter's rename and
its commit, inside the last transaction, after the commit) or a random delay into it; the controller is
restarted until the run finishes. A trial is one fault that fired. After each, the workdir's integrity
is checked (sealong.loop.engine.integrity.verify); after each run, its data is compared with the reference:
rows missing or extra (data lost) and rows whose content differs. Training checkpoints are off, so an
interrupted training restarts from scratch and every row, adapter hashes included, must equal the
reference's (a resumed checkpoint matches only within float tolerance). Exit 1 if anything was
violated, lost or changed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _harness():
    spec = importlib.util.spec_from_file_location(
        "reliability_harness", REPO / "tests" / "reliability" / "harness.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=60, help="keep starting runs until this many faults fired")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--root", type=Path, default=None, help="where the runs go (default /tmp/sealong-campaign-<seed>)"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="also write the table (markdown) and details (JSON) here"
    )
    ap.add_argument(
        "--keep", action="store_true", help="keep every run's workdir (default: only failed ones)"
    )
    args = ap.parse_args()
    h = _harness()
    root = (args.root or Path(f"/tmp/sealong-campaign-{args.seed}")).resolve()
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    cfg = h.make_config(
        root / "campaign.toml",
        REPO / "tests" / "configs" / "tiny-random.toml",
        run={"max_rounds": args.rounds},
        promote={"rule": "margin", "margin": -1.0},
        distributed={"checkpoint_every": 0},
        train={"epochs": 2},
    )
    t_start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.0f}s] {msg}", flush=True)

    log(f"reference run (no faults) in {root / 'reference'}")
    ref = h.run_with_faults(root / "reference", cfg, [], log=log)
    if not ref.finished or ref.violations:
        log(f"the reference run itself failed: {ref.violations}")
        return 1
    reference, typical = h.snapshot(ref.workdir), h.stage_seconds(ref.workdir)
    log("reference stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in typical.items()))

    rng = random.Random(args.seed)
    runs, trials = [], 0
    while trials < args.trials:
        k = len(runs)
        faults = h.plan_faults(
            rng, args.rounds, per_stage=0.85, timer_share=0.3, typical=typical, second=0.25, checkpoints=False
        )
        log(f"run {k}: {len(faults)} faults planned: {'; '.join(f.label for f in faults)}")
        report = h.run_with_faults(root / f"run{k:02d}", cfg, faults, log=log)
        diff = h.compare(reference, h.snapshot(report.workdir))
        runs.append((report, diff))
        trials += len(report.fired)
        lost = sum(d["missing"] + d["extra"] for d in diff.values())
        log(
            f"run {k}: {len(report.fired)} fired, {len(report.violations)} violation(s), {lost} row(s) lost, "
            f"{sum(d['differ'] for d in diff.values())} differ, {len(report.lifetimes)} controller lifetimes, "
            f"{report.seconds:.0f} s; total trials {trials}"
        )
        for v in report.violations:
            log(f"  VIOLATION {v}")
        for table, d in diff.items():
            if any(d.values()):
                log(
                    f"  {table}: {d['missing']} missing, {d['extra']} extra, {d['differ']} differ from the reference"
                )
        if not args.keep and not report.violations and not any(v for d in diff.values() for v in d.values()):
            shutil.rmtree(report.workdir, ignore_errors=True)

    table, summary = render(runs, args, time.monotonic() - t_start)
    print(table, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    return (
        0 if summary["violations"] == 0 and summary["data_lost"] == 0 and summary["rows_differ"] == 0 else 1
    )


def render(runs: list, args, seconds: float) -> tuple[str, dict]:
    stages = ["sample", "score", "pairs", "train", "eval", "promote", "round"]
    per: dict[str, Counter] = {s: Counter() for s in stages}
    violations = []
    for report, _ in runs:
        for f in report.fired:
            c = per[f.stage]
            c["faults"] += 1
            c[f"kill {f.victim}"] += 1
            c["timer" if f.where == "timer" else "point"] += 1
            if f.where in ("write-partial", "before-rename", "after-rename") or "@" in f.where:
                c["in atomic write"] += 1
        violations += report.violations
        for v in report.violations:
            label = v.split(":", 1)[0]
            for s in stages:
                if label.startswith(f"{s}#"):
                    per[s]["violations"] += 1
    lost = sum(d["missing"] + d["extra"] for _, diff in runs for d in diff.values())
    differ = sum(d["differ"] for _, diff in runs for d in diff.values())
    trials = sum(c["faults"] for c in per.values())
    cols = ["faults", "kill child", "kill controller", "point", "timer", "in atomic write", "violations"]
    lines = [
        f"Fault campaign: {trials} kill-and-resume trials in {len(runs)} runs of {args.rounds} rounds "
        f"(tiny random Llama, seed {args.seed}), {seconds / 60:.0f} min",
        "",
        "| stage | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for s in stages:
        lines.append(f"| {s} | " + " | ".join(str(per[s][c]) for c in cols) + " |")
    total = Counter()
    for c in per.values():
        total.update(c)
    lines.append("| **total** | " + " | ".join(f"**{total[c]}**" for c in cols) + " |")
    lifetimes = sum(len(r.lifetimes) for r, _ in runs)
    lines += [
        "",
        f"- runs finished: {sum(r.finished for r, _ in runs)} of {len(runs)}; controller lifetimes: {lifetimes}",
        f"- integrity violations found: {len(violations)}",
        f"- data lost (rows of the uninterrupted run missing, or duplicated): {lost}",
        f"- rows whose content differs from the uninterrupted run: {differ}",
        f"- TCP/UDP sockets seen on the controller or a stage process: {sum(len(r.inet_sockets) for r, _ in runs)}",
    ]
    summary = {
        "trials": trials,
        "runs": len(runs),
        "rounds": args.rounds,
        "seed": args.seed,
        "minutes": seconds / 60,
        "per_stage": {s: dict(per[s]) for s in stages},
        "violations": len(violations),
        "violation_details": violations,
        "data_lost": lost,
        "rows_differ": differ,
        "fired": [[f.label for f in r.fired] for r, _ in runs],
    }
    return "\n".join(lines), summary


if __name__ == "__main__":
    sys.exit(main())

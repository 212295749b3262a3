"""Calibrate the embedded default: does the base policy's sampling carry a self-supervision signal?

For a few synthetic training questions per setting it decodes greedily, draws N samples from one shared
prefill, scores them by embedding MBR and prints, per hop count: SubEM of greedy, of one random sample,
of the MBR-selected sample, the mean over samples and oracle@N, plus the seconds per question. Gold
answers are only read here, to judge; the loop never trains on them.

    .venv/bin/python -P scripts/calibrate.py --hops 1 2 --ctx 200 350 --questions 12 --n 6
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sealong.loop.backends.models import load_causal_lm, load_tokenizer, prepare_base_model
from sealong.loop.backends.transformers_backend import greedy_batch, sample_n
from sealong.loop.config import PLAN_AND_SOLVE
from sealong.loop.recipe import diagnostics
from sealong.loop.recipe.prompts import build_prompt
from sealong.loop.stages.score import Scorer
from sealong.loop.tasks.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/calibrate", help="where the base model is converted once")
    ap.add_argument("--hops", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--ctx", type=int, nargs=2, default=[200, 350], metavar=("MIN", "MAX"))
    ap.add_argument("--questions", type=int, default=12)
    ap.add_argument("--n", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="append the result as one JSON line to this file")
    args = ap.parse_args()

    base = prepare_base_model("bundled:smollm2-135m-instruct", args.workdir)
    tok = load_tokenizer(base)
    model = load_causal_lm(base, "float32")  # in eval mode
    scorer = Scorer("bundled:all-minilm-l6-v2", 64, "torch", args.seed)
    qs = generate(args.questions, args.seed, "train", args.hops, args.ctx[0], args.ctx[1])
    by_task: dict[str, list[diagnostics.QuestionSamples]] = {}
    t0 = time.time()
    for i, q in enumerate(qs):
        p = build_prompt(tok, q.context, q.question, PLAN_AND_SOLVE, 1024)
        g = greedy_batch(model, tok, [p.input_ids], args.max_new_tokens)[0]
        samples = sample_n(
            model, tok, p.input_ids, args.n, args.temperature, 1.0, args.max_new_tokens, args.seed * 1000 + i
        )
        texts = [s.text for s in samples]
        scores = scorer.scores("embedding", [texts])
        by_task.setdefault(q.task, []).append(
            diagnostics.QuestionSamples(q.answers, texts, {"embedding": scores}, g.text)
        )
        print(
            f"  {i + 1}/{len(qs)} {q.task} {len(p.input_ids)} prompt tokens, {time.time() - t0:.0f} s",
            flush=True,
        )
    secs = (time.time() - t0) / len(qs)
    result = {
        "hops": args.hops,
        "ctx": args.ctx,
        "n": args.n,
        "temperature": args.temperature,
        "max_new_tokens": args.max_new_tokens,
        "questions": args.questions,
        "seconds_per_question": round(secs, 1),
        "tasks": {},
    }
    allq = [q for v in by_task.values() for q in v]
    for task, rows in sorted(by_task.items()) + [("all", allq)]:
        d = {(r["utility"], r["metric"]): r["value"] for r in diagnostics.compute(rows)}
        result["tasks"][task] = {
            "n": len(rows),
            "greedy": d.get(("-", "greedy")),
            "random": d.get(("-", "random_sample")),
            "mbr": d.get(("embedding", "mbr")),
            "mean": d.get(("-", "mean_sample")),
            "oracle": d.get(("-", "oracle")),
        }
    print(f"hops {args.hops} ctx {args.ctx} N={args.n} T={args.temperature} {secs:.1f} s/question")
    print(f"{'task':18} {'n':>3} {'greedy':>7} {'random':>7} {'mbr':>7} {'mean':>7} {'oracle':>7}")
    for task, m in result["tasks"].items():
        print(
            f"{task:18} {m['n']:3d} "
            + " ".join(f"{m[k]:7.1f}" for k in ("greedy", "random", "mbr", "mean", "oracle"))
        )
    if args.out:
        with Path(args.out).open("a") as f:
            f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()

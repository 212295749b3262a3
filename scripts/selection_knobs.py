"""Which knob moves MBR selection? Measured on the samples runs already recorded, nothing regenerated.

For every training question of the given workdirs (their rounds' samples, deduplicated: an ablation's
arms share round 0's samples), and for each N' ≤ N, every subset of N' of the question's N samples:
the SubEM of the answer MBR picks within the subset under each utility (embedding cosine, as the loop
computes it with the run's embedder; ROUGE-L F1), against a uniformly random pick (the subset's mean
SubEM) and oracle@N' (any right). Averaged over subsets, then over questions. Gold answers only judge.

    .venv/bin/python -P scripts/selection_knobs.py runs/ablation/mbr-embedding runs/ablation/random

What it cannot measure: temperature and the model (new samples are needed); say so where it is cited.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
from sealong.kernels import mbr
from sealong.loop.backends.models import load_embedder
from sealong.loop.recipe.metrics import subem
from sealong.store.db import connect, rows


def questions(workdirs: list[Path]) -> list[tuple[list[str], list[str]]]:
    """(answers, samples) per (question, sampling policy), samples in sample_idx order, deduplicated."""
    seen: dict[tuple, tuple[list[str], list[str]]] = {}
    for wd in workdirs:
        db = connect(wd, readonly=True)
        for r in rows(db, "SELECT id FROM rounds WHERE status = 'done' ORDER BY idx"):
            by_q: dict[str, list[str]] = {}
            for s in rows(
                db,
                "SELECT question_id, text FROM samples WHERE round_id = ? ORDER BY question_id, sample_idx",
                (r["id"],),
            ):
                by_q.setdefault(s["question_id"], []).append(s["text"])
            for qid, texts in by_q.items():
                answers = json.loads(one_answer(db, qid))
                seen.setdefault((qid, tuple(texts)), (answers, texts))
    return list(seen.values())


def one_answer(db, qid: str) -> str:
    return rows(db, "SELECT answers_json FROM questions WHERE id = ?", (qid,))[0]["answers_json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdirs", nargs="+", type=Path)
    ap.add_argument("--embedder", default="bundled:all-minilm-l6-v2")
    args = ap.parse_args()
    qs = questions(args.workdirs)
    if not qs:
        print("no finished rounds with samples in those workdirs", file=sys.stderr)
        return 2
    emb = load_embedder(args.embedder, False, "cpu")
    n = min(len(s) for _, s in qs)
    acc: dict[tuple[str, int], list[float]] = {}
    for answers, texts in qs:
        texts = texts[:n]
        right = [subem(t, answers) for t in texts]
        e = torch.nn.functional.normalize(
            torch.as_tensor(emb.encode(texts, convert_to_tensor=True)).float(), dim=-1
        )
        sims = {
            "embedding": (e @ e.T).tolist(),
            "rouge-l": [[mbr.rouge_l_f1(a, b) for b in texts] for a in texts],
        }
        for k in range(2, n + 1):
            picks: dict[str, list[float]] = {"embedding": [], "rouge-l": [], "random": [], "oracle": []}
            for sub in itertools.combinations(range(n), k):
                for name, sim in sims.items():
                    score = [sum(sim[i][j] for j in sub if j != i) / (k - 1) for i in sub]
                    best = max(range(k), key=lambda x: (score[x], -x))
                    picks[name].append(right[sub[best]])
                picks["random"].append(sum(right[i] for i in sub) / k)
                picks["oracle"].append(max(right[i] for i in sub))
            for name, v in picks.items():
                acc.setdefault((name, k), []).append(sum(v) / len(v))
    print(
        f"{len(qs)} questions (sampling policy × question), N = {n}; SubEM % averaged over every subset of N'"
    )
    print("| N' | random pick | MBR embedding | MBR rouge-l | oracle@N' |")
    print("|---:|---:|---:|---:|---:|")
    for k in range(2, n + 1):
        cells = [
            100 * sum(acc[(m, k)]) / len(acc[(m, k)]) for m in ("random", "embedding", "rouge-l", "oracle")
        ]
        print(f"| {k} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Score stage: each sample's MBR score, its consensus with the question's other samples.

Utility `embedding` (the paper's choice): sentence embeddings, cosine similarity, s_i = mean_j sim(i, j)
through sealong.kernels.mbr (fused Triton kernel on GPU, torch reference on CPU).
"""

from __future__ import annotations

import time
from itertools import groupby

import torch
from sealong.kernels import mbr
from sealong.loop.errors import SealongError
from sealong.loop.models import load_embedder
from sealong.loop.stages.base import StageContext
from sealong.store.db import Transaction, rows


def _scores_for(utility: str, backend: str, texts_by_q: list[list[str]], embedder_spec: str, batch_size: int, seed: int) -> list[float]:
    counts = [len(t) for t in texts_by_q]
    flat = [t for ts in texts_by_q for t in ts]
    if utility == "embedding":
        emb = load_embedder(embedder_spec).encode(flat, batch_size=batch_size, convert_to_tensor=True)
        emb = emb.to(torch.float32).cpu()
        scorer = getattr(mbr, "mbr_scores", None)
        scores = scorer(emb, counts, backend=backend) if scorer else mbr.ragged_embedding_mbr_scores_reference(emb, counts)
        return scores.tolist()
    if utility == "rouge-l" and hasattr(mbr, "rouge_l_mbr_scores"):
        return [s for ts in texts_by_q for s in mbr.rouge_l_mbr_scores(ts)]
    if utility == "random" and hasattr(mbr, "random_scores"):
        return [float(s) for i, ts in enumerate(texts_by_q) for s in mbr.random_scores(len(ts), seed + i)]
    raise SealongError(f"score.utility = {utility!r} is not available in this build")


def run(ctx: StageContext) -> None:
    t0 = time.monotonic()
    samples = rows(ctx.db, "SELECT id, question_id, text FROM samples WHERE round_id = ? ORDER BY question_id, sample_idx", (ctx.round_id,))
    grouped = [list(g) for _, g in groupby(samples, key=lambda s: s["question_id"])]
    ctx.progress(0, len(samples), "samples", force=True)
    scores = _scores_for(ctx.cfg.score.utility, ctx.cfg.score.backend, [[s["text"] for s in g] for g in grouped],
                         ctx.cfg.embedder.model, ctx.cfg.embedder.batch_size, ctx.cfg.run.seed + ctx.round_idx)
    with Transaction(ctx.db):
        ctx.db.conn.executemany("UPDATE samples SET mbr_score = ? WHERE id = ?", [(sc, s["id"]) for sc, s in zip(scores, samples)])
        ctx.progress(len(samples), len(samples), "samples", force=True)
        ctx.mark_done({"scored": len(samples), "questions": len(grouped), "utility": ctx.cfg.score.utility,
                       "seconds": time.monotonic() - t0})

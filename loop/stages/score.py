"""Score stage: each sample's MBR score, its consensus with the question's other samples.

Utility `embedding` (the paper's choice): sentence embeddings, cosine similarity, s_i = mean_j sim(i, j)
through sealong.kernels.mbr (fused Triton kernel on GPU, torch reference on CPU). The configured
utility's scores drive the pairs; the `diagnostic_utilities` are scored on the same samples so each round
can tell whether MBR beats, say, random selection.
"""

from __future__ import annotations

import time
from itertools import groupby

import torch
from sealong.kernels import mbr
from sealong.loop.backends.models import load_embedder
from sealong.loop.errors import SealongError
from sealong.loop.stages.base import StageContext
from sealong.store.db import Transaction, rows


class Scorer:
    """Scores for one question's samples under each utility; loads the embedder once, on first use."""

    def __init__(
        self,
        embedder_spec: str,
        batch_size: int,
        backend: str,
        seed: int,
        trust_remote_code: bool = False,
        device: str = "auto",
        encode_kwargs: dict | None = None,
        max_length: int = 0,
    ):
        self.spec, self.batch_size, self.backend, self.seed = embedder_spec, batch_size, backend, seed
        self.trust_remote_code, self.device = trust_remote_code, device
        # [embedder] encode_kwargs / max_length: e.g. jina-embeddings-v3's task="text-matching", 8192 tokens
        self.encode_kwargs, self.max_length = dict(encode_kwargs or {}), max_length
        self._embedder = None

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = load_embedder(self.spec, self.trust_remote_code, self.device)
            if self.max_length:
                self._embedder.max_seq_length = self.max_length
        return self._embedder

    def encode(self, texts: list[str], **kwargs):
        """The embedder's encode() with the configured keyword arguments."""
        try:
            return self.embedder.encode(texts, **kwargs, **self.encode_kwargs)
        except (TypeError, ValueError) as e:
            if self.encode_kwargs and "keyword argument" in str(e):
                raise SealongError(
                    f"[embedder] encode_kwargs {self.encode_kwargs} are not accepted by {self.spec}: {e}"
                ) from e
            raise

    def scores(self, utility: str, texts_by_q: list[list[str]]) -> list[float]:
        counts = [len(t) for t in texts_by_q]
        flat = [t for ts in texts_by_q for t in ts]
        if utility == "embedding":
            # Embeddings stay where the embedder made them: on a GPU the fused Triton kernel scores them.
            emb = self.encode(flat, batch_size=self.batch_size, convert_to_tensor=True).to(torch.float32)
            return [float(x) for x in mbr.mbr_scores(emb, counts, backend=self.backend).tolist()]
        if utility == "bertscore":
            out, device = [], self.embedder.device
            for ts in texts_by_q:
                tok_emb = self.encode(ts, output_value="token_embeddings", convert_to_tensor=False)
                width = max(t.shape[0] for t in tok_emb)
                padded = torch.zeros(len(ts), width, tok_emb[0].shape[1], device=device)
                mask = torch.zeros(len(ts), width, dtype=torch.bool, device=device)
                for i, t in enumerate(tok_emb):
                    padded[i, : t.shape[0]], mask[i, : t.shape[0]] = t.float().to(device), True
                out += [
                    float(x) for x in mbr.bertscore_mbr_scores(padded, mask, backend=self.backend).tolist()
                ]
            return out
        if utility == "rouge-l":
            return [float(s) for ts in texts_by_q for s in mbr.rouge_l_mbr_scores(ts)]
        if utility == "random":
            return [
                float(s) for i, ts in enumerate(texts_by_q) for s in mbr.random_scores(len(ts), self.seed + i)
            ]
        raise SealongError(f"score utility {utility!r} is not available in this build")


def run(ctx: StageContext) -> None:
    t0 = time.monotonic()
    cfg = ctx.cfg
    samples = rows(
        ctx.db,
        "SELECT id, question_id, text FROM samples WHERE round_id = ? ORDER BY question_id, sample_idx",
        (ctx.round_id,),
    )
    texts_by_q = [[s["text"] for s in g] for _, g in groupby(samples, key=lambda s: s["question_id"])]
    scorer = Scorer(
        cfg.embedder.model,
        cfg.embedder.batch_size,
        cfg.score.backend,
        cfg.run.seed * 7919 + ctx.round_idx,
        cfg.embedder.trust_remote_code,
        cfg.policy.device,
        cfg.embedder.encode_kwargs,
        cfg.embedder.max_length,
    )
    utilities = [cfg.score.utility] + [u for u in cfg.score.diagnostic_utilities if u != cfg.score.utility]
    by_utility, skipped = {}, []
    for k, utility in enumerate(utilities):
        ctx.progress(k, len(utilities), "utilities", utility, force=True)
        try:
            by_utility[utility] = scorer.scores(utility, texts_by_q)
        except SealongError:
            if utility == cfg.score.utility:
                raise
            skipped.append(utility)
    if skipped:
        ctx.event(f"diagnostic utilities not available in this build, skipped: {', '.join(skipped)}", "warn")
    main = by_utility[cfg.score.utility]
    with Transaction(ctx.db):
        ctx.db.conn.executemany(
            "UPDATE samples SET mbr_score = ? WHERE id = ?", [(sc, s["id"]) for sc, s in zip(main, samples)]
        )
        ctx.db.execute(
            "DELETE FROM sample_scores WHERE sample_id IN (SELECT id FROM samples WHERE round_id = ?)",
            (ctx.round_id,),
        )
        ctx.db.conn.executemany(
            "INSERT INTO sample_scores (sample_id, utility, score) VALUES (?, ?, ?)",
            [(s["id"], u, sc) for u, scores in by_utility.items() for sc, s in zip(scores, samples)],
        )
        ctx.progress(len(utilities), len(utilities), "utilities", force=True)
        ctx.mark_done(
            {
                "scored": len(samples),
                "questions": len(texts_by_q),
                "utility": cfg.score.utility,
                "diagnostic_utilities": sorted(set(by_utility) - {cfg.score.utility}),
                "seconds": time.monotonic() - t0,
            }
        )

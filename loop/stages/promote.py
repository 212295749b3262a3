"""Promote stage: the candidate becomes champion if its mean SubEM (mean over eval tasks) beats the
champion's (the base model before any promotion) by more than `promote.margin` points."""

from __future__ import annotations

import time

from sealong.loop.stages.base import StageContext, champion
from sealong.store.db import Transaction, dumps, rows


def mean_subem(ctx: StageContext, model_key: str) -> float | None:
    per_task = rows(ctx.db, "SELECT subem FROM eval_summary WHERE model_key = ?", (model_key,))
    return sum(r["subem"] for r in per_task) / len(per_task) if per_task else None


def run(ctx: StageContext) -> None:
    candidate = ctx.round["candidate_adapter_id"]
    champ = champion(ctx.db, ctx.run_id)
    champ_key = champ["id"] if champ else "base"
    cand_score, champ_score = mean_subem(ctx, candidate), mean_subem(ctx, champ_key)
    if cand_score is None or champ_score is None:
        raise RuntimeError(f"missing eval results (candidate {candidate}: {cand_score}, champion {champ_key}: {champ_score})")
    gain = cand_score - champ_score
    promoted = gain > ctx.cfg.promote.margin
    decision = {"rule": "margin", "candidate": candidate, "champion": champ_key, "candidate_subem": cand_score,
                "champion_subem": champ_score, "gain": gain, "margin": ctx.cfg.promote.margin, "promoted": promoted}
    with Transaction(ctx.db):
        if promoted:
            ctx.db.execute("UPDATE adapters SET status = 'retired' WHERE run_id = ? AND status = 'champion'", (ctx.run_id,))
            ctx.db.execute("UPDATE adapters SET status = 'champion' WHERE id = ?", (candidate,))
        else:
            ctx.db.execute("UPDATE adapters SET status = 'rejected' WHERE id = ?", (candidate,))
        ctx.db.execute("UPDATE rounds SET promoted = ?, decision_json = ? WHERE id = ?", (int(promoted), dumps(decision), ctx.round_id))
        verdict = "promoted to champion" if promoted else "not promoted"
        ctx.event(f"{candidate} {verdict}: SubEM {cand_score:.1f} vs {champ_key} {champ_score:.1f} (gain {gain:+.1f}, margin {ctx.cfg.promote.margin})")
        ctx.mark_done({**decision, "decided_at": time.time()})

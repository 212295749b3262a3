"""Promote stage: the candidate becomes champion only if the gate says it beats the champion.

The gate (sealong.loop.recipe.gate) compares both models on the same eval questions, paired: by default a
stratified paired bootstrap on the gain in mean-over-tasks SubEM. The decision, gain, confidence
interval, p-value and output-length ratio are recorded on the round and shown by `status`.
"""

from __future__ import annotations

import time

from sealong.loop.recipe import gate
from sealong.loop.stages.base import StageContext, champion
from sealong.store import state
from sealong.store.db import Transaction, dumps, rows


def per_question(ctx: StageContext, model_key: str) -> tuple[dict[str, list[float]], float]:
    """task -> SubEM per eval question (question order fixed), and mean output tokens."""
    got = rows(
        ctx.db,
        "SELECT e.task, e.subem, e.n_tokens FROM evals e JOIN questions q ON q.id = e.question_id "
        "WHERE e.model_key = ? ORDER BY q.pool_index",
        (model_key,),
    )
    if not got:
        raise RuntimeError(f"no eval results for {model_key}")
    by_task: dict[str, list[float]] = {}
    for r in got:
        by_task.setdefault(r["task"], []).append(r["subem"])
    return by_task, sum(r["n_tokens"] for r in got) / len(got)


def run(ctx: StageContext) -> None:
    p = ctx.cfg.promote
    candidate = ctx.round["candidate_adapter_id"]
    champ = champion(ctx.db, ctx.run_id)
    champ_key = champ["id"] if champ else "base"
    cand_scores, cand_tokens = per_question(ctx, candidate)
    champ_scores, champ_tokens = per_question(ctx, champ_key)
    d = gate.decide(
        cand_scores,
        champ_scores,
        p.rule,
        p.margin,
        p.confidence,
        p.bootstrap_samples,
        seed=ctx.cfg.run.seed + ctx.round_idx,
        cand_tokens=cand_tokens,
        champ_tokens=champ_tokens,
        max_length_increase=p.max_length_increase,
    )
    promoted = d.promoted and not (d.length_flag and p.block_on_length)
    decision = {
        **d.to_dict(),
        "promoted": promoted,
        "candidate": candidate,
        "champion": champ_key,
        "candidate_subem": gate.mean_over_tasks(cand_scores),
        "champion_subem": gate.mean_over_tasks(champ_scores),
    }
    with Transaction(ctx.db):
        if promoted:
            ctx.db.execute(
                "UPDATE adapters SET status = 'retired' WHERE run_id = ? AND status = 'champion'",
                (ctx.run_id,),
            )
            ctx.db.execute("UPDATE adapters SET status = 'champion' WHERE id = ?", (candidate,))
        else:
            ctx.db.execute("UPDATE adapters SET status = 'rejected' WHERE id = ?", (candidate,))
        state.record_decision(ctx.db, ctx.round_id, promoted, dumps(decision))
        verdict = "promoted to champion" if promoted else "not promoted"
        ctx.event(
            f"{candidate} {verdict}: SubEM {decision['candidate_subem']:.1f} vs {champ_key} "
            f"{decision['champion_subem']:.1f} ({d.rule}: {d.reason})"
        )
        if d.length_flag:
            ctx.event(
                f"{candidate}: mean output length {cand_tokens:.0f} vs {champ_tokens:.0f} tokens "
                f"({d.length_ratio:.2f}x); part of the gain may be length",
                "warn",
            )
        ctx.mark_done({**decision, "decided_at": time.time()})

"""Eval stage: greedy plan-and-solve answers on the held-out set, SubEM per task, mean output tokens.

The base model is evaluated once (the first round) and every candidate adapter on the same questions.
Rows are committed per batch, so a killed stage resumes where it stopped.
"""

from __future__ import annotations

import json
import time

from sealong.loop.metrics import subem
from sealong.loop.prompts import build_prompt
from sealong.loop.stages.base import StageContext
from sealong.loop.stages.common import policy_sampler
from sealong.store.db import Transaction, one, rows


def evaluate_model(
    ctx: StageContext, model_key: str, adapter_id: str | None, offset: int, total: int
) -> dict:
    cfg = ctx.cfg
    questions = rows(ctx.db, "SELECT * FROM questions WHERE split = 'eval' ORDER BY pool_index")
    done = {
        r["question_id"]
        for r in rows(ctx.db, "SELECT question_id FROM evals WHERE model_key = ?", (model_key,))
    }
    todo = [q for q in questions if q["id"] not in done]
    truncated = 0
    if todo:
        sampler, tok = policy_sampler(ctx, adapter_id)
        finished, t0 = len(questions) - len(todo), time.monotonic()
        step = max(sampler.chunk, cfg.eval.batch_size)
        for i in range(0, len(todo), step):
            batch = todo[i : i + step]
            prompts = [
                build_prompt(tok, q["context"], q["question"], cfg.sample.instruction, sampler.prompt_budget)
                for q in batch
            ]
            truncated += sum(p.truncated for p in prompts)
            outs = sampler.greedy([p.input_ids for p in prompts], cfg.eval.max_new_tokens)
            with Transaction(ctx.db):
                for q, o in zip(batch, outs):
                    ctx.db.execute(
                        "INSERT INTO evals (model_key, round_id, question_id, task, output, n_tokens, subem) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            model_key,
                            ctx.round_id,
                            q["id"],
                            q["task"],
                            o.text,
                            o.n_tokens,
                            subem(o.text, json.loads(q["answers_json"])),
                        ),
                    )
            finished += len(batch)
            rate = (finished - (len(questions) - len(todo))) / max(time.monotonic() - t0, 1e-9)
            ctx.progress(offset + finished, total, "questions", f"{model_key}  {rate:.2f} q/s", force=True)
        if truncated:
            ctx.event(
                f"{model_key}: {truncated} eval prompt(s) longer than {sampler.prompt_budget} tokens were truncated "
                "in the middle",
                "warn",
            )
    summary = rows(
        ctx.db,
        "SELECT task, subem, mean_tokens, n FROM eval_summary WHERE model_key = ? ORDER BY task",
        (model_key,),
    )
    per_task = {r["task"]: r["subem"] for r in summary}
    return {
        "per_task": per_task,
        "mean_subem": sum(per_task.values()) / max(len(per_task), 1),
        "truncated_prompts": truncated,
        "mean_tokens": sum(r["mean_tokens"] * r["n"] for r in summary) / max(sum(r["n"] for r in summary), 1),
    }


def run(ctx: StageContext) -> None:
    n_eval = one(ctx.db, "SELECT COUNT(*) AS n FROM questions WHERE split = 'eval'")["n"]
    candidate = ctx.round["candidate_adapter_id"]
    keys = [("base", None)] + ([(candidate, candidate)] if candidate else [])
    total = n_eval * len(keys)
    results = {
        key: evaluate_model(ctx, key, adapter, i * n_eval, total) for i, (key, adapter) in enumerate(keys)
    }
    with Transaction(ctx.db):
        ctx.progress(total, total, "questions", force=True)
        ctx.mark_done({"models": results})

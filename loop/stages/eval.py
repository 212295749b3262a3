"""Eval stage: greedy plan-and-solve answers on the held-out set, SubEM per task, mean output tokens.

The base model is evaluated once (the first round) and every candidate adapter on the same questions.
Rows are committed per batch, so a killed stage resumes where it stopped. With sample.replicas > 1 the
held-out questions are shared among that many policy replicas (sealong.loop.engine.replicas). Each replica
batches its own share; with eval.batch_size > 1 (and with vLLM, which batches as it likes) a question's
left padding and batch mates change with the sharing, so an answer can differ in floating-point detail
from a one-process run. With batch size 1 on the transformers backend they are identical (tested).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from sealong.loop.engine import rendezvous
from sealong.loop.engine.nodes import run_across_nodes
from sealong.loop.engine.replicas import run_replicas, share
from sealong.loop.errors import SealongError
from sealong.loop.recipe.metrics import subem
from sealong.loop.recipe.prompts import build_prompt
from sealong.loop.stages.base import StageContext
from sealong.loop.stages.policy import base_dir, policy_sampler
from sealong.store import faults
from sealong.store.db import Transaction, one, rows


def _eval_questions(ctx: StageContext) -> list[dict]:
    return rows(ctx.db, "SELECT * FROM questions WHERE split = 'eval' ORDER BY pool_index")


def _models(ctx: StageContext) -> list[tuple[str, str | None]]:
    """(model key, adapter id): the base, and this round's candidate if it has one."""
    candidate = ctx.round["candidate_adapter_id"]
    return [("base", None)] + ([(candidate, candidate)] if candidate else [])


def _done(ctx: StageContext, model_key: str) -> set[str]:
    return {
        r["question_id"]
        for r in rows(ctx.db, "SELECT question_id FROM evals WHERE model_key = ?", (model_key,))
    }


def _missing(ctx: StageContext, model_key: str, ids: set[str]) -> set[str]:
    """Those of these question ids the store has no answer of this model to."""
    return ids - _done(ctx, model_key)


def evaluate_questions(
    ctx: StageContext,
    model_key: str,
    adapter_id: str | None,
    questions: list[dict],
    progress: Callable[[int, str], None],
) -> None:
    """Greedy answers of one model to those of these questions the store lacks, committed per batch.
    progress(answered so far in this call, note)."""
    cfg = ctx.cfg
    done = _done(ctx, model_key)
    todo = [q for q in questions if q["id"] not in done]
    if not todo:
        return
    sampler, tok = policy_sampler(ctx, adapter_id)
    truncated, t0 = 0, time.monotonic()
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
            ctx.db.conn.executemany(
                "INSERT INTO evals (model_key, round_id, question_id, task, output, n_tokens, subem, "
                "prompt_tokens, truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        model_key,
                        ctx.round_id,
                        q["id"],
                        q["task"],
                        o.text,
                        o.n_tokens,
                        subem(o.text, json.loads(q["answers_json"]), q["task"]),
                        len(p.input_ids),
                        int(p.truncated),
                    )
                    for q, p, o in zip(batch, prompts, outs)
                ],
            )
        answered = i + len(batch)
        progress(answered, f"{model_key}  {answered / max(time.monotonic() - t0, 1e-9):.2f} q/s")
    if truncated:
        ctx.event(
            f"{model_key}: {truncated} eval prompt(s) longer than {sampler.prompt_budget} tokens were "
            "truncated in the middle",
            "warn",
        )


def model_summary(ctx: StageContext, model_key: str) -> dict:
    summary = rows(
        ctx.db,
        "SELECT task, subem, mean_tokens, n FROM eval_summary WHERE model_key = ? ORDER BY task",
        (model_key,),
    )
    per_task = {r["task"]: r["subem"] for r in summary}
    truncated = one(
        ctx.db, "SELECT COALESCE(SUM(truncated), 0) AS t FROM evals WHERE model_key = ?", (model_key,)
    )["t"]
    return {
        "per_task": per_task,
        "mean_subem": sum(per_task.values()) / max(len(per_task), 1),
        "truncated_prompts": truncated,
        "mean_tokens": sum(r["mean_tokens"] * r["n"] for r in summary) / max(sum(r["n"] for r in summary), 1),
    }


def run(ctx: StageContext) -> None:
    questions, models = _eval_questions(ctx), _models(ctx)
    ids, total = {q["id"] for q in questions}, len(questions) * len(models)
    left = sum(len(_missing(ctx, key, ids)) for key, _ in models)
    launch, nodes = rendezvous.read(ctx.workdir), None
    if launch and launch.nnodes > 1 and left:
        base_dir(ctx)  # converted once, here, before this node's engines read it
        missing = {key: _missing(ctx, key, ids) for key, _ in models}
        tasks = [
            {
                "q": {k: q[k] for k in ("id", "context", "question", "task", "answers_json")},
                "model": key,
                "adapter": adapter,
            }
            for key, adapter in models
            for q in sorted(questions, key=lambda q: -q["n_tokens"])  # longest first
            if q["id"] in missing[key]
        ]
        nodes = run_across_nodes(ctx, launch, tasks, lambda r: write_result(ctx, r))
    elif ctx.cfg.sample.replicas > 1 and left:
        base_dir(ctx)  # converted once, here, before the replicas read it
        run_replicas(ctx, lambda: _poll(ctx, models, total))
    else:
        for i, (key, adapter) in enumerate(models):
            offset = i * len(questions) + len(ids) - len(_missing(ctx, key, ids))
            evaluate_questions(
                ctx,
                key,
                adapter,
                questions,
                lambda k, note, offset=offset: ctx.progress(offset + k, total, "questions", note, force=True),
            )
    for key, _ in models:
        missing = _missing(ctx, key, ids)
        if missing:  # a replica exited 0 without its share: never mark such a stage done
            raise SealongError(
                f"{key}: {len(missing)} held-out question(s) have no answer, e.g. {min(missing)}"
            )
    results = {key: model_summary(ctx, key) for key, _ in models}
    with Transaction(ctx.db):
        ctx.progress(total, total, "questions", force=True)
        ctx.mark_done({"models": results, **({"nodes": nodes} if nodes else {})})


def claim_step(cfg, sampler) -> int:
    return max(sampler.chunk, cfg.eval.batch_size)


def compute_tasks(cfg, round_idx: int, policy: Callable, tasks: list[dict]) -> list[dict]:
    """Across nodes, on any node: greedy answers, one model's tasks per batch (the base, then the candidate)."""
    out = []
    for adapter in dict.fromkeys(t["adapter"] for t in tasks):
        mine = [t for t in tasks if t["adapter"] == adapter]
        sampler, tok = policy(adapter)
        prompts = [
            build_prompt(
                tok, t["q"]["context"], t["q"]["question"], cfg.sample.instruction, sampler.prompt_budget
            )
            for t in mine
        ]
        outs = sampler.greedy([p.input_ids for p in prompts], cfg.eval.max_new_tokens)
        for t, p, o in zip(mine, prompts, outs):
            q = t["q"]
            score = subem(o.text, json.loads(q["answers_json"]), q["task"])
            out.append(
                {
                    "id": q["id"],
                    "model": t["model"],
                    "row": [q["task"], o.text, o.n_tokens, score, len(p.input_ids), int(p.truncated)],
                }
            )
    order = {(t["model"], t["q"]["id"]): i for i, t in enumerate(tasks)}
    return sorted(out, key=lambda r: order[(r["model"], r["id"])])


def write_result(ctx: StageContext, r: dict) -> None:
    """One answer from any node, replacing whatever a failed attempt left: never doubled."""
    with Transaction(ctx.db):
        ctx.db.execute("DELETE FROM evals WHERE model_key = ? AND question_id = ?", (r["model"], r["id"]))
        ctx.db.execute(
            "INSERT INTO evals (model_key, round_id, question_id, task, output, n_tokens, subem, prompt_tokens, "
            "truncated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (r["model"], ctx.round_id, r["id"], *r["row"]),
        )


def run_replica(ctx: StageContext, replica: int, replicas: int) -> None:
    """One replica's share of the held-out questions, for the base and then the candidate."""
    mine = share(_eval_questions(ctx), replica, replicas)
    for key, adapter in _models(ctx):
        evaluate_questions(ctx, key, adapter, mine, lambda k, note: faults.point("progress") if k else None)
    ctx.event(
        f"replica {replica}/{replicas}: answered {len(mine)} held-out question(s) per model in pid {os.getpid()}"
    )


def _poll(ctx: StageContext, models: list[tuple[str, str | None]], total: int) -> None:
    answered = one(
        ctx.db,
        f"SELECT COUNT(*) AS k FROM evals WHERE model_key IN ({','.join('?' * len(models))})",
        tuple(k for k, _ in models),
    )["k"]
    ctx.progress(
        answered, total, "questions", f"{ctx.cfg.sample.replicas} replicas", force=True, fault_point=False
    )

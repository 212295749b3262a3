"""Sample stage: N plan-and-solve answers per training question from the current policy.

Policy = base model + the champion adapter at the round's start (round 0: the base alone). Samples are
committed per chunk of questions (one question on CPU), so a killed stage resumes at the next question;
the stage is marked done once every question has its N samples (and, for the diagnostics, a greedy answer).
"""

from __future__ import annotations

import time
import zlib

from sealong.loop.prompts import build_prompt
from sealong.loop.stages.base import StageContext
from sealong.loop.stages.common import policy_sampler
from sealong.store.db import Transaction, rows


def question_seed(run_seed: int, round_idx: int, question_id: str) -> int:
    return (run_seed * 1_000_003 + round_idx * 7919 + zlib.crc32(question_id.encode())) % (2**31)


def run(ctx: StageContext) -> None:
    cfg = ctx.cfg
    questions = ctx.round_questions()
    n = cfg.sample.n
    have = {
        r["question_id"]: r["k"]
        for r in rows(
            ctx.db,
            "SELECT question_id, COUNT(*) AS k FROM samples WHERE round_id = ? GROUP BY question_id",
            (ctx.round_id,),
        )
    }
    todo = [q for q in questions if have.get(q["id"], 0) < n]
    if len(todo) < len(questions):
        ctx.event(f"resuming: {len(questions) - len(todo)} of {len(questions)} questions already sampled")
    sampler, tok = policy_sampler(ctx, ctx.round["policy_adapter_id"])
    done_q, tokens, truncated, t0 = len(questions) - len(todo), 0, 0, time.monotonic()
    ctx.progress(done_q, len(questions), "questions", force=True)
    for i in range(0, len(todo), sampler.chunk):
        chunk = todo[i : i + sampler.chunk]
        prompts = [
            build_prompt(tok, q["context"], q["question"], cfg.sample.instruction, sampler.prompt_budget)
            for q in chunk
        ]
        seeds = [question_seed(cfg.run.seed, ctx.round_idx, q["id"]) for q in chunk]
        outs = sampler.sample([p.input_ids for p in prompts], seeds)
        with Transaction(ctx.db):
            for q, prompt, seed, completions in zip(chunk, prompts, seeds, outs):
                ctx.db.execute(
                    "DELETE FROM samples WHERE round_id = ? AND question_id = ?", (ctx.round_id, q["id"])
                )
                ctx.db.conn.executemany(
                    "INSERT INTO samples (round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, truncated, seed) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            ctx.round_id,
                            q["id"],
                            k,
                            o.text,
                            o.n_tokens,
                            len(prompt.input_ids),
                            int(prompt.truncated),
                            seed,
                        )
                        for k, o in enumerate(completions)
                    ],
                )
        truncated += sum(p.truncated for p in prompts)
        done_q += len(chunk)
        tokens += sum(o.n_tokens for completions in outs for o in completions)
        rate = tokens / max(time.monotonic() - t0, 1e-9)
        ctx.progress(done_q, len(questions), "questions", f"{rate:.1f} tok/s", force=True)
    if truncated:
        ctx.event(
            f"{truncated} prompt(s) longer than {sampler.prompt_budget} tokens were truncated in the middle",
            "warn",
        )
    if cfg.sample.greedy_diagnostics:
        _greedy_pass(ctx, sampler, tok, questions)
    with Transaction(ctx.db):
        stats = rows(
            ctx.db,
            "SELECT COUNT(*) AS n, AVG(n_tokens) AS mean_tokens, SUM(truncated) AS truncated "
            "FROM samples WHERE round_id = ?",
            (ctx.round_id,),
        )[0]
        ctx.mark_done(
            {
                "questions": len(questions),
                "samples": stats["n"],
                "mean_tokens": stats["mean_tokens"],
                "truncated_samples": stats["truncated"],
                "seconds": time.monotonic() - t0,
                "generated_tokens": tokens,
                "backend": cfg.sample.backend,
            }
        )


def _greedy_pass(ctx: StageContext, sampler, tok, questions: list[dict]) -> None:
    """Greedy answers to the training questions, for the diagnostics only (never trained on)."""
    cfg = ctx.cfg
    have = {
        r["question_id"]
        for r in rows(ctx.db, "SELECT question_id FROM greedy WHERE round_id = ?", (ctx.round_id,))
    }
    todo = [q for q in questions if q["id"] not in have and q["answers_json"] != "[]"]
    step = max(sampler.chunk, cfg.eval.batch_size)
    for i in range(0, len(todo), step):
        batch = todo[i : i + step]
        prompts = [
            build_prompt(
                tok, q["context"], q["question"], cfg.sample.instruction, sampler.prompt_budget
            ).input_ids
            for q in batch
        ]
        outs = sampler.greedy(prompts, cfg.sample.max_new_tokens)
        with Transaction(ctx.db):
            ctx.db.conn.executemany(
                "INSERT INTO greedy (round_id, question_id, text, n_tokens) VALUES (?, ?, ?, ?)",
                [(ctx.round_id, q["id"], o.text, o.n_tokens) for q, o in zip(batch, outs)],
            )
        ctx.progress(i + len(batch), len(todo), "greedy", "diagnostics", force=True)

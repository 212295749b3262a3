"""Sample stage: N plan-and-solve answers per training question from the current policy.

Policy = base model + the champion adapter at the round's start (round 0: the base alone). Samples are
committed per chunk of questions (one question on CPU), so a killed stage resumes at the next question;
the stage is marked done once every question has its N samples (and, for the diagnostics, a greedy answer).
With sample.replicas > 1 the questions are shared among that many policy replicas (sealong.loop.engine.replicas);
every question's seed is its own, so the samples do not depend on the number of replicas.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Callable

from sealong.loop.engine import rendezvous
from sealong.loop.engine.nodes import run_across_nodes
from sealong.loop.engine.replicas import ENV as REPLICA_ENV
from sealong.loop.engine.replicas import run_replicas, share
from sealong.loop.errors import SealongError
from sealong.loop.recipe.prompts import build_prompt
from sealong.loop.stages.base import StageContext
from sealong.loop.stages.policy import base_dir, policy_sampler
from sealong.store import faults
from sealong.store.db import Transaction, one, rows


def question_seed(run_seed: int, round_idx: int, question_id: str) -> int:
    return (run_seed * 1_000_003 + round_idx * 7919 + zlib.crc32(question_id.encode())) % (2**31)


def run(ctx: StageContext) -> None:
    cfg, questions, t0 = ctx.cfg, ctx.round_questions(), time.monotonic()
    tokens0, launch, nodes = _tokens(ctx), rendezvous.read(ctx.workdir), None
    if launch and launch.nnodes > 1 and _work_left(ctx, questions):
        base_dir(ctx)  # converted once, here, before this node's engines read it
        nodes = run_across_nodes(ctx, launch, _tasks(ctx, questions), lambda r: write_result(ctx, r))
    elif cfg.sample.replicas > 1 and _work_left(ctx, questions):
        base_dir(ctx)  # converted once, here, before the replicas read it
        run_replicas(ctx, lambda: _poll(ctx, questions, tokens0, t0))
    else:
        sample_questions(ctx, questions, ctx.progress)
    have = _have(ctx)
    missing = [q["id"] for q in questions if len(have.get(q["id"], [])) < cfg.sample.n]
    if missing:  # a replica exited 0 without its share: never mark such a stage done
        raise SealongError(f"{len(missing)} question(s) lack their {cfg.sample.n} samples, e.g. {missing[0]}")
    with Transaction(ctx.db):
        stats = rows(
            ctx.db,
            "SELECT COUNT(*) AS n, AVG(n_tokens) AS mean_tokens, SUM(truncated) AS truncated "
            "FROM samples WHERE round_id = ?",
            (ctx.round_id,),
        )[0]
        ctx.progress(len(questions), len(questions), "questions", force=True)
        ctx.mark_done(
            {
                "questions": len(questions),
                "samples": stats["n"],
                "mean_tokens": stats["mean_tokens"],
                "truncated_samples": stats["truncated"],
                "seconds": time.monotonic() - t0,
                "generated_tokens": _tokens(ctx) - tokens0,
                "backend": cfg.sample.backend,
                "replicas": cfg.sample.replicas,
                **({"nodes": nodes} if nodes else {}),  # questions each node sampled in this attempt
            }
        )


def _tasks(ctx: StageContext, questions: list[dict]) -> list[dict]:
    """Across nodes: one task per question that lacks its samples or its greedy answer, longest first."""
    have, greedy = _have(ctx), {q["id"] for q in _greedy_todo(ctx, questions)}
    diag = ctx.cfg.sample.greedy_diagnostics
    tasks = [
        {
            "q": {k: q[k] for k in ("id", "context", "question")},
            "adapter": ctx.round["policy_adapter_id"],
            "samples": len(have.get(q["id"], [])) < ctx.cfg.sample.n,
            "greedy": diag and q["id"] in greedy,
        }
        for q in sorted(questions, key=lambda q: -q["n_tokens"])
    ]
    return [t for t in tasks if t["samples"] or t["greedy"]]


def claim_step(cfg, sampler) -> int:
    return sampler.chunk


def compute_tasks(cfg, round_idx: int, policy: Callable, tasks: list[dict]) -> list[dict]:
    """Across nodes, on any node: each task's rows (seeded per question, so whichever node runs it)."""
    sampler, tok = policy(tasks[0]["adapter"])
    prompts = [
        build_prompt(
            tok, t["q"]["context"], t["q"]["question"], cfg.sample.instruction, sampler.prompt_budget
        )
        for t in tasks
    ]
    out = [{"id": t["q"]["id"], "samples": None, "greedy": None} for t in tasks]
    todo = [i for i, t in enumerate(tasks) if t["samples"]]
    seeds = [question_seed(cfg.run.seed, round_idx, tasks[i]["q"]["id"]) for i in todo]
    for i, seed, comps in zip(
        todo, seeds, sampler.sample([prompts[i].input_ids for i in todo], seeds) if todo else []
    ):
        p = prompts[i]
        out[i]["samples"] = [
            [k, o.text, o.n_tokens, len(p.input_ids), int(p.truncated), seed] for k, o in enumerate(comps)
        ]
    todo = [i for i, t in enumerate(tasks) if t["greedy"]]
    if todo:
        for i, o in zip(
            todo, sampler.greedy([prompts[i].input_ids for i in todo], cfg.sample.max_new_tokens)
        ):
            out[i]["greedy"] = [o.text, o.n_tokens]
    return out


def write_result(ctx: StageContext, r: dict) -> None:
    """One question's rows from any node, replacing whatever a failed attempt left: never doubled."""
    with Transaction(ctx.db):
        if r["samples"] is not None:
            ctx.db.execute(
                "DELETE FROM samples WHERE round_id = ? AND question_id = ?", (ctx.round_id, r["id"])
            )
            ctx.db.conn.executemany(
                "INSERT INTO samples (round_id, question_id, sample_idx, text, n_tokens, prompt_tokens, truncated, seed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(ctx.round_id, r["id"], *row) for row in r["samples"]],
            )
        if r["greedy"] is not None:
            ctx.db.execute(
                "DELETE FROM greedy WHERE round_id = ? AND question_id = ?", (ctx.round_id, r["id"])
            )
            ctx.db.execute(
                "INSERT INTO greedy (round_id, question_id, text, n_tokens) VALUES (?, ?, ?, ?)",
                (ctx.round_id, r["id"], *r["greedy"]),
            )


def run_replica(ctx: StageContext, replica: int, replicas: int) -> None:
    """One replica's share of the round's questions; the coordinator reports progress and marks done."""
    mine = share(ctx.round_questions(), replica, replicas)
    sample_questions(ctx, mine, _replica_progress)
    ctx.event(f"replica {replica}/{replicas}: sampled {len(mine)} question(s) in pid {os.getpid()}")


def _replica_progress(done: float, total: float, *args, **kwargs) -> None:
    if done > 0:
        faults.point("progress")  # tests: this replica has committed some of its rows


def _have(ctx: StageContext) -> dict[str, list[int]]:
    """question id → the sample indices the store holds for it this round."""
    out: dict[str, list[int]] = {}
    for r in rows(ctx.db, "SELECT question_id, sample_idx FROM samples WHERE round_id = ?", (ctx.round_id,)):
        out.setdefault(r["question_id"], []).append(r["sample_idx"])
    return out


def _work_left(ctx: StageContext, questions: list[dict]) -> bool:
    """Whether some question lacks its samples or (diagnostics on) its greedy answer."""
    have = _have(ctx)
    if any(len(have.get(q["id"], [])) < ctx.cfg.sample.n for q in questions):
        return True
    return ctx.cfg.sample.greedy_diagnostics and bool(_greedy_todo(ctx, questions))


def _greedy_todo(ctx: StageContext, questions: list[dict]) -> list[dict]:
    """Those of these questions that lack this round's greedy answer: those with a reference answer (for
    the diagnostics), or every one when the greedy answer is the chosen one ([pairs] selection)."""
    have = {
        r["question_id"]
        for r in rows(ctx.db, "SELECT question_id FROM greedy WHERE round_id = ?", (ctx.round_id,))
    }
    every = ctx.cfg.pairs.selection == "greedy-as-chosen"
    return [q for q in questions if q["id"] not in have and (every or q["answers_json"] != "[]")]


def _tokens(ctx: StageContext) -> int:
    r = one(ctx.db, "SELECT COALESCE(SUM(n_tokens), 0) AS t FROM samples WHERE round_id = ?", (ctx.round_id,))
    return int(r["t"])


def _poll(ctx: StageContext, questions: list[dict], tokens0: int, t0: float) -> None:
    """Progress of a replicated stage, read from the store: questions sampled, then greedy answers."""
    n = ctx.cfg.sample.n
    done = one(
        ctx.db,
        "SELECT COUNT(*) AS k FROM (SELECT question_id FROM samples WHERE round_id = ? "
        "GROUP BY question_id HAVING COUNT(*) >= ?)",
        (ctx.round_id, n),
    )["k"]
    rate = (_tokens(ctx) - tokens0) / max(time.monotonic() - t0, 1e-9)
    note = f"{rate:.1f} tok/s · {ctx.cfg.sample.replicas} replicas"
    if done == len(questions) and ctx.cfg.sample.greedy_diagnostics:
        greedy = one(ctx.db, "SELECT COUNT(*) AS k FROM greedy WHERE round_id = ?", (ctx.round_id,))["k"]
        every = ctx.cfg.pairs.selection == "greedy-as-chosen"
        want = sum(every or q["answers_json"] != "[]" for q in questions)
        ctx.progress(greedy, want, "greedy", f"diagnostics · {ctx.cfg.sample.replicas} replicas", True, False)
    else:
        ctx.progress(done, len(questions), "questions", note, force=True, fault_point=False)


def sample_questions(ctx: StageContext, questions: list[dict], progress: Callable[..., None]) -> None:
    """N samples (and the diagnostic greedy answer) for each of these questions the store lacks,
    committed one chunk of questions at a time."""
    if not questions:  # more replicas than questions
        return
    cfg = ctx.cfg
    n = cfg.sample.n
    have = {q: len(k) for q, k in _have(ctx).items()}
    todo = [q for q in questions if have.get(q["id"], 0) < n]
    if len(todo) < len(questions):
        who = f"replica {os.environ[REPLICA_ENV]}: " if REPLICA_ENV in os.environ else ""
        ctx.event(
            f"{who}resuming: {len(questions) - len(todo)} of {len(questions)} questions already sampled"
        )
    sampler, tok = policy_sampler(ctx, ctx.round["policy_adapter_id"])
    done_q, tokens, truncated, t0 = len(questions) - len(todo), 0, 0, time.monotonic()
    progress(done_q, len(questions), "questions", force=True)
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
        progress(done_q, len(questions), "questions", f"{rate:.1f} tok/s", force=True)
    if truncated:
        ctx.event(
            f"{truncated} prompt(s) longer than {sampler.prompt_budget} tokens were truncated in the middle",
            "warn",
        )
    if cfg.sample.greedy_diagnostics:
        _greedy_pass(ctx, sampler, tok, questions, progress)


def _greedy_pass(
    ctx: StageContext, sampler, tok, questions: list[dict], progress: Callable[..., None]
) -> None:
    """Greedy answers to the training questions, for the diagnostics only (never trained on)."""
    cfg = ctx.cfg
    todo = _greedy_todo(ctx, questions)
    step = max(sampler.chunk, cfg.eval.batch_size)
    if todo:  # the monitor shows this phase from its start, not "questions 100%" until its first batch
        progress(0, len(todo), "greedy", "diagnostics", force=True)
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
        progress(i + len(batch), len(todo), "greedy", "diagnostics", force=True)

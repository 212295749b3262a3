"""Train stage: a new LoRA adapter from this round's pairs with ORPO.

The adapter is written to a temporary directory and renamed to `adapters/<id>` (the id is fixed per
round), then recorded with its sha256 in the same transaction that marks the stage done. A leftover
directory from a killed attempt is not referenced by the store, so the next attempt replaces it: a round
never has more than one adapter.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from sealong.loop.backends.models import base_model_fingerprint, load_causal_lm, load_tokenizer
from sealong.loop.config import Config
from sealong.loop.errors import IntegrityError, RankDisagreement, SealongError
from sealong.loop.recipe.prompts import build_prompt
from sealong.loop.stages.base import StageContext, adapter_id_for_round, champion
from sealong.loop.stages.policy import base_dir, verified_adapter_dir
from sealong.loop.training import parallel
from sealong.loop.training.checkpoints import latest_checkpoint
from sealong.loop.training.orpo import (
    PairExample,
    add_lora,
    encode_response,
    optimizer_steps,
    train_orpo,
)
from sealong.store import state
from sealong.store.artifacts import VerifiedAdapter, atomic_dir, remove_stale_temps, sha256_dir
from sealong.store.db import Transaction, dumps, one, rows

PAIRS_SQL = """
SELECT p.question_id, q.context, q.question, COALESCE(cs.text, cg.text) AS chosen, rs.text AS rejected
FROM pairs p JOIN questions q ON q.id = p.question_id
LEFT JOIN samples cs ON cs.id = p.chosen_sample_id LEFT JOIN greedy cg ON cg.id = p.chosen_greedy_id
JOIN samples rs ON rs.id = p.rejected_sample_id
WHERE p.round_id = ? ORDER BY p.id
"""


def run(ctx: StageContext) -> None:
    """One process, or every rank of a torchrun job on the controller's node. Rank 0 alone reads the
    store and writes files and rows; the other ranks (`follow`) get the pairs and the starting weights
    from it, as the ranks of other nodes do (sealong.loop.training.multinode)."""
    d = ctx.cfg.distributed
    par = parallel.setup(d.sequence_parallel_size, d.backend, ctx.cfg.policy.device)
    par.sp_mode = d.sequence_parallel
    try:
        if par.is_main:
            _train(ctx, par)
        else:
            follow(par, base_dir(ctx))
    finally:
        parallel.teardown()


def _job(ctx: StageContext, pairs: list[dict], base: Path) -> dict:
    """What every other rank needs from rank 0: the run's config, this round's pairs, the base's identity."""
    return {
        "config": ctx.cfg,
        "round_idx": ctx.round_idx,
        "pairs": [{k: p[k] for k in ("context", "question", "chosen", "rejected")} for p in pairs],
        "base": base_model_fingerprint(base),
    }


def follow(par: parallel.Parallel, base: Path | None, problem: str | None = None) -> bool:
    """A rank other than 0, on any node: train on rank 0's job with the base model at `base`; write nothing.
    Returns False when rank 0 had no job to give (it could not start the stage, and records why).

    Everything that shapes the result comes from rank 0's config; this node's layout must be the run's
    and its base the same model (`base_model_fingerprint`). A rank that cannot go on (`problem`, a
    different layout or base, a failed load) says so to every rank (`parallel.agree`), so the job fails at
    once with its reason instead of leaving the others waiting in a collective."""
    job = parallel.share(None, par)
    if job is None:
        return False
    cfg: Config = job["config"]
    d = cfg.distributed
    par.sp_mode = d.sequence_parallel  # rank 0's choice, as every setting that shapes the result
    if problem is None and (par.world, par.sp_size) != (d.world_size, d.sequence_parallel_size):
        problem = (
            f"this node's [distributed] layout (world {par.world}, sequence_parallel_size {par.sp_size}) is "
            f"not the run's (world {d.world_size}, sequence_parallel_size {d.sequence_parallel_size})"
        )
    if problem is None and base is not None:
        try:
            mine = base_model_fingerprint(base)
            if mine != job["base"]:
                problem = (
                    f"its base model {base} ({mine[:12]}) is not rank 0's ({job['base'][:12]}); "
                    "point policy.model on this node at the same model (weights and tokenizer)"
                )
        except OSError as e:
            problem = f"cannot read its base model {base}: {e}"
    parallel.agree(problem, par)
    model, tok, examples = _prepare_together(cfg, base, None, job["pairs"], par)
    train_orpo(model, examples, cfg.train, tok.pad_token_id, cfg.run.seed + job["round_idx"], par=par)
    return True


def _prepare_together(
    cfg: Config, base: Path, init: VerifiedAdapter | None, pairs: list[dict], par: parallel.Parallel
):
    """_prepare on every rank; if it fails on any (out of memory, a missing package on one node), every
    rank raises, rank 0 with its own error when it is the one that failed."""
    try:
        out, failed = _prepare(cfg, base, init, pairs), None
    except Exception as e:  # noqa: BLE001 - told to every rank
        out, failed = None, e
    try:
        parallel.agree(
            None if failed is None else f"loading the model failed: {type(failed).__name__}: {failed}", par
        )
    except RankDisagreement:
        if failed is not None:
            raise failed from None
        raise
    return out


def _prepare(cfg: Config, base: Path, init: VerifiedAdapter | None, pairs: list[dict]):
    tok = load_tokenizer(base, cfg.policy.trust_remote_code)
    model = load_causal_lm(
        base, cfg.policy.dtype, cfg.train.quantize, cfg.policy.trust_remote_code, cfg.policy.device
    )
    model = add_lora(model, cfg.train, init)
    examples = []
    for p in pairs:
        prompt = build_prompt(
            tok, p["context"], p["question"], cfg.sample.instruction, cfg.policy.max_prompt_tokens
        )
        c_ids, c_lab = encode_response(tok, prompt.input_ids, p["chosen"], cfg.train.max_length)
        r_ids, r_lab = encode_response(tok, prompt.input_ids, p["rejected"], cfg.train.max_length)
        examples.append(PairExample(c_ids, c_lab, r_ids, r_lab))
    return model, tok, examples


def _train(ctx: StageContext, par: parallel.Parallel) -> None:
    cfg = ctx.cfg
    adapter_id = adapter_id_for_round(ctx.round_idx)
    adapters_dir = ctx.workdir / "adapters"
    final = adapters_dir / adapter_id
    checkpoints = ctx.workdir / "checkpoints" / f"round{ctx.round_idx:03d}"
    try:
        pairs = rows(ctx.db, PAIRS_SQL, (ctx.round_id,))
        if not pairs:
            raise SealongError(
                "no preference pairs this round (every question was degenerate); nothing to train on"
            )
        adapters_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(adapters_dir)
        remove_stale_temps(checkpoints)
        if one(ctx.db, "SELECT 1 AS x FROM adapters WHERE id = ?", (adapter_id,)):
            raise IntegrityError(
                f"{adapter_id} is already recorded, but its train stage is not done; refusing to "
                f"overwrite it (run `sealong-loop status --workdir {ctx.workdir}` and inspect)"
            )
        if final.exists():  # a killed attempt renamed it but never recorded it: not ours to trust
            shutil.rmtree(final)
        base = base_dir(ctx)
        champ = champion(ctx.db, ctx.run_id)
        init = verified_adapter_dir(ctx, champ["id"]) if (champ and cfg.train.init == "champion") else None
        job = _job(ctx, pairs, base) if par.world > 1 else None  # only other ranks need it
    except BaseException:
        try:
            parallel.share(None, par)  # the other ranks wait for the job: tell them there is none, then fail
        except Exception:  # noqa: BLE001 - a dead peer: the original error is the one to report
            pass
        raise
    parallel.share(job, par)
    parallel.agree(None, par)  # the other ranks check their layout and base model against rank 0's
    model, tok, examples = _prepare_together(cfg, base, init, pairs, par)

    def on_step(rec: dict) -> None:
        ctx.db.execute(
            "INSERT INTO train_steps (round_id, step, loss, nll, or_loss, log_odds_ratio, lr, grad_norm, tokens_per_s, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                ctx.round_id,
                rec["step"],
                rec["loss"],
                rec["nll"],
                rec["or_loss"],
                rec["log_odds_ratio"],
                rec["lr"],
                rec["grad_norm"],
                rec["tokens_per_s"],
                time.time(),
            ),
        )
        ctx.progress(
            rec["step"],
            rec["total_steps"],
            "steps",
            f"loss {rec['loss']:.3f}  lr {rec['lr']:.2e}  {rec['tokens_per_s']:.0f} tok/s",
            force=True,
        )

    every = cfg.distributed.checkpoint_every
    resumed = latest_checkpoint(checkpoints if every else None)
    done = int(resumed.name.split("-")[1]) if resumed else 0  # checkpoint dirs are step-<N>
    ctx.db.execute("DELETE FROM train_steps WHERE round_id = ? AND step > ?", (ctx.round_id, done))
    if resumed:
        ctx.event(f"resuming training from checkpoint {resumed.name}")
    ctx.progress(done, optimizer_steps(len(examples), cfg.train, par.dp_size), "steps", force=True)
    summary = train_orpo(
        model,
        examples,
        cfg.train,
        tok.pad_token_id,
        cfg.run.seed + ctx.round_idx,
        on_step,
        par,
        checkpoints if every else None,
        every,
    )
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
    digest = sha256_dir(final)
    summary.update(
        init="champion" if init else "base", loss_backend=cfg.train.loss, quantize=cfg.train.quantize
    )
    with Transaction(ctx.db):
        ctx.db.execute(
            "INSERT INTO adapters (id, run_id, round_id, parent_id, path, sha256, status, created_at, train_json) "
            "VALUES (?, ?, ?, ?, ?, ?, 'candidate', ?, ?)",
            (
                adapter_id,
                ctx.run_id,
                ctx.round_id,
                ctx.round["policy_adapter_id"],
                str(final.relative_to(ctx.workdir)),
                digest,
                time.time(),
                dumps(summary),
            ),
        )
        state.set_candidate(ctx.db, ctx.round_id, adapter_id)
        ctx.event(
            f"trained {adapter_id}: {summary['steps']} steps, loss {summary['first_loss']:.3f} → {summary['last_loss']:.3f}"
        )
        ctx.mark_done({"adapter_id": adapter_id, "sha256": digest, **summary})
    shutil.rmtree(checkpoints, ignore_errors=True)  # the adapter is recorded: its checkpoints are spent

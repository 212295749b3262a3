"""Workers for tests/loop/training/test_parallel_training.py: each runs on every rank of a gloo group."""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init_file: str, fn, args: tuple) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(fn, world: int, *args) -> None:
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_entry, args=(world, os.path.join(d, "init"), fn, args), nprocs=world, join=True)


def tiny_setup(grad_accum: int = 2, checkpointing: bool = False):
    """A tiny random LoRA Llama (no dropout) and 4 pairs of random token sequences with masked prompts."""
    from sealong.loop.config import TrainConfig
    from sealong.loop.training.orpo import IGNORE, PairExample, add_lora
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    base = LlamaForCausalLM(config)
    base.config._attn_implementation = "eager"
    cfg = TrainConfig(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        lr=1e-2,
        warmup_ratio=0.0,
        batch_size=1,
        grad_accum=grad_accum,
        loss="fused",
        gradient_checkpointing=checkpointing,
    )
    g = torch.Generator().manual_seed(1)
    examples = []
    for i in range(4):
        prompt = torch.randint(3, 128, (9 + i,), generator=g).tolist()
        chosen = torch.randint(3, 128, (5 + i,), generator=g).tolist()
        rejected = torch.randint(3, 128, (7,), generator=g).tolist()
        examples.append(
            PairExample(
                prompt + chosen,
                [IGNORE] * len(prompt) + chosen,
                prompt + rejected,
                [IGNORE] * len(prompt) + rejected,
            )
        )
    torch.manual_seed(0)
    model = add_lora(copy.deepcopy(base), cfg, None)
    return model, examples, cfg


def train_and_save(
    rank: int, world: int, sp_size: int, out_path: str, checkpointing: bool = False, sp_mode: str = "ring"
) -> None:
    from sealong.loop.training.orpo import lora_parameters, train_orpo
    from sealong.loop.training.parallel import build_groups

    par = build_groups(sp_size)
    par.sp_mode = sp_mode
    # The global batch is batch_size x grad_accum x data-parallel groups: keep it at 2 pairs.
    model, examples, cfg = tiny_setup(grad_accum=2 // par.dp_size, checkpointing=checkpointing)
    summary = train_orpo(model, examples, cfg, pad_id=0, seed=3, par=par)
    if rank == 0:
        torch.save(
            {"lora": {n: p.detach().clone() for n, p in lora_parameters(model).items()}, "summary": summary},
            out_path,
        )


def resume_on_rank0_only(rank: int, world: int, sp_size: int, out_path: str, ckpt_dir: str) -> None:
    """Train 1 step with a checkpoint, then resume in fresh models: only rank 0 reads the checkpoint (ranks
    of other nodes have no workdir), and rank 1 starts from wrong LoRA weights each time. Rank 0's weights
    and optimizer state must reach every rank, or the result differs from one uninterrupted process."""
    from sealong.loop.training.orpo import lora_parameters, train_orpo
    from sealong.loop.training.parallel import build_groups

    par = build_groups(sp_size)

    def fresh():
        model, examples, cfg = tiny_setup(grad_accum=2 // par.dp_size)
        if rank:
            with torch.no_grad():
                for p in lora_parameters(model).values():
                    p.add_(0.5)
        return model, examples, cfg

    ckpt = Path(ckpt_dir) if rank == 0 else Path(ckpt_dir) / f"rank{rank}-sees-nothing"
    model, examples, cfg = fresh()
    first = train_orpo(
        model, examples, cfg, pad_id=0, seed=3, par=par, checkpoint_dir=ckpt, checkpoint_every=1, stop_after=1
    )
    model, examples, cfg = fresh()
    summary = train_orpo(
        model, examples, cfg, pad_id=0, seed=3, par=par, checkpoint_dir=ckpt, checkpoint_every=1
    )
    if rank == 0:
        torch.save(
            {
                "lora": {n: p.detach().clone() for n, p in lora_parameters(model).items()},
                "summary": summary,
                "first": first,
            },
            out_path,
        )


def _outcome(fn) -> str:
    try:
        fn()
        return "ok"
    except Exception as e:  # noqa: BLE001 - the test reads what each rank raised
        return f"{type(e).__name__}: {e}"


def nan_on_one_data_parallel_rank(rank: int, world: int, sp_size: int, out_path: str) -> None:
    """Rank 1's first micro-batch loss is NaN; rank 0's is finite: both must raise NonFiniteLoss at the same
    step (else rank 0 waits for rank 1's gradients forever)."""
    from sealong.loop.training.orpo import train_orpo
    from sealong.loop.training.parallel import build_groups
    from sealong.store import faults

    par = build_groups(sp_size)
    model, examples, cfg = tiny_setup(grad_accum=2 // par.dp_size)
    if rank == 1:  # this rank's process only: as the train stage process of round 0 would see it
        os.environ[faults.ENV] = "train:loss@1:nan"
        faults.set_context("train", 0)
    said = _outcome(lambda: train_orpo(model, examples, cfg, pad_id=0, seed=3, par=par))
    Path(f"{out_path}.{rank}").write_text(said)


def follower_that_disagrees(
    rank: int, world: int, sp_size: int, out_path: str, base_dir: str, case: str
) -> None:
    """Rank 0 shares a job; rank 1 follows it with a different base model or a different layout."""
    from sealong.loop.backends.models import base_model_fingerprint
    from sealong.loop.config import config_from_dict
    from sealong.loop.stages.train import follow
    from sealong.loop.training import parallel

    par = parallel.build_groups(sp_size)
    if rank == 0:
        layout = {"nproc_per_node": 2, "sequence_parallel_size": 2 if case == "layout" else 1}
        job = {
            "config": config_from_dict({"distributed": layout}),
            "round_idx": 0,
            "pairs": [],
            "base": "0" * 64 if case == "base" else base_model_fingerprint(Path(base_dir)),
        }

        def lead():
            parallel.share(job, par)
            parallel.agree(None, par)

        said = _outcome(lead)
    else:
        said = _outcome(lambda: follow(par, Path(base_dir)))
    Path(f"{out_path}.{rank}").write_text(said)

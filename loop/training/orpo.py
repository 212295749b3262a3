"""ORPO training of a LoRA adapter on preference pairs (SEALONG's recipe), on one process or many.

Loss per pair (docs/ARCHITECTURE.md, "The recipe"): NLL over the chosen response tokens only (the prompt is masked) +
beta · (−log σ(log odds(chosen) − log odds(rejected))), with length-averaged response log-probs.
The loss is computed from the decoder's last hidden states and lm_head's weight by sealong.kernels.orpo,
so the fused, token-chunked backend never builds full [T, V] logits.

At scale (loop/training/parallel.py): each sequence-parallel group splits every sequence into zigzag shards
(ring attention, loss sums all-reduced in the SP group); data-parallel groups take different micro-batches.
LoRA gradients are summed over the SP group (each rank holds its tokens' share) and over DP (each group
its micro-batches), with every micro-batch loss scaled by 1 / (micro-batches in the step): the update
equals the single-process one. Checkpoints every K optimizer steps make a killed training resumable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sealong.kernels import orpo as orpo_kernels
from sealong.kernels.distributed import all_reduce_grads
from sealong.loop.config import TrainConfig
from sealong.loop.errors import NonFiniteLoss, SealongError
from sealong.loop.training.checkpoints import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    sync_from_main,
)
from sealong.loop.training.parallel import Parallel
from sealong.store import faults
from sealong.store.artifacts import VerifiedAdapter

IGNORE = orpo_kernels.IGNORE_INDEX


@dataclass
class PairExample:
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]


def encode_response(
    tokenizer, prompt_ids: list[int], response: str, max_length: int
) -> tuple[list[int], list[int]]:
    """prompt + response + end-of-turn; labels mask the prompt. Overlong examples lose prompt tokens from the left."""
    from sealong.loop.backends.eos import response_end_id

    end = response_end_id(tokenizer)  # the chat template's end-of-turn token, else EOS
    resp = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
    resp = resp[: max_length // 2]
    prompt = prompt_ids[-(max_length - len(resp)) :]
    return prompt + resp, [IGNORE] * len(prompt) + resp


def _pad(seqs: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def lora_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def freeze_base(model, upcast: bool = False) -> None:
    """Freeze every base weight. With ``upcast`` (train.upcast_base), also keep fp32 copies of the
    non-quantised ones (embeddings, norms, lm_head), as PEFT's prepare_model_for_kbit_training always does:
    then the residual stream runs in fp32 too. Without it a bf16 model trains in bf16 end to end (at 8B and
    32K tokens the fp32 stream and copies cost ~2× the activation memory); the LoRA weights PEFT adds stay
    fp32 (its autocast_adapter_dtype), and so does the optimizer state."""
    for p in model.parameters():
        p.requires_grad_(False)
        if upcast and p.dtype in (torch.float16, torch.bfloat16) and type(p).__name__ != "Params4bit":
            p.data = p.data.float()


def add_lora(model, cfg: TrainConfig, init_adapter: VerifiedAdapter | None):
    from peft import LoraConfig, PeftModel, get_peft_model
    from sealong.loop.backends.models import peft_quietly

    ckpt = {"use_reentrant": False}  # torch's recommended checkpointing; the reentrant one is deprecated
    freeze_base(model, upcast=cfg.upcast_base)
    if cfg.gradient_checkpointing:
        # transformers 5.x renamed it (the old name goes in v6); older releases have only the old one
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt)
        model.enable_input_require_grads()
    if init_adapter is not None:
        with peft_quietly():
            return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    with peft_quietly():
        return get_peft_model(model, lora)


def decoder_and_head(peft_model):
    causal = peft_model.get_base_model()
    return getattr(causal, causal.base_model_prefix), causal.get_output_embeddings()


def use_ring_attention(peft_model, par: Parallel) -> Parallel:
    """Route the model's attention across par.sp_group ([distributed] sequence_parallel); returns par with
    the path taken. "ring": ring-flash-attn where it imports (CUDA + flash_attn; UNTESTED), else our ring of
    fused attention blocks. "ulysses": all-to-all over heads, which must divide by the SP size."""
    base = peft_model.get_base_model()
    if par.sp_mode == "ulysses":
        from sealong.kernels.ulysses import ulysses_heads_problem

        config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        problem = ulysses_heads_problem(heads, kv_heads, par.sp_size)
        if problem:
            raise SealongError(f"[distributed] sequence_parallel = 'ulysses': {problem}; use 'ring'")
    else:
        from sealong.kernels.ring_flash import ring_flash_attn_available, try_enable_ring_flash_attn

        why_not = try_enable_ring_flash_attn(par.sp_group) if ring_flash_attn_available() else "not installed"
        if why_not is None:  # UNTESTED path: no GPU with flash_attn has run it yet
            from sealong.kernels.ring_flash import RING_FLASH_ATTENTION_NAME

            base.set_attn_implementation(RING_FLASH_ATTENTION_NAME)
            return dataclasses.replace(par, ring_flash=True)
        if why_not != "not installed":
            import warnings

            warnings.warn(f"{why_not}; using the fused ring attention", stacklevel=2)
    from sealong.kernels.hf_attention import register_hf_sequence_parallel_attention

    base.set_attn_implementation(register_hf_sequence_parallel_attention(par.sp_mode))
    return par


@dataclass
class PackedShard:
    """One rank's contiguous slice of 2B sequences packed into one row (ring-flash-attn's llama3 varlen
    layout), and where each sequence's tokens of that slice sit, for the loss."""

    input_ids: torch.Tensor  # [1, L / sp]
    position_ids: torch.Tensor  # [1, L / sp]; restart at 0 for every sequence
    cu_seqlens: (
        torch.Tensor
    )  # int32 [n_segments + 1] over the whole packed row (a padding tail is its own segment)
    gather: torch.Tensor  # [2B, Tl] index into this rank's slice; -1 where a sequence has no more tokens here
    labels: torch.Tensor  # [2B, Tl] shifted labels of those tokens; IGNORE where gather is -1
    n_tokens: int  # real (non-padding) tokens in this rank's slice


def pack_for_ring_flash(
    seqs: list[list[int]], shifted: list[list[int]], sp_rank: int, sp_size: int, pad_id: int
) -> PackedShard:
    """Pack sequences end to end, pad the row to a multiple of sp_size, and cut this rank's contiguous slice.

    The loss needs only per-sequence sums (log-probs, token counts) all-reduced over the SP group, so each
    rank gathers the tokens of each sequence that fall in its slice into row j of a [2B, Tl] layout.
    """
    lengths = [len(x) for x in seqs]
    total = sum(lengths)
    width = math.ceil(total / sp_size) * sp_size
    ids = [t for x in seqs for t in x] + [pad_id] * (width - total)
    labels = [t for x in shifted for t in x] + [IGNORE] * (width - total)
    pos = [i for n in lengths for i in range(n)] + list(range(width - total))
    bounds = [0]
    for n in lengths:
        bounds.append(bounds[-1] + n)
    if width > total:
        bounds.append(width)
    per = width // sp_size
    r0, r1 = sp_rank * per, (sp_rank + 1) * per
    segments = [list(range(max(a, r0), min(b, r1))) for a, b in zip(bounds[:-1], bounds[1:])][: len(seqs)]
    tl = max(1, max(len(g) for g in segments))
    gather = torch.full((len(seqs), tl), -1, dtype=torch.long)
    lab = torch.full((len(seqs), tl), IGNORE, dtype=torch.long)
    for j, g in enumerate(segments):
        if g:
            gather[j, : len(g)] = torch.tensor(g) - r0
            lab[j, : len(g)] = torch.tensor([labels[t] for t in g])
    return PackedShard(
        input_ids=torch.tensor([ids[r0:r1]]),
        position_ids=torch.tensor([pos[r0:r1]]),
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        gather=gather,
        labels=lab,
        n_tokens=max(0, min(r1, total) - r0),
    )


def orpo_step_loss(
    peft_model,
    batch: list[PairExample],
    beta: float,
    loss: str,
    pad_id: int,
    par: Parallel = Parallel(),
    chunk_size: int = 1024,
):
    """Forward chosen and rejected sequences together; return the OrpoOutput and this rank's token count.

    Labels are shifted at full length (label[t] = token t+1), then sequences are padded to a multiple of
    2·SP and, under sequence parallelism, each rank takes its zigzag shard of tokens, labels and positions.
    """
    decoder, head = decoder_and_head(peft_model)
    seqs = [b.chosen_ids for b in batch] + [b.rejected_ids for b in batch]
    shifted = [
        lab[1:] + [IGNORE] for lab in [b.chosen_labels for b in batch] + [b.rejected_labels for b in batch]
    ]
    b, device = len(batch), head.weight.device
    if par.sp_size > 1 and par.ring_flash:  # UNTESTED until run on CUDA with flash_attn + ring-flash-attn
        from sealong.kernels.ring_flash import update_ring_flash_attn_params

        shard = pack_for_ring_flash(seqs, shifted, par.sp_rank, par.sp_size, pad_id)
        update_ring_flash_attn_params(shard.cu_seqlens.to(device), par.sp_group)
        flat = decoder(
            input_ids=shard.input_ids.to(device), position_ids=shard.position_ids.to(device)
        ).last_hidden_state[0]  # [L / sp, H]
        hidden = flat[shard.gather.clamp(min=0).to(device)]  # [2B, Tl, H]; rows past a sequence are ignored
        labels, n_tok = shard.labels.to(device), shard.n_tokens
    else:
        multiple = 2 * par.sp_size if par.sp_size > 1 else 1
        width = math.ceil(max(len(s) for s in seqs) / multiple) * multiple
        ids, labels = _pad(seqs, width, pad_id).to(device), _pad(shifted, width, IGNORE).to(device)
        mask = _pad([[1] * len(s) for s in seqs], width, 0).to(device)
        if par.sp_size > 1:
            from sealong.kernels.ring_attention import shard_indices

            idx = shard_indices(width, par.sp_rank, par.sp_size, "zigzag").to(device)
            with _sp_context(par):
                hidden = decoder(
                    input_ids=ids[:, idx], position_ids=idx.expand(len(seqs), -1)
                ).last_hidden_state
            labels, mask = labels[:, idx], mask[:, idx]
        else:
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [2B, T, H]
        n_tok = int(mask.sum())  # this rank's real (non-padding) tokens
    out = orpo_kernels.orpo_loss(
        hidden[:b],
        hidden[b:],
        head.weight,
        labels[:b],
        labels[b:],
        beta=beta,
        backend=loss,
        chunk_size=chunk_size if loss == "fused" else None,
        group=par.sp_group,
    )
    return out, n_tok


def _sp_context(par: Parallel):
    """The SP group of our ring / Ulysses attention for code that may run the attention: the forward, and
    the backward, where gradient checkpointing recomputes it."""
    if par.sp_size > 1 and not par.ring_flash:
        from sealong.kernels.hf_attention import sequence_parallel

        return sequence_parallel(par.sp_group)
    return contextlib.nullcontext()


def micro_batch_schedule(n_examples: int, cfg: TrainConfig, seed: int) -> list[list[int]]:
    """Example indices per micro-batch, over all epochs, in a fixed (seeded) order: resumable by position."""
    rng, schedule = random.Random(seed), []
    for _ in range(cfg.epochs):
        order = list(range(n_examples))
        rng.shuffle(order)
        schedule += [order[i : i + cfg.batch_size] for i in range(0, n_examples, cfg.batch_size)]
    return schedule


# -- the loop -------------------------------------------------------------------------------------------------


def optimizer_steps(n_examples: int, cfg: TrainConfig, dp_size: int = 1) -> int:
    """How many optimizer steps train_orpo takes over n_examples (the monitor's total before step 1)."""
    return max(1, math.ceil(len(micro_batch_schedule(n_examples, cfg, 0)) / (cfg.grad_accum * dp_size)))


def train_orpo(
    peft_model,
    examples: list[PairExample],
    cfg: TrainConfig,
    pad_id: int,
    seed: int,
    on_step: Callable[[dict], None] = lambda s: None,
    par: Parallel = Parallel(),
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    stop_after: int | None = None,
) -> dict:
    """ORPO over the examples; returns a summary. Raises NonFiniteLoss on NaN/inf.

    With checkpoint_dir, resumes from its latest checkpoint and (main rank) saves one every
    `checkpoint_every` optimizer steps. stop_after: end after that many steps (tests of resumption).
    """
    torch.manual_seed(seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = micro_batch_schedule(len(examples), cfg, seed)
    per_step = cfg.grad_accum * par.dp_size
    total_steps = optimizer_steps(len(examples), cfg, par.dp_size)
    warmup = int(total_steps * cfg.warmup_ratio)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10% of lr
        if step < warmup:
            return cfg.lr * (step + 1) / (warmup + 1)
        return cfg.lr * (1.0 - 0.9 * (step - warmup) / max(1, total_steps - warmup))

    resume = latest_checkpoint(checkpoint_dir) if par.is_main else None
    if par.world == 1:
        start = load_checkpoint(resume, peft_model, opt) if resume else 0
    else:  # only rank 0 reads checkpoints; every rank starts from its weights and state
        start, failed = 0, None
        try:
            start = load_checkpoint(resume, peft_model, opt) if resume else 0
        except Exception as e:  # noqa: BLE001 - every rank fails with it, none waits
            failed = e
        start = sync_from_main(peft_model, opt, start, par, failed)
    if par.sp_size > 1:
        par = use_ring_attention(peft_model, par)
    peft_model.train()
    history, t_tokens, t0, micro_batches = [], 0, time.monotonic(), 0
    for step in range(start, total_steps if stop_after is None else min(total_steps, stop_after)):
        slots = schedule[step * per_step : (step + 1) * per_step]
        mine = slots[par.dp_rank :: par.dp_size]
        # loss, nll, or_loss, log-odds ratio: sums over this rank's micro-batches (on the model's device:
        # NCCL all-reduces CUDA tensors only)
        acc = torch.zeros(4, device=params[0].device)
        nonfinite = None
        for micro in mine:
            out, n_tok = orpo_step_loss(
                peft_model, [examples[i] for i in micro], cfg.beta, cfg.loss, pad_id, par
            )
            micro_batches += 1  # tests: SEALONG_FAULT="train:loss@<n>:nan" (sealong.store.faults)
            out.loss = faults.tamper("loss", micro_batches, out.loss)
            if not torch.isfinite(out.loss):  # the same on every rank of an SP group (its loss is reduced)
                nonfinite = out.loss.item()
                if par.dp_size == 1:
                    raise NonFiniteLoss(f"non-finite ORPO loss ({nonfinite}) at optimizer step {step + 1}")
                break  # the other data-parallel groups learn of it below, so no rank waits alone
            with _sp_context(par):  # recomputed (checkpointed) attention must ring over the SP group too
                (out.loss / len(slots)).backward()
            t_tokens += n_tok
            acc += torch.stack([out.loss, out.nll, out.or_loss, out.log_odds_ratio.mean()]).detach().float()
        if par.dp_size > 1:
            flag = torch.tensor([0.0 if nonfinite is None else 1.0], device=params[0].device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX, group=par.dp_group)
            if flag.item():
                raise NonFiniteLoss(
                    f"non-finite ORPO loss at optimizer step {step + 1}"
                    + (f" ({nonfinite} on this rank)" if nonfinite is not None else " (on another rank)")
                )
        all_reduce_grads(params, par.sp_group)
        all_reduce_grads(params, par.dp_group)
        if par.dp_group is not None:  # the logged loss is the mean over every micro-batch of the step
            torch.distributed.all_reduce(acc, group=par.dp_group)
        acc /= len(slots)
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        rec = {
            "step": step + 1,
            "total_steps": total_steps,
            "loss": acc[0].item(),
            "nll": acc[1].item(),
            "or_loss": acc[2].item(),
            "log_odds_ratio": acc[3].item(),
            "lr": lr_at(step),
            "grad_norm": grad_norm,
            "tokens_per_s": t_tokens / max(time.monotonic() - t0, 1e-9),
        }
        history.append(rec)
        on_step(rec)
        if (
            checkpoint_dir is not None
            and checkpoint_every
            and (step + 1) % checkpoint_every == 0
            and step + 1 < total_steps
            and par.is_main
        ):
            save_checkpoint(checkpoint_dir, step + 1, peft_model, opt)
    peft_model.eval()
    return {
        "steps": (history[-1]["step"] if history else start),
        "resumed_from_step": start,
        "examples": len(examples),
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "seconds": time.monotonic() - t0,
        "world": par.world,
        "sequence_parallel": par.sp_size,
    }

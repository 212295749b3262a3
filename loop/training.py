"""ORPO training of a LoRA adapter on preference pairs (SEALONG's recipe).

Loss per pair (DESIGN.md §1): NLL over the chosen response tokens only (the prompt is masked) +
beta · (−log σ(log odds(chosen) − log odds(rejected))), with length-averaged response log-probs.
The loss is computed from the decoder's last hidden states and lm_head's weight by sealong.kernels.orpo,
so a fused, token-chunked backend never builds full [T, V] logits.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from sealong.kernels import orpo as orpo_kernels
from sealong.loop.config import TrainConfig
from sealong.loop.errors import SealongError

IGNORE = orpo_kernels.IGNORE_INDEX


@dataclass
class PairExample:
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]


class NonFiniteLoss(SealongError):
    """Training produced a NaN or inf loss; the adapter is discarded."""


def encode_response(tokenizer, prompt_ids: list[int], response: str, max_length: int) -> tuple[list[int], list[int]]:
    """prompt + response + end-of-turn; labels mask the prompt. Overlong examples lose prompt tokens from the left."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    end = end if isinstance(end, int) and end != tokenizer.unk_token_id else tokenizer.eos_token_id
    resp = tokenizer(response, add_special_tokens=False)["input_ids"] + [end]
    resp = resp[: max_length // 2]
    prompt = prompt_ids[-(max_length - len(resp)):]
    return prompt + resp, [IGNORE] * len(prompt) + resp


def _pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


def lora_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def add_lora(model, cfg: TrainConfig, init_adapter: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training

    if cfg.quantize == "nf4":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    if init_adapter is not None:
        return PeftModel.from_pretrained(model, init_adapter, is_trainable=True)
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _orpo(cfg: TrainConfig):
    if cfg.loss == "naive":
        return orpo_kernels.orpo_loss_reference
    dispatch = getattr(orpo_kernels, "orpo_loss", None)
    if dispatch is None:
        raise SealongError(f"train.loss = {cfg.loss!r} is not available in this build; use 'naive'")
    return lambda *a, **k: dispatch(*a, backend=cfg.loss, **k)


def decoder_and_head(peft_model):
    causal = peft_model.get_base_model()
    return getattr(causal, causal.base_model_prefix), causal.get_output_embeddings()


def orpo_step_loss(peft_model, batch: list[PairExample], beta: float, loss_fn, pad_id: int):
    """Forward chosen and rejected sequences together; return the OrpoOutput and the token count."""
    decoder, head = decoder_and_head(peft_model)
    ids = [b.chosen_ids for b in batch] + [b.rejected_ids for b in batch]
    labels = [b.chosen_labels for b in batch] + [b.rejected_labels for b in batch]
    input_ids, label_t = _pad(ids, pad_id), _pad(labels, IGNORE)
    mask = _pad([[1] * len(s) for s in ids], 0)
    hidden = decoder(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [2B, T, H]
    h, lab = hidden[:, :-1], label_t[:, 1:]  # hidden[t] predicts token t+1
    b = len(batch)
    out = loss_fn(h[:b], h[b:], head.weight, lab[:b], lab[b:], beta=beta)
    return out, int(mask.sum())


def train_orpo(
    peft_model, examples: list[PairExample], cfg: TrainConfig, pad_id: int, seed: int,
    on_step: Callable[[dict], None] = lambda s: None,
) -> dict:
    """One or more epochs of ORPO over the examples; returns a summary. Raises NonFiniteLoss on NaN/inf."""
    torch.manual_seed(seed)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = max(1, math.ceil(per_epoch * cfg.epochs / cfg.grad_accum))
    warmup = int(total_steps * cfg.warmup_ratio)

    def lr_at(step: int) -> float:  # linear warm-up, then linear decay to 10% of lr
        if step < warmup:
            return cfg.lr * (step + 1) / (warmup + 1)
        frac = (step - warmup) / max(1, total_steps - warmup)
        return cfg.lr * (1.0 - 0.9 * frac)

    loss_fn = _orpo(cfg)
    rng = random.Random(seed)
    peft_model.train()
    step, micro, history, t_tokens, t0 = 0, 0, [], 0, time.monotonic()
    acc = {"loss": 0.0, "nll": 0.0, "or_loss": 0.0, "ratio": 0.0}
    for _ in range(cfg.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        for start in range(0, len(order), cfg.batch_size):
            batch = [examples[i] for i in order[start:start + cfg.batch_size]]
            out, n_tok = orpo_step_loss(peft_model, batch, cfg.beta, loss_fn, pad_id)
            if not torch.isfinite(out.loss):
                raise NonFiniteLoss(f"non-finite ORPO loss ({out.loss.item()}) at optimizer step {step + 1}")
            (out.loss / cfg.grad_accum).backward()
            t_tokens += n_tok
            micro += 1
            for k, v in (("loss", out.loss.item()), ("nll", out.nll.item()), ("or_loss", out.or_loss.item()),
                         ("ratio", out.log_odds_ratio.mean().item())):
                acc[k] += v / cfg.grad_accum
            last = start + cfg.batch_size >= len(order)
            if micro % cfg.grad_accum and not last:
                continue
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm).item()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            rec = {"step": step, "total_steps": total_steps, "loss": acc["loss"], "nll": acc["nll"],
                   "or_loss": acc["or_loss"], "log_odds_ratio": acc["ratio"], "lr": lr_at(step - 1),
                   "grad_norm": grad_norm, "tokens_per_s": t_tokens / max(time.monotonic() - t0, 1e-9)}
            history.append(rec)
            on_step(rec)
            acc = dict.fromkeys(acc, 0.0)
            micro = 0
    peft_model.eval()
    return {"steps": step, "examples": len(examples), "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None, "seconds": time.monotonic() - t0}

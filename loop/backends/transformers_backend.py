"""Sampling and greedy decoding on CPU with transformers.

`sample_n` prefills the long prompt once and draws all N continuations from that one KV cache (the
cache is repeated along the batch), instead of running N prefills. `greedy_batch` decodes several
prompts at once with left padding for evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Completion:
    text: str
    n_tokens: int


def _decode(tokenizer, rows: torch.Tensor) -> list[Completion]:
    """Cut each row at its first EOS (or stop token) and decode."""
    stops = set(stop_ids(tokenizer))
    out = []
    for row in rows.tolist():
        n = next((i for i, t in enumerate(row) if t in stops), len(row))
        out.append(Completion(tokenizer.decode(row[:n], skip_special_tokens=True).strip(), n))
    return out


def stop_ids(tokenizer) -> list[int]:
    """The model's own stop ids (generation_config eos_token_id, EOS, the chat template's end-of-turn)."""
    from sealong.loop.backends.eos import stop_ids as model_stop_ids

    return model_stop_ids(tokenizer)


def _cache_kwarg(model) -> str:
    """transformers 5.x renamed `past_key_values` to `cache` (the old name goes in 5.40); older releases
    only know `past_key_values`."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT passes kwargs on
    forward = getattr(base, "forward", None)
    try:
        return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    except (TypeError, ValueError):
        return "past_key_values"


def model_device(model) -> torch.device:
    """Where the model's weights are (a PEFT wrapper included): inputs go there."""
    return next(model.parameters()).device


@torch.inference_mode()
def sample_n(
    model,
    tokenizer,
    input_ids: list[int],
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    shared_prefill: bool = True,
) -> list[Completion]:
    """N sampled continuations of one prompt."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    prompt = torch.tensor([input_ids], dtype=torch.long, device=model_device(model))
    gen_kwargs = dict(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        repetition_penalty=1.0,  # not the model's generation-config default: vLLM's explicit params ignore it
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    if shared_prefill:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        kw = _cache_kwarg(model)
        model(input_ids=prompt[:, :-1], use_cache=True, **{kw: cache})  # one prefill
        cache.batch_repeat_interleave(n)
        batch = prompt.expand(n, -1)
        out = model.generate(
            input_ids=batch, attention_mask=torch.ones_like(batch), **{kw: cache}, **gen_kwargs
        )
    else:
        batch = prompt.expand(n, -1)
        out = model.generate(input_ids=batch, attention_mask=torch.ones_like(batch), **gen_kwargs)
    return _decode(tokenizer, out[:, prompt.shape[1] :])


@torch.inference_mode()
def greedy_batch(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
    """Greedy decoding of several prompts at once (left padded)."""
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    device = model_device(model)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], dtype=torch.long, device=device)
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long, device=device
    )
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids(tokenizer),
        pad_token_id=pad,
        temperature=None,
        top_p=None,
        top_k=None,
        repetition_penalty=1.0,
    )
    return _decode(tokenizer, out[:, width:])

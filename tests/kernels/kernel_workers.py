"""Workers for the multi-process tests: each runs on every rank of a gloo group (torch.multiprocessing
spawn), builds the full problem from a shared seed, computes the single-process result itself, runs the
sequence-parallel version on its shard and asserts agreement (fp32, 1e-5 relative to the tensor's scale).
A failed assertion on any rank fails the test with that rank's traceback.

Imported by name in the spawned processes, so it lives on sys.path (see conftest.py), not as a test module.
"""

from __future__ import annotations

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from kernel_checks import assert_close_relative

RTOL = 1e-5
BF16_RTOL = 2e-2


def _entry(rank: int, world: int, init_file: str, name: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        globals()[name](rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_distributed(worker, world: int, *args) -> None:
    """Run ``worker(rank, world, *args)`` on ``world`` spawned gloo ranks; raise if any rank fails."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(
            _entry,
            args=(world, os.path.join(tmp, "rendezvous"), worker.__name__, args),
            nprocs=world,
            join=True,
        )


def _shard(x: torch.Tensor, rank: int, world: int, layout: str) -> torch.Tensor:
    from sealong.kernels.ring_attention import shard_sequence

    return shard_sequence(x, rank, world, dim=1, layout=layout)


def orpo_sequence_parallel(rank: int, world: int, backend: str) -> None:
    """Each rank holds a slice of every sequence; loss and gradients must equal single-process ones."""
    from sealong.kernels.orpo import IGNORE_INDEX, orpo_loss, orpo_loss_reference

    g = torch.Generator().manual_seed(0)
    B, Tc, Tr, H, V = 2, 48, 40, 12, 37
    hc, hr = torch.randn(B, Tc, H, generator=g), torch.randn(B, Tr, H, generator=g)
    w = torch.randn(V, H, generator=g) / H**0.5
    lc, lr = torch.randint(0, V, (B, Tc), generator=g), torch.randint(0, V, (B, Tr), generator=g)
    lc[0, :30], lc[1, :41], lr[0, :5], lr[1, :33] = IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX
    leaves = [t.clone().requires_grad_() for t in (hc, hr, w)]
    want = orpo_loss_reference(*leaves, lc, lr, beta=0.1)
    want_grads = torch.autograd.grad(want.loss, leaves)
    for layout in ("contiguous", "zigzag"):
        local = [
            _shard(hc, rank, world, layout).requires_grad_(),
            _shard(hr, rank, world, layout).requires_grad_(),
        ]
        w_local = w.clone().requires_grad_()
        got = orpo_loss(*local, w_local, _shard(lc, rank, world, layout), _shard(lr, rank, world, layout),
                        beta=0.1, backend=backend, chunk_size=7, group=dist.group.WORLD)  # fmt: skip
        got.loss.backward()
        dist.all_reduce(w_local.grad)
        what = f"{backend}/{layout} rank {rank}"
        for name in ("loss", "nll", "or_loss", "log_odds_ratio", "chosen_logp", "rejected_logp"):
            assert_close_relative(getattr(got, name), getattr(want, name), RTOL, f"{what} {name}")
        assert_close_relative(
            local[0].grad, _shard(want_grads[0], rank, world, layout), RTOL, f"{what} d hidden_chosen"
        )
        assert_close_relative(
            local[1].grad, _shard(want_grads[1], rank, world, layout), RTOL, f"{what} d hidden_rejected"
        )
        assert_close_relative(w_local.grad, want_grads[2], RTOL, f"{what} d weight")


def sequence_parallel_attention_matches_full(rank: int, world: int, mode: str) -> None:
    """Ring or Ulysses attention on zigzag shards against materialised attention on the whole sequence,
    forward and gradients of q, k, v: fp32 and bf16, odd lengths (padded to 2W), GQA, causal or not,
    packed documents (cu_seqlens → document ids, a padding tail as its own document)."""
    from sealong.kernels.ring_attention import (
        attention_reference,
        padded_length,
        ring_attention,
        segments_from_cu_seqlens,
        shard_indices,
    )
    from sealong.kernels.ulysses import ulysses_attention

    attention = {"ring": ring_attention, "ulysses": ulysses_attention}[mode]
    g = torch.Generator().manual_seed(1)
    B, Hq, Hkv, D = 2, 8, 4, 8  # GQA; both head counts divide 1, 2, 4 (Ulysses)
    cases = [  # (dtype, rtol, real length, causal, cu_seqlens of packed documents or None)
        (torch.float32, RTOL, 32, True, None),
        (torch.float32, RTOL, 27, True, None),
        (torch.float32, RTOL, 27, False, None),
        (torch.float32, RTOL, 29, True, [0, 9, 10, 23, 29]),
        (torch.float32, RTOL, 23, False, [0, 14, 23]),
        (torch.bfloat16, BF16_RTOL, 27, True, None),
        (torch.bfloat16, BF16_RTOL, 29, True, [0, 9, 10, 23, 29]),
    ]
    for dtype, rtol, T, causal, cu in cases:
        S = padded_length(T, world)
        q, k, v = (torch.randn(B, h, S, D, generator=g).to(dtype) for h in (Hq, Hkv, Hkv))
        grad_out = torch.randn(B, Hq, S, D, generator=g).to(dtype)
        grad_out[:, :, T:] = 0  # padding carries no loss
        # the real tokens, then a padding tail that is its own document (invisible to real tokens)
        segments = segments_from_cu_seqlens(torch.tensor(cu if cu else [0, T]), S)
        full = [t[:, :, :T].float().requires_grad_() for t in (q, k, v)]
        want = attention_reference(*full, causal=causal, segments=segments[:T] if cu else None)
        want_grads = torch.autograd.grad(want, full, grad_out[:, :, :T].float())
        idx = shard_indices(S, rank, world, "zigzag")
        real = idx < T
        local = [t.index_select(2, idx).requires_grad_() for t in (q, k, v)]
        seg = (
            segments[idx] if cu or not causal else None
        )  # causal: a padding tail needs no document of its own
        got = attention(*local, positions=idx, group=dist.group.WORLD, causal=causal, segments=seg)
        got.backward(grad_out.index_select(2, idx))
        what = f"{mode} W={world} {dtype} T={T} causal={causal} packed={cu is not None} rank {rank}"
        assert got.dtype == dtype, what
        assert_close_relative(got[:, :, real], want[:, :, idx[real]], rtol, f"{what} out")
        for t, ref, name in zip(local, want_grads, "qkv"):
            assert_close_relative(t.grad[:, :, real], ref[:, :, idx[real]], rtol, f"{what} d{name}")


def _tiny_lora_llama():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, attention_dropout=0.0,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # fmt: skip
    return get_peft_model(model, lora)


def llama_sequence_parallel_step(rank: int, world: int, mode: str = "ring") -> None:
    """One ORPO training step of a tiny LoRA Llama: SP size ``world`` (ring attention or Ulysses through the
    HF hook + fused ORPO over zigzag shards) against SP size 1 (HF eager attention + naive ORPO): same loss,
    same LoRA gradients."""
    from sealong.kernels.distributed import all_reduce_grads
    from sealong.kernels.hf_attention import register_hf_sequence_parallel_attention, sequence_parallel
    from sealong.kernels.orpo import IGNORE_INDEX, fused_linear_orpo_loss, orpo_loss_reference
    from sealong.kernels.ring_attention import shard_indices

    T = 32
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 256, (2, T), generator=g)  # row 0 chosen, row 1 rejected, one shared prompt
    ids[1, :18] = ids[0, :18]
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, 17:-1] = ids[:, 18:]  # hidden[t] predicts token t + 1; the prompt is 18 tokens

    def step(peft_model, hidden_fn, loss_fn):
        peft_model.zero_grad()
        causal = peft_model.get_base_model()
        hidden, lab = hidden_fn(causal.model)
        out = loss_fn(hidden[:1], hidden[1:], causal.lm_head.weight, lab[:1], lab[1:])
        out.loss.backward()
        return out.loss.detach(), {
            n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad
        }

    model = _tiny_lora_llama()
    model.get_base_model().set_attn_implementation("eager")
    want_loss, want_grads = step(
        model, lambda m: (m(input_ids=ids).last_hidden_state, labels), orpo_loss_reference
    )

    model.get_base_model().set_attn_implementation(register_hf_sequence_parallel_attention(mode))
    idx = shard_indices(T, rank, world, "zigzag")
    group = dist.group.WORLD

    def local_hidden(decoder):
        with sequence_parallel(group):
            out = decoder(input_ids=ids[:, idx], position_ids=idx.expand(2, -1)).last_hidden_state
        return out, labels[:, idx]

    got_loss, _ = step(model, local_hidden, lambda *a: fused_linear_orpo_loss(*a, chunk_size=5, group=group))
    all_reduce_grads([p for p in model.parameters() if p.requires_grad], group)
    got_grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert len(want_grads) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    assert_close_relative(got_loss, want_loss, RTOL, f"{mode} rank {rank} loss")
    for name, ref in want_grads.items():
        assert ref.abs().max() > 0, f"{name} has no gradient in the reference"
        assert_close_relative(got_grads[name], ref, RTOL, f"{mode} rank {rank} {name}")

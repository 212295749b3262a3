"""Ring attention in one process (the ring of one rank is plain blockwise attention), the sharding helpers,
the HF hook against transformers' eager attention, and the CUDA-only ring-flash-attn guard.
Multi-rank checks are in test_sequence_parallel.py."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_close
from sealong.kernels.ring_attention import (
    attention_reference,
    enable_ring_flash_attn,
    register_hf_ring_attention,
    ring_attention,
    ring_flash_attn_available,
    shard_indices,
    shard_sequence,
    unshard_sequence,
)


@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_single_rank_matches_reference(heads, causal):
    g = torch.Generator().manual_seed(0)
    hq, hkv = heads
    q, k, v = (torch.randn(2, h, 13, 8, generator=g, requires_grad=True) for h in (hq, hkv, hkv))
    grad_out = torch.randn(2, hq, 13, 8, generator=g)
    got = ring_attention(q, k, v, causal=causal)
    g_got = torch.autograd.grad(got, (q, k, v), grad_out)
    want = attention_reference(q, k, v, causal=causal)
    g_want = torch.autograd.grad(want, (q, k, v), grad_out)
    assert_close(got, want, 1e-6, 1e-5, "out")
    for a, b, name in zip(g_got, g_want, "qkv"):
        assert_close(a, b, 1e-6, 1e-5, f"d{name}")


def test_reference_matches_torch_sdpa():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 4, generator=g) for _ in range(3))
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert_close(attention_reference(q, k, v), want, 1e-6, 1e-5, "sdpa")


@pytest.mark.parametrize("layout", ["zigzag", "contiguous"])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_sharding_round_trip_and_balance(world, layout):
    S = 8 * world
    parts = [shard_indices(S, r, world, layout) for r in range(world)]
    assert sorted(torch.cat(parts).tolist()) == list(range(S))
    x = torch.arange(3 * S).reshape(3, S)
    assert torch.equal(
        unshard_sequence([shard_sequence(x, r, world, 1, layout) for r in range(world)], 1, layout), x
    )
    if layout == "zigzag":  # every rank gets the same causal work: sum of positions is equal
        assert len({int(p.sum()) for p in parts}) == 1


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        shard_indices(10, 0, 4)
    with pytest.raises(ValueError, match="layout"):
        shard_indices(8, 0, 2, "striped")
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        ring_attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="positions"):
        ring_attention(q, q, q, positions=torch.arange(5))


def test_hf_hook_matches_eager_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 64, (2, 11))
    model.set_attn_implementation("eager")
    want = model(input_ids=ids).logits
    model.set_attn_implementation(register_hf_ring_attention())
    assert_close(model(input_ids=ids).logits, want, 1e-5, 1e-5, "logits")


def test_ring_flash_attn_is_guarded_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the guard is not what is being tested")
    assert not ring_flash_attn_available()
    with pytest.raises(RuntimeError, match="ring-flash-attn"):
        enable_ring_flash_attn(group=None)


def test_ring_flash_attn_refusal_is_reported_not_raised():
    """Without CUDA + flash_attn + ring_flash_attn, enabling it says why and leaves the caller to fall back."""
    from sealong.kernels.ring_attention import ring_flash_attn_available, try_enable_ring_flash_attn

    if ring_flash_attn_available():
        pytest.skip("ring-flash-attn is importable here")
    why = try_enable_ring_flash_attn(None)
    assert why is not None and "CUDA" in why

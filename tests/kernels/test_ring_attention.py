"""Ring attention and Ulysses in one process (the ring of one rank is blockwise fused attention), the
sharding and packing helpers, the HF hooks against transformers' eager attention (padded and packed rows),
and the CUDA-only ring-flash-attn guard. Multi-rank checks are in test_sequence_parallel.py."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_close_relative
from sealong.kernels import attention_blocks
from sealong.kernels.hf_attention import (
    register_hf_ring_attention,
    register_hf_sequence_parallel_attention,
    sequence_parallel,
)
from sealong.kernels.ring_attention import (
    attention_reference,
    padded_length,
    ring_attention,
    segments_from_cu_seqlens,
    segments_from_position_ids,
    shard_indices,
    shard_sequence,
    unshard_sequence,
)
from sealong.kernels.ring_flash import enable_ring_flash_attn, ring_flash_attn_available
from sealong.kernels.ulysses import ulysses_attention, ulysses_heads_problem

DTYPES = [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)]


def _check(fn, q, k, v, rtol, **kw):
    """fn's output and q/k/v gradients against the fp32 materialised reference."""
    g = torch.Generator().manual_seed(7)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_leaves = [t.float().requires_grad_() for t in (q, k, v)]
    grad_out = torch.randn(q.shape, generator=g).to(q.dtype)
    got = fn(*leaves, **kw)
    want = attention_reference(*ref_leaves, causal=kw.get("causal", True), segments=kw.get("segments"))
    assert got.dtype == q.dtype
    assert_close_relative(got, want, rtol, "out")
    for a, b, name in zip(
        torch.autograd.grad(got, leaves, grad_out),
        torch.autograd.grad(want, ref_leaves, grad_out.float()),
        "qkv",
    ):
        assert_close_relative(a, b, rtol, f"d{name}")


@pytest.mark.parametrize("dtype, rtol", DTYPES)
@pytest.mark.parametrize("heads", [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("fn", [ring_attention, ulysses_attention])
def test_single_rank_matches_reference(fn, heads, causal, dtype, rtol):
    g = torch.Generator().manual_seed(0)
    hq, hkv = heads
    q, k, v = (torch.randn(2, h, 13, 8, generator=g).to(dtype) for h in (hq, hkv, hkv))  # odd length
    _check(fn, q, k, v, rtol, causal=causal)


@pytest.mark.parametrize("dtype, rtol", DTYPES)
@pytest.mark.parametrize("causal", [True, False])
def test_packed_documents_match_reference(causal, dtype, rtol):
    """Three documents and a padding tail in one row: attention stays inside each document."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, h, 29, 16, generator=g).to(dtype) for h in (4, 2, 2))
    segments = segments_from_cu_seqlens(torch.tensor([0, 11, 12, 25], dtype=torch.int32), 29)
    assert segments.tolist() == [0] * 11 + [1] + [2] * 13 + [3] * 4
    _check(ring_attention, q, k, v, rtol, causal=causal, segments=segments)


def test_segments_from_position_ids():
    pos = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
    assert segments_from_position_ids(pos).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]


def test_one_rank_holding_the_sequence_makes_one_fused_call(monkeypatch):
    """A whole sequence is one causal fused call; a zigzag order of it costs three (two causal, one full):
    the fully masked block is skipped."""
    calls = []
    real = attention_blocks.block_forward

    def counting(q, k, v, causal, scale):
        calls.append(causal)
        return real(q, k, v, causal, scale)

    import sealong.kernels.ring_attention as ring

    monkeypatch.setattr(ring, "block_forward", counting)
    q = torch.randn(1, 2, 16, 8)
    ring_attention(q, q, q)
    assert calls == [True]
    calls.clear()
    idx = shard_indices(16, 0, 2)  # chunks 0 and 3 of 4: the tail sees all of the head
    out = ring_attention(q[:, :, idx], q[:, :, idx], q[:, :, idx], positions=idx)
    assert sorted(calls) == [False, True, True]
    sub = q[:, :, idx]
    assert_close_relative(out, attention_reference(sub, sub, sub), 1e-5, "zigzag shard")


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
    assert padded_length(10, 4) == 16 and padded_length(16, 4) == 16 and padded_length(13, 1) == 14
    with pytest.raises(ValueError, match="layout"):
        shard_indices(8, 0, 2, "striped")
    q = torch.randn(1, 3, 4, 8)
    with pytest.raises(ValueError, match="multiple"):
        ring_attention(q, torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8))
    with pytest.raises(ValueError, match="positions"):
        ring_attention(q, q, q, positions=torch.arange(5))
    with pytest.raises(ValueError, match="overlap"):
        ring_attention(q, q, q, positions=torch.tensor([0, 1, 1, 2]))
    assert ulysses_heads_problem(32, 8, 8) is None
    assert "28" in ulysses_heads_problem(28, 4, 8) and "sequence_parallel_size 8" in ulysses_heads_problem(
        28, 4, 8
    )


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("mode", ["ring", "ulysses"])
def test_hf_hook_matches_eager_llama(mode):
    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 11))
    model.set_attn_implementation("eager")
    want = model(input_ids=ids).logits
    model.set_attn_implementation(register_hf_sequence_parallel_attention(mode))
    assert_close_relative(model(input_ids=ids).logits, want, 1e-5, "logits")


def test_hf_hook_on_a_packed_row_matches_each_document_alone():
    """Documents packed in one row (position ids restarting, document ids given to sequence_parallel) give
    the logits each document has when run alone."""
    model = _tiny_llama()
    docs = [torch.randint(0, 64, (1, n)) for n in (7, 12, 5)]
    model.set_attn_implementation("eager")
    want = torch.cat([model(input_ids=d).logits for d in docs], dim=1)
    ids = torch.cat(docs, dim=1)
    pos = torch.cat([torch.arange(d.shape[1]) for d in docs])[None]
    model.set_attn_implementation(register_hf_ring_attention())
    with sequence_parallel(
        None, positions=torch.arange(ids.shape[1]), segments=segments_from_position_ids(pos[0])
    ):
        got = model(input_ids=ids, position_ids=pos).logits
    assert_close_relative(got, want, 1e-5, "logits")


def test_ring_flash_attn_is_guarded_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine: the guard is not what is being tested")
    assert not ring_flash_attn_available()
    with pytest.raises(RuntimeError, match="ring-flash-attn"):
        enable_ring_flash_attn(group=None)


def test_ring_flash_attn_refusal_is_reported_not_raised():
    """Without CUDA + flash_attn + ring_flash_attn, enabling it says why and leaves the caller to fall back."""
    from sealong.kernels.ring_flash import try_enable_ring_flash_attn

    if ring_flash_attn_available():
        pytest.skip("ring-flash-attn is importable here")
    why = try_enable_ring_flash_attn(None)
    assert why is not None and "CUDA" in why


def test_ring_flash_import_patch_restores_the_moved_helper(monkeypatch):
    """transformers 5.x moved is_flash_attn_greater_or_equal_2_10; the patch puts it back before the import
    (the import itself fails here: no ring_flash_attn / flash_attn on this machine)."""
    import transformers.modeling_flash_attention_utils as fa_utils
    import transformers.utils as tf_utils
    from sealong.kernels import ring_flash

    if not hasattr(tf_utils, "is_flash_attn_greater_or_equal_2_10"):
        pytest.skip("this transformers has no is_flash_attn_greater_or_equal_2_10 at all")
    monkeypatch.delattr(fa_utils, "is_flash_attn_greater_or_equal_2_10", raising=False)
    try:
        ring_flash._import_ring_flash_attn()
    except ImportError:
        pass
    assert fa_utils.is_flash_attn_greater_or_equal_2_10 is tf_utils.is_flash_attn_greater_or_equal_2_10


def test_training_picks_the_mode_and_refuses_ulysses_with_heads_that_do_not_divide():
    """loop/training.use_ring_attention: the attention follows [distributed] sequence_parallel; Ulysses with
    heads that do not divide by the SP size fails at the train stage's start, naming the field."""
    from sealong.loop.errors import SealongError
    from sealong.loop.training.orpo import use_ring_attention
    from sealong.loop.training.parallel import Parallel

    class Wrapped:  # what use_ring_attention reads of a PEFT model
        def __init__(self, model):
            self.model = model

        def get_base_model(self):
            return self.model

    model = _tiny_llama()  # 4 query / 2 key-value heads
    for mode, name in (("ring", "sealong_ring"), ("ulysses", "sealong_ulysses")):
        par = use_ring_attention(Wrapped(model), Parallel(sp_size=2, sp_mode=mode))
        assert model.config._attn_implementation == name and not par.ring_flash
    with pytest.raises(SealongError, match=r"\[distributed\] sequence_parallel = 'ulysses'.*divide by"):
        use_ring_attention(Wrapped(model), Parallel(sp_size=4, sp_mode="ulysses"))

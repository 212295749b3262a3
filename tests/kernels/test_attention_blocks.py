"""The per-block fused attention op with LSE (CPU), its fp32 LSE merge and the block plan, against the
materialised block reference. The CUDA branches of attention_blocks.py are not tested here (no GPU)."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_close
from sealong.kernels.attention_blocks import (
    CAUSAL,
    FULL,
    Run,
    block_attention_reference,
    block_backward,
    block_forward,
    block_kind,
    merge_block,
    token_runs,
)

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2)]


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 2, 16, 16, 8), (1, 6, 3, 13, 31, 16), (3, 2, 1, 47, 47, 4)])
@pytest.mark.parametrize("causal", [True, False])
def test_block_forward_and_backward_match_reference(shape, causal, dtype, atol, rtol):
    B, hq, hkv, sq, sk, d = shape
    if causal and sq != sk:
        sk = sq
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, s, d, generator=g).to(dtype) for h, s in ((hq, sq), (hkv, sk), (hkv, sk)))
    scale = d**-0.5
    out, lse = block_forward(q, k, v, causal, scale)
    assert out.dtype == dtype and lse.dtype == torch.float32 and lse.shape == (B, hq, sq)
    leaves = [t.float().requires_grad_() for t in (q, k, v)]
    want_out, want_lse = block_attention_reference(*leaves, causal, scale)
    assert_close(out, want_out, atol, rtol, "out")
    assert_close(lse, want_lse, atol, rtol, "lse")
    dout = torch.randn(B, hq, sq, d, generator=g).to(dtype)
    got = block_backward(dout, q, k, v, out, lse, causal, scale)
    want = torch.autograd.grad(want_out, leaves, dout.float())
    for a, b, name in zip(got, want, "qkv"):
        assert a.shape == b.shape, name
        assert_close(a, b, atol * max(1.0, b.abs().max().item()), rtol, f"d{name}")


def test_two_blocks_merged_by_lse_equal_one_call_and_backward_with_global_lse():
    """Keys split in two blocks, merged in fp32, equal attention over all keys; each block's backward with
    the final output and global LSE gives its share of the gradients."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (
        torch.randn(2, 4, 9, 8, generator=g),
        torch.randn(2, 2, 20, 8, generator=g),
        torch.randn(2, 2, 20, 8, generator=g),
    )
    scale = 8**-0.5
    whole_out, whole_lse = block_forward(q, k, v, False, scale)
    out, lse = block_forward(q, k[:, :, :7], v[:, :, :7], False, scale)
    out, lse = out.float().clone(), lse.clone()
    b_out, b_lse = block_forward(q, k[:, :, 7:], v[:, :, 7:], False, scale)
    merge_block(out, lse, b_out, b_lse)
    assert_close(out, whole_out, 1e-6, 1e-5, "merged out")
    assert_close(lse, whole_lse, 1e-6, 1e-5, "merged lse")
    dout = torch.randn(q.shape, generator=g)
    dq, dk, dv = block_backward(dout, q, k, v, whole_out, whole_lse, False, scale)
    parts = [block_backward(dout, q, k[:, :, s], v[:, :, s], whole_out, whole_lse, False, scale)
             for s in (slice(0, 7), slice(7, 20))]  # fmt: skip
    assert_close(parts[0][0] + parts[1][0], dq, 1e-6, 1e-5, "dq")
    assert_close(torch.cat([parts[0][1], parts[1][1]], 2), dk, 1e-6, 1e-5, "dk")
    assert_close(torch.cat([parts[0][2], parts[1][2]], 2), dv, 1e-6, 1e-5, "dv")


def test_token_runs_cut_at_jumps_and_documents():
    assert token_runs([0, 1, 2, 3]) == [Run(0, 4, 0, 0)]
    assert token_runs([0, 1, 6, 7]) == [Run(0, 2, 0, 0), Run(2, 4, 6, 0)]  # a zigzag shard: two runs
    assert token_runs([4, 5, 6, 7], [0, 0, 1, 1]) == [Run(0, 2, 4, 0), Run(2, 4, 6, 1)]


def test_block_kinds_skip_masked_blocks():
    head, tail = Run(0, 4, 0, 0), Run(4, 8, 12, 0)
    assert block_kind(head, head, True) == CAUSAL
    assert block_kind(tail, head, True) == FULL  # keys wholly before the queries
    assert block_kind(head, tail, True) is None  # keys wholly after: fully masked, skipped
    assert block_kind(head, tail, False) == FULL
    other_doc = Run(0, 4, 12, 1)
    assert block_kind(other_doc, head, True) is None and block_kind(other_doc, head, False) is None
    with pytest.raises(ValueError, match="overlap"):
        block_kind(Run(0, 4, 0, 0), Run(0, 4, 2, 0), True)

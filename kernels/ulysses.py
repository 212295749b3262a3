"""Ulysses sequence parallelism (DeepSpeed-Ulysses): an all-to-all over heads, then attention over the
whole sequence for a slice of the heads, then the all-to-all back.

Each rank of the group holds a slice of the sequence for all heads (any sharding: its tokens' global
positions say where they sit). After the first all-to-all it holds every token for Hq/W query heads and
Hkv/W key/value heads; it sorts the tokens into sequence order and runs ``ring_attention`` on one rank
(one fused causal call per document, attention_blocks.py), and the second all-to-all returns the output to
its tokens' owners. Query and key/value heads must both divide by the group size (``ulysses_heads_problem``;
Llama-3.1-8B's 32 / 8 do at W = 8, Qwen2.5-7B's 28 / 4 do not). Autograd runs the same steps backwards:
the all-to-all's gradient is the inverse all-to-all.

Tests: tests/kernels/test_sequence_parallel.py (gloo, W = 1, 2, 4, against the materialised
``attention_reference``, forward and gradients) and the Ulysses LoRA training step there.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sealong.kernels.distributed import group_size
from sealong.kernels.ring_attention import RingLayout, ring_attention


def ulysses_heads_problem(num_heads: int, num_kv_heads: int, sp_size: int) -> str | None:
    """Why Ulysses cannot split these heads over sp_size ranks, or None when it can."""
    if num_heads % sp_size or num_kv_heads % sp_size:
        return (
            f"Ulysses splits heads over the sequence-parallel ranks: query heads ({num_heads}) and key/value "
            f"heads ({num_kv_heads}) must both divide by sequence_parallel_size {sp_size}"
        )
    return None


class _AllToAll(torch.autograd.Function):
    """x [W, ...]: slice j goes to rank j; returns [W, ...] with slice j from rank j. Its own inverse."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        out = torch.empty_like(grad)
        dist.all_to_all_single(out, grad, group=ctx.group)
        return out, None


class UlyssesLayout:
    """Every rank's token positions (and documents) gathered once, in the order the all-to-all delivers
    them, with the permutation that sorts them and the one-rank layout of the sorted sequence."""

    def __init__(
        self,
        positions: torch.Tensor,
        segments: torch.Tensor | None = None,
        group: dist.ProcessGroup | None = None,
    ):
        gathered = RingLayout(positions, segments, group)  # gathers positions and documents of every rank
        all_pos, all_seg = torch.cat(gathered.positions), torch.cat(gathered.segments)
        self.group, self.world, self.seq_len = group, gathered.world, positions.shape[0]
        self.order = torch.argsort(all_pos)
        self.inverse = torch.argsort(self.order)
        self.local = RingLayout(all_pos[self.order], all_seg[self.order], None)


def ulysses_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    causal: bool = True,
    scale: float | None = None,
    segments: torch.Tensor | None = None,
    layout: UlyssesLayout | None = None,
) -> torch.Tensor:
    """Same contract as ``ring_attention`` (q [B, Hq, S, D], k/v [B, Hkv, S, D], positions [S] of this
    rank's tokens, segments [S]); Hq and Hkv must divide by the group size."""
    world = group_size(group)
    if world == 1:
        return ring_attention(q, k, v, positions, None, causal, scale, segments)
    B, Hq, S, D = q.shape
    Hkv = k.shape[1]
    problem = ulysses_heads_problem(Hq, Hkv, world)
    if problem:
        raise ValueError(problem)
    if positions is None and layout is None:
        raise ValueError("positions are required under sequence parallelism")
    if layout is None:
        layout = UlyssesLayout(
            positions.to(q.device), None if segments is None else segments.to(q.device), group
        )
    hq, hkv = Hq // world, Hkv // world

    def by_rank(x: torch.Tensor, h: int) -> torch.Tensor:  # [B, W·h, S, D] → [W, B, h, S, D]
        return x.reshape(B, world, h, S, D).transpose(0, 1)

    sent = torch.cat([by_rank(q, hq), by_rank(k, hkv), by_rank(v, hkv)], dim=2)  # [W, B, hq + 2hkv, S, D]
    got = _AllToAll.apply(sent, group)  # [W (token owner), B, hq + 2hkv, S, D]
    full = got.permute(1, 2, 0, 3, 4).reshape(B, hq + 2 * hkv, world * S, D).index_select(2, layout.order)
    qf, kf, vf = full.split([hq, hkv, hkv], dim=1)
    out = ring_attention(qf, kf, vf, causal=causal, scale=scale, layout=layout.local)  # [B, hq, W·S, D]
    out = out.index_select(2, layout.inverse).reshape(B, hq, world, S, D).permute(2, 0, 1, 3, 4)
    back = _AllToAll.apply(out, group)  # [W (head group), B, hq, S, D]
    return back.transpose(0, 1).reshape(B, Hq, S, D)

"""Ring attention: sequence-parallel attention over torch.distributed point-to-point (gloo or NCCL), every
block computed by the fused attention op with its log-sum-exp (attention_blocks.py), never an S×S matrix.

Each rank of the sequence-parallel group holds a slice of the sequence (queries, keys and values of the same
tokens), the global positions of those tokens and, for packed sequences, their document ids. Keys/values
travel around the ring in world-size steps; at each step every pair of (query run, key run) is a causal
block, a full block or skipped (``attention_blocks.block_kind``), and block results are merged into the
running output in fp32 by LSE. With ``zigzag`` sharding (rank r holds chunks r and 2W−1−r of 2W) every rank
does the same causal work; one rank holding a whole sequence makes one fused causal call. Backward runs the
ring again, recomputing each block from the final output and the global LSE: dq stays home, the partial
dk/dv travel with their k/v and arrive back at their owner after W steps.

Sequences are cut into 2W equal chunks, so the caller pads to a multiple of 2W (``padded_length``); padding
placed after the last real token changes nothing under a causal mask (give it its own document id when not
causal). ``attention_reference`` is the materialised torch attention the tests compare against (oracle
only). Tests: tests/kernels/test_ring_attention.py (one process), test_sequence_parallel.py (gloo, W = 2, 4).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sealong.kernels.attention_blocks import (
    CAUSAL,
    Run,
    block_backward,
    block_forward,
    block_kind,
    merge_block,
    token_runs,
)
from sealong.kernels.distributed import group_rank, group_size

LAYOUTS = ("zigzag", "contiguous")


def padded_length(seq_len: int, world: int) -> int:
    """The smallest multiple of 2·world that holds seq_len tokens (zigzag sharding's granularity)."""
    return -(-seq_len // (2 * world)) * 2 * world


def shard_indices(seq_len: int, rank: int, world: int, layout: str = "zigzag", device=None) -> torch.Tensor:
    """Global token positions held by ``rank``: zigzag = chunks (r, 2W−1−r) of 2W; contiguous = chunk r of W."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parts = 2 * world if layout == "zigzag" else world
    if seq_len % parts:
        raise ValueError(
            f"sequence length {seq_len} must be divisible by {parts} for {layout} sharding over {world} "
            f"(pad it to padded_length = {padded_length(seq_len, world)})"
        )
    size = seq_len // parts
    chunks = [rank, parts - 1 - rank] if layout == "zigzag" else [rank]
    return torch.cat([torch.arange(c * size, (c + 1) * size, device=device) for c in chunks])


def shard_sequence(
    x: torch.Tensor, rank: int, world: int, dim: int = 1, layout: str = "zigzag"
) -> torch.Tensor:
    """This rank's slice of x along the sequence dimension ``dim``."""
    return x.index_select(dim, shard_indices(x.shape[dim], rank, world, layout, x.device))


def unshard_sequence(parts: list[torch.Tensor], dim: int = 1, layout: str = "zigzag") -> torch.Tensor:
    """Inverse of ``shard_sequence`` given every rank's slice, in rank order."""
    world, seq_len = len(parts), sum(p.shape[dim] for p in parts)
    order = torch.cat([shard_indices(seq_len, r, world, layout) for r in range(world)])
    return torch.cat(parts, dim=dim).index_select(dim, torch.argsort(order).to(parts[0].device))


def segments_from_cu_seqlens(cu_seqlens: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
    """Document id of every token of a packed row; tokens past cu_seqlens[-1] (padding) get their own id."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)
    tail = (seq_len or len(seg)) - len(seg)
    return torch.cat([seg, torch.full((tail,), len(lengths), dtype=seg.dtype, device=seg.device)])


def segments_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Document ids of a packed row whose position ids restart at 0 for every document: [T] → [T]."""
    return torch.cumsum((position_ids == 0).long(), 0) - 1


def attention_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    causal: bool = True,
    scale: float | None = None,
    segments: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(q·kᵀ·scale) v, materialised in fp32: the test oracle. q [B, Hq, S, D], k/v [B, Hkv, S, D]
    (GQA), tokens in sequence order; segments [S] restricts attention to tokens of the same document."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    S = q.shape[2]
    allowed = torch.ones(S, S, dtype=torch.bool, device=q.device)
    if causal:
        allowed = allowed.tril()
    if segments is not None:
        allowed = allowed & (segments[:, None] == segments[None, :]).to(q.device)
    return (torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v.float()).to(q.dtype)


class RingLayout:
    """Where every rank's tokens sit in the whole sequence (their runs), gathered once over the group and
    reused by every layer of a forward and its recomputation."""

    def __init__(
        self,
        positions: torch.Tensor,
        segments: torch.Tensor | None = None,
        group: dist.ProcessGroup | None = None,
    ):
        world = group_size(group)
        seg = torch.zeros_like(positions, dtype=torch.long) if segments is None else segments.long()
        rows = torch.stack([positions.long(), seg])  # [2, S]: one message
        if world > 1:
            gathered = [torch.empty_like(rows) for _ in range(world)]
            dist.all_gather(gathered, rows.contiguous(), group=group)
        else:
            gathered = [rows]
        self.group, self.rank, self.world = group, group_rank(group), world
        self.seq_len = positions.shape[0]
        self.positions = [g[0] for g in gathered]
        self.segments = [g[1] for g in gathered]
        self.runs: list[list[Run]] = [token_runs(*g.cpu().tolist()) for g in gathered]


def _ring_pass(t: torch.Tensor, group, tag: int) -> tuple[torch.Tensor, list]:
    """Start sending t to the next rank and receiving the previous rank's tensor of the same shape."""
    world, rank = group_size(group), group_rank(group)
    recv = torch.empty_like(t)
    nxt = dist.get_global_rank(group, (rank + 1) % world)
    prev = dist.get_global_rank(group, (rank - 1) % world)
    return recv, [dist.isend(t, nxt, group=group, tag=tag), dist.irecv(recv, prev, group=group, tag=tag)]


def _blocks(layout: RingLayout, src: int, causal: bool):
    """(query run, key run, is_causal) of every block to compute against rank src's keys."""
    for qr in layout.runs[layout.rank]:
        for kr in layout.runs[src]:
            kind = block_kind(qr, kr, causal)
            if kind is not None:
                yield qr, kr, kind == CAUSAL


def _seq(x: torch.Tensor, run: Run) -> torch.Tensor:
    return x[:, :, run.start : run.stop]


class RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout: RingLayout, scale: float, causal: bool):
        group, world, rank = layout.group, layout.world, layout.rank
        out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        seen: set[int] = set()  # query runs with a result so far
        kv = torch.stack([k, v]) if world > 1 else None  # [2, B, Hkv, S, D] travels as one message
        kk, vv = k, v
        for step in range(world):
            if step + 1 < world:
                next_kv, reqs = _ring_pass(kv, group, tag=0)
            for qr, kr, is_causal in _blocks(layout, (rank - step) % world, causal):
                b_out, b_lse = block_forward(_seq(q, qr), _seq(kk, kr), _seq(vv, kr), is_causal, scale)
                if qr.start in seen:
                    merge_block(_seq(out, qr), lse[:, :, qr.start : qr.stop], b_out, b_lse)
                else:
                    _seq(out, qr).copy_(b_out)
                    lse[:, :, qr.start : qr.stop].copy_(b_lse)
                    seen.add(qr.start)
            if step + 1 < world:
                for r in reqs:
                    r.wait()
                kv = next_kv
                kk, vv = kv[0], kv[1]
        if len(seen) != len(layout.runs[rank]):  # a query with no key: never under a causal mask
            raise ValueError("some queries see no key at all (a document with no tokens before them?)")
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.scale, ctx.causal = layout, scale, causal
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse = ctx.saved_tensors
        layout, scale = ctx.layout, ctx.scale
        group, world, rank = layout.group, layout.world, layout.rank
        dout = grad_out.to(q.dtype)
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        kv = torch.stack([k, v])
        dkv = torch.zeros(
            kv.shape, dtype=torch.float32, device=k.device
        )  # travels with kv, home after W steps
        for step in range(world):
            if step + 1 < world:
                next_kv, kv_reqs = _ring_pass(kv, group, tag=1)
            for qr, kr, is_causal in _blocks(layout, (rank - step) % world, causal=ctx.causal):
                gq, gk, gv = block_backward(
                    _seq(dout, qr), _seq(q, qr), _seq(kv[0], kr), _seq(kv[1], kr), _seq(out, qr),
                    lse[:, :, qr.start : qr.stop], is_causal, scale,
                )  # fmt: skip
                _seq(dq, qr).add_(gq)
                _seq(dkv[0], kr).add_(gk)
                _seq(dkv[1], kr).add_(gv)
            if world > 1:
                next_dkv, dkv_reqs = _ring_pass(dkv, group, tag=2)
                for r in (kv_reqs if step + 1 < world else []) + dkv_reqs:
                    r.wait()
                dkv = next_dkv
                if step + 1 < world:
                    kv = next_kv
        return dq.to(q.dtype), dkv[0].to(k.dtype), dkv[1].to(v.dtype), None, None, None


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    causal: bool = True,
    scale: float | None = None,
    segments: torch.Tensor | None = None,
    layout: RingLayout | None = None,
) -> torch.Tensor:
    """Attention of this rank's queries over the whole ring's keys/values.

    q: [B, Hq, S, D], k/v: [B, Hkv, S, D] (Hq a multiple of Hkv), positions: [S] distinct global positions
    of this rank's tokens (default arange(S), only valid without a group), segments: [S] document ids of
    packed sequences (None: one document). Every rank must hold the same S. ``layout`` (a RingLayout of the
    same positions and group) saves gathering them again. Returns [B, Hq, S, D] in q's dtype; blocks are
    merged in fp32.
    """
    if q.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"q [B, Hq, S, D] and k, v [B, Hkv, S, D] expected, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    if layout is None:
        if positions is None:
            if group_size(group) > 1:
                raise ValueError("positions are required under sequence parallelism")
            positions = torch.arange(q.shape[2], device=q.device)
        if positions.shape != (q.shape[2],) or (segments is not None and segments.shape != positions.shape):
            raise ValueError(
                f"positions (and segments) must be [{q.shape[2]}], got {tuple(positions.shape)}"
                + (f" and {tuple(segments.shape)}" if segments is not None else "")
            )
        layout = RingLayout(
            positions.to(q.device), None if segments is None else segments.to(q.device), group
        )
    elif layout.seq_len != q.shape[2]:
        raise ValueError(f"the layout holds {layout.seq_len} tokens, q {q.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttentionFunction.apply(q, k, v, layout, scale, causal)

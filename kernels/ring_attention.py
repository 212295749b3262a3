"""Ring attention: sequence-parallel causal attention over torch.distributed point-to-point (gloo or NCCL).

Each rank of the sequence-parallel group holds a slice of the sequence (queries, keys and values of the same
tokens) and the global positions of those tokens. Keys/values travel around the ring in world-size steps;
each step computes one block of attention with its log-sum-exp and merges it into the running output with
the online-softmax rule (FlashAttention's merge), so no rank ever holds the whole sequence's K/V or an
S×S score matrix. The causal mask is positions_q >= positions_k, so any sharding works; ``zigzag`` (rank r
holds chunks r and 2W−1−r of 2W) balances the causal work across ranks. Backward runs the ring again: dq
stays home, the partial dk/dv travel with their k/v and arrive back at their owner after W steps.

Also here: the HF attention hook (``register_hf_ring_attention``) that lets a transformers causal LM run
sequence-parallel with this ring, and the guarded integration of ring-flash-attn (CUDA + flash_attn).
``attention_reference`` is the plain torch reference the tests compare against.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from sealong.kernels.distributed import group_rank, group_size

LAYOUTS = ("zigzag", "contiguous")
RING_ATTENTION_NAME = "sealong_ring"


def shard_indices(seq_len: int, rank: int, world: int, layout: str = "zigzag", device=None) -> torch.Tensor:
    """Global token positions held by ``rank``: zigzag = chunks (r, 2W−1−r) of 2W; contiguous = chunk r of W."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    parts = 2 * world if layout == "zigzag" else world
    if seq_len % parts:
        raise ValueError(
            f"sequence length {seq_len} must be divisible by {parts} for {layout} sharding over {world}"
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


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None
) -> torch.Tensor:
    """softmax(q·kᵀ·scale) v with a causal mask, materialised. q [B, Hq, S, D], k/v [B, Hkv, S, D] (GQA)."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        S = q.shape[2]
        scores = scores.masked_fill(
            ~torch.ones(S, S, dtype=torch.bool, device=q.device).tril(), float("-inf")
        )
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


def _ring_pass(t: torch.Tensor, group, tag: int) -> tuple[torch.Tensor, list]:
    """Start sending t to the next rank and receiving the previous rank's tensor of the same shape."""
    world, rank = group_size(group), group_rank(group)
    recv = torch.empty_like(t)
    nxt = dist.get_global_rank(group, (rank + 1) % world)
    prev = dist.get_global_rank(group, (rank - 1) % world)
    return recv, [dist.isend(t, nxt, group=group, tag=tag), dist.irecv(recv, prev, group=group, tag=tag)]


def _scores(qf: torch.Tensor, kf: torch.Tensor, allowed: torch.Tensor | None, scale: float) -> torch.Tensor:
    """qf [B, Hkv, g, S, D], kf [B, Hkv, Sk, D] → fp32 scores [B, Hkv, g, S, Sk], −inf where masked."""
    s = torch.einsum("bhgsd,bhtd->bhgst", qf, kf) * scale
    return s if allowed is None else s.masked_fill(~allowed, float("-inf"))


def _finite(x: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isinf(x), torch.zeros_like(x), x)


class RingAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, positions, group, scale: float, causal: bool):
        B, Hq, S, D = q.shape
        Hkv, world, rank = k.shape[1], group_size(group), group_rank(group)
        if world > 1:
            all_pos = [torch.empty_like(positions) for _ in range(world)]
            dist.all_gather(all_pos, positions.contiguous(), group=group)
        else:
            all_pos = [positions]
        qf = q.float().reshape(B, Hkv, Hq // Hkv, S, D)
        out = torch.zeros_like(qf)
        lse = torch.full(qf.shape[:-1], float("-inf"), device=q.device)
        kv = torch.stack([k, v])  # [2, B, Hkv, S, D] travels as one message
        for step in range(world):
            if step + 1 < world:
                next_kv, reqs = _ring_pass(kv, group, tag=0)
            src = (rank - step) % world
            allowed = positions[:, None] >= all_pos[src][None, :] if causal else None
            if allowed is None or bool(allowed.any()):
                s = _scores(qf, kv[0].float(), allowed, scale)
                block_lse = torch.logsumexp(s, dim=-1)
                block_out = torch.einsum(
                    "bhgst,bhtd->bhgsd", torch.exp(s - _finite(block_lse)[..., None]), kv[1].float()
                )
                new_lse = torch.logaddexp(lse, block_lse)
                safe = _finite(new_lse)
                out = (
                    out * torch.exp(lse - safe)[..., None]
                    + block_out * torch.exp(block_lse - safe)[..., None]
                )
                lse = new_lse
            if step + 1 < world:
                for r in reqs:
                    r.wait()
                kv = next_kv
        ctx.save_for_backward(q, k, v, out, lse, positions, torch.stack(all_pos))
        ctx.group, ctx.scale, ctx.causal = group, scale, causal
        return out.reshape(B, Hq, S, D).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, lse, positions, all_pos = ctx.saved_tensors
        group, scale = ctx.group, ctx.scale
        world, rank = group_size(group), group_rank(group)
        B, Hq, S, D = q.shape
        qf = q.float().reshape(out.shape)
        dout = grad_out.float().reshape(out.shape)
        delta = (dout * out).sum(-1, keepdim=True)  # [B, Hkv, g, S, 1]
        dq = torch.zeros_like(qf)
        kv = torch.stack([k, v])
        dkv = torch.zeros(
            kv.shape, dtype=torch.float32, device=k.device
        )  # travels with kv, home after W steps
        for step in range(world):
            if step + 1 < world:
                next_kv, kv_reqs = _ring_pass(kv, group, tag=1)
            src = (rank - step) % world
            allowed = positions[:, None] >= all_pos[src][None, :] if ctx.causal else None
            if allowed is None or bool(allowed.any()):
                kf, vf = kv[0].float(), kv[1].float()
                p = torch.exp(_scores(qf, kf, allowed, scale) - lse[..., None])  # [B, Hkv, g, S, Sk]
                dkv[1] += torch.einsum("bhgst,bhgsd->bhtd", p, dout)
                ds = p * (torch.einsum("bhgsd,bhtd->bhgst", dout, vf) - delta)
                dq += torch.einsum("bhgst,bhtd->bhgsd", ds, kf) * scale
                dkv[0] += torch.einsum("bhgst,bhgsd->bhtd", ds, qf) * scale
            if world > 1:
                next_dkv, dkv_reqs = _ring_pass(dkv, group, tag=2)
                for r in (kv_reqs if step + 1 < world else []) + dkv_reqs:
                    r.wait()
                dkv = next_dkv
                if step + 1 < world:
                    kv = next_kv
        return (
            dq.reshape(B, Hq, S, D).to(q.dtype),
            dkv[0].to(k.dtype),
            dkv[1].to(v.dtype),
            None,
            None,
            None,
            None,
        )


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor | None = None,
    group: dist.ProcessGroup | None = None,
    causal: bool = True,
    scale: float | None = None,
) -> torch.Tensor:
    """Attention of this rank's queries over the whole ring's keys/values.

    q: [B, Hq, S, D], k/v: [B, Hkv, S, D] (Hq a multiple of Hkv), positions: [S] global positions of this
    rank's tokens (default arange(S), only valid without a group). Every rank must hold the same S.
    Returns [B, Hq, S, D] in q's dtype; fp32 arithmetic inside.
    """
    if q.dim() != 4 or k.shape != v.shape or k.shape[0] != q.shape[0] or k.shape[2:] != q.shape[2:]:
        raise ValueError(
            f"q [B, Hq, S, D] and k, v [B, Hkv, S, D] expected, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"query heads {q.shape[1]} must be a multiple of key/value heads {k.shape[1]}")
    if positions is None:
        if group_size(group) > 1:
            raise ValueError("positions are required under sequence parallelism")
        positions = torch.arange(q.shape[2], device=q.device)
    if positions.shape != (q.shape[2],):
        raise ValueError(f"positions must be [{q.shape[2]}], got {tuple(positions.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return RingAttentionFunction.apply(q, k, v, positions.to(q.device), group, scale, causal)


_sp_group: dist.ProcessGroup | None = None


@contextmanager
def sequence_parallel(group: dist.ProcessGroup | None) -> Iterator[None]:
    """Within the block, models using the ring attention hook attend across ``group``."""
    global _sp_group
    previous, _sp_group = _sp_group, group
    try:
        yield
    finally:
        _sp_group = previous


def hf_ring_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs
):
    """transformers attention function (AttentionInterface signature) running ``ring_attention``.

    Global positions come from ``position_ids`` (pass them to the model: each rank's shard positions);
    one sequence per row, the same positions in every row. attention_mask is ignored: right padding is
    harmless under a causal mask (real tokens never see later pads; pad labels are ignored), left
    padding and packed sequences are not supported.
    """
    if dropout:
        raise ValueError("ring attention does not implement attention dropout")
    positions = None
    if position_ids is not None:
        if position_ids.shape[0] > 1 and not bool((position_ids == position_ids[:1]).all()):
            raise ValueError("ring attention needs the same position_ids in every row of the batch")
        positions = position_ids[0]
    out = ring_attention(query, key, value, positions, _sp_group, causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register_hf_ring_attention(name: str = RING_ATTENTION_NAME) -> str:
    """Register the hook; then load or switch the model with attn_implementation=name."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, hf_ring_attention_forward)
    return name


def ring_flash_attn_available() -> bool:
    """ring-flash-attn imports flash_attn at import time, which needs CUDA: check without importing."""
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("flash_attn") is not None
        and importlib.util.find_spec("ring_flash_attn") is not None
    )


def enable_ring_flash_attn(group: dist.ProcessGroup, heads_k_stride: int = 1) -> None:
    """Route transformers' flash_attention_2 through ring-flash-attn (llama3 varlen ring) for ``group``.

    UNTESTED until run on a CUDA GPU with flash_attn and ring-flash-attn installed (none was available
    when this was written). Usage: load the model with attn_implementation="flash_attention_2", call this
    once, then per batch ``update_ring_flash_attn_params(cu_seqlens, group)`` and feed each rank its
    contiguous slice (``shard_sequence(..., layout="contiguous")``) of the packed batch of one row.
    """
    if not ring_flash_attn_available():
        raise RuntimeError(
            "ring-flash-attn needs CUDA, flash_attn and ring_flash_attn; use the torch ring attention"
        )
    global _RING_FLASH_GROUP
    group = dist.group.WORLD if group is None else group
    if _RING_FLASH_GROUP is group:  # the patch is process-wide: apply it once per group
        return
    from ring_flash_attn import substitute_hf_flash_attn

    substitute_hf_flash_attn(group, heads_k_stride)
    _RING_FLASH_GROUP = group


_RING_FLASH_GROUP: object = object()  # no group yet (None would match a caller's None: the world group)


def try_enable_ring_flash_attn(group: dist.ProcessGroup, heads_k_stride: int = 1) -> str | None:
    """Enable ring-flash-attn if it imports and accepts this transformers; None on success, else why not.

    ring-flash-attn patches transformers' flash-attention internals and refuses versions it does not know
    (it imports helpers that transformers 5 removed, and checks `_flash_attention_forward`'s signature), so
    being installed is not enough: the caller falls back to the torch ring attention on any refusal.
    """
    if not ring_flash_attn_available():
        return "ring-flash-attn needs CUDA, flash_attn and ring_flash_attn"
    try:
        enable_ring_flash_attn(group, heads_k_stride)
    except (ImportError, OSError, ValueError, RuntimeError, AttributeError) as e:  # OSError: a flash_attn
        # built against another torch fails to load its library
        return f"ring-flash-attn unusable here ({type(e).__name__}: {e})"
    return None


def update_ring_flash_attn_params(cu_seqlens: torch.Tensor, group: dist.ProcessGroup) -> None:
    """Per-batch ring-flash-attn parameters: cu_seqlens of the whole packed row (before sharding).

    UNTESTED until run on a CUDA GPU (see ``enable_ring_flash_attn``).
    """
    if not ring_flash_attn_available():
        raise RuntimeError("ring-flash-attn needs CUDA, flash_attn and ring_flash_attn")
    from ring_flash_attn import update_ring_flash_attn_params as update

    update(cu_seqlens, group)

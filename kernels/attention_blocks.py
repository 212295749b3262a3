"""Attention on one block of queries against one block of keys through the fused attention op, with its
log-sum-exp (LSE); the fp32 merge of block results by LSE; and the plan that cuts sharded sequences into
blocks that need no mask.

Ring attention and Ulysses (ring_attention.py, ulysses.py) never build an S×S matrix: every block is one
call of the fused op that SDPA would use, which returns the output and the LSE of its rows:
- CPU: ``aten._scaled_dot_product_flash_attention_for_cpu`` and its ``_backward`` (fp32, bf16; GQA native);
- CUDA: ``aten._scaled_dot_product_flash_attention`` (fp16/bf16, head dim <= 256) or else
  ``aten._scaled_dot_product_efficient_attention``; K/V heads are repeated for GQA there (the aten
  wrappers' GQA support is not verified). The CUDA branches are UNTESTED: no GPU has run them.

The plan (``token_runs`` / ``block_kind``): a rank's tokens are cut into runs of consecutive global
positions within one document. Two runs are the same tokens (a causal block), or one lies wholly before
the other (a full block, or skipped: keys after the queries), or they belong to different documents
(skipped). So a zigzag shard (two runs) or packed documents (a run per document piece) cost only unmasked
fused calls, and fully masked blocks cost nothing.

Backward recomputes each block from the final output and the global LSE (FlashAttention's rule): the
fused backward then gives that block's exact share of dq, dk, dv.

Tested in tests/kernels/test_attention_blocks.py against ``block_attention_reference`` (materialised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FULL, CAUSAL = "full", "causal"


def block_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialised (out, lse) in fp32: q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D]; causal is top-left aligned."""
    g = q.shape[1] // k.shape[1]
    kf, vf = k.float().repeat_interleave(g, dim=1), v.float().repeat_interleave(g, dim=1)
    s = (q.float() @ kf.transpose(-1, -2)) * scale
    if causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=q.device).tril(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    return torch.exp(s - lse[..., None]) @ vf, lse


def _cuda_uses_flash(q: torch.Tensor) -> bool:
    return q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _sum_groups(dx: torch.Tensor, groups: int) -> torch.Tensor:
    b, h, s, d = dx.shape
    return dx if groups == 1 else dx.reshape(b, h // groups, groups, s, d).sum(2)


def block_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused call: out [B, Hq, Sq, D] in q's dtype and lse [B, Hq, Sq] fp32.

    q [B, Hq, Sq, D], k/v [B, Hkv, Sk, D] with Hq a multiple of Hkv; causal is top-left aligned, which is
    the diagonal only when Sq == Sk (the plans only ask for causal blocks of identical runs)."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    g = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, g), _repeat_kv(v, g)
    if _cuda_uses_flash(q):
        out, lse, *_ = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    out, lse, *_ = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, None, True, 0.0, causal, scale=scale
    )
    return out, lse[..., : q.shape[2]]  # the memory-efficient kernel pads the LSE's length to 32


def block_backward(
    dout: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    causal: bool,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """dq, dk, dv of one block, given the *final* out (q's dtype) and *global* lse (fp32) of its query rows."""
    lse = lse.contiguous()  # the kernels read the LSE with their own strides
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, causal, scale=scale
        )
    g = q.shape[1] // k.shape[1]
    kr, vr = _repeat_kv(k, g), _repeat_kv(v, g)
    if _cuda_uses_flash(q):
        empty = torch.empty(0, dtype=torch.int64, device=q.device)
        dq, dk, dv = torch.ops.aten._scaled_dot_product_flash_attention_backward(
            dout, q, kr, vr, out, lse, empty, empty, q.shape[2], k.shape[2], 0.0, causal, empty, empty,
            scale=scale,
        )  # fmt: skip
    else:
        pad = (-q.shape[2]) % 32
        lse_padded = torch.nn.functional.pad(lse, (0, pad)) if pad else lse
        empty = torch.empty(0, dtype=torch.int64, device=q.device)
        dq, dk, dv, _ = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
            dout, q, kr, vr, torch.empty(0, device=q.device), out, lse_padded, empty, empty, 0.0,
            [True, True, True, False], causal, scale=scale,
        )  # fmt: skip
    return dq, _sum_groups(dk, g), _sum_groups(dv, g)


def merge_block(
    out: torch.Tensor, lse: torch.Tensor, block_out: torch.Tensor, block_lse: torch.Tensor
) -> None:
    """Fold one block's result into the running fp32 (out [.., S, D], lse [.., S]) in place (online softmax).

    Every row of a planned block sees at least one key, so block_lse is finite; the running lse may be
    −inf only where nothing was merged yet, and then the block's result is taken as it is."""
    new_lse = torch.logaddexp(lse, block_lse)
    out.mul_(torch.exp(lse - new_lse).unsqueeze(-1))
    out.add_(block_out.float() * torch.exp(block_lse - new_lse).unsqueeze(-1))
    lse.copy_(new_lse)


@dataclass(frozen=True)
class Run:
    """Local tokens [start, stop) holding global positions first … first + (stop − start) − 1 of one document."""

    start: int
    stop: int
    first: int
    segment: int

    @property
    def last(self) -> int:
        return self.first + self.stop - self.start - 1


def token_runs(positions: list[int], segments: list[int] | None = None) -> list[Run]:
    """Cut a rank's tokens where the global position does not go up by one or the document changes."""
    runs, start = [], 0
    for i in range(1, len(positions) + 1):
        if (
            i == len(positions)
            or positions[i] != positions[i - 1] + 1
            or (segments is not None and segments[i] != segments[i - 1])
        ):
            runs.append(Run(start, i, positions[start], segments[start] if segments is not None else 0))
            start = i
    return runs


def block_kind(q: Run, k: Run, causal: bool) -> str | None:
    """FULL (no mask), CAUSAL (the same tokens: the diagonal) or None (fully masked: skip)."""
    if q.segment != k.segment:
        return None
    if not causal or k.last < q.first:
        return FULL
    if k.first > q.last:
        return None
    if (k.first, k.last) == (q.first, q.last):
        return CAUSAL
    raise ValueError(
        f"token runs overlap (queries at {q.first}..{q.last}, keys at {k.first}..{k.last}): "
        "every global position must be held by exactly one token"
    )

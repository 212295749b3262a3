"""Fused linear ORPO: response tokens only, chunked over tokens, sequence-parallel aware.

The naive loss builds [B, T, V] logits for prompt and response (at T = 32K, V = 128,256 that is 16.8 GB in
fp32 per sequence). Here only positions whose label is not ``ignore_index`` are gathered; their log-probs
are computed ``chunk_size`` tokens at a time, so the extra memory peaks at O(chunk_size × V) whatever T is.
The autograd Function returns per-sequence sums of response log-probs; backward recomputes each chunk's
logits (one more [chunk, H] × [H, V] matmul) instead of storing them.

Sequence parallelism: with ``group``, each rank holds a slice (contiguous or zigzag) of every sequence's
tokens. Per-sequence sums are all-reduced differentiably and counts plainly before the odds ratio, so the
loss on every rank equals the single-process loss; the gradients of each rank's hidden slice equal the
matching slice of the single-process gradient, and the lm_head gradient summed over the group equals the
single-process one (``sealong.kernels.distributed``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sealong.kernels.distributed import all_reduce_sum
from sealong.kernels.orpo_reference import IGNORE_INDEX, OrpoOutput, orpo_from_sums


class ChunkedResponseLogpSums(torch.autograd.Function):
    """sums[k] = Σ_{tokens t of slot k} log softmax(hidden[t] · Wᵀ)[labels[t]], chunked over tokens.

    hidden: [T, H] (gathered response tokens), weight: [V, H], labels: [T] (all valid), slots: [T] int64 in
    [0, n_slots). Returns [n_slots] float32. Logits are computed in the inputs' dtype and upcast to fp32, like
    the naive reference, so bf16 training sees the same numbers.
    """

    @staticmethod
    def forward(ctx, hidden, weight, labels, slots, n_slots: int, chunk_size: int):
        sums = torch.zeros(n_slots, dtype=torch.float32, device=hidden.device)
        for c0 in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[c0 : c0 + chunk_size], labels[c0 : c0 + chunk_size]
            logits = (h @ weight.t()).float()  # [c, V]
            token_logp = logits.gather(1, y.unsqueeze(1)).squeeze(1) - torch.logsumexp(logits, dim=1)
            sums.index_add_(0, slots[c0 : c0 + chunk_size], token_logp)
            del logits
        ctx.save_for_backward(hidden, weight, labels, slots)
        ctx.chunk_size = chunk_size
        return sums

    @staticmethod
    def backward(ctx, grad_sums):
        hidden, weight, labels, slots = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        g_tok = grad_sums.float()[slots]  # [T]: d loss / d log p(token)
        for c0 in range(0, hidden.shape[0], ctx.chunk_size):
            c1 = c0 + ctx.chunk_size
            h, y, g = hidden[c0:c1], labels[c0:c1], g_tok[c0:c1]
            logits = (h @ weight.t()).float()  # [c, V], recomputed
            # d log p(y) / d logits = onehot(y) − softmax(logits); in place on the recomputed logits
            probs = logits.sub_(torch.logsumexp(logits, dim=1, keepdim=True)).exp_()
            grad_logits = probs.mul_(-g.unsqueeze(1))
            grad_logits[torch.arange(h.shape[0], device=h.device), y] += g
            grad_logits = grad_logits.to(weight.dtype)
            if need_h:
                grad_h[c0:c1] = grad_logits @ weight
            if need_w:
                grad_w += (grad_logits.t() @ h).float()
            del logits, probs, grad_logits
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def _check_inputs(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> None:
    """hidden [T, H] gathered tokens, labels [T] all valid: raise before any matmul on a bad input."""
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V, {hidden.shape[-1]}], got {tuple(weight.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"labels must be in [0, {weight.shape[0]}) or the ignore index")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _response_tokens(hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int, first_slot: int = 0):
    """hidden [B, T, H], labels [B, T] → (tokens [T_resp, H], labels [T_resp], slots [T_resp], counts [B])."""
    if hidden.dim() != 3 or labels.shape != hidden.shape[:2]:
        raise ValueError(
            f"hidden must be [B, T, H] and labels [B, T], got {tuple(hidden.shape)}, {tuple(labels.shape)}"
        )
    mask = labels != ignore_index
    return hidden[mask], labels[mask], mask.nonzero()[:, 0] + first_slot, mask.sum(dim=1).float()


def response_logp_sums_chunked(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``response_logp_sums_reference`` (sums [B] fp32, counts [B] fp32) without [B, T, V] logits."""
    tokens, y, slots, counts = _response_tokens(hidden, labels, ignore_index)
    _check_inputs(tokens, weight, y, chunk_size)
    return ChunkedResponseLogpSums.apply(tokens, weight, y, slots, hidden.shape[0], chunk_size), counts


def fused_linear_orpo_loss(
    hidden_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    weight: torch.Tensor,
    labels_chosen: torch.Tensor,
    labels_rejected: torch.Tensor,
    beta: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1024,
    group: dist.ProcessGroup | None = None,
) -> OrpoOutput:
    """docs/ARCHITECTURE.md, "The recipe" ORPO from hidden states and lm_head weight, token-chunked over response tokens only.

    hidden_*: [B, T, H] (T may differ between chosen and rejected; under ``group``, this rank's slice of the
    tokens), weight: [V, H], labels_*: [B, T] already shifted. Returns ``OrpoOutput``; the loss is the same
    on every rank of ``group`` and equals the single-process loss.
    """
    B = hidden_chosen.shape[0]
    if hidden_rejected.shape[0] != B:
        raise ValueError(f"chosen and rejected batch sizes differ: {B} vs {hidden_rejected.shape[0]}")
    # One Function call for both sides: chosen sequences are slots 0..B-1, rejected B..2B-1.
    h_c, y_c, s_c, n_c = _response_tokens(hidden_chosen, labels_chosen, ignore_index)
    h_r, y_r, s_r, n_r = _response_tokens(hidden_rejected, labels_rejected, ignore_index, first_slot=B)
    tokens, labels, slots = torch.cat([h_c, h_r]), torch.cat([y_c, y_r]), torch.cat([s_c, s_r])
    _check_inputs(tokens, weight, labels, chunk_size)
    sums = ChunkedResponseLogpSums.apply(tokens, weight, labels, slots, 2 * B, chunk_size)  # [2B]
    counts = torch.cat([n_c, n_r])
    if group is not None:
        sums = all_reduce_sum(sums, group)
        dist.all_reduce(counts, op=dist.ReduceOp.SUM, group=group)
    return orpo_from_sums(sums[:B], counts[:B], sums[B:], counts[B:], beta)

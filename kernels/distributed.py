"""Sequence-parallel plumbing shared by the ORPO loss and ring attention.

Convention (Megatron's, for vocab-parallel cross-entropy): a loss computed from all-reduced partial sums is
*replicated*: every rank of the sequence-parallel group holds the same value and calls ``backward`` on its
copy. The gradient of the replicated loss with respect to one rank's partial sum is the gradient with
respect to the total, so the all-reduce's backward is the identity. Each rank then holds the gradient
contributions of its own tokens; summing parameter gradients over the group (``all_reduce_grads``) gives
exactly the single-process gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist


def group_size(group: dist.ProcessGroup | None) -> int:
    return dist.get_world_size(group) if group is not None else 1


def group_rank(group: dist.ProcessGroup | None) -> int:
    return dist.get_rank(group) if group is not None else 0


class _AllReduceSumReplicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, partial: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        total = partial.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor):
        return grad_total, None


def all_reduce_sum(partial: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Differentiable SUM over the group for a replicated loss (identity backward; see module doc)."""
    if group is None or group_size(group) == 1:
        return partial
    return _AllReduceSumReplicated.apply(partial, group)


def all_reduce_grads(params: Iterable[torch.nn.Parameter], group: dist.ProcessGroup | None) -> None:
    """Sum each parameter's .grad over the sequence-parallel group (after backward, before the optimizer)."""
    if group is None or group_size(group) == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM, group=group)

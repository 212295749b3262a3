"""ORPO loss over response tokens only (SEALONG's recipe, docs/ARCHITECTURE.md, "The recipe"): the public entry point.

loss = NLL(chosen response) + beta · (−log σ(log_odds(chosen) − log_odds(rejected)))
log_odds(y) = log p − log(1 − p), where log p is the length-averaged log-probability of y's response
tokens. Prompt tokens carry label ``ignore_index`` and count nowhere.

Convention for every implementation here: ``hidden[b, t]`` predicts ``labels[b, t]`` (the caller has
already shifted), ``weight`` is lm_head's [V, H] matrix.

Backends (``orpo_loss(..., backend=)``):
- ``naive``: ``orpo_loss_reference``, full [B, T, V] logits (``orpo_reference``).
- ``fused``: ``fused_linear_orpo_loss``, token-chunked over response tokens, sequence-parallel aware
  (``orpo_fused``).
- ``liger``: ``liger_orpo_loss``, Liger-Kernel's batch-chunked loss, with Liger's NLL normalisation
  (``orpo_liger``; no sequence parallelism).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from sealong.kernels.distributed import all_reduce_sum, group_size
from sealong.kernels.orpo_fused import fused_linear_orpo_loss, response_logp_sums_chunked
from sealong.kernels.orpo_liger import (
    apply_liger_model_patches,
    liger_orpo_loss,
    orpo_loss_reference_liger_convention,
)
from sealong.kernels.orpo_reference import (
    IGNORE_INDEX,
    OrpoOutput,
    orpo_from_sums,
    orpo_loss_reference,
    response_logp_sums_reference,
)

__all__ = [
    "IGNORE_INDEX",
    "OrpoOutput",
    "apply_liger_model_patches",
    "fused_linear_orpo_loss",
    "liger_orpo_loss",
    "orpo_from_sums",
    "orpo_loss",
    "orpo_loss_reference",
    "orpo_loss_reference_liger_convention",
    "response_logp_sums_chunked",
    "response_logp_sums_reference",
]
BACKENDS = ("naive", "fused", "liger")


def _naive_sequence_parallel(hc, hr, weight, lc, lr, beta, ignore_index, group) -> OrpoOutput:
    """The naive reference under sequence parallelism: full logits of the local slice, all-reduced sums."""
    c_sum, c_cnt = response_logp_sums_reference(hc, weight, lc, ignore_index)
    r_sum, r_cnt = response_logp_sums_reference(hr, weight, lr, ignore_index)
    B = c_sum.shape[0]
    sums, counts = all_reduce_sum(torch.cat([c_sum, r_sum]), group), torch.cat([c_cnt, r_cnt])
    dist.all_reduce(counts, group=group)
    return orpo_from_sums(sums[:B], counts[:B], sums[B:], counts[B:], beta)


def orpo_loss(
    hidden_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    weight: torch.Tensor,
    labels_chosen: torch.Tensor,
    labels_rejected: torch.Tensor,
    beta: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    backend: str = "fused",
    chunk_size: int | None = None,
    group: dist.ProcessGroup | None = None,
) -> OrpoOutput:
    """ORPO by the chosen backend. chunk_size: tokens per chunk for ``fused`` (default 1024), pairs per
    chunk for ``liger`` (default 1); ignored by ``naive``. group: sequence-parallel group (not ``liger``)."""
    args = (hidden_chosen, hidden_rejected, weight, labels_chosen, labels_rejected)
    if backend == "fused":
        return fused_linear_orpo_loss(*args, beta, ignore_index, chunk_size or 1024, group)
    if backend == "naive":
        if group is not None:
            return _naive_sequence_parallel(*args, beta, ignore_index, group)
        return orpo_loss_reference(*args, beta, ignore_index)
    if backend == "liger":
        if group_size(group) > 1:
            raise ValueError(
                "the liger ORPO backend does not support sequence parallelism; use backend='fused'"
            )
        return liger_orpo_loss(*args, beta, ignore_index, chunk_size or 1)
    raise ValueError(f"ORPO backend must be one of {BACKENDS}, got {backend!r}")

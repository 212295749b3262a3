"""Liger-Kernel's ``LigerFusedLinearORPOLoss`` as a selectable ORPO backend (short sequences, no SP).

Liger computes a different loss from docs/ARCHITECTURE.md, "The recipe" in two ways, so it is tested against its own reference
(``orpo_loss_reference_liger_convention``), not against ``orpo_loss_reference``:

1. NLL normalisation: Liger sums the chosen NLL over every response token of the batch and divides by the
   batch's total response tokens (token-weighted). SEALONG/xtuner and our reference average each sequence's
   mean NLL over pairs (sequence-weighted). They agree when B = 1 or all chosen responses have one length.
2. Liger does not clamp log p below 0 before log(1 − p); ours clamps at −1e-6 so the odds stay finite.

It also chunks over the batch only and upcasts each chunk's full [2·chunk, T, V] logits to fp32: one long
pair still builds the whole [2, T, V] tensor (it chunks over the batch only and upcasts each chunk's logits to fp32). Use the ``fused`` backend for long contexts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sealong.kernels.orpo_reference import IGNORE_INDEX, OrpoOutput, response_logp_sums_reference


def orpo_loss_reference_liger_convention(
    hidden_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    weight: torch.Tensor,
    labels_chosen: torch.Tensor,
    labels_rejected: torch.Tensor,
    beta: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> OrpoOutput:
    """The loss Liger computes, written naively: token-weighted NLL, unclamped log odds."""
    c_sum, c_cnt = response_logp_sums_reference(hidden_chosen, weight, labels_chosen, ignore_index)
    r_sum, r_cnt = response_logp_sums_reference(hidden_rejected, weight, labels_rejected, ignore_index)
    chosen_logp, rejected_logp = c_sum / c_cnt, r_sum / r_cnt
    ratio = (chosen_logp - rejected_logp) - (
        torch.log1p(-torch.exp(chosen_logp)) - torch.log1p(-torch.exp(rejected_logp))
    )
    or_term = -F.logsigmoid(ratio)
    nll = -c_sum.sum() / c_cnt.sum()
    return OrpoOutput(
        loss=nll + beta * or_term.mean(),
        nll=nll.detach(),
        or_loss=or_term.mean().detach(),
        log_odds_ratio=ratio.detach(),
        chosen_logp=chosen_logp.detach(),
        rejected_logp=rejected_logp.detach(),
    )


def _pad_tokens(x: torch.Tensor, length: int, value: float) -> torch.Tensor:
    pad = [0, 0] * (x.dim() - 2) + [0, length - x.shape[1]]
    return F.pad(x, pad, value=value)


def liger_orpo_loss(
    hidden_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    weight: torch.Tensor,
    labels_chosen: torch.Tensor,
    labels_rejected: torch.Tensor,
    beta: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
    chunk_size: int = 1,
    compiled: bool | None = None,
) -> OrpoOutput:
    """ORPO through ``LigerFusedLinearORPOLoss`` (Liger's convention, see the module doc).

    chunk_size counts pairs per chunk (Liger's meaning), not tokens. compiled defaults to True on CUDA.
    """
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearORPOLoss
    except ImportError as e:
        raise RuntimeError("the liger ORPO backend needs liger-kernel (pip install liger-kernel)") from e
    B = hidden_chosen.shape[0]
    T = max(hidden_chosen.shape[1], hidden_rejected.shape[1])
    x = torch.cat([_pad_tokens(hidden_chosen, T, 0.0), _pad_tokens(hidden_rejected, T, 0.0)])  # [2B, T, H]
    y = torch.cat(
        [_pad_tokens(labels_chosen, T, ignore_index), _pad_tokens(labels_rejected, T, ignore_index)]
    )
    compiled = x.is_cuda if compiled is None else compiled
    loss_fn = LigerFusedLinearORPOLoss(
        ignore_index=ignore_index, beta=beta, compiled=compiled, chunk_size=chunk_size
    )
    loss, aux = loss_fn(weight, x, y)
    chosen_logp, rejected_logp, _, _, nll = (a.detach() for a in aux[:5])
    ratio = (chosen_logp - rejected_logp) - (
        torch.log1p(-torch.exp(chosen_logp)) - torch.log1p(-torch.exp(rejected_logp))
    )
    return OrpoOutput(
        loss=loss,
        nll=nll,
        or_loss=-F.logsigmoid(ratio).mean(),
        log_odds_ratio=ratio[:B],
        chosen_logp=chosen_logp,
        rejected_logp=rejected_logp,
    )


def apply_liger_model_patches(model) -> bool:
    """On CUDA with liger-kernel installed, swap the policy's RMSNorm, SwiGLU and RoPE for Liger's Triton
    kernels (the loss stays ours: no fused cross-entropy patch). Returns whether patches were applied.

    UNTESTED until run on a CUDA GPU: on CPU (and in the tests) it returns False and changes nothing.
    """
    if not torch.cuda.is_available():
        return False
    try:
        from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance
    except ImportError:
        return False
    _apply_liger_kernel_to_instance(
        model=model,
        rope=True,
        rms_norm=True,
        swiglu=True,
        cross_entropy=False,
        fused_linear_cross_entropy=False,
    )
    return True

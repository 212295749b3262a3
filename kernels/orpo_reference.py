"""ORPO loss over response tokens only (SEALONG's recipe, docs/ARCHITECTURE.md, "The recipe"): the definitions and the naive reference.

loss = NLL(chosen response) + beta · (−log σ(log_odds(chosen) − log_odds(rejected)))
log_odds(y) = log p − log(1 − p), where log p is the length-averaged log-probability of y's response
tokens. Prompt tokens carry label ``ignore_index`` and count nowhere.

Convention for every implementation here: ``hidden[b, t]`` predicts ``labels[b, t]`` (the caller has
already shifted), ``weight`` is lm_head's [V, H] matrix.

The naive reference materialises [B, T, V] logits over prompt and response: the correctness reference
and the memory baseline of the fused loss in ``sealong.kernels.orpo_fused``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


@dataclass
class OrpoOutput:
    loss: torch.Tensor  # scalar, differentiable
    nll: torch.Tensor  # scalar, detached: mean over pairs of the chosen response NLL
    or_loss: torch.Tensor  # scalar, detached: mean over pairs of −log σ(log odds ratio)
    log_odds_ratio: torch.Tensor  # [B], detached
    chosen_logp: torch.Tensor  # [B], detached: length-averaged log p of chosen
    rejected_logp: torch.Tensor  # [B], detached


def orpo_from_sums(
    chosen_sum: torch.Tensor,
    chosen_count: torch.Tensor,
    rejected_sum: torch.Tensor,
    rejected_count: torch.Tensor,
    beta: float,
) -> OrpoOutput:
    """The ORPO loss from per-sequence sums of response log-probs and response-token counts ([B] each)."""
    chosen_logp = chosen_sum / chosen_count.clamp_min(1)
    rejected_logp = rejected_sum / rejected_count.clamp_min(1)

    # log(1 - p) = log1p(-exp(log p)); clamp keeps p < 1 so the odds stay finite.
    def log_odds(logp: torch.Tensor) -> torch.Tensor:
        logp = logp.clamp(max=-1e-6)
        return logp - torch.log1p(-torch.exp(logp))

    ratio = log_odds(chosen_logp) - log_odds(rejected_logp)
    or_term = -F.logsigmoid(ratio)
    nll = -chosen_logp
    loss = (nll + beta * or_term).mean()
    return OrpoOutput(
        loss=loss,
        nll=nll.mean().detach(),
        or_loss=or_term.mean().detach(),
        log_odds_ratio=ratio.detach(),
        chosen_logp=chosen_logp.detach(),
        rejected_logp=rejected_logp.detach(),
    )


def response_logp_sums_reference(
    hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sequence sum of response log-probs and response-token count, materialising [B, T, V] logits.

    hidden: [B, T, H], weight: [V, H], labels: [B, T]. Returns (sums [B] fp32, counts [B] fp32).
    """
    logits = (hidden @ weight.t()).float()  # [B, T, V]
    mask = labels != ignore_index
    safe = labels.masked_fill(~mask, 0)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T]
    return (logp * mask).sum(-1), mask.sum(-1).float()


def orpo_loss_reference(
    hidden_chosen: torch.Tensor,
    hidden_rejected: torch.Tensor,
    weight: torch.Tensor,
    labels_chosen: torch.Tensor,
    labels_rejected: torch.Tensor,
    beta: float = 0.1,
    ignore_index: int = IGNORE_INDEX,
) -> OrpoOutput:
    """Naive ORPO: full logits for both sequences. The correctness reference and the memory baseline."""
    c_sum, c_cnt = response_logp_sums_reference(hidden_chosen, weight, labels_chosen, ignore_index)
    r_sum, r_cnt = response_logp_sums_reference(hidden_rejected, weight, labels_rejected, ignore_index)
    return orpo_from_sums(c_sum, c_cnt, r_sum, r_cnt, beta)

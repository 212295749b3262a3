"""MBR (Minimum Bayes Risk) consensus scores from sentence embeddings.

s(y_i) = mean_j cos(e_i, e_j), self included. With unit vectors ê, mean_j ê_i·ê_j = ê_i·c where
c = mean_j ê_j, so one question costs O(N·d), not O(N²·d).

The torch reference below is also the CPU path and the benchmark baseline.
"""

from __future__ import annotations

import torch


def embedding_mbr_scores_reference(embeddings: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """MBR scores of one question's N answers.

    embeddings: [N, d] (any float dtype). Returns [N] float32 scores in [-1, 1].
    """
    if embeddings.dim() != 2 or embeddings.shape[0] < 1:
        raise ValueError(f"embeddings must be [N, d] with N >= 1, got {tuple(embeddings.shape)}")
    e = embeddings.float()
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)  # [N, d]
    centroid = e.mean(dim=0)  # [d]
    return e @ centroid  # [N]


def ragged_embedding_mbr_scores_reference(
    embeddings: torch.Tensor, counts: list[int] | torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """MBR scores for a ragged batch: questions laid end to end, question q owning counts[q] rows.

    embeddings: [sum(counts), d]. Returns [sum(counts)] float32 scores.
    """
    counts = [int(c) for c in counts]
    if sum(counts) != embeddings.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but embeddings has {embeddings.shape[0]} rows")
    parts = torch.split(embeddings, counts, dim=0)
    return torch.cat([embedding_mbr_scores_reference(p, eps) for p in parts]) if parts else embeddings.new_zeros(0)

"""BERTScore-style token-level MBR: the reference against a token-by-token definition, and the tiled Triton
kernel (interpreter mode) against the reference over shapes, dtypes, padding masks and idf weights."""

from __future__ import annotations

import math

import pytest
import torch
from kernel_checks import assert_close
from sealong.kernels.mbr import (
    bertscore_mbr_scores,
    bertscore_mbr_scores_reference,
    bertscore_precision_reference,
)
from sealong.kernels.triton_mbr import bertscore_precision_matrix

DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 1e-5, 1e-5), (torch.float16, 1e-5, 1e-5)]
SHAPES = [(2, 16, 16), (3, 47, 31), (4, 9, 70)]  # (N, L, d): N = 2, odd L and d, d over one tile


def inputs(N: int, L: int, d: int, dtype=torch.float32, seed: int = 0, idf: bool = False):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(N, L, d, generator=g) + 0.3).to(dtype)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0] = L  # one unpadded row
    mask = torch.arange(L) < lengths.unsqueeze(1)  # right padding
    weights = torch.rand(N, L, generator=g) + 0.1 if idf else None
    return x, mask, weights


def bertscore_by_definition(x, mask, idf) -> torch.Tensor:
    """Token by token, in float64: BERTScore P, R, F1 for every pair, then the mean over j."""
    N = x.shape[0]
    toks = [
        [x[i, s].double() / x[i, s].double().norm() for s in range(x.shape[1]) if mask[i, s]]
        for i in range(N)
    ]
    w = [
        [(1.0 if idf is None else float(idf[i, s])) for s in range(x.shape[1]) if mask[i, s]]
        for i in range(N)
    ]

    def precision(i, j):
        best = [max(float(a @ b) for b in toks[j]) for a in toks[i]]
        return sum(wi * bi for wi, bi in zip(w[i], best)) / sum(w[i])

    scores = []
    for i in range(N):
        f1s = []
        for j in range(N):
            p, r = precision(i, j), precision(j, i)
            f1s.append(2 * p * r / (p + r))
        scores.append(math.fsum(f1s) / N)
    return torch.tensor(scores)


@pytest.mark.parametrize("idf", [False, True])
def test_reference_matches_definition(idf):
    x, mask, weights = inputs(3, 6, 5, torch.float64, seed=3, idf=idf)
    assert_close(
        bertscore_mbr_scores_reference(x, mask, weights),
        bertscore_by_definition(x, mask, weights),
        1e-6,
        1e-6,
        "definition",
    )


def test_self_f1_is_one_without_idf():
    x, mask, _ = inputs(4, 7, 5)
    p = bertscore_precision_reference(x, mask)
    assert_close(p.diagonal(), torch.ones(4), 1e-6, 1e-6, "self precision")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("idf", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_triton_precision_matrix_matches_reference(shape, idf, dtype, atol, rtol):
    x, mask, weights = inputs(*shape, dtype, idf=idf)
    w = mask.float() if weights is None else weights
    got = bertscore_precision_matrix(x, mask, w, [shape[0]])
    assert_close(got, bertscore_precision_reference(x, mask, weights), atol, rtol, "precision matrix")


def test_triton_ragged_questions_match_reference_per_question():
    counts = [2, 3, 1]
    x, mask, weights = inputs(sum(counts), 21, 19, idf=True, seed=5)
    got = bertscore_mbr_scores(x, mask, weights, counts, backend="triton")
    want = torch.cat(
        [
            bertscore_mbr_scores_reference(e, m, w)
            for e, m, w in zip(x.split(counts), mask.split(counts), weights.split(counts))
        ]
    )
    assert_close(got, want, 1e-5, 1e-5, "ragged")
    assert_close(bertscore_mbr_scores(x, mask, weights, counts, backend="torch"), want, 0, 0, "torch backend")


def test_empty_output_scores_zero_and_stays_finite():
    x, mask, _ = inputs(3, 16, 8, seed=2)
    mask[2] = False  # an output with no tokens
    for backend in ("torch", "triton"):
        s = bertscore_mbr_scores(x, mask, backend=backend)
        assert torch.isfinite(s).all(), backend
        assert s[2] == 0, backend


def test_launcher_rejects_bad_inputs():
    x, mask, _ = inputs(3, 8, 4)
    with pytest.raises(ValueError):
        bertscore_precision_matrix(x, mask[:, :5], mask.float(), [3])
    with pytest.raises(ValueError):
        bertscore_precision_matrix(x, mask, mask.float(), [2])
    with pytest.raises(TypeError):
        bertscore_precision_matrix(x.long(), mask, mask.float(), [3])

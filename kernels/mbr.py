"""MBR (Minimum Bayes Risk) consensus scores: s(y_i) = mean_j u(y_i, y_j), self included.

Utilities (``score.utility`` in the config):
- ``embedding`` (the paper's choice): cosine similarity of sentence embeddings. With unit vectors ê,
  mean_j ê_i·ê_j = ê_i·c where c = mean_j ê_j, so one question costs O(N·d), not O(N²·d).
- ``bertscore``: token-level greedy matching (BERTScore's P, R, F1 with optional idf weights),
  s_i = mean_j F1(i, j). O(N²·L²·d) per question: the case a fused kernel pays for.
- ``rouge-l``: ROUGE-L F1 on word tokens, each pair's LCS from rapidfuzz's C++ (~10 µs a pair), with the
  pure-Python LCS beside it as the reference (~8 ms a pair); ``random``: the baseline.

Layers: the torch references here are also the CPU path and the benchmark baselines; the Triton kernels and
their launchers are in ``sealong.kernels.triton_mbr`` (imported lazily: Triton is optional off Linux);
``mbr_scores`` and ``bertscore_mbr_scores`` dispatch between them and announce a fallback once.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence

import torch

log = logging.getLogger(__name__)
BACKENDS = ("auto", "triton", "torch")
_announced: set[str] = set()
_CACHE_BLOCK_ELEMENTS = 1 << 19  # ~2 MB of fp32 per block of questions: the three passes stay in cache
_STR_CODES = 0x110000  # distinct words one question may have for its word codes to pack into a str


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


def _uniform_mbr_scores(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x: [Q, N, d] → [Q, N]: c_q = Σ_j x_j/|x_j|, s = (x·c)/(|x|·N), by cache-sized blocks of questions."""
    Q, N, d = x.shape
    out = torch.empty(Q, N, dtype=torch.float32, device=x.device)
    step = max(1, _CACHE_BLOCK_ELEMENTS // (N * d))
    for q0 in range(0, Q, step):
        xb = x[q0 : q0 + step].float()  # [q, N, d]
        inv = torch.linalg.vector_norm(xb, dim=-1).clamp_min(eps).reciprocal()  # [q, N]
        centroid = torch.bmm(inv.unsqueeze(1), xb)  # [q, 1, d]
        out[q0 : q0 + step] = torch.bmm(centroid, xb.transpose(1, 2)).squeeze(1) * inv / N
    return out


def ragged_embedding_mbr_scores_reference(
    embeddings: torch.Tensor, counts: list[int] | torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """MBR scores for a ragged batch: questions laid end to end, question q owning counts[q] rows.

    embeddings: [sum(counts), d]. Returns [sum(counts)] float32 scores. Vectorised: questions with the same N
    are scored together as one [Q, N, d] batch (no per-question Python loop).
    """
    counts = [int(c) for c in counts]
    if sum(counts) != embeddings.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but embeddings has {embeddings.shape[0]} rows")
    if any(c < 1 for c in counts):
        raise ValueError(f"every question needs at least one row, got counts {counts}")
    if not counts:
        return embeddings.new_zeros(0, dtype=torch.float32)
    d = embeddings.shape[1]
    if len(set(counts)) == 1:
        return _uniform_mbr_scores(embeddings.reshape(len(counts), counts[0], d), eps).reshape(-1)
    out = torch.empty(embeddings.shape[0], dtype=torch.float32, device=embeddings.device)
    starts = torch.tensor([0, *counts[:-1]]).cumsum(0)
    counts_t = torch.tensor(counts)
    for n in sorted(set(counts)):
        first = starts[counts_t == n]  # [Q_n]
        rows = (first.unsqueeze(1) + torch.arange(n)).reshape(-1).to(embeddings.device)  # [Q_n · n]
        out[rows] = _uniform_mbr_scores(embeddings[rows].reshape(-1, n, d), eps).reshape(-1)
    return out


def bertscore_precision_reference(
    token_emb: torch.Tensor, mask: torch.Tensor, idf: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """M[i, j] = Σ_s w_i(s)·max_{t valid in j} cos(x_i[s], x_j[t]) / Σ_s w_i(s) for one question.

    token_emb: [N, L, d]; mask: [N, L] (True = real token); idf: [N, L] weights or None (all 1).
    M[i, j] is BERTScore's precision of candidate i against reference j, and its recall is M[j, i].
    A j without valid tokens matches at 0; an i whose weights sum to 0 gets precision 0.
    Memory O(N·L²) (one row i at a time), never N×N×L×L.
    """
    if token_emb.dim() != 3 or mask.shape != token_emb.shape[:2]:
        raise ValueError(
            f"token_emb must be [N, L, d] and mask [N, L], got {tuple(token_emb.shape)}, {tuple(mask.shape)}"
        )
    mask = mask.bool()
    x = token_emb.float()
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)  # [N, L, d]
    w = mask.float() if idf is None else idf.float() * mask  # [N, L]
    wsum = w.sum(dim=1)  # [N]
    rows = []
    for i in range(x.shape[0]):
        sim = torch.einsum("sd,jtd->jst", x[i], x)  # [N, L, L]
        sim = sim.masked_fill(~mask.unsqueeze(1), float("-inf"))
        best = sim.max(dim=2).values  # [N, L]: best match of each token of i in each j
        best = torch.where(torch.isinf(best), torch.zeros_like(best), best)
        rows.append((best * w[i]).sum(dim=1))  # [N]
    numer = torch.stack(rows)  # [N, N]
    return torch.where(
        wsum.unsqueeze(1) > 0, numer / wsum.clamp_min(eps).unsqueeze(1), torch.zeros_like(numer)
    )


def f1_mbr_from_precision(precision: torch.Tensor) -> torch.Tensor:
    """[N, N] precision matrix → [N] MBR scores, mean over j of F1(i, j) = 2·P·R / (P + R), R = P.T."""
    p, r = precision, precision.t()
    denom = p + r
    f1 = torch.where(
        denom != 0, 2 * p * r / torch.where(denom != 0, denom, torch.ones_like(denom)), torch.zeros_like(p)
    )
    return f1.mean(dim=1)


def bertscore_mbr_scores_reference(
    token_emb: torch.Tensor, mask: torch.Tensor, idf: torch.Tensor | None = None, eps: float = 1e-12
) -> torch.Tensor:
    """BERTScore-F1 MBR scores of one question's N outputs: token_emb [N, L, d], mask [N, L] → [N] float32."""
    return f1_mbr_from_precision(bertscore_precision_reference(token_emb, mask, idf, eps))


def _resolve_backend(backend: str, t: torch.Tensor, what: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not t.is_cuda:
        reason = f"inputs on {t.device}"
    else:
        try:
            import triton  # noqa: F401

            return "triton"
        except ImportError:
            reason = "Triton is not installed"
    if what not in _announced:
        _announced.add(what)
        log.warning("%s on the torch reference (%s): the fused Triton kernel needs CUDA", what, reason)
    return "torch"


def embedding_mbr_scores(
    embeddings: torch.Tensor, counts: list[int] | torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """The fused Triton kernel: one launch for the ragged batch (see ``sealong.kernels.triton_mbr``)."""
    from sealong.kernels import triton_mbr

    return triton_mbr.embedding_mbr_scores(embeddings, counts, eps)


def mbr_scores(
    embeddings: torch.Tensor, counts: list[int] | torch.Tensor, backend: str = "auto"
) -> torch.Tensor:
    """Embedding MBR for a ragged batch: [sum(counts), d] → [sum(counts)] float32.

    backend: "auto" (Triton on CUDA, else the torch reference, announced once), "triton" or "torch".
    """
    if _resolve_backend(backend, embeddings, "embedding MBR") == "triton":
        return embedding_mbr_scores(embeddings, counts)
    return ragged_embedding_mbr_scores_reference(embeddings, counts)


def bertscore_mbr_scores(
    token_emb: torch.Tensor,
    mask: torch.Tensor,
    idf: torch.Tensor | None = None,
    counts: list[int] | torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """BERTScore-F1 MBR for a ragged batch of questions laid end to end.

    token_emb: [R, L, d] token embeddings (R = sum(counts), padded to L); mask: [R, L] True on real tokens;
    idf: [R, L] per-token weights or None; counts: outputs per question (default: one question of R).
    Returns [R] float32.
    """
    counts = [token_emb.shape[0]] if counts is None else [int(c) for c in counts]
    if sum(counts) != token_emb.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but token_emb has {token_emb.shape[0]} rows")
    if _resolve_backend(backend, token_emb, "BERTScore MBR") == "torch":
        parts = zip(
            token_emb.split(counts),
            mask.split(counts),
            idf.split(counts) if idf is not None else [None] * len(counts),
        )
        return torch.cat([bertscore_mbr_scores_reference(e, m, w) for e, m, w in parts])
    from sealong.kernels.triton_mbr import bertscore_precision_matrix

    mask = mask.bool()
    weight = mask.float() if idf is None else idf.float()
    precision = bertscore_precision_matrix(token_emb, mask, weight, counts)  # [R, max N]
    return torch.cat([f1_mbr_from_precision(p[:, :n]) for p, n in zip(precision.split(counts), counts)])


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence: the plain O(|a|·|b|) dynamic programme (the reference)."""
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _rouge_l_from_lcs(lcs: int, len_a: int, len_b: int) -> float:
    """ROUGE-L F1 from the LCS length and the two token counts (one formula for both paths)."""
    if lcs == 0:
        return 0.0
    p, r = lcs / len_a, lcs / len_b
    return 2 * p * r / (p + r)


def rouge_l_f1(candidate: str, reference: str) -> float:
    """ROUGE-L F1 on lowercased word tokens (LCS-based precision and recall)."""
    a, b = _tokens(candidate), _tokens(reference)
    return _rouge_l_from_lcs(_lcs_length(a, b) if a and b else 0, len(a), len(b))


def rouge_l_mbr_scores_reference(texts: Sequence[str]) -> list[float]:
    """MBR with the ROUGE-L F1 utility, self included: the pure-Python LCS per pair (symmetric, so each
    pair once). The reference for ``rouge_l_mbr_scores`` and its benchmark baseline: ~8 ms a pair of
    ~300-word answers, hours per round at paper scale (docs/SCALE.md §4)."""
    n = len(texts)
    f1 = [[0.0] * n for _ in range(n)]
    for i in range(n):
        f1[i][i] = 1.0 if _tokens(texts[i]) else 0.0
        for j in range(i + 1, n):
            f1[i][j] = f1[j][i] = rouge_l_f1(texts[i], texts[j])
    return [sum(row) / n for row in f1]


def _word_codes(tokens_by_text: list[list[str]]) -> list[str] | list[list[int]]:
    """Each text's words as one code per distinct word of this question, so an LCS over codes is exactly
    the LCS over words (no hashing, no collisions). Codes are packed as the characters of a str, which
    rapidfuzz compares natively; past 0x110000 distinct words (never, for answers of ~1000 words) they
    stay lists of ints, which rapidfuzz also takes (any sequence of hashables), only slower."""
    ids: dict[str, int] = {}
    codes = [[ids.setdefault(w, len(ids)) for w in tokens] for tokens in tokens_by_text]
    if len(ids) > _STR_CODES:
        return codes
    return ["".join(map(chr, c)) for c in codes]


def rouge_l_mbr_scores_rapidfuzz(texts: Sequence[str]) -> list[float]:
    """``rouge_l_mbr_scores_reference``, with each pair's LCS from rapidfuzz's bit-parallel C++
    (``rapidfuzz.distance.LCSseq.similarity``): the same integers, so the same F1s to the last bit."""
    from rapidfuzz.distance import LCSseq

    tokens = [_tokens(t) for t in texts]
    codes = _word_codes(tokens)
    n = len(texts)
    f1 = [[0.0] * n for _ in range(n)]
    for i in range(n):
        f1[i][i] = 1.0 if tokens[i] else 0.0
        for j in range(i + 1, n):
            lcs = LCSseq.similarity(codes[i], codes[j]) if tokens[i] and tokens[j] else 0
            f1[i][j] = f1[j][i] = _rouge_l_from_lcs(lcs, len(tokens[i]), len(tokens[j]))
    return [sum(row) / n for row in f1]


def rouge_l_mbr_scores(texts: Sequence[str], backend: str = "auto") -> list[float]:
    """MBR with the ROUGE-L F1 utility for one question's texts.

    backend: "auto" (rapidfuzz when installed, else the pure-Python reference, announced once),
    "rapidfuzz" or "reference".
    """
    if backend not in ("auto", "rapidfuzz", "reference"):
        raise ValueError(f"backend must be auto, rapidfuzz or reference, got {backend!r}")
    if backend == "auto":
        try:
            import rapidfuzz  # noqa: F401

            backend = "rapidfuzz"
        except ImportError:
            backend = "reference"
            if "ROUGE-L MBR" not in _announced:
                _announced.add("ROUGE-L MBR")
                log.warning(
                    "ROUGE-L MBR on the pure-Python reference (rapidfuzz is not installed): ~700x slower, "
                    "hours per round at paper scale; `pip install rapidfuzz`"
                )
    if backend == "rapidfuzz":
        return rouge_l_mbr_scores_rapidfuzz(texts)
    return rouge_l_mbr_scores_reference(texts)


def random_scores(n: int, seed: int) -> list[float]:
    """The random-selection baseline: n scores uniform in [0, 1), reproducible from the seed."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(n)]


def sealong_loop_mbr_scores(sentence_embeddings: Sequence, num_predictions: int) -> list[list[float]]:
    """SEALONG's own scoring loop (synthesize.py, minimum_bayes_risk_score_sentence_embedding), the
    benchmark baseline: per question, a numpy array from the list of embeddings, the full N×N similarity
    matrix, its row means. It expects unit vectors (their encoders normalise) and does not normalise.
    """
    import numpy as np

    n_questions = len(sentence_embeddings) // num_predictions
    scores = []
    for idx in range(n_questions):
        embeddings = np.array(sentence_embeddings[idx * num_predictions : (idx + 1) * num_predictions])
        similarity = embeddings @ embeddings.T
        scores.append(similarity.mean(1).tolist())
    return scores

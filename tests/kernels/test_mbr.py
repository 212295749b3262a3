"""Embedding MBR: the fused Triton kernel (interpreter mode) and the vectorised reference against the
per-question reference; the dispatcher; the plain-Python utilities and SEALONG's loop."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_checks import assert_close
from sealong.kernels import mbr
from sealong.kernels.mbr import (
    embedding_mbr_scores,
    embedding_mbr_scores_reference,
    mbr_scores,
    ragged_embedding_mbr_scores_reference,
)

# (dtype, atol, rtol): 16-bit inputs are upcast on load, so only the input rounding differs from fp32.
DTYPES = [(torch.float32, 1e-6, 1e-5), (torch.bfloat16, 1e-6, 1e-5), (torch.float16, 1e-6, 1e-5)]
COUNTS = [[2], [2, 5, 1, 33], [3, 3, 3], [8] * 5]
DIMS = [31, 64, 384]


def per_question(x: torch.Tensor, counts: list[int]) -> torch.Tensor:
    return torch.cat([embedding_mbr_scores_reference(p) for p in x.split(counts)])


def embeddings(counts: list[int], d: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(counts), d, generator=g) + 0.5  # a shared direction, like real answers
    return x.to(dtype)


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("counts", COUNTS)
def test_triton_kernel_matches_reference(counts, d, dtype, atol, rtol):
    x = embeddings(counts, d, dtype)
    assert_close(embedding_mbr_scores(x, counts), per_question(x, counts), atol, rtol, "triton vs reference")


@pytest.mark.parametrize("dtype,atol,rtol", DTYPES)
@pytest.mark.parametrize("counts", COUNTS + [[1], [4, 1, 4, 2]])
def test_vectorised_reference_matches_per_question(counts, dtype, atol, rtol):
    x = embeddings(counts, 47, dtype)
    assert_close(
        ragged_embedding_mbr_scores_reference(x, counts), per_question(x, counts), atol, rtol, "vectorised"
    )


def test_reference_blocks_of_questions(monkeypatch):
    """Many questions spill over several cache blocks: block edges must not shift rows."""
    monkeypatch.setattr(mbr, "_CACHE_BLOCK_ELEMENTS", 3 * 4 * 5)
    counts = [4] * 7
    x = embeddings(counts, 5, torch.float32)
    assert_close(
        ragged_embedding_mbr_scores_reference(x, counts), per_question(x, counts), 1e-6, 1e-5, "blocks"
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=5), st.integers(1, 9), st.integers(0, 2**16))
def test_vectorised_reference_property(counts, d, seed):
    x = embeddings(counts, d, torch.float32, seed)
    assert_close(
        ragged_embedding_mbr_scores_reference(x, counts), per_question(x, counts), 1e-5, 1e-5, "property"
    )


def test_scores_are_mean_cosine_similarity():
    """The centroid identity against the definition: mean_j cos(e_i, e_j), self included."""
    x = embeddings([6], 13, torch.float64)
    cos = torch.nn.functional.cosine_similarity(x.unsqueeze(1), x.unsqueeze(0), dim=-1)
    assert_close(embedding_mbr_scores(x.float(), [6]), cos.mean(1), 1e-6, 1e-5, "definition")


def test_triton_identical_answers_score_one_and_zero_rows_are_finite():
    x = torch.ones(4, 9)
    x[3] = 0.0  # an all-zero embedding must not produce NaN
    s = embedding_mbr_scores(x, [4])
    assert torch.isfinite(s).all()
    assert_close(s[:3], torch.full((3,), 0.75), 1e-6, 1e-6, "identical rows")
    assert s[3] == 0


def test_strided_input_is_accepted():
    x = embeddings([3, 4], 40, torch.float32)[:, ::2]
    assert not x.is_contiguous()
    assert_close(embedding_mbr_scores(x, [3, 4]), per_question(x, [3, 4]), 1e-6, 1e-5, "strided")


@pytest.mark.parametrize(
    "make,counts,error",
    [
        (lambda: torch.randn(5, 8), [2, 2], ValueError),  # counts do not sum to rows
        (lambda: torch.randn(4, 8), [4, 0], ValueError),  # an empty question
        (lambda: torch.randn(4, 8, 2), [4], ValueError),  # not [rows, d]
        (lambda: torch.randint(0, 3, (4, 8)), [4], TypeError),  # integer embeddings
        (lambda: torch.randn(2, 20000), [2], ValueError),  # d beyond the tile limit
    ],
)
def test_launcher_rejects_before_launch(make, counts, error):
    with pytest.raises(error):
        embedding_mbr_scores(make(), counts)


def test_cpu_tensor_without_interpreter_is_rejected(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA"):
        embedding_mbr_scores(torch.randn(3, 8), [3])


def test_dispatcher_backends_agree_and_fallback_is_announced_once(caplog, monkeypatch):
    monkeypatch.setattr(mbr, "_announced", set())
    counts = [2, 5, 3]
    x = embeddings(counts, 33, torch.float32)
    with caplog.at_level(logging.WARNING, logger="sealong.kernels.mbr"):
        auto = mbr_scores(x, counts)
        mbr_scores(x, counts)
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert "torch reference" in caplog.records[0].getMessage()
    assert_close(auto, mbr_scores(x, counts, backend="torch"), 0, 0, "auto is torch on CPU")
    assert_close(mbr_scores(x, counts, backend="triton"), auto, 1e-6, 1e-5, "triton vs torch")
    with pytest.raises(ValueError, match="backend"):
        mbr_scores(x, counts, backend="cuda")


def test_sealong_loop_matches_on_unit_vectors():
    counts = [8] * 6
    x = torch.nn.functional.normalize(embeddings(counts, 24, torch.float32), dim=-1)
    loop = np.array(mbr.sealong_loop_mbr_scores(x.tolist(), 8)).reshape(-1)
    assert_close(
        torch.from_numpy(loop), ragged_embedding_mbr_scores_reference(x, counts), 1e-6, 1e-5, "sealong loop"
    )


def test_rouge_l_utility():
    assert mbr.rouge_l_f1("the cat sat", "The cat ran.") == pytest.approx(2 / 3)  # LCS 2, P = R = 2/3
    assert mbr.rouge_l_f1("a b c d", "d c b a") == pytest.approx(1 / 4)  # LCS 1 of 4
    assert mbr.rouge_l_f1("x y", "") == 0.0
    texts = ["Paris is the capital", "the capital is Paris", "Berlin", ""]
    scores = mbr.rouge_l_mbr_scores(texts)
    n = len(texts)
    by_definition = [
        sum((1.0 if i == j and texts[i] else mbr.rouge_l_f1(texts[i], texts[j])) for j in range(n)) / n
        for i in range(n)
    ]
    assert scores == pytest.approx(by_definition)
    assert scores[3] == 0.0 and max(scores) in scores[:2]


# Words drawn from a small vocabulary, so answers share long, interleaved subsequences; with repeats,
# unicode (accents, CJK, a German sharp s, a Greek sigma whose lowercase differs), case and punctuation.
ROUGE_VOCAB = ["the", "The", "a", "cat", "sat", "on", "mat", "Paris", "paris", "café", "naïve", "東京",
               "Straße", "ΣΟΦΙΑ", "x1", "42", "it's", "über", "cat-like", "!", "...", ""]  # fmt: skip


def _random_answer(rng: np.random.Generator) -> str:
    n = int(rng.choice([0, 1, 2, 5, 20, 80]))
    return " ".join(rng.choice(ROUGE_VOCAB, size=n).tolist())


def test_rouge_l_rapidfuzz_equals_the_reference_on_random_questions():
    rng = np.random.default_rng(0)
    pairs = 0
    for _ in range(60):
        texts = [_random_answer(rng) for _ in range(int(rng.integers(1, 9)))]
        texts += [texts[0], "", "!!! ...", texts[0].upper()]  # identical, empty, no words, case only
        pairs += len(texts) * (len(texts) - 1) // 2
        reference = mbr.rouge_l_mbr_scores(texts, backend="reference")
        assert mbr.rouge_l_mbr_scores(texts, backend="rapidfuzz") == reference  # bit for bit, not approx
        assert mbr.rouge_l_mbr_scores(texts) == reference  # auto picks rapidfuzz here
    assert pairs > 2000


def test_rouge_l_word_codes_give_the_exact_lcs():
    from rapidfuzz.distance import LCSseq

    rng = np.random.default_rng(1)
    for _ in range(200):
        a, b = (mbr._tokens(_random_answer(rng)) for _ in range(2))
        ca, cb = mbr._word_codes([a, b])
        assert LCSseq.similarity(ca, cb) == mbr._lcs_length(a, b)
    # unrelated words never collide: every distinct word is its own code
    assert LCSseq.similarity(*mbr._word_codes([["a", "b"], ["c", "d"]])) == 0


def test_rouge_l_past_the_str_codes_keeps_lists_of_ints(monkeypatch):
    texts = ["the cat sat on the mat", "a cat on a mat", "mat cat the", ""]
    reference = mbr.rouge_l_mbr_scores(texts, backend="reference")
    monkeypatch.setattr(mbr, "_STR_CODES", 3)  # this question has 7 distinct words
    codes = mbr._word_codes([mbr._tokens(t) for t in texts])
    assert all(isinstance(c, list) for c in codes)
    assert mbr.rouge_l_mbr_scores(texts, backend="rapidfuzz") == reference


def test_rouge_l_without_rapidfuzz_falls_back_announced_once(monkeypatch, caplog):
    import sys

    texts = ["Paris is the capital", "the capital is Paris", "Berlin"]
    monkeypatch.setitem(sys.modules, "rapidfuzz", None)  # import rapidfuzz now raises ImportError
    monkeypatch.setattr(mbr, "_announced", set())
    with caplog.at_level(logging.WARNING, logger="sealong.kernels.mbr"):
        assert mbr.rouge_l_mbr_scores(texts) == mbr.rouge_l_mbr_scores(texts, backend="reference")
        mbr.rouge_l_mbr_scores(texts)
    assert sum("rapidfuzz is not installed" in r.message for r in caplog.records) == 1
    with pytest.raises(ValueError, match="backend"):
        mbr.rouge_l_mbr_scores(texts, backend="triton")


def test_random_scores_reproducible():
    assert mbr.random_scores(5, 7) == mbr.random_scores(5, 7)
    assert mbr.random_scores(5, 7) != mbr.random_scores(5, 8)
    assert all(0 <= s < 1 for s in mbr.random_scores(50, 1))

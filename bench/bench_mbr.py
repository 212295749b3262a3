"""Benchmark MBR scoring: the batched path against SEALONG's per-question numpy loop, the token-level
(BERTScore-style) utility, and the ROUGE-L utility (rapidfuzz's LCS against the pure-Python reference).

    python -P bench/bench_mbr.py            # full grid: B in {64, 512, 2048}, N in {8, 32}, d in {384, 1024}
    python -P bench/bench_mbr.py --quick    # B in {64, 2048}, N = 32, d = 384 (includes the acceptance case)
    python -P bench/bench_mbr.py --rouge-l-only   # only the ROUGE-L rows (~1 min)

Variants (embedding utility, inputs are fp32 [B·N, d]):
- sealong_loop: SEALONG's synthesize.py loop as shipped — embeddings held as a Python list of lists (their
  `.tolist()`), per question np.array(...), the full N×N similarity, row means. Given unit vectors.
- sealong_loop_ndarray: the same loop slicing a prebuilt numpy array (a generous baseline).
- torch_per_question: our per-question torch reference in a Python loop.
- torch_batched: the CPU path of `mbr_scores` (all questions in a few vectorised ops, cache-blocked).
- triton: the fused kernel (CUDA only; the interpreter's timings mean nothing), with achieved bandwidth.
ROUGE-L (one question of N answers of ~230-300 words, each a noisy copy of one plan, Zipf word choice):
- rouge_l_reference: the pure-Python LCS per pair; rouge_l_rapidfuzz: rapidfuzz's LCSseq over word codes.
  Reported per pair (µs) side by side, checked equal, and projected to paper scale (2048 × 496 pairs).
Threads default to 1 (a shared 2-core machine; SEALONG's per-question matmuls are single-threaded anyway).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy's BLAS reads it at import
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import harness  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sealong.kernels import mbr  # noqa: E402


def embedding_case(
    B: int, N: int, d: int, repeats: int, peaks: dict | None
) -> tuple[list[dict], dict[str, float]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B * N, d, generator=g) + 0.5
    counts = [N] * B
    unit = torch.nn.functional.normalize(x, dim=-1)
    as_list, as_array = unit.tolist(), unit.numpy()
    want = mbr.ragged_embedding_mbr_scores_reference(x, counts)
    got = np.asarray(mbr.sealong_loop_mbr_scores(as_list, N)).reshape(-1)
    assert np.allclose(got, want.numpy(), atol=1e-5), "SEALONG loop and the batched path disagree"

    variants = {
        "sealong_loop": lambda: mbr.sealong_loop_mbr_scores(as_list, N),
        "sealong_loop_ndarray": lambda: mbr.sealong_loop_mbr_scores(as_array, N),
        "torch_per_question": lambda: [mbr.embedding_mbr_scores_reference(p) for p in x.split(counts)],
        "torch_batched": lambda: mbr.mbr_scores(x, counts, backend="torch"),
    }
    if torch.cuda.is_available():
        xc = x.cuda()
        assert torch.allclose(mbr.mbr_scores(xc, counts, backend="triton").cpu(), want, atol=1e-5)
        variants["triton"] = lambda: mbr.mbr_scores(xc, counts, backend="triton")
        variants["torch_batched_cuda"] = lambda: mbr.mbr_scores(xc, counts, backend="torch")
    times = {
        name: harness.time_fn(fn, warmup=1, repeats=repeats)["median_s"] for name, fn in variants.items()
    }
    case = f"B={B} N={N} d={d}"
    rows = [dict(case=case, variant=k, metric="time", value=f"{v:.6g}", unit="s") for k, v in times.items()]
    rows += [dict(case=case, variant="torch_batched", metric=f"speedup_vs_{k}", value=f"{times[k] / times['torch_batched']:.4g}", unit="x")
             for k in ("sealong_loop", "sealong_loop_ndarray", "torch_per_question")]  # fmt: skip
    if "triton" in times and peaks:
        achieved = x.numel() * 4 / times["triton"]  # input read once from HBM
        rows.append(
            dict(
                case=case,
                variant="triton",
                metric="bandwidth_fraction",
                value=f"{achieved / peaks['bandwidth_Bps']:.3f}",
                unit="of measured peak",
            )
        )
    return rows, times


def bertscore_case(
    N: int, L: int, d: int, B: int, repeats: int, peaks: dict | None
) -> tuple[list[dict], dict[str, float]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B * N, L, d, generator=g) + 0.3
    mask = torch.arange(L) < torch.randint(L // 2, L + 1, (B * N, 1), generator=g)
    counts = [N] * B
    variants = {"torch_reference": lambda: mbr.bertscore_mbr_scores(x, mask, counts=counts, backend="torch")}
    if torch.cuda.is_available():
        xc, mc = x.cuda(), mask.cuda()
        variants["triton"] = lambda: mbr.bertscore_mbr_scores(xc, mc, counts=counts, backend="triton")
    times = {k: harness.time_fn(fn, warmup=1, repeats=repeats)["median_s"] for k, fn in variants.items()}
    case = f"bertscore B={B} N={N} L={L} d={d}"
    rows = [dict(case=case, variant=k, metric="time", value=f"{v:.6g}", unit="s") for k, v in times.items()]
    if "triton" in times and peaks:
        flops = 2 * B * N * N * L * L * d
        rows.append(dict(case=case, variant="triton", metric="flops_fraction", value=f"{flops / times['triton'] / peaks['bf16_flops']:.3f}",
                         unit="of measured bf16 matmul peak (kernel runs fp32)"))  # fmt: skip
    return rows, times


def _rouge_answers(N: int, words: int, seed: int) -> list[str]:
    """N answers that agree as sampled answers do: noisy copies (20 % of words changed) of one plan."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(3000)]
    zipf = 1 / np.arange(1, len(vocab) + 1)
    zipf /= zipf.sum()
    plan = rng.choice(vocab, size=words, p=zipf).tolist()
    answers = []
    for _ in range(N):
        out = []
        for w in plan:
            u = rng.random()
            if u < 0.07:  # dropped
                continue
            out.append(str(rng.choice(vocab, p=zipf)) if u < 0.14 else w)
            if u > 0.94:  # an inserted word
                out.append(str(rng.choice(vocab, p=zipf)))
        answers.append(" ".join(out))
    return answers


def rouge_l_case(N: int, words: int, questions: int, repeats: int) -> tuple[list[dict], dict[str, float]]:
    texts = [_rouge_answers(N, words, seed) for seed in range(questions)]
    ref_texts = texts[0][:8]  # the reference's cost per pair does not depend on N: time 28 pairs of it
    pairs, ref_pairs = N * (N - 1) // 2, len(ref_texts) * (len(ref_texts) - 1) // 2
    for ts in texts:
        assert mbr.rouge_l_mbr_scores(ts[:8], backend="rapidfuzz") == mbr.rouge_l_mbr_scores(
            ts[:8], backend="reference"
        ), "rapidfuzz and the reference disagree"
    reference = harness.time_fn(lambda: mbr.rouge_l_mbr_scores(ref_texts, backend="reference"), 0, 3)
    fast = harness.time_fn(
        lambda: [mbr.rouge_l_mbr_scores(ts, backend="rapidfuzz") for ts in texts], 1, repeats
    )
    per_pair = {
        "rouge_l_reference": reference["median_s"] / ref_pairs,
        "rouge_l_rapidfuzz": fast["median_s"] / (pairs * questions),
    }
    mean_words = float(np.mean([len(t.split()) for ts in texts for t in ts]))
    case = f"rouge-l N={N} words~{mean_words:.0f}"
    paper_pairs = 2048 * 496
    rows = [
        dict(case=case, variant=k, metric="per_pair", value=f"{v * 1e6:.4g}", unit="us")
        for k, v in per_pair.items()
    ]
    rows += [
        dict(
            case=case,
            variant=k,
            metric="paper_round_projection",
            value=f"{v * paper_pairs:.4g}",
            unit="s",
            notes="2048 questions x 496 pairs, one core, tokenising included",
        )
        for k, v in per_pair.items()
    ]
    rows.append(dict(case=case, variant="rouge_l_rapidfuzz", metric="speedup_vs_rouge_l_reference",
                     value=f"{per_pair['rouge_l_reference'] / per_pair['rouge_l_rapidfuzz']:.4g}", unit="x"))  # fmt: skip
    return rows, {**per_pair, "words": mean_words}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rouge-l-only", action="store_true", help="only the ROUGE-L utility's rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows, rtable = [], []
    for N, words in [(8, 300)] if args.quick else [(8, 300), (32, 300), (32, 1000)]:
        r, t = rouge_l_case(N, words, questions=4, repeats=args.repeats)
        rows += r
        rtable.append([N, f"{t['words']:.0f}", f"{t['rouge_l_reference'] * 1e6:.0f}", f"{t['rouge_l_rapidfuzz'] * 1e6:.1f}",
                       f"{t['rouge_l_reference'] / t['rouge_l_rapidfuzz']:.0f}x",
                       f"{t['rouge_l_reference'] * 2048 * 496 / 3600:.2f} h", f"{t['rouge_l_rapidfuzz'] * 2048 * 496:.0f} s"])  # fmt: skip
    harness.print_table("ROUGE-L MBR (µs per pair; one paper-scale round = 2048 × 496 pairs on one core)",
                        ["N", "words", "reference", "rapidfuzz", "speedup", "round (ref)", "round (rapidfuzz)"], rtable)  # fmt: skip
    if args.rouge_l_only:
        harness.append_rows("mbr", rows, notes="rouge-l only")
        return
    peaks = harness.measured_peaks() if torch.cuda.is_available() else None
    grid = (
        [(64, 32, 384), (2048, 32, 384)]
        if args.quick
        else [(B, N, d) for B in (64, 512, 2048) for N in (8, 32) for d in (384, 1024)]
    )
    table = []
    for B, N, d in grid:
        r, t = embedding_case(B, N, d, args.repeats, peaks)
        rows += r
        table.append([B, N, d, *(f"{t[k] * 1e3:.2f}" for k in ("sealong_loop", "sealong_loop_ndarray", "torch_per_question", "torch_batched")),
                      f"{t['sealong_loop'] / t['torch_batched']:.1f}x", f"{t['sealong_loop_ndarray'] / t['torch_batched']:.1f}x",
                      f"{t['triton'] * 1e3:.3f}" if "triton" in t else "n/a (no GPU)"])  # fmt: skip
    harness.print_table("embedding MBR (ms per batch; speedup of torch_batched)",
                        ["B", "N", "d", "sealong_loop", "sealong_ndarray", "torch_per_q", "torch_batched", "vs_loop", "vs_ndarray", "triton"], table)  # fmt: skip
    token_grid = [(8, 128)] if args.quick else [(8, 128), (32, 128), (8, 512), (32, 512)]
    btable = []
    for N, L in token_grid:
        B = 64 if torch.cuda.is_available() else 1
        r, t = bertscore_case(N, L, 384, B, max(1, args.repeats // 2), peaks)
        rows += r
        btable.append(
            [
                B,
                N,
                L,
                384,
                f"{t['torch_reference'] * 1e3:.1f}",
                f"{t['triton'] * 1e3:.2f}" if "triton" in t else "n/a (no GPU)",
            ]
        )
    harness.print_table(
        "BERTScore MBR (ms per batch)", ["B", "N", "L", "d", "torch_reference", "triton"], btable
    )
    harness.append_rows("mbr", rows, notes="quick" if args.quick else "")


if __name__ == "__main__":
    main()

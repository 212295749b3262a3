"""Benchmark MBR scoring: the batched path against SEALONG's per-question numpy loop, and the token-level
(BERTScore-style) utility.

    python -P bench/bench_mbr.py            # full grid: B in {64, 512, 2048}, N in {8, 32}, d in {384, 1024}
    python -P bench/bench_mbr.py --quick    # B in {64, 2048}, N = 32, d = 384 (includes the acceptance case)

Variants (embedding utility, inputs are fp32 [B·N, d]):
- sealong_loop: SEALONG's synthesize.py loop as shipped — embeddings held as a Python list of lists (their
  `.tolist()`), per question np.array(...), the full N×N similarity, row means. Given unit vectors.
- sealong_loop_ndarray: the same loop slicing a prebuilt numpy array (a generous baseline).
- torch_per_question: our per-question torch reference in a Python loop.
- torch_batched: the CPU path of `mbr_scores` (all questions in a few vectorised ops, cache-blocked).
- triton: the fused kernel (CUDA only; the interpreter's timings mean nothing), with achieved bandwidth.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    peaks = harness.measured_peaks() if torch.cuda.is_available() else None
    grid = (
        [(64, 32, 384), (2048, 32, 384)]
        if args.quick
        else [(B, N, d) for B in (64, 512, 2048) for N in (8, 32) for d in (384, 1024)]
    )
    rows, table = [], []
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

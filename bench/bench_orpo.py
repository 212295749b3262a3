"""Benchmark the ORPO loss (forward + backward): peak extra memory and time of the fused token-chunked loss
against the naive one (full [B, T, V] logits) and Liger's batch-chunked loss.

    python -P bench/bench_orpo.py            # prompt 2K, 8K, 16K tokens × V = 49,152 and 128,256
    python -P bench/bench_orpo.py --quick    # prompt 2K, V = 49,152

One chosen/rejected pair, 300-token responses after the prompt, hidden H = 576 (SmolLM2-135M) in fp32 on
CPU (H = 4096, bf16 on CUDA), lm_head frozen (the LoRA case: gradients flow to the hidden states only).
Every (variant, size) runs in a fresh process. Peak extra memory on CPU = the process's RSS high-water
mark (VmHWM, reset through /proc/self/clear_refs just before the call) minus its RSS just before: every
allocation counts (torch's, oneDNN's, the allocator's slack), nothing is sampled. On CUDA:
torch.cuda.max_memory_allocated minus memory allocated before. Time: median of the repeats, after a
warm-up call on a tiny problem; the first measured call is the memory call. Variants whose estimated
footprint exceeds half the available RAM are skipped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

RESPONSE = 300
VARIANTS = ("fused", "naive", "liger")


def make_inputs(prompt: int, V: int, H: int, dtype, device, seed: int = 0):
    import torch
    from sealong.kernels.orpo import IGNORE_INDEX

    g = torch.Generator().manual_seed(seed)
    T = prompt + RESPONSE

    def labels():
        y = torch.randint(0, V, (1, T), generator=g)
        y[:, :prompt] = IGNORE_INDEX
        return y.to(device)

    hc = torch.randn(1, T, H, generator=g).to(device, dtype).requires_grad_()
    hr = torch.randn(1, T, H, generator=g).to(device, dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5).to(device, dtype)
    return hc, hr, w, labels(), labels()


def child(variant: str, prompt: int, V: int, H: int, repeats: int, threads: int, chunk: int) -> dict:
    import torch
    from sealong.kernels.orpo import orpo_loss

    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    kw = {"chunk_size": chunk} if variant == "fused" else {}

    def step(inputs):
        hc, hr, w, lc, lr = inputs
        orpo_loss(hc, hr, w, lc, lr, beta=0.1, backend=variant, **kw).loss.backward()
        hc.grad = hr.grad = None

    step(make_inputs(64, 512, H, dtype, device))  # warm-up: load the code paths on a tiny problem
    inputs = make_inputs(prompt, V, H, dtype, device)
    harness.sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = harness.reset_peak_rss()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step(inputs)
        harness.sync()
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            peak = (torch.cuda.max_memory_allocated() if cuda else harness.peak_rss()) - before
    T = prompt + RESPONSE
    logit_tokens = 2 * (RESPONSE if variant == "fused" else T)
    matmuls = 4 if variant == "fused" else 2  # fused recomputes logits in backward; no weight grad (frozen)
    flops = 2 * logit_tokens * H * V * matmuls
    return {"peak_extra_bytes": peak, "median_s": statistics.median(times), "times": times, "flops": flops}


def estimated_bytes(variant: str, prompt: int, V: int, chunk: int) -> int:
    """A generous footprint estimate (fp32), used only to skip what would not fit."""
    rows = min(chunk, 2 * RESPONSE) if variant == "fused" else prompt + RESPONSE
    copies = (
        9 if variant == "liger" else 5
    )  # [rows, V] fp32 tensors alive at the peak, measured at 2K with margin
    return copies * rows * V * 4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--child", nargs=4, metavar=("VARIANT", "PROMPT", "V", "REPEATS"), help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=None)
    args = ap.parse_args()
    import torch

    H = args.hidden or (4096 if torch.cuda.is_available() else 576)
    if args.child:
        variant, prompt, V, repeats = args.child[0], *map(int, args.child[1:])
        print(json.dumps(child(variant, prompt, V, H, repeats, args.threads, args.chunk)))
        return
    grid = [(2048, 49152)] if args.quick else [(p, V) for V in (49152, 128256) for p in (2048, 8192, 16384)]
    budget = (
        harness.mem_available() // 2 if not torch.cuda.is_available() else torch.cuda.mem_get_info()[0] // 2
    )
    peaks = harness.measured_peaks() if torch.cuda.is_available() else None
    rows, table, results = [], [], {}
    for prompt, V in grid:
        for variant in VARIANTS:
            case = f"prompt={prompt} resp={RESPONSE} V={V} H={H}"
            if estimated_bytes(variant, prompt, V, args.chunk) > budget:
                table.append(
                    [
                        prompt,
                        V,
                        variant,
                        "skipped",
                        f"estimated {estimated_bytes(variant, prompt, V, args.chunk) / 2**30:.1f} GiB > budget",
                        "",
                    ]
                )
                rows.append(
                    dict(
                        case=case,
                        variant=variant,
                        metric="skipped",
                        value="",
                        unit="",
                        notes="estimated footprint > half of available memory",
                    )
                )
                continue
            repeats = 3 if variant == "fused" else 2
            r = harness.run_child([__file__, "--child", variant, str(prompt), str(V), str(repeats),
                                   "--threads", str(args.threads), "--chunk", str(args.chunk), "--hidden", str(H)])  # fmt: skip
            results[(prompt, V, variant)] = r
            rows.append(
                dict(
                    case=case,
                    variant=variant,
                    metric="peak_extra_memory",
                    value=str(r["peak_extra_bytes"]),
                    unit="bytes",
                )
            )
            rows.append(
                dict(
                    case=case, variant=variant, metric="time_fwd_bwd", value=f"{r['median_s']:.4g}", unit="s"
                )
            )
            extra = ""
            if peaks:
                frac = r["flops"] / r["median_s"] / peaks["bf16_flops"]
                rows.append(
                    dict(
                        case=case,
                        variant=variant,
                        metric="flops_fraction",
                        value=f"{frac:.3f}",
                        unit="of measured bf16 peak",
                    )
                )
                extra = f"{frac:.2f} of peak FLOP/s"
            table.append(
                [prompt, V, variant, f"{r['peak_extra_bytes'] / 2**20:.0f}", f"{r['median_s']:.2f}", extra]
            )
    harness.print_table(f"ORPO loss fwd+bwd, one pair, H={H} ({'CUDA bf16' if peaks else 'CPU fp32'})",
                        ["prompt", "V", "variant", "peak_extra_MiB", "time_s", ""], table)  # fmt: skip
    for prompt, V in grid:
        fused, naive = results.get((prompt, V, "fused")), results.get((prompt, V, "naive"))
        if fused and naive:
            mem, tim = (
                fused["peak_extra_bytes"] / naive["peak_extra_bytes"],
                fused["median_s"] / naive["median_s"],
            )
            print(f"prompt={prompt} V={V}: fused/naive peak extra memory {mem:.3f}, time {tim:.3f}")
            case = f"prompt={prompt} resp={RESPONSE} V={V} H={H}"
            rows.append(
                dict(case=case, variant="fused", metric="memory_ratio_vs_naive", value=f"{mem:.4f}", unit="x")
            )
            rows.append(
                dict(case=case, variant="fused", metric="time_ratio_vs_naive", value=f"{tim:.4f}", unit="x")
            )
    harness.append_rows("orpo", rows, notes="quick" if args.quick else "")


if __name__ == "__main__":
    main()

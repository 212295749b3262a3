"""Benchmark sequence-parallel attention on CPU: ring attention and Ulysses (fused attention blocks with
LSE) against single-process fused SDPA, forward + backward, time and peak extra memory, side by side.

    python -P bench/bench_ring_attention.py            # S = 4096 and 8192, W = 1 and 2
    python -P bench/bench_ring_attention.py --quick    # S = 1024, W = 1 and 2

One sequence, 8 query heads, 2 key/value heads, head dim 64, fp32, causal, zigzag sharding; every variant
runs in fresh processes (gloo for W ≥ 1), one thread per rank, and reports per rank: the median time of a
forward + backward step and its peak extra memory (RSS high-water mark during the step minus the RSS before
it). Peak extra memory that grows O(S·D) doubles from S to 2S; an S×S fp32 score matrix would be
8·S²·4 B (2 GiB at S = 8192). On a machine with fewer cores than ranks the ranks share cores, so W = 2
shows the ring's overhead rather than a speed-up; the rows record the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sealong.kernels.ring_attention import ring_attention, shard_indices  # noqa: E402
from sealong.kernels.ulysses import ulysses_attention  # noqa: E402

HQ, HKV, D = 8, 2, 64
VARIANTS = {  # name → (world, attention); sdpa is torch's fused SDPA on the whole sequence in one process
    "sdpa_fused_1proc": (1, None),
    "ring_world1": (1, ring_attention),
    "ulysses_world1": (1, ulysses_attention),
    "ring_world2": (2, ring_attention),
    "ulysses_world2": (2, ulysses_attention),
}


def _rank(rank: int, world: int, variant: str, S: int, repeats: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    attention = VARIANTS[variant][1]
    g = torch.Generator().manual_seed(0)
    idx = shard_indices(S, rank, world, "zigzag")
    q, k, v = (
        torch.randn(1, h, S, D, generator=g).index_select(2, idx).requires_grad_() for h in (HQ, HKV, HKV)
    )

    def step():
        if attention is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            out = attention(q, k, v, positions=idx, group=dist.group.WORLD)
        out.sum().backward()
        q.grad = k.grad = v.grad = None

    step()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    before = harness.reset_peak_rss()
    step()
    extra = harness.peak_rss() - before
    Path(tmp, f"rank{rank}.json").write_text(
        json.dumps({"median_s": statistics.median(times), "extra_bytes": extra})
    )
    dist.destroy_process_group()


def measure(variant: str, S: int, repeats: int) -> list[dict]:
    """Per rank: median seconds per forward + backward and peak extra bytes."""
    world = VARIANTS[variant][0]
    # glibc keeps freed blocks above its dynamic mmap threshold in the heap, which hides a step's peak from
    # the RSS high-water mark; a fixed threshold returns every large block to the system when freed
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 * 1024))
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, variant, S, repeats, tmp), nprocs=world, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = (1024,) if args.quick else (4096, 8192)
    rows, table = [], []
    note = f"gloo, {os.cpu_count()} cores, 1 thread per rank, fp32 causal"
    for S in sizes:
        case = f"S={S} Hq={HQ} Hkv={HKV} D={D}"
        base = None
        for variant in VARIANTS:
            for rank, r in enumerate(measure(variant, S, args.repeats)):
                t, mib = r["median_s"], r["extra_bytes"] / 2**20
                base = t if variant == "sdpa_fused_1proc" else base
                name = variant + (f"_rank{rank}" if VARIANTS[variant][0] > 1 else "")
                rows.append(
                    dict(
                        case=case, variant=name, metric="time_fwd_bwd", value=f"{t:.4g}", unit="s", notes=note
                    )
                )
                rows.append(dict(case=case, variant=name, metric="peak_extra_memory", value=f"{mib:.1f}", unit="MiB", notes=note))  # fmt: skip
                table.append([S, name, f"{t:.3f}", f"{t / base:.2f}", f"{mib:.1f}"])
    harness.print_table(
        f"attention fwd+bwd per step, Hq={HQ} Hkv={HKV} D={D} fp32, {os.cpu_count()} cores, 1 thread per rank",
        ["S", "variant", "time_s", "x_sdpa", "peak_extra_MiB"],
        table,
    )
    harness.append_rows("ring_attention", rows, notes="quick" if args.quick else "")


if __name__ == "__main__":
    main()

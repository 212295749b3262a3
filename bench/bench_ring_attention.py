"""Benchmark torch ring attention: time per forward + backward step against the world size (gloo, CPU
tensors), with full materialised attention in one process as reference.

    python -P bench/bench_ring_attention.py            # S = 4096 tokens, world 1, 2, 4
    python -P bench/bench_ring_attention.py --quick    # S = 1024 tokens, world 1, 2

One sequence, 8 query heads, 2 key/value heads, head dim 64, fp32, zigzag sharding; each rank runs one
thread. On a machine with fewer cores than ranks the ranks share cores, so the time per step shows the
ring's overhead rather than a speed-up; the rows record the core count.
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
from sealong.kernels.ring_attention import attention_reference, ring_attention, shard_indices  # noqa: E402

HQ, HKV, D = 8, 2, 64


def _inputs(S: int):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, h, S, D, generator=g) for h in (HQ, HKV, HKV)]


def _rank(rank: int, world: int, S: int, repeats: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    idx = shard_indices(S, rank, world, "zigzag")
    q, k, v = (t.index_select(2, idx).requires_grad_() for t in _inputs(S))

    def step():
        ring_attention(q, k, v, positions=idx, group=dist.group.WORLD).sum().backward()

    step()
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(tmp, "result.json").write_text(json.dumps({"median_s": statistics.median(times)}))
    dist.destroy_process_group()


def ring_step_time(world: int, S: int, repeats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_rank, args=(world, S, repeats, tmp), nprocs=world, join=True)
        return json.loads(Path(tmp, "result.json").read_text())["median_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    S, worlds = (1024, (1, 2)) if args.quick else (4096, (1, 2, 4))
    torch.set_num_threads(1)
    q, k, v = (t.requires_grad_() for t in _inputs(S))
    full = harness.time_fn(
        lambda: attention_reference(q, k, v).sum().backward(), warmup=1, repeats=args.repeats
    )["median_s"]
    case = f"S={S} Hq={HQ} Hkv={HKV} D={D}"
    rows = [
        dict(case=case, variant="full_attention_1proc", metric="time_fwd_bwd", value=f"{full:.4g}", unit="s")
    ]
    table = [["full (materialised)", 1, f"{full:.3f}"]]
    for world in worlds:
        t = ring_step_time(world, S, args.repeats)
        rows.append(dict(case=case, variant=f"ring_world{world}", metric="time_fwd_bwd", value=f"{t:.4g}", unit="s",
                         notes=f"gloo, {os.cpu_count()} cores, 1 thread per rank"))  # fmt: skip
        table.append(["ring (gloo)", world, f"{t:.3f}"])
    harness.print_table(
        f"ring attention fwd+bwd per step, {case}, {os.cpu_count()} cores",
        ["variant", "world", "time_s"],
        table,
    )
    harness.append_rows("ring_attention", rows, notes="quick" if args.quick else "")


if __name__ == "__main__":
    main()

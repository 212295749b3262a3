"""Run every kernel benchmark, then print the issue's acceptance checks from the rows this run appended.

    python -P bench/run_all.py            # what `make bench` runs (about 10 minutes on 2 CPU cores)
    python -P bench/run_all.py --quick    # small grids (about 2 minutes); the ORPO check needs the full run

Each script runs in its own process and appends to bench/results.csv.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

SCRIPTS = ("bench_mbr.py", "bench_orpo.py", "bench_ring_attention.py", "bench_sampling.py")


def rows_after(n_before: int) -> list[dict]:
    if not harness.RESULTS_CSV.exists():
        return []
    with harness.RESULTS_CSV.open() as f:
        return list(csv.DictReader(f))[n_before:]


def value(rows: list[dict], bench: str, case: str, variant: str, metric: str) -> float | None:
    found = [
        r["value"]
        for r in rows
        if (r["bench"], r["case"], r["variant"], r["metric"]) == (bench, case, variant, metric)
    ]
    return float(found[-1]) if found and found[-1] else None


def check(label: str, got: float | None, ok) -> bool:
    print(
        f"  {'PASS' if got is not None and ok(got) else 'FAIL' if got is not None else 'NOT MEASURED'}  {label}: {got if got is not None else '-'}"
    )
    return got is not None and ok(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    n_before = len(rows_after(0))
    for script in SCRIPTS:
        print(f"\n=== {script} ===", flush=True)
        subprocess.run(
            [sys.executable, "-P", str(harness.BENCH_DIR / script), *(["--quick"] if args.quick else [])],
            check=True,
        )
    rows = rows_after(n_before)
    orpo_case = "prompt=8192 resp=300 V=49152 H=576"
    print("\nacceptance (issue 3, CPU):")
    results = [
        check("batched MBR speed-up over SEALONG's per-question loop, B=2048 N=32 d=384 (>= 50x)",
              value(rows, "mbr", "B=2048 N=32 d=384", "torch_batched", "speedup_vs_sealong_loop"), lambda x: x >= 50),
        check(f"fused/naive ORPO peak extra memory, {orpo_case} (<= 0.2)",
              value(rows, "orpo", orpo_case, "fused", "memory_ratio_vs_naive"), lambda x: x <= 0.2),
        check(f"fused/naive ORPO time, {orpo_case} (<= 1.5)",
              value(rows, "orpo", orpo_case, "fused", "time_ratio_vs_naive"), lambda x: x <= 1.5),
    ]  # fmt: skip
    print(f"  {sum(results)}/{len(results)} checks passed; rows in {harness.RESULTS_CSV}")


if __name__ == "__main__":
    main()

"""Shared benchmark harness: timing (warm-up, then the median of repeats), peak-memory probes, machine and
version facts, and the results CSV (bench/results.csv, one row per measurement, appended).

Not run directly; the bench_*.py scripts import it (they put this folder on sys.path, never the repo root).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_CSV = BENCH_DIR / "results.csv"
COLUMNS = [
    "timestamp", "git_sha", "bench", "case", "variant", "metric", "value", "unit",
    "platform", "cpu", "gpu", "threads", "torch", "triton", "transformers", "notes",
]  # fmt: skip


def git_sha() -> str:
    """HEAD's short sha; SEALONG_GIT_SHA where the tree travelled without .git (the device check)."""
    if os.environ.get("SEALONG_GIT_SHA"):
        return os.environ["SEALONG_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "triton", "transformers"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def machine() -> dict[str, str]:
    import torch

    return {
        "platform": platform.platform(),
        "cpu": f"{cpu_model()} ({os.cpu_count()} cores)",
        "gpu": gpu_name(),
        "threads": str(torch.get_num_threads()),
        **versions(),
    }


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_fn(fn: Callable[[], object], warmup: int = 1, repeats: int = 5) -> dict[str, float]:
    """Seconds per call: warm-up calls (compilation, caches) are run and discarded, then the median."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> int:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; return the current RSS in bytes."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak_rss() -> int:
    """RSS high-water mark in bytes since the last reset (Linux /proc/self/status VmHWM)."""
    return _status_kib("VmHWM") * 1024


def mem_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def measured_peaks() -> dict[str, float]:
    """On CUDA: achievable HBM bandwidth (a 1 GiB device copy) and bf16 matmul FLOP/s, to report fractions."""
    import torch

    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")
    copy = time_fn(lambda: x.clone(), warmup=2, repeats=10)["median_s"]
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    mm = time_fn(lambda: a @ a, warmup=2, repeats=10)["median_s"]
    return {"bandwidth_Bps": 2 * x.numel() * 4 / copy, "bf16_flops": 2 * 8192**3 / mm}


def append_rows(bench: str, rows: list[dict], notes: str = "", csv_path: Path | None = None) -> None:
    """rows: dicts with case, variant, metric, value, unit (and optional notes); machine facts are added.
    Appended to bench/results.csv, or to csv_path (same columns)."""
    facts = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": git_sha(),
        **machine(),
    }
    path = Path(csv_path) if csv_path else RESULTS_CSV
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(
                {
                    **facts,
                    "bench": bench,
                    "notes": r.get("notes", notes),
                    **{k: r[k] for k in ("case", "variant", "metric", "value", "unit")},
                }
            )


def run_child(argv: list[str], timeout: float = 1800) -> dict:
    """Run `python -P argv...` in a fresh process (clean memory high-water mark); its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-P", *argv], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(title: str, header: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))

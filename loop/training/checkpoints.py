"""Resumable training: checkpoints every K optimizer steps (safetensors only: the LoRA weights, the AdamW
state and the RNG state), and bringing every rank to rank 0's starting point (weights, and on resume the
optimizer state), since across nodes only rank 0 can read the workdir.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from sealong.loop.errors import RankDisagreement
from sealong.loop.training.parallel import Parallel


def save_checkpoint(directory: Path, step: int, model, opt: torch.optim.Optimizer) -> Path:
    """Write step-<N> atomically, then delete the older ones: only the newest is ever resumed from, and at
    paper scale each holds the LoRA weights and AdamW's two moments in fp32 (~4 GB for r = 128 on an 8B)."""
    import shutil

    from safetensors.torch import save_file
    from sealong.store.artifacts import atomic_dir

    names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    tensors = {f"param/{n}": p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for p, state in opt.state.items():
        for k, v in state.items():
            tensors[f"opt/{names[id(p)]}/{k}"] = (
                (v if torch.is_tensor(v) else torch.tensor(v)).detach().contiguous()
            )
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng/cuda"] = torch.cuda.get_rng_state()
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_dir(directory / f"step-{step:06d}") as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "meta.json").write_text(json.dumps({"step": step}))
    newest = directory / f"step-{step:06d}"
    for old in directory.glob("step-*"):
        if old != newest and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return newest


def latest_checkpoint(directory: Path | None) -> Path | None:
    if directory is None or not directory.is_dir():
        return None
    done = sorted(p for p in directory.glob("step-*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def load_checkpoint(path: Path, model, opt: torch.optim.Optimizer) -> int:
    from safetensors.torch import load_file

    tensors = load_file(str(path / "state.safetensors"))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(tensors[f"param/{n}"])
    for n, p in params.items():
        # safetensors loads onto the CPU: the optimizer's moments go back where their parameter is
        # (AdamW's scalar `step` stays on the CPU, as AdamW keeps it)
        state = {
            k.rsplit("/", 1)[1]: (v if k.endswith("/step") else v.to(p.device))
            for k, v in tensors.items()
            if k.startswith(f"opt/{n}/")
        }
        if state:
            opt.state[p] = state
    torch.set_rng_state(tensors["rng/torch"])
    if "rng/cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng/cuda"])
    return json.loads((path / "meta.json").read_text())["step"]


def sync_from_main(
    model, opt: torch.optim.Optimizer, start: int, par: Parallel, failed: BaseException | None = None
) -> int:
    """Give every rank rank 0's trainable weights and, when resuming, its optimizer state and RNG state.

    Rank 0 alone opens the workdir (the champion adapter it started from, its checkpoints); ranks on other
    nodes have no copy of it. Returns the step to start from.
    """
    from sealong.loop.training.parallel import agree, broadcast_tensor, share

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    names = sorted(params)
    shapes = [(n, tuple(params[n].shape), str(params[n].dtype)) for n in names]
    state_layout = {}
    if par.is_main and start and failed is None:
        for n in names:
            state_layout[n] = {
                k: (tuple(v.shape), str(v.dtype).removeprefix("torch."), v.device.type)
                for k, v in opt.state[params[n]].items()
                if torch.is_tensor(v)
            }
    meta = share(
        {
            "start": start,
            "failed": None if failed is None else f"{type(failed).__name__}: {failed}",
            "shapes": shapes,
            "state": state_layout,
            "rng": torch.get_rng_state() if start else None,
            "cuda_rng": torch.cuda.get_rng_state() if start and torch.cuda.is_available() else None,
        },
        par,
    )
    if failed is not None:  # rank 0 could not read its checkpoint: every rank stops, rank 0 with the cause
        raise failed
    if meta["failed"] is not None:
        raise RankDisagreement(f"rank 0: {meta['failed']}")
    agree(
        None
        if shapes == meta["shapes"]
        else f"its LoRA parameters (names, shapes, dtypes) differ from rank 0's ({len(shapes)} vs "
        f"{len(meta['shapes'])}: are peft or the base model different on this node?)",
        par,
    )
    device = params[names[0]].device
    with torch.no_grad():
        for n in names:
            broadcast_tensor(params[n].data, device)
        for n, layout in meta["state"].items():
            p = params[n]
            if not par.is_main:
                opt.state[p] = {
                    k: torch.empty(
                        shape, dtype=getattr(torch, dt), device="cpu" if where == "cpu" else p.device
                    )
                    for k, (shape, dt, where) in layout.items()
                }
            for k in layout:
                broadcast_tensor(opt.state[p][k], device)
    if meta["start"] and not par.is_main:
        torch.set_rng_state(meta["rng"])
        if meta["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(meta["cuda_rng"])
    return meta["start"]

"""Process groups for training at scale: sequence parallelism inside a group, data parallelism across.

World ranks are laid out in consecutive sequence-parallel groups: with world 8 and SP 4, ranks 0-3 and
4-7 each split one sequence (ring attention or Ulysses); ranks {0, 4}, {1, 5}, … form the data-parallel
groups that see different micro-batches. SP groups of consecutive ranks stay inside a node, where ring
attention's point-to-point (or Ulysses' all-to-all) traffic runs over NVLink.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from sealong.loop.errors import RankDisagreement

COLLECTIVE_TIMEOUT = timedelta(minutes=10)


@dataclass
class Parallel:
    rank: int = 0
    world: int = 1
    sp_size: int = 1
    sp_rank: int = 0
    sp_group: dist.ProcessGroup | None = None
    dp_size: int = 1
    dp_rank: int = 0
    dp_group: dist.ProcessGroup | None = None
    # How the SP group shares attention: [distributed] sequence_parallel, "ring" or "ulysses".
    sp_mode: str = "ring"
    # Sequence parallelism through ring-flash-attn (CUDA + flash_attn) instead of our fused ring attention.
    ring_flash: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(sp_size: int, backend: str = "auto", device: str = "auto") -> Parallel:
    """Join the torchrun job and build the SP and DP groups. A single process gets Parallel().

    device is policy.device: where this rank's model lives. On CUDA every rank first takes GPU LOCAL_RANK
    (the models load onto the current device); "auto" picks NCCL there and gloo on the CPU.
    """
    if not launched_by_torchrun():
        return Parallel()
    on_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if backend == "auto":
        backend = "nccl" if on_cuda else "gloo"
    if not dist.is_initialized():
        # A rank that dies outside the agreed checks (loop/stages/train.py) leaves the others waiting in a
        # collective: bounded here (NCCL's default; gloo's is 30 min).
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return build_groups(sp_size)


def build_groups(sp_size: int) -> Parallel:
    """SP and DP groups over an initialised default group (every rank creates every group, same order)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    if world % sp_size:
        raise ValueError(f"sequence_parallel_size {sp_size} must divide the world size {world}")
    p = Parallel(
        rank=rank,
        world=world,
        sp_size=sp_size,
        sp_rank=rank % sp_size,
        dp_size=world // sp_size,
        dp_rank=rank // sp_size,
    )
    for g in range(world // sp_size):
        ranks = list(range(g * sp_size, (g + 1) * sp_size))
        group = dist.new_group(ranks) if sp_size > 1 else None
        if rank in ranks:
            p.sp_group = group
    for r in range(sp_size):
        ranks = list(range(r, world, sp_size))
        group = dist.new_group(ranks) if p.dp_size > 1 else None
        if rank in ranks:
            p.dp_group = group
    return p


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


# -- rank 0 speaks for the job ----------------------------------------------------------------------------------
# Only global rank 0 reads the store and the workdir; every other rank, on this node or another, gets what it
# needs from rank 0 through these collectives. Every rank must call them in the same order.


def share(obj, par: Parallel):
    """Rank 0's `obj` on every rank (pickled; for the stage's data, not for tensors)."""
    if par.world == 1:
        return obj
    box = [obj if par.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(problem: str | None, par: Parallel) -> None:
    """Every rank states its problem (None: none); if any rank has one, every rank raises, naming them."""
    if par.world == 1:
        if problem:
            raise RankDisagreement(problem)
        return
    found: list = [None] * par.world
    dist.all_gather_object(found, problem)
    bad = [f"rank {r}: {p}" for r, p in enumerate(found) if p]
    if bad:
        raise RankDisagreement("; ".join(bad))


def broadcast_tensor(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Broadcast rank 0's values of t in place through `device` (NCCL moves CUDA tensors only)."""
    if t.device == device:
        dist.broadcast(t, src=0)
        return t
    buf = t.to(device)
    dist.broadcast(buf, src=0)
    t.copy_(buf.to(t.device))
    return t

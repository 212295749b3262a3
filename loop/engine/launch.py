"""How the controller launches a stage's child process.

Every stage runs as `python -P -m sealong.loop.engine.stage_main`; the train stage runs under `torchrun` when
the config's distributed world size is above 1 (one process per GPU; rank 0 records progress).

Across nodes (distributed.nnodes > 1) the controller's node is node 0 of a static rendezvous: its
torchrun agent hosts the store at distributed.rdzv_endpoint, so global rank 0, the only rank that reads
the store and writes files, runs next to the controller. Each other node runs `sealong-loop worker
--node-rank K` (sealong.loop.training.multinode), which starts the same torchrun job from its side (`worker_command`)
once it has passed node 0's gate (engine/gate.py: the run token, the join timeout).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sealong.loop.config import Config
from sealong.loop.engine import rendezvous
from sealong.loop.engine.gate import gate_command


def stage_command(cfg: Config, stage: str, workdir: Path, stage_id: int) -> list[str]:
    args = ["--workdir", str(workdir), "--stage-id", str(stage_id), "--parent-pid", str(os.getpid())]
    d = cfg.distributed
    if stage == "train" and d.world_size > 1:
        cmd = torchrun(cfg, node_rank=0, rdzv_timeout=d.rdzv_timeout) + [
            "-m",
            "sealong.loop.engine.stage_main",
            *args,
        ]
        launch = rendezvous.read(workdir) if d.nnodes > 1 else None
        return gate_command(launch, workdir, stage_id, cmd) if launch else cmd
    return [sys.executable, "-P", "-m", "sealong.loop.engine.stage_main", *args]


def torchrun(cfg: Config, node_rank: int, rdzv_timeout: int) -> list[str]:
    """`python -m torch.distributed.run` with this config's layout, up to the module to run."""
    d = cfg.distributed
    cmd = [
        sys.executable,
        "-P",
        "-m",
        "torch.distributed.run",
        f"--nnodes={d.nnodes}",
        f"--nproc-per-node={d.nproc_per_node}",
        "--max-restarts=0",  # a failed rank fails the stage; the controller's retries take over
    ]
    if d.nnodes == 1:
        return cmd + ["--standalone"]
    return cmd + [
        f"--rdzv-backend={d.rdzv_backend}",
        f"--rdzv-endpoint={d.rdzv_endpoint}",
        f"--rdzv-id={d.rdzv_id}",
        f"--rdzv-conf=timeout={rdzv_timeout}",
        f"--node-rank={node_rank}",
    ]


def worker_command(cfg: Config, config_path: Path, node_rank: int, scratch: Path, wait_s: int) -> list[str]:
    """What `sealong-loop worker` runs on node `node_rank` (> 0) for one training stage: torchrun joins
    the controller's rendezvous (waiting up to wait_s for it), and its ranks get the stage's data from
    rank 0, so this node needs the config and the base model, never the workdir."""
    return torchrun(cfg, node_rank=node_rank, rdzv_timeout=wait_s) + [
        "-m",
        "sealong.loop.training.multinode",
        "--config",
        str(config_path),
        "--scratch",
        str(scratch),
    ]

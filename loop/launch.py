"""How the controller launches a stage's child process.

Every stage runs as `python -P -m sealong.loop.stage_main`; the train stage runs under `torchrun` when
the config's distributed world size is above 1 (one process per GPU; rank 0 records progress).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sealong.loop.config import Config


def stage_command(cfg: Config, stage: str, workdir: Path, stage_id: int) -> list[str]:
    args = ["--workdir", str(workdir), "--stage-id", str(stage_id), "--parent-pid", str(os.getpid())]
    d = cfg.distributed
    if stage == "train" and d.world_size > 1:
        rdzv = [f"--nnodes={d.nnodes}", f"--nproc-per-node={d.nproc_per_node}"]
        if d.nnodes > 1:
            rdzv += [
                f"--rdzv-backend={d.rdzv_backend}",
                f"--rdzv-endpoint={d.rdzv_endpoint}",
                f"--rdzv-id={d.rdzv_id}",
            ]
        else:
            rdzv += ["--standalone"]
        return [
            sys.executable,
            "-P",
            "-m",
            "torch.distributed.run",
            *rdzv,
            "-m",
            "sealong.loop.stage_main",
            *args,
        ]
    return [sys.executable, "-P", "-m", "sealong.loop.stage_main", *args]

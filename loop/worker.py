"""Training across nodes: the other nodes' side of a multi-node train stage.

With `distributed.nnodes = N > 1`, the controller's node is node 0: for each train stage its torchrun agent
hosts a static rendezvous at `distributed.rdzv_endpoint` and runs global rank 0, the only rank that reads
the store and writes files. On each other node K (1 … N-1), a user runs, once, e.g. under tmux or srun:

    sealong-loop worker --config run.toml --node-rank K [--scratch DIR]

It waits for the controller's next training stage, joins it with `nproc_per_node` ranks, and starts
waiting again when it ends, round after round, until stopped (Ctrl-C) or, with `--once`, after one stage.
Its ranks get the run's config, the round's pairs and the starting LoRA weights (and, when a stage
resumes, the checkpoint's optimizer state) from rank 0, so this node needs neither the workdir nor its
database: only the config's [distributed] layout (which must match the run's) and the base model, at the
path `policy.model` names on this node (bundled and test models are rebuilt in DIR). A base model that is
not the same model as rank 0's fails the stage at once, with the reason, on every node.

`python -m sealong.loop.worker --config C --scratch DIR` is one such rank; torchrun starts it.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sealong.loop.config import Config, load_config
from sealong.loop.errors import EXIT_FATAL, EXIT_RETRYABLE, SealongError

JOINED = "joined"  # a file each rank of this node touches once the job's process group is up


def check_node(cfg: Config, node_rank: int, path: str) -> None:
    d = cfg.distributed
    if d.nnodes < 2:
        raise SealongError(
            f"{path}: distributed.nnodes is {d.nnodes}; a worker node is only needed when it is 2 or more"
        )
    if not 1 <= node_rank < d.nnodes:
        raise SealongError(
            f"--node-rank must be 1 … {d.nnodes - 1} (node 0 is the controller's; got {node_rank})"
        )


def serve(config_path: Path, node_rank: int, scratch: Path, wait_s: int, once: bool, log=print) -> int:
    """Join training stages until stopped; returns the exit code of the last stage with `once`."""
    from sealong.loop.launch import worker_command

    cfg = load_config(config_path, check_paths=False)
    check_node(cfg, node_rank, str(config_path))
    scratch.mkdir(parents=True, exist_ok=True)
    logs = scratch / "logs"
    logs.mkdir(exist_ok=True)
    cmd = worker_command(cfg, config_path.resolve(), node_rank, scratch.resolve(), wait_s)
    d = cfg.distributed
    n = quick_failures = 0
    while True:
        n += 1
        (scratch / JOINED).unlink(missing_ok=True)
        log(
            f"node {node_rank} of {d.nnodes}: waiting up to {wait_s} s for the controller's training stage "
            f"at {d.rdzv_endpoint}"
        )
        log_path = logs / f"job-{n:04d}.log"
        t0 = time.monotonic()
        with open(log_path, "w") as out:
            rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=_rank_env()).returncode
        secs = time.monotonic() - t0
        if (scratch / JOINED).exists():
            quick_failures = 0
            if rc == 0:
                log(f"node {node_rank}: trained with the controller in {secs:.0f} s")
            else:
                log(
                    f"node {node_rank}: the training stage failed here (exit {rc}) after {secs:.0f} s; log: {log_path}"
                )
                for line in _tail(log_path):
                    log(f"  {line}")
            if once:
                return 0 if rc == 0 else EXIT_RETRYABLE
        elif rc != 0 and secs < min(30.0, 0.9 * wait_s):  # failed before any rendezvous wait
            quick_failures += 1
            if quick_failures >= 3:
                log(
                    f"node {node_rank}: torchrun failed {quick_failures} times before joining; log: {log_path}"
                )
                for line in _tail(log_path):
                    log(f"  {line}")
                return EXIT_FATAL
            time.sleep(5.0 * quick_failures)
        else:
            log_path.unlink(missing_ok=True)  # the wait ran out with no stage to join: nothing to keep
            log(f"node {node_rank}: no training stage started within {wait_s} s")
        time.sleep(2.0)  # let the ended job's store close before joining the next one


def _rank_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


_ERROR = re.compile(r"^(\[rank\d+\]: )?([\w.]*(Error|Exception|Disagreement)|training stopped):")


def _tail(path: Path, n: int = 8) -> list[str]:
    """The ranks' own error lines (not torchrun's summary of them), else the log's last lines."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR.match(ln) and "ChildFailedError" not in ln]
    return errors[-3:] if errors else lines[-n:]


# -- one rank ----------------------------------------------------------------------------------------------------


def rank_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="one rank of a worker node (torchrun starts it)")
    ap.add_argument("--config", required=True)
    ap.add_argument("--scratch", required=True)
    args = ap.parse_args(argv)
    scratch = Path(args.scratch).resolve()
    from sealong.loop import stage_main

    stage_main._quiet_libraries()
    stage_main._contain_writes(scratch, alone=False)
    own = load_config(args.config, check_paths=False)
    stage_main._limit_threads(own.policy.threads)

    from sealong.loop import parallel
    from sealong.loop.stages import train

    # Before joining: transformers writes a model only on global rank 0 once a process group is up.
    base, problem = None, None
    try:
        base = _base(own, scratch)
    except Exception as e:  # noqa: BLE001 - told to every rank once the group is up
        problem = f"cannot prepare its base model ({own.policy.model}): {e}"
    d = own.distributed
    par = parallel.setup(d.sequence_parallel_size, d.backend, own.policy.device)
    (scratch / JOINED).touch()
    try:
        train.follow(par, base, problem)
    except parallel.RankDisagreement as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return EXIT_FATAL
    finally:
        parallel.teardown()
    return 0


def _base(own: Config, scratch: Path) -> Path:
    """This node's base model: the directory policy.model names here, or the bundled/test model rebuilt in
    the scratch directory (one rank of this node builds it, the others wait)."""
    from sealong.loop.models import prepare_base_model

    with open(scratch / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return prepare_base_model(own.policy.model, scratch, own.run.seed)


if __name__ == "__main__":
    sys.exit(rank_main())

"""The other nodes' side of a multi-node run: `sealong-loop worker`'s loop, and one rank of a train stage.

Each stage of a multi-node launch opens node 0's work store (the rendezvous port + 1): a sample or eval
stage's (the worker runs its share there: engine/nodes.py), or a train stage's gate (engine/gate.py: the
run token and the join timeout), after which the worker starts its torchrun agent as below. Where the
nodes meet, how many they are and this node's rank are per launch (engine/rendezvous.py).

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

`python -m sealong.loop.training.multinode --config C --scratch DIR` is one such rank; torchrun starts it.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sealong.loop.config import Config, load_config
from sealong.loop.errors import (
    EXIT_CANNOT_JOIN,
    EXIT_FAILED,
    STAGE_EXIT_FATAL,
    JoinRefused,
    RankDisagreement,
    SealongError,
)

JOINED = "joined"  # a file each rank of this node touches once the job's process group is up


def check_node(cfg: Config, node_rank: int, path: str) -> None:
    d = cfg.distributed
    if d.nnodes < 2:
        raise SealongError(
            f"{path}: distributed.nnodes is {d.nnodes}; a worker node is only needed when it is 2 or more "
            "(this launch's count: --nnodes, SEALONG_NNODES, SLURM_NNODES or LWS_GROUP_SIZE)"
        )
    if not 1 <= node_rank < d.nnodes:
        got = (
            "not given: --node-rank, SLURM_NODEID or LWS_WORKER_INDEX"
            if node_rank < 0
            else f"got {node_rank}"
        )
        raise SealongError(f"--node-rank must be 1 … {d.nnodes - 1} (node 0 is the controller's; {got})")


def serve(
    config_path: Path,
    node_rank: int | None,
    scratch: Path,
    wait_s: int,
    once: bool,
    log=print,
    *,
    endpoint: str | None = None,
    nnodes: int | None = None,
    token: str | None = None,
    token_file: str | None = None,
    max_idle: int = 0,
) -> int:
    """Join stages until stopped; returns the exit code of the last stage with `once`.

    Training stages: this node's torchrun agent joins node 0's at the rendezvous endpoint. Sample and eval
    stages: engine/nodes.py `follow`, at the endpoint's port + 1. SIGTERM or Ctrl-C stops the agent or the
    engines first, then leaves with 130 (SIGINT) or 143 (SIGTERM). max_idle > 0: leave with 0 after that
    many seconds without a stage (a batch job's workers end once the run has)."""
    from sealong.loop.engine import nodes, rendezvous
    from sealong.loop.engine.launch import worker_command

    own = load_config(config_path, check_paths=False)

    def launch_now() -> rendezvous.Launch:  # the token file is read again at each stage: a new launch
        return rendezvous.resolve(
            own, endpoint=endpoint, nnodes=nnodes, node_rank=node_rank, token=token, token_file=token_file
        )

    launch = launch_now()
    cfg = rendezvous.apply(own, launch)
    check_node(cfg, launch.node_rank, str(config_path))
    if not launch.token:
        raise SealongError(
            "no run token: give this launch's token with SEALONG_RUN_TOKEN or --run-token-file (the "
            "controller's is in <workdir>/run-token)"
        )
    scratch.mkdir(parents=True, exist_ok=True)
    logs = scratch / "logs"
    logs.mkdir(exist_ok=True)
    env = {"SEALONG_NNODES": str(launch.nnodes), "SEALONG_RDZV_ENDPOINT": launch.endpoint}
    cmd = worker_command(cfg, config_path.resolve(), launch.node_rank, scratch.resolve(), wait_s)
    d, node_rank = cfg.distributed, launch.node_rank
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = quick_failures = 0
    idle_since = time.monotonic()
    signal.signal(signal.SIGTERM, _raise_stop)
    while True:
        n += 1
        (scratch / JOINED).unlink(missing_ok=True)
        log(
            f"node {node_rank} of {d.nnodes}: waiting up to {wait_s} s for the controller's next stage at {d.rdzv_endpoint}"
        )
        if not _wait_for_stage(launch.work_endpoint, wait_s):
            log(f"node {node_rank}: no stage started within {wait_s} s")
            if max_idle and time.monotonic() - idle_since >= max_idle:
                log(f"node {node_rank}: idle for {max_idle} s (--max-idle); leaving")
                return 0
            continue
        work = f"{launch.work_endpoint[0]}:{launch.work_endpoint[1]}"
        try:
            what = nodes.follow(launch_now(), own.policy.model, scratch.resolve(), log)
        except JoinRefused as e:
            log(f"node {node_rank}: {e}")
            return EXIT_CANNOT_JOIN
        except Exception as e:  # noqa: BLE001 - the stage failed (node 0 says why); wait for the next
            what = "failed"
            log(f"node {node_rank}: the stage failed here: {e}")
        if what != "train":
            idle_since = time.monotonic()
            if what == "work":
                log(f"node {node_rank}: finished its share of the stage")
            if once:
                return 0 if what == "work" else EXIT_FAILED
            _wait_until_closed(work, 120.0)
            continue
        log_path = logs / f"{stamp}-job-{n:04d}.log"
        t0 = time.monotonic()
        with open(log_path, "w") as out:
            rc = _run_agent(cmd, out, scratch, env)
        secs = time.monotonic() - t0
        idle_since = time.monotonic()
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
                return 0 if rc == 0 else EXIT_FAILED
            _wait_until_closed(d.rdzv_endpoint, 120.0)  # never join the ended job's store
            _wait_until_closed(work, 120.0)  # nor pass the ended stage's gate again
            continue
        if rc != 0 and _waited_in_vain(log_path):
            quick_failures = 0
            log_path.unlink(missing_ok=True)  # the wait ran out with no stage to join: nothing to keep
            log(f"node {node_rank}: no training stage started within {wait_s} s")
            continue
        # torchrun failed without joining a stage and not for want of one: say why, and give up after 3
        quick_failures += 1
        log(f"node {node_rank}: torchrun failed before joining a stage (exit {rc}); log: {log_path}")
        for line in _tail(log_path):
            log(f"  {line}")
        if quick_failures >= 3 or once:
            return EXIT_CANNOT_JOIN
        time.sleep(10.0 * quick_failures)


def _wait_for_stage(work: tuple[str, int], wait_s: float) -> bool:
    """Whether node 0 opened a stage's work store (the rendezvous port + 1) within wait_s seconds: a
    sample/eval stage, or the gate of a train stage (engine/gate.py)."""
    from sealong.loop.engine.nodes import listening

    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if listening(*work):
            return True
        time.sleep(0.5)
    return False


def _raise_stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _run_agent(cmd: list[str], out, cwd: Path, env: dict[str, str]) -> int:
    # cwd: torchrun starts the ranks without -P, and a checkout's top-level `kernels/` folder would shadow
    # the `kernels` package bitsandbytes imports
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**_rank_env(), **env}, cwd=cwd)
    try:
        return proc.wait()
    except (KeyboardInterrupt, SystemExit) as e:
        proc.send_signal(signal.SIGTERM)  # the agent stops its ranks (they run in their own sessions)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise SystemExit(e.code if isinstance(e, SystemExit) else 130) from None


def _waited_in_vain(log_path: Path) -> bool:
    """Did torchrun end because nobody hosted the rendezvous in time (its store client timed out)?"""
    text = log_path.read_text(errors="replace")
    return "client socket has timed out" in text and "trying to connect to" in text


def _wait_until_closed(endpoint: str, limit_s: float) -> None:
    """Wait (bounded) until nothing listens at the rendezvous endpoint: node 0's agent of the job that
    just ended can outlive this node's by seconds, and its store would take a new agent in."""
    from sealong.loop.engine.nodes import listening

    host, _, port = endpoint.rpartition(":")
    end = time.monotonic() + limit_s
    while time.monotonic() < end and listening(host, int(port)):
        time.sleep(1.0)


def _rank_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONSAFEPATH"] = "1"  # Python 3.11+: no script or working directory on sys.path, as `python -P`
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
    from sealong.loop.engine import stage_main

    stage_main._die_with_parent(os.getppid())  # the torchrun agent: its ranks run in their own sessions
    stage_main._quiet_libraries()
    stage_main._contain_writes(scratch, alone=False)
    own = load_config(args.config, check_paths=False)
    if os.environ.get("SEALONG_NNODES"):  # this launch's node count, from the worker (engine/rendezvous.py)
        from sealong.loop.engine import rendezvous

        own = rendezvous.apply(own, rendezvous.resolve(own, endpoint=os.environ.get("SEALONG_RDZV_ENDPOINT")))
    stage_main._limit_threads(own.policy.threads)

    from sealong.loop.stages import train
    from sealong.loop.training import parallel

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
        if not train.follow(par, base, problem):
            print(
                "training stopped: rank 0 could not start this stage (the controller's log says why)",
                file=sys.stderr,
            )
            return STAGE_EXIT_FATAL
    except RankDisagreement as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return STAGE_EXIT_FATAL
    finally:
        parallel.teardown()
    return 0


def _base(own: Config, scratch: Path) -> Path:
    """This node's base model: the directory policy.model names here, or the bundled/test model rebuilt in
    the scratch directory (one rank of this node builds it, the others wait)."""
    from sealong.loop.backends.models import prepare_base_model

    with open(scratch / "base.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return prepare_base_model(own.policy.model, scratch, own.run.seed)


if __name__ == "__main__":
    sys.exit(rank_main())

"""Data parallelism for the sample and eval stages: `sample.replicas` independent copies of the policy.

The stage process (the coordinator) starts one child per replica,
`python -P -m sealong.loop.engine.stage_main … --replica I --replicas N`, and waits for them. Replica I takes
the questions at positions I, I + N, I + 2N, … of the stage's fixed question list, so a rerun after a
kill gives every replica the same share, and skips what the store already holds. Replicas write their
rows to the store themselves, one transaction per chunk of questions (one question on the transformers
backend, up to 64 with vLLM; SQLite WAL, writers queue on BEGIN IMMEDIATE), so a kill loses at most each
replica's chunk in flight. The coordinator reports progress
from the store, and marks the stage done only after every replica exited 0 and every question has its rows.

Devices. vllm: replica I sees GPUs [I·TP, (I+1)·TP) of those visible to the stage (CUDA_VISIBLE_DEVICES).
transformers: one GPU each when the policy runs on CUDA; on the CPU, policy.threads threads each (0: the
cores split evenly). vllm replicas also get their own VLLM_PORT range. The vllm path is UNTESTED until it
has run on GPUs; the transformers path runs in the tests on the CPU. Results do not depend on the number of replicas: every question's seed is its own.

One replica failing stops the others (SIGTERM, then SIGKILL) and fails the stage; the controller retries
it like any other stage. Replicas die with the coordinator (PR_SET_PDEATHSIG), so killing the stage, or
the controller, leaves none behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sealong.loop.config import Config
from sealong.loop.errors import (
    STAGE_EXIT_FATAL,
    FatalReplicaFailure,
    ReplicaFailed,
    SetupError,
    exit_on_sigterm,
)

if TYPE_CHECKING:
    from sealong.loop.stages.base import StageContext

T = TypeVar("T")
STOP_GRACE_S = 10.0  # after SIGTERM, replicas get this long before SIGKILL
SIGTERM_GRACE_S = 3.0  # the same when the stage itself is being stopped (the controller waits 10 s)
ENV = "SEALONG_REPLICA"  # "I/N" in a replica process
VLLM_PORT_BASE, VLLM_PORT_STRIDE = 30000, 100


def share(items: Sequence[T], replica: int, replicas: int) -> list[T]:
    """Replica `replica`'s items: every `replicas`-th, starting at its index (long and short contexts mix)."""
    if not 0 <= replica < replicas:
        raise ValueError(f"replica {replica} is not in [0, {replicas})")
    return list(items[replica::replicas])


def visible_gpus(env: dict[str, str] | None = None) -> list[str]:
    """The GPU ids this process may hand out: CUDA_VISIBLE_DEVICES if set, else every GPU torch counts."""
    env = os.environ if env is None else env
    listed = env.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpus_per_replica(cfg: Config, have_gpus: bool) -> int:
    """GPUs each replica needs: vllm's tensor-parallel size; 1 for transformers on CUDA; 0 on the CPU."""
    if cfg.sample.backend == "vllm":
        return cfg.vllm.tensor_parallel_size
    device = cfg.policy.device
    return 1 if device == "cuda" or (device == "auto" and have_gpus) else 0


def replica_envs(
    cfg: Config, base_env: dict[str, str], gpus: list[str], cpu_count: int
) -> list[dict[str, str]]:
    """The environment of each replica process: its GPUs, its CPU threads, and its index."""
    n, per = cfg.sample.replicas, gpus_per_replica(cfg, bool(gpus))
    if per and n * per > len(gpus):
        raise SetupError(
            f"sample.replicas = {n} × {per} GPU(s) each ("
            + ("vllm.tensor_parallel_size" if cfg.sample.backend == "vllm" else "transformers on CUDA")
            + f") needs {n * per} GPUs; this process sees {len(gpus)}"
            + (
                f" (CUDA_VISIBLE_DEVICES={base_env['CUDA_VISIBLE_DEVICES']})"
                if "CUDA_VISIBLE_DEVICES" in base_env
                else ""
            )
            + ". Lower sample.replicas, or run `sealong-loop doctor --config …`"
        )
    threads = cfg.policy.threads or max(1, cpu_count // n)
    if cfg.sample.backend == "vllm":
        from sealong.loop.backends.vllm_backend import engine_env
    envs = []
    for i in range(n):
        # vLLM's own data parallelism (VLLM_DP_*) is for MoE models and fails on dense ones; each replica
        # here is a separate engine, so an inherited setting must not reach it
        env = {k: v for k, v in base_env.items() if not k.startswith("VLLM_DP_")}
        env[ENV] = f"{i}/{n}"
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if per:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[i * per : (i + 1) * per])
        if cfg.sample.backend == "vllm":
            # vllm.engine_in_process (default true): the engine core in the replica's process, not a child
            # that would outlive a SIGKILLed replica and hold its GPU memory into the retry. With false,
            # the child is in the replica's process group, which _stop kills whole.
            env.update(engine_env(cfg))
            # vLLM scans for its internal ports upward from VLLM_PORT; engines that start at once from the
            # same base can race for one port and fail with EADDRINUSE (vllm-project/vllm#43206,
            # verl-project/verl#6677), so each replica scans from its own base.
            env["VLLM_PORT"] = str(int(base_env.get("VLLM_PORT", VLLM_PORT_BASE)) + VLLM_PORT_STRIDE * i)
        envs.append(env)
    return envs


def replica_command(
    workdir: Path, stage_id: int, replica: int, replicas: int, controller_pid: int
) -> list[str]:
    return [
        sys.executable,
        "-P",
        "-m",
        "sealong.loop.engine.stage_main",
        "--workdir",
        str(workdir),
        "--stage-id",
        str(stage_id),
        "--parent-pid",
        str(os.getpid()),
        "--controller-pid",
        str(controller_pid),
        "--replica",
        str(replica),
        "--replicas",
        str(replicas),
    ]


def failure_file(workdir: Path, stage_id: int, replica: int) -> Path:
    """Where a failing replica leaves its one-line reason for the coordinator (under the stage's tmp/)."""
    return workdir / "tmp" / f"stage{stage_id}-replica{replica}.failure"


def run_replicas(ctx: StageContext, on_poll: Callable[[], None] = lambda: None, poll_s: float = 1.0) -> None:
    """Start ctx.cfg.sample.replicas replica processes of this stage and wait for all of them.

    Calls on_poll about once a second (progress from the store). Raises ReplicaFailed when one fails,
    after stopping the rest. Each replica is its own process group (an engine's helper processes
    included), inherits the stage lock, and is stopped with its group on any way out of here, SIGTERM
    included.
    """
    cfg, workdir, stage_id = ctx.cfg, ctx.workdir, ctx.stage_id
    n = cfg.sample.replicas
    gpus = visible_gpus() if gpus_per_replica(cfg, True) else []
    envs = replica_envs(cfg, dict(os.environ), gpus, os.cpu_count() or 1)
    procs: list[subprocess.Popen] = []
    previous = signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        for i in range(n):
            failure_file(workdir, stage_id, i).unlink(missing_ok=True)
            procs.append(
                subprocess.Popen(
                    replica_command(workdir, stage_id, i, n, ctx.controller_pid or os.getpid()),
                    env=envs[i],
                    stdin=subprocess.DEVNULL,
                    cwd=workdir,
                    start_new_session=True,
                    pass_fds=(ctx.lock_fd,) if ctx.lock_fd is not None else (),
                )
            )
        while True:
            codes = [p.poll() for p in procs]
            on_poll()
            failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                break
            if all(c == 0 for c in codes):
                return
            time.sleep(poll_s)
    except SystemExit:  # SIGTERM: the controller is stopping the stage, and waits only so long
        _stop(procs, SIGTERM_GRACE_S)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)  # end as any stage process stopped by SIGTERM ends
        raise
    finally:
        _stop(procs, STOP_GRACE_S)
        signal.signal(signal.SIGTERM, previous)
    i, code = max(failed, key=lambda f: f[1] == STAGE_EXIT_FATAL)  # a fatal exit is the one to report
    reason = failure_file(workdir, stage_id, i)
    why = reason.read_text().strip() if reason.is_file() else f"killed by signal {-code}" if code < 0 else ""
    raise (FatalReplicaFailure if code == STAGE_EXIT_FATAL else ReplicaFailed)(
        f"replica {i} of {n} exited with code {code}" + (f": {why}" if why else "") + "; the other replicas "
        "were stopped and what they committed is kept (the stage log holds each replica's output)"
    )


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every replica's process group, SIGKILL what is left after `grace` seconds; reap."""
    for p in procs:
        _signal_group(p, signal.SIGTERM)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:  # the group too: an engine's helper process may outlive its replica
        _signal_group(p, signal.SIGKILL)
        p.wait()

"""Child-process entry point for one stage: `python -P -m sealong.loop.engine.stage_main --workdir W --stage-id N`.

The controller launches this; users normally do not. With `--replica I --replicas N` it is one replica
of a data-parallel sample or eval stage (see sealong.loop.engine.replicas): it runs the stage module's
`run_replica(ctx, I, N)` on its share, takes no stage lock (its coordinator holds it), and leaves recording
the stage's outcome to the coordinator. Exit codes (sealong.loop.errors): 0 done, 1 failed (retryable),
10 failed (not retryable: the same inputs would fail again, e.g. a NaN loss, a corrupted adapter, a full
disk that someone must clear first).

A stage is done once its last transaction commits (`ctx.mark_done`); nothing after that, not even this
process dying, turns it back. One stage process writes to a workdir at a time: each takes an flock on
`<workdir>/stage.lock`, so a stray process of a killed controller (which dies within a second, see
`_die_with_parent`) is waited for rather than raced.

Fault injection (tests only; off unless set, see sealong.store.faults for the grammar):
    SEALONG_FAULT="train:2"                         the first 2 attempts of train fail
    SEALONG_FAULT="train:after-rename@adapter-*:kill"   SIGKILL train between the adapter's rename and its commit
    SEALONG_FAULT="sample:progress:kill-controller"  SIGKILL the controller mid-sample
    SEALONG_FAULT="train:loss@2:nan"                the 2nd micro-batch's ORPO loss is NaN
    SEALONG_FAULT="train:write-partial@adapter-*:enospc"  the adapter write fails as on a full disk
    SEALONG_FAULT_DIR=<dir>                         each entry fires once (claimed by a file in <dir>)
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
import zlib
from pathlib import Path

from sealong.loop.errors import STAGE_EXIT_RETRYABLE, exit_code_for, exit_on_sigterm
from sealong.store.liveness import process_alive, process_start_time

STAGE_LOCK = "stage.lock"
STAGE_LOCK_WAIT_S = 60.0


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the controller dies, so a killed controller leaves no stage running.

    A direct child gets SIGKILL from the kernel (Linux PR_SET_PDEATHSIG). Under torchrun the parent is
    the torchrun agent, so a watchdog thread also polls the controller's pid once a second.
    """
    if os.getppid() == parent_pid:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    # With its start time, a pid the kernel gave to another process after the controller died is no reprieve.
    started = process_start_time(parent_pid)

    def watch() -> None:
        while process_alive(parent_pid, started):
            time.sleep(1.0)
        os._exit(STAGE_EXIT_RETRYABLE)

    threading.Thread(target=watch, name="controller-watchdog", daemon=True).start()


def exit_code_file(workdir: Path, stage_id: int) -> Path:
    """Where rank 0 of a torchrun stage leaves its exit code (torchrun itself exits 1 on any failure)."""
    return workdir / "tmp" / f"stage-{stage_id}.exit"


def _quiet_libraries() -> None:
    """Through the environment: importing transformers here would cost pairs and promote ~2 s (offline and
    hub progress bars: sealong/loop/__init__.py)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def _contain_writes(workdir: Path, alone: bool, replica: int | None = None) -> None:
    """Point the libraries' temp and cache directories into the workdir, before they are imported: torch
    creates $TMPDIR/torchinductor_<user> on import, and remote code (when allowed) is copied to a cache.
    Each data-parallel replica compiles into its own vLLM and inductor caches: engines that start at once
    and compile into one cache can race (vllm-project/vllm#24601)."""
    tmp = workdir / "tmp"
    if alone:  # holding the stage lock, not a torchrun rank or a replica: clear what killed stages left
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    cache = workdir / "cache"
    own = cache if replica is None else cache / f"replica-{replica}"
    os.environ["TMPDIR"] = str(tmp)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(own / "torchinductor")
    os.environ["VLLM_CACHE_ROOT"] = str(own / "vllm")
    os.environ["TRITON_CACHE_DIR"] = str(cache / "triton")
    os.environ["HF_MODULES_CACHE"] = str(cache / "hf_modules")
    os.environ["MPLCONFIGDIR"] = str(cache / "matplotlib")
    tempfile.tempdir = None  # forget a temp dir chosen before this point


def _limit_threads(threads: int) -> None:
    """Torch threads for this process; set through the environment so stages that never import torch
    (pairs, promote) do not pay for importing it."""
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


def _stage_lock(workdir: Path) -> int | None:
    """Wait (bounded) for an exclusive flock on <workdir>/stage.lock. Rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") != "0":
        return None
    fd = os.open(workdir / STAGE_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    end = time.monotonic() + STAGE_LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > end:
                os.close(fd)
                raise RuntimeError(
                    f"another stage process still holds {workdir / STAGE_LOCK} after "
                    f"{STAGE_LOCK_WAIT_S:.0f} s"
                ) from None
            time.sleep(0.1)


def _seed_everything(run_seed: int, round_idx: int, name: str) -> None:
    """Seed the global generators from (run, round, stage), so a rerun of a stage after a crash draws what
    the first attempt drew: e.g. PEFT initialises LoRA's A matrices from torch's global generator."""
    seed = (run_seed * 1_000_003 + round_idx * 7919 + zlib.crc32(name.encode())) % (2**31)
    random.seed(seed)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(seed)
    if "torch" in sys.modules:
        sys.modules["torch"].manual_seed(seed)


def _failure(e: BaseException, name: str, workdir: Path) -> tuple[str, int]:
    """(message for the store, exit code) for an exception that ended the stage."""
    from sealong.loop.errors import SealongError
    from sealong.store.artifacts import is_disk_full

    if is_disk_full(e):
        message = (
            f"disk full during {name}: {e}; nothing was recorded as done. Free space on the filesystem of "
            f"{workdir} (df -h {workdir}), then `sealong-loop start --workdir {workdir}` resumes the run"
        )
    else:
        message = str(e) if isinstance(e, SealongError) else f"{type(e).__name__}: {e}"
    return message, exit_code_for(e, stage=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--stage-id", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    ap.add_argument(
        "--controller-pid", type=int, default=0, help="replicas: the controller (default: parent)"
    )
    ap.add_argument("--replica", type=int, default=None, help="this replica's index (data-parallel stages)")
    ap.add_argument("--replicas", type=int, default=1)
    args = ap.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    _quiet_libraries()
    replica = args.replica is not None

    from sealong.loop.config import config_from_dict
    from sealong.loop.engine import rendezvous
    from sealong.loop.stages.base import StageContext
    from sealong.loop.stages.registry import stage_spec
    from sealong.store import faults, state
    from sealong.store.db import connect, log_event, one

    workdir = Path(args.workdir).resolve()
    lock_fd = None if replica else _stage_lock(workdir)  # held until this process (and its replicas) exit
    if replica:  # SIGTERM from the coordinator: unwind, so engines (vLLM) shut down their own processes
        signal.signal(signal.SIGTERM, exit_on_sigterm)
    _contain_writes(workdir, alone=not replica and "RANK" not in os.environ, replica=args.replica)
    db = connect(workdir)
    stage = one(db, "SELECT * FROM stages WHERE id = ?", (args.stage_id,))
    if stage["status"] == state.StageStatus.DONE:
        print(f"{stage['name']} is already recorded as done; nothing to do", file=sys.stderr)
        return 0
    rnd = one(db, "SELECT * FROM rounds WHERE id = ?", (stage["round_id"],))
    run = one(db, "SELECT * FROM runs WHERE id = ?", (rnd["run_id"],))
    cfg = config_from_dict(json.loads(run["config_json"]), f"{workdir}/config.toml")
    launch = rendezvous.read(workdir)
    if launch is not None:  # this launch's endpoint and node count, not the stored ones
        cfg = rendezvous.apply(cfg, launch)
    _limit_threads(cfg.policy.threads)
    ctx = StageContext(
        db=db,
        cfg=cfg,
        workdir=workdir,
        run_id=run["id"],
        round_id=rnd["id"],
        round_idx=rnd["idx"],
        stage_id=stage["id"],
        name=stage["name"],
        controller_pid=args.controller_pid or args.parent_pid,
        lock_fd=lock_fd,
    )
    faults.set_context(stage["name"], rnd["idx"], args.controller_pid or args.parent_pid or None)
    try:
        if not replica:
            faults.point("start", attempt=stage["attempts"])
        module = stage_spec(stage["name"]).load()
        _seed_everything(cfg.run.seed, rnd["idx"], stage["name"])
        if replica:
            module.run_replica(ctx, args.replica, args.replicas)
        else:
            module.run(ctx)
    except BaseException as e:  # noqa: BLE001 - every failure is recorded, then reported by exit code
        message, code = _failure(e, stage["name"], workdir)
        traceback.print_exc(file=sys.stderr)
        if replica:  # the coordinator records the stage's failure, with this reason
            from sealong.loop.engine.replicas import failure_file

            print(
                f"{stage['name']} replica {args.replica}/{args.replicas} failed: {message}", file=sys.stderr
            )
            try:
                failure_file(workdir, stage["id"], args.replica).write_text(message)
            except OSError:
                pass
            return code
        print(f"{stage['name']} failed: {message}", file=sys.stderr)
        rank = os.environ.get("RANK")
        if rank == "0":  # torchrun exits 1 whatever its ranks' codes: leave ours for the controller
            try:
                exit_code_file(workdir, stage["id"]).write_text(str(code))
            except OSError:
                pass
        elif rank is not None:
            return code  # rank 0 records the stage's failure (every rank fails with the same reason)
        try:
            # A stage that committed `done` stays done, whatever happens to its process afterwards.
            state.mark_stage_failed(db, stage["id"], message)
            log_event(db, f"{stage['name']} failed: {message}", "error", run["id"], rnd["id"], stage["name"])
        except Exception as record_error:  # noqa: BLE001 - e.g. the same full disk; the controller records it
            print(f"could not record the failure in the store: {record_error}", file=sys.stderr)
        return code
    if not replica:
        faults.point("after-commit")
    return 0


if __name__ == "__main__":
    sys.exit(main())

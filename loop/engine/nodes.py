"""Sample and eval on every node: node 0's stage process hands out questions through a c10d TCPStore.

With a launch of N > 1 nodes (engine/rendezvous.py), the sample or eval stage process on node 0 (the
host) opens a TCPStore at the rendezvous host, port + 1, and publishes the run token's sha256, the job
(the run's config, the round, the adapters' files) and one key per task (a question, or a question and a
model for eval), longest context first. On every other node, `sealong-loop worker` (the agent) connects,
compares the token (a mismatch is refused: JoinRefused, before it counts as joined), takes its node rank
(a second worker with the same rank is refused too), beats a heartbeat once a second, and starts
sample.replicas engine processes; node 0's host starts its own. Once every node has joined (within
distributed.join_timeout, else the stage fails naming the missing ranks) and every engine has loaded its
model, the host says go. Each engine then claims the next tasks with one atomic `add` on a counter, so a
slow node simply claims fewer, computes them and posts the rows under the task's key. Only the host
writes SQLite: each result in one transaction that first deletes the question's rows (stages/sample.py,
stages/eval.py `write_result`), so a question retried after a failure never doubles. A node whose
heartbeat stops for distributed.heartbeat_timeout, or whose engine fails, fails the stage naming it
(NodeLost, retryable); what was written is kept, and the retry (or a resume on fewer nodes) redoes only
the questions without rows. Every question's seed is its own, so the rows do not depend on the node.

The store has no authentication: trusted cluster networks only (docs/CLUSTER.md).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealong.loop.engine.rendezvous import Launch
from sealong.loop.errors import JoinRefused, NodeLost, SealongError

if TYPE_CHECKING:
    from sealong.loop.stages.base import StageContext

CHUNK = 64 << 20  # bytes per store value when an adapter's files travel to the other nodes
OP_TIMEOUT = timedelta(seconds=60)


def _store(host: str, port: int, master: bool = False):
    from torch.distributed import TCPStore

    return TCPStore(host, port, is_master=master, wait_for_workers=False, timeout=OP_TIMEOUT)


def _has(store, key: str) -> bool:
    return store.check([key])


# -- node 0: the host --------------------------------------------------------------------------------------


def run_across_nodes(
    ctx: StageContext, launch: Launch, tasks: list[dict], write: Callable[[dict], None]
) -> dict[str, int]:
    """Hand out `tasks` to every node's engines, write each result as it comes; returns tasks per node."""
    from sealong.loop.backends.models import base_model_fingerprint
    from sealong.loop.engine.replicas import _stop, replica_envs, visible_gpus
    from sealong.loop.stages.policy import base_dir

    cfg = ctx.cfg
    host, port = launch.work_endpoint
    try:
        store = _store(host, port, master=True)
    except RuntimeError as e:
        raise NodeLost(f"cannot host the work store at {host}:{port} (rendezvous port + 1): {e}") from None
    store.set("token_sha", launch.token_sha)
    job = {
        "stage": ctx.name,
        "cfg": cfg.to_dict(),
        "round_idx": ctx.round_idx,
        "nnodes": launch.nnodes,
        "tasks": len(tasks),
        "adapters": _publish_adapters(ctx, store, {t.get("adapter") for t in tasks} - {None}),
        "base": base_model_fingerprint(base_dir(ctx)),  # every node's engines check theirs against it
    }
    for i, t in enumerate(tasks):
        store.set(f"task/{i}", json.dumps(t))
    store.set("job", json.dumps(job))
    store.set("ready", "1")
    engines = cfg.sample.replicas
    envs = replica_envs(
        cfg, dict(os.environ), visible_gpus() if cfg.policy.device != "cpu" else [], os.cpu_count() or 1
    )
    procs = [
        subprocess.Popen(
            engine_command(host, port, launch.token_sha, 0, i, ctx.workdir, None, os.getpid()),
            env=envs[i],
            stdin=subprocess.DEVNULL,
            cwd=ctx.workdir,
            start_new_session=True,
        )
        for i in range(engines)
    ]
    others = list(range(1, launch.nnodes))
    t0, written, per_node, refused = time.monotonic(), set(), {str(k): 0 for k in range(launch.nnodes)}, 0
    beats: dict[int, tuple[int, float]] = {}
    go = False
    try:
        while len(written) < len(tasks):
            now = time.monotonic()
            refused = _report_refused(ctx, store, refused)
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    why = (
                        store.get("error/0").decode()
                        if _has(store, "error/0")
                        else f"exit code {p.returncode}"
                    )
                    raise NodeLost(f"node 0 (this node), engine {i}, failed during {ctx.name}: {why}")
            joined = [k for k in others if _has(store, f"join/{k}")]
            if len(joined) < len(others) and now - t0 > launch.join_timeout:
                missing = ", ".join(str(k) for k in others if k not in joined)
                raise NodeLost(
                    f"node(s) {missing} of {launch.nnodes} did not join the {ctx.name} stage within "
                    f"{launch.join_timeout} s (distributed.join_timeout): on each, run `sealong-loop worker "
                    f"--node-rank K` with this launch's rendezvous ({launch.endpoint}) and run token"
                )
            for k in joined:
                if _has(store, f"error/{k}"):
                    raise NodeLost(f"node {k} failed during {ctx.name}: {store.get(f'error/{k}').decode()}")
                beat = store.add(f"hb/{k}", 0)
                last = beats.get(k)
                if last is None or beat != last[0]:
                    beats[k] = (beat, now)
                elif now - last[1] > launch.heartbeat_timeout:
                    raise NodeLost(
                        f"node {k} was lost during {ctx.name}: no heartbeat for {now - last[1]:.0f} s "
                        f"(distributed.heartbeat_timeout = {launch.heartbeat_timeout}); {len(written)} of "
                        f"{len(tasks)} task(s) are recorded, a retry or `start` redoes the rest"
                    )
            if not go and len(joined) == len(others) and store.add("loaded", 0) >= launch.nnodes * engines:
                go = True
                store.set("go", "1")
                ctx.event(
                    f"{ctx.name}: {launch.nnodes} node(s) × {engines} engine(s) joined; handing out {len(tasks)} task(s)"
                )
            claimed = min(store.add("next", 0), len(tasks))
            for i in range(claimed):
                if i not in written and _has(store, f"res/{i}"):
                    result = json.loads(store.get(f"res/{i}"))
                    write(result)
                    written.add(i)
                    per_node[str(result["node"])] += 1
                    store.delete_key(f"res/{i}")
            ctx.progress(
                len(written),
                len(tasks),
                "questions",
                f"{launch.nnodes} nodes",
                force=False,
                fault_point=bool(written),
            )
            time.sleep(0.2)
        end = time.monotonic() + 10.0  # the other nodes say they are done before the store closes
        while time.monotonic() < end and not all(_has(store, f"done/{k}") for k in others):
            time.sleep(0.2)
    except BaseException as e:
        store.set("abort", str(e) or type(e).__name__)
        raise
    finally:
        _stop(procs, 10.0)
    return per_node


def _report_refused(ctx: StageContext, store, seen: int) -> int:
    n = store.add("refused", 0)
    for j in range(seen + 1, n + 1):
        who = store.get(f"refused/{j}").decode() if _has(store, f"refused/{j}") else "a worker"
        ctx.event(f"{ctx.name}: refused {who}", "warn")
    return n


def _publish_adapters(ctx: StageContext, store, ids: set[str]) -> dict[str, Any]:
    """Each adapter's verified files, in CHUNK-sized values; the other nodes check them against sha256."""
    from sealong.loop.stages.policy import verified_adapter_dir
    from sealong.store.db import one

    out = {}
    for aid in sorted(ids):
        d = Path(verified_adapter_dir(ctx, aid))
        row = one(ctx.db, "SELECT id, path, sha256 FROM adapters WHERE id = ?", (aid,))
        files = []
        for j, f in enumerate(sorted(p for p in d.rglob("*") if p.is_file())):
            data = f.read_bytes()
            chunks = max(1, -(-len(data) // CHUNK))
            for c in range(chunks):
                store.set(f"file/{aid}/{j}/{c}", data[c * CHUNK : (c + 1) * CHUNK])
            files.append([f.relative_to(d).as_posix(), chunks])
        out[aid] = {"id": aid, "path": row["path"], "sha256": row["sha256"], "files": files}
    return out


# -- every node: an engine ----------------------------------------------------------------------------------


def engine_command(
    host: str, port: int, sha: str, node: int, engine: int, root: Path, model: str | None, parent: int
) -> list[str]:
    cmd = [sys.executable, "-P", "-m", "sealong.loop.engine.nodes", "--host", host, "--port", str(port)]
    cmd += ["--token-sha", sha, "--node", str(node), "--engine", str(engine), "--root", str(root)]
    return cmd + ["--parent-pid", str(parent)] + (["--model", model] if model else [])


def engine_main(argv: list[str] | None = None) -> int:
    """One engine: load the policy, wait for go, claim and compute tasks until none are left."""
    ap = argparse.ArgumentParser(description="one engine of a multi-node sample/eval stage")
    for a in ("--host", "--token-sha", "--root", "--model"):
        ap.add_argument(a, default=None)
    for a in ("--port", "--node", "--engine", "--parent-pid"):
        ap.add_argument(a, type=int, default=0)
    args = ap.parse_args(argv)
    from sealong.loop.engine import stage_main

    stage_main._die_with_parent(args.parent_pid)
    stage_main._quiet_libraries()
    root = Path(args.root).resolve()
    stage_main._contain_writes(root, alone=False, replica=args.engine)
    store = _store(args.host, args.port)
    try:
        if store.get("token_sha").decode() != args.token_sha:
            raise JoinRefused("the work store's run token is not this launch's")
        _engine(store, args, root)
    except Exception as e:  # noqa: BLE001 - told to node 0, then this process fails
        msg = str(e) if isinstance(e, SealongError) else f"{type(e).__name__}: {e}"
        print(f"engine {args.engine} of node {args.node} failed: {msg}", file=sys.stderr)
        try:
            store.set(f"error/{args.node}", f"engine {args.engine}: {msg}")
        except Exception:  # noqa: BLE001 - node 0 is gone: nobody to tell
            pass
        return 1
    return 0


def _engine(store, args, root: Path) -> None:
    from sealong.loop.backends.models import base_model_fingerprint, prepare_base_model
    from sealong.loop.backends.sampler import make_sampler
    from sealong.loop.config import config_from_dict
    from sealong.loop.engine.stage_main import _limit_threads
    from sealong.loop.stages import eval as eval_stage
    from sealong.loop.stages import sample as sample_stage
    from sealong.store import faults
    from sealong.store.artifacts import verify_adapter

    job = json.loads(store.get("job"))
    raw = job["cfg"]
    if args.model:  # the base model at this node's own path
        raw["policy"]["model"] = args.model
    cfg = config_from_dict(raw, "<node 0's config>", check_paths=False)
    _limit_threads(cfg.policy.threads)
    module = sample_stage if job["stage"] == "sample" else eval_stage
    with open(root / "node.lock", "w") as lock:  # one engine of this node converts, fetches; the rest wait
        fcntl.flock(lock, fcntl.LOCK_EX)
        base = prepare_base_model(cfg.policy.model, root, cfg.run.seed)
        if job.get("base") not in (None, base_model_fingerprint(base)):
            raise SealongError(f"its base model {base} is not node 0's: point policy.model at the same model")
        for a in job["adapters"].values():
            _fetch_adapter(store, root, a)
    faults.set_context(job["stage"], job["round_idx"])  # tests: SEALONG_FAULT="sample:claimed:hang"
    loaded: dict[str | None, tuple] = {}

    def policy(adapter_id: str | None):
        if adapter_id not in loaded:
            loaded.clear()  # one policy at a time (eval: the base, then the candidate)
            rec, seed = job["adapters"][adapter_id] if adapter_id else None, cfg.run.seed + job["round_idx"]
            verified = verify_adapter(root, rec) if rec else None  # again, right before it is loaded
            loaded[adapter_id] = make_sampler(cfg, base, adapter_id, verified, rec and rec["sha256"], seed)
        return loaded[adapter_id]

    n = job["tasks"]
    if n:
        sampler, _ = policy(json.loads(store.get("task/0")).get("adapter"))
    store.add("loaded", 1)
    while not _has(store, "go"):
        if _has(store, "abort"):
            return
        time.sleep(0.2)
    step = module.claim_step(cfg, sampler) if n else 1
    while True:
        end = store.add("next", step)
        if end - step >= n or _has(store, "abort"):
            return
        batch = [json.loads(store.get(f"task/{i}")) for i in range(end - step, min(end, n))]
        faults.point("claimed")
        for i, result in zip(
            range(end - step, end), module.compute_tasks(cfg, job["round_idx"], policy, batch)
        ):
            store.set(f"res/{i}", json.dumps({**result, "node": args.node}))


def _fetch_adapter(store, root: Path, a: dict):
    """The adapter's files from node 0 into root/<its path>, checked against its sha256."""
    from sealong.store.artifacts import adapter_problems, atomic_dir, verify_adapter

    final = root / a["path"]
    if final.exists() and not adapter_problems(root, a):
        return verify_adapter(root, a)
    if final.exists():
        import shutil

        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        for j, (rel, chunks) in enumerate(a["files"]):
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(b"".join(store.get(f"file/{a['id']}/{j}/{c}") for c in range(chunks)))
    return verify_adapter(root, a)


# -- other nodes: the agent (`sealong-loop worker`) ------------------------------------------------------


def listening(host: str, port: int) -> bool:
    """Whether something listens at host:port. A connection to itself does not count: probing a local
    port in the ephemeral range can be given that very port as its source (TCP simultaneous open)."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as s:
            return s.getsockname() != s.getpeername()
    except OSError:
        return False


def follow(launch: Launch, model: str, scratch: Path, log=print) -> str:
    """Join node 0's next stage as node launch.node_rank: a sample/eval stage's share, run here ("work"),
    or the gate of a train stage ("train": the caller starts its torchrun agent)."""
    from sealong.loop.config import config_from_dict
    from sealong.loop.engine.replicas import _stop, replica_envs, visible_gpus

    host, port = launch.work_endpoint
    store = _store(host, port)
    store.wait(["token_sha"], timedelta(seconds=30))
    if store.get("token_sha").decode() != launch.token_sha:
        j = store.add("refused", 1)
        store.set(
            f"refused/{j}",
            f"a worker as node {launch.node_rank} on {socket.gethostname()} with another run token",
        )
        raise JoinRefused(
            f"refused: the stage at {host}:{port} belongs to another run, or to another launch of this run: "
            "its run token is not this worker's (--run-token, SEALONG_RUN_TOKEN or --run-token-file; the "
            "controller's is in <workdir>/run-token). This worker did not join"
        )
    store.wait(["ready"], timedelta(seconds=60))
    job = json.loads(store.get("job"))
    k = launch.node_rank
    if not 1 <= k < job["nnodes"]:
        raise JoinRefused(
            f"--node-rank {k}: this launch has {job['nnodes']} node(s) (1 … {job['nnodes'] - 1} join)"
        )
    if store.add(f"join/{k}", 1) > 1:
        raise JoinRefused(
            f"node rank {k} has already joined this {job['stage']} stage: is another worker started with --node-rank {k}?"
        )
    log(f"node {k}: joined the {job['stage']} stage at {host}:{port}")
    if job["stage"] == "train":  # past the gate (engine/gate.py): torchrun's turn
        return "train"
    stop = threading.Event()

    def beat() -> None:
        own = _store(host, port)
        while not stop.wait(1.0):
            try:
                own.add(f"hb/{k}", 1)
            except Exception:  # noqa: BLE001 - node 0 closed the store: the stage is over
                return

    threading.Thread(target=beat, name="heartbeat", daemon=True).start()
    cfg = config_from_dict(job["cfg"], "<node 0's config>", check_paths=False)
    envs = replica_envs(
        cfg, dict(os.environ), visible_gpus() if cfg.policy.device != "cpu" else [], os.cpu_count() or 1
    )
    procs = [
        subprocess.Popen(
            engine_command(host, port, launch.token_sha, k, i, scratch, model, os.getpid()),
            env=envs[i],
            stdin=subprocess.DEVNULL,
            cwd=scratch,
            start_new_session=True,
        )
        for i in range(len(envs))
    ]
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or (_safe_has(store, "abort")):
                break
            time.sleep(0.5)
        codes = [p.poll() for p in procs]
        if all(c == 0 for c in codes):
            try:
                store.set(f"done/{k}", "1")
            except Exception:  # noqa: BLE001 - node 0 closed the store already
                pass
            return "work"
        why = store.get("abort").decode() if _safe_has(store, "abort") else f"engine exit codes {codes}"
        raise NodeLost(f"the {job['stage']} stage ended on this node: {why}")
    finally:
        stop.set()
        _stop(procs, 10.0)


def _safe_has(store, key: str) -> bool:
    try:
        return _has(store, key)
    except Exception:  # noqa: BLE001 - the store closed: node 0's stage process ended
        return False


if __name__ == "__main__":
    sys.exit(engine_main())

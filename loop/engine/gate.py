"""The gate in front of a multi-node train stage: the run token and the join timeout, before torchrun.

torchrun's static rendezvous takes any agent that names a free node rank and waits up to rdzv_timeout
(600 s) for the missing ones, saying neither who is missing nor whether an agent belongs to this launch.
So on node 0 a multi-node train stage runs as

    python -P -m sealong.loop.engine.gate --host H --port P+1 --token-sha S --nnodes N --join-timeout T
        --workdir W --stage-id I -- <torchrun … -m sealong.loop.engine.stage_main …>

It hosts the work store at the rendezvous port + 1 with the job {"stage": "train"}; each worker checks
the token there and takes its node rank (engine/nodes.py `follow`) before it starts its torchrun agent.
Once every node has, the gate starts torchrun and exits with its code; if one has not within the join
timeout, it records the stage's failure naming the missing ranks (retryable) and torchrun never starts.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sealong.loop.errors import STAGE_EXIT_RETRYABLE


def gate_command(launch, workdir: Path, stage_id: int, torchrun_cmd: list[str]) -> list[str]:
    host, port = launch.work_endpoint
    return [
        sys.executable,
        "-P",
        "-m",
        "sealong.loop.engine.gate",
        *("--host", host, "--port", str(port), "--token-sha", launch.token_sha),
        *("--nnodes", str(launch.nnodes), "--join-timeout", str(launch.join_timeout)),
        *("--workdir", str(workdir), "--stage-id", str(stage_id), "--"),
        *torchrun_cmd,
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--")
    ap = argparse.ArgumentParser(description=__doc__)
    for a in ("--host", "--token-sha", "--workdir"):
        ap.add_argument(a, required=True)
    for a in ("--port", "--nnodes", "--join-timeout", "--stage-id"):
        ap.add_argument(a, type=int, required=True)
    args = ap.parse_args(argv[:split])
    from sealong.loop.engine.nodes import _has, _store
    from sealong.loop.engine.stage_main import _die_with_parent

    _die_with_parent(os.getppid())  # the controller
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(128 + s))
    store = _store(args.host, args.port, master=True)
    store.set("token_sha", args.token_sha)
    store.set("job", json.dumps({"stage": "train", "nnodes": args.nnodes}))
    store.set("ready", "1")
    others, end = range(1, args.nnodes), time.monotonic() + args.join_timeout
    while not all(_has(store, f"join/{k}") for k in others):
        if time.monotonic() > end:
            missing = ", ".join(str(k) for k in others if not _has(store, f"join/{k}"))
            message = (
                f"node(s) {missing} of {args.nnodes} did not join the train stage within {args.join_timeout} s "
                "(distributed.join_timeout): on each, run `sealong-loop worker --node-rank K` with this "
                "launch's rendezvous and run token"
            )
            print(f"train failed: {message}", file=sys.stderr)
            _record_failure(Path(args.workdir), args.stage_id, message)
            return STAGE_EXIT_RETRYABLE
        time.sleep(0.2)
    store.set("go", "1")
    proc = subprocess.Popen(argv[split + 1 :])
    try:
        return proc.wait()
    finally:  # a stop signal: torchrun stops its ranks
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=8)
            except subprocess.TimeoutExpired:
                proc.kill()


def _record_failure(workdir: Path, stage_id: int, message: str) -> None:
    from sealong.store import state
    from sealong.store.db import connect, log_event, one

    db = connect(workdir)
    st = one(
        db,
        "SELECT s.round_id, r.run_id FROM stages s JOIN rounds r ON r.id = s.round_id WHERE s.id = ?",
        (stage_id,),
    )
    state.mark_stage_failed(db, stage_id, message)
    log_event(db, f"train failed: {message}", "error", st["run_id"], st["round_id"], "train")


if __name__ == "__main__":
    sys.exit(main())

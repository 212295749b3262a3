"""Sample and eval on every node (engine/nodes.py), on one machine: node 0 is the controller's stage
process, node 1 a `sealong-loop worker` subprocess with its own scratch directory and no workdir, over
real TCPStores and real gloo (the train stage between them runs under torchrun across both)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from sealong.store.db import connect, one, rows

from ...conftest import CLI, cli, write_config

pytestmark = pytest.mark.distributed
TOKEN = "a" * 32


def _free_port() -> int:
    """A port whose next one is free too (sample/eval use the rendezvous port + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


def _config(path: Path, nnodes: int, nproc: int, port: int = 29400, **distributed) -> Path:
    return write_config(
        path,
        data={"questions_per_round": 6},
        eval={"batch_size": 1},  # answers independent of batch mates: the same on any split (eval.py)
        distributed={
            "nnodes": nnodes,
            "nproc_per_node": nproc,
            "sequence_parallel_size": 2,
            "backend": "gloo",
            "rdzv_endpoint": f"127.0.0.1:{port}",
            "join_timeout": 60,
            "heartbeat_timeout": 10,
            **distributed,
        },
    )


def _worker(cfg: Path, scratch: Path, token: str = TOKEN, *extra: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "worker", "--config", str(cfg), "--node-rank", "1", "--scratch", str(scratch), "--wait", "10", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "SEALONG_RUN_TOKEN": token, **(env or {})},
        start_new_session=True,
    )


def _stop(p: subprocess.Popen) -> str:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
    try:
        out, _ = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, _ = p.communicate()
    return out


def _rows(wd: Path) -> dict[str, list]:
    db = connect(wd, readonly=True)
    return {
        "samples": [
            tuple(r.values())
            for r in rows(db, "SELECT question_id, sample_idx, text, n_tokens, seed FROM samples ORDER BY 1, 2")
        ],
        "greedy": [tuple(r.values()) for r in rows(db, "SELECT question_id, text FROM greedy ORDER BY 1")],
        "evals": [
            tuple(r.values())
            for r in rows(db, "SELECT model_key, question_id, output, subem FROM evals ORDER BY 1, 2")
        ],
    }


def _output(wd: Path, stage: str) -> dict:
    db = connect(wd, readonly=True)
    return json.loads(one(db, "SELECT output_json FROM stages WHERE name = ?", (stage,))["output_json"])


def test_two_nodes_sample_and_evaluate_as_one_does(tmp_path: Path):
    """Both nodes answer some questions (recorded per node in the stage's output), and the rows equal a
    one-node run's with the same seed: the same questions, the same row counts, no duplicates."""
    one_node = _config(tmp_path / "one.toml", nnodes=1, nproc=2)
    ref = tmp_path / "ref"
    cli("start", "--config", str(one_node), "--workdir", str(ref), check=True, timeout=400)
    port = _free_port()
    two = _config(tmp_path / "two.toml", nnodes=2, nproc=1, port=port)
    worker = _worker(two, tmp_path / "node1")
    try:
        wd = tmp_path / "run"
        proc = cli("start", "--config", str(two), "--workdir", str(wd), env={"SEALONG_RUN_TOKEN": TOKEN}, timeout=400)
        said = _stop(worker)
        assert proc.returncode == 0, proc.stdout + proc.stderr + said
    finally:
        _stop(worker)
    assert "joined the sample stage" in said and "joined the eval stage" in said, said
    for stage in ("sample", "eval"):
        nodes = _output(wd, stage)["nodes"]
        assert set(nodes) == {"0", "1"} and all(n > 0 for n in nodes.values()), (stage, nodes)
    got, want = _rows(wd), _rows(ref)
    for table in want:
        assert len(got[table]) == len(set(got[table])), table  # no duplicates
        assert got[table] == want[table], table
    assert len(got["samples"]) == 6 * 4 and len(got["evals"]) == 2 * 4
    assert (tmp_path / "node1" / "models" / "base" / "config.json").is_file()  # its own base model

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
    """A free port whose next one is free too (sample/eval use the rendezvous port + 1), below the
    kernel's ephemeral range, from which client sockets take their source ports (as real clusters'
    29400 is): a probe of a port inside it can connect to itself."""
    import random

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(100):
        port = random.randrange(20000, low - 2)
        try:
            for p in (port, port + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
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


def _worker(
    cfg: Path, scratch: Path, token: str = TOKEN, *extra: str, env: dict | None = None
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            *CLI,
            "worker",
            "--config",
            str(cfg),
            "--node-rank",
            "1",
            "--scratch",
            str(scratch),
            "--wait",
            "10",
            *extra,
        ],
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
            for r in rows(
                db, "SELECT question_id, sample_idx, text, n_tokens, seed FROM samples ORDER BY 1, 2"
            )
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


def _one_node_reference(wd: Path, tmp_path: Path) -> dict[str, list]:
    """The same round's sample and eval rows by the one-node code path (stages/sample.py
    `sample_questions`, stages/eval.py `evaluate_questions`), in this process, on a copy of the workdir
    with its sample, greedy and eval rows removed: the same seed, the same adapters."""
    import shutil

    import torch
    from sealong.loop.config import config_from_dict
    from sealong.loop.stages import eval as eval_stage
    from sealong.loop.stages import sample as sample_stage
    from sealong.loop.stages.base import StageContext

    torch.set_num_threads(1)  # as the stages' policy.threads = 1
    ref = tmp_path / "one-node"
    shutil.copytree(wd, ref, ignore=shutil.ignore_patterns("*.lock", "launch.json", "run-token"))
    db = connect(ref)
    db.execute("PRAGMA foreign_keys = OFF")
    for table in ("sample_scores", "pairs", "samples", "greedy", "evals"):
        db.execute(f"DELETE FROM {table}")
    run = one(db, "SELECT * FROM runs")
    rnd = one(db, "SELECT * FROM rounds WHERE idx = 0")
    cfg = config_from_dict(json.loads(run["config_json"]), "<stored>", check_paths=False)

    def ctx(name: str) -> StageContext:
        st = one(db, "SELECT id FROM stages WHERE round_id = ? AND name = ?", (rnd["id"], name))
        return StageContext(db, cfg, ref, run["id"], rnd["id"], 0, st["id"], name)

    quiet = lambda *a, **k: None  # noqa: E731
    sample_stage.sample_questions(ctx("sample"), ctx("sample").round_questions(), quiet)
    ev = ctx("eval")
    for key, adapter in eval_stage._models(ev):
        eval_stage.evaluate_questions(ev, key, adapter, eval_stage._eval_questions(ev), quiet)
    return _rows(ref)


def test_two_nodes_sample_and_evaluate_as_one_does_and_refuse_another_runs_worker(tmp_path: Path):
    """Both nodes answer some questions (recorded per node in the stage's output), and the rows equal the
    one-node code path's for the same seed: the same questions, the same row counts, no duplicates. A
    worker started with another run's token is refused with a clear message, and the run goes on."""
    port = _free_port()
    two = _config(tmp_path / "two.toml", nnodes=2, nproc=1, port=port)
    worker = _worker(two, tmp_path / "node1")
    stranger = _worker(two, tmp_path / "stranger", "b" * 32)
    try:
        wd = tmp_path / "run"
        t0 = time.monotonic()
        proc = cli(
            "start", "--config", str(two), "--workdir", str(wd), env={"SEALONG_RUN_TOKEN": TOKEN}, timeout=400
        )
        said, refused = _stop(worker), _stop(stranger)
        assert proc.returncode == 0, proc.stdout + proc.stderr + said
        print(f"two-node round: {time.monotonic() - t0:.0f} s")
    finally:
        _stop(worker), _stop(stranger)
    assert "joined the sample stage" in said and "joined the eval stage" in said, said
    assert stranger.returncode == 6 and "refused: the stage at 127.0.0.1:" in refused, refused
    assert "its run token is not this worker's" in refused and "joined" not in refused, refused
    events = [r["message"] for r in rows(connect(wd, readonly=True), "SELECT message FROM events")]
    assert any("refused a worker as node 1" in m for m in events), events
    for stage in ("sample", "eval"):
        nodes = _output(wd, stage)["nodes"]
        assert set(nodes) == {"0", "1"} and all(n > 0 for n in nodes.values()), (stage, nodes)
    got = _rows(wd)
    assert len(got["samples"]) == 6 * 4 and len(got["evals"]) == 2 * 4  # 6 questions × n, 4 × 2 models
    assert (tmp_path / "node1" / "models" / "base" / "config.json").is_file()  # its own base model
    want = _one_node_reference(wd, tmp_path)
    for table in want:
        assert len(got[table]) == len(set(got[table])), table  # no duplicates
        assert got[table] == want[table], table


def _start(cfg: Path | None, wd: Path, token: str, *extra: str) -> subprocess.Popen:
    cmd = [*CLI, "start", "--workdir", str(wd), "--plain", *extra] + (["--config", str(cfg)] if cfg else [])
    env = {**os.environ, "SEALONG_RUN_TOKEN": token}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _wait_for(what, limit_s: float, why: str) -> None:
    end = time.monotonic() + limit_s
    while not what():
        assert time.monotonic() < end, f"waited {limit_s:.0f} s for {why}"
        time.sleep(0.5)


def _stage_done(wd: Path, name: str) -> bool:
    try:
        st = one(connect(wd, readonly=True), "SELECT status FROM stages WHERE name = ?", (name,))
    except Exception:  # noqa: BLE001 - the store is not made yet
        return False
    return bool(st) and st["status"] == "done"


@pytest.mark.slow
def test_a_node_lost_while_sampling_fails_the_stage_naming_it_and_one_node_resumes_it(tmp_path: Path):
    """Node 1 dies holding a question: the stage fails within heartbeat_timeout, naming node 1; its retry
    fails within join_timeout, naming node 1 again; `start --nnodes 1` then finishes the round on node 0
    alone with every question sampled once, and only the questions without rows redone."""
    port = _free_port()
    two = _config(
        tmp_path / "two.toml", 2, 1, port, sequence_parallel_size=1, join_timeout=8, heartbeat_timeout=4
    )
    fired = tmp_path / "fired"
    fired.mkdir()
    # node 1's engine stops holding its first question (the entry fires once: SEALONG_FAULT_DIR)
    hang = {"SEALONG_FAULT": "sample:claimed:hang", "SEALONG_FAULT_DIR": str(fired)}
    worker = _worker(two, tmp_path / "node1", env=hang)
    wd = tmp_path / "run"
    ctl = _start(two, wd, TOKEN)
    try:
        _wait_for(lambda: any(fired.iterdir()), 300, "node 1 to hold a question")
        time.sleep(1.0)
        os.killpg(worker.pid, signal.SIGKILL)  # the whole node: its engines die with their agent
        lost = time.monotonic()
        out, _ = ctl.communicate(timeout=300)
        took = time.monotonic() - lost
    finally:
        _stop(worker)
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 3, out
    db = connect(wd, readonly=True)
    events = "\n".join(r["message"] for r in rows(db, "SELECT message FROM events"))
    assert "node 1 was lost during sample: no heartbeat for" in events, events
    assert "node(s) 1 of 2 did not join the sample stage within 8 s" in out, out
    # 4 s of silence, a retry's start (a new stage process on a loaded 2-core machine) and 8 s of joining
    assert took < 4 + 8 + 120, took
    before = one(db, "SELECT COUNT(DISTINCT question_id) AS k FROM samples")["k"]
    assert 0 < before < 6
    proc = cli("start", "--workdir", str(wd), "--nnodes", "1", check=True, timeout=600)
    assert "finished: 1 round(s) done" in proc.stdout
    db = connect(wd, readonly=True)
    counts = rows(
        db, "SELECT question_id, COUNT(*) AS n, COUNT(DISTINCT sample_idx) AS k FROM samples GROUP BY 1"
    )
    assert len(counts) == 6 and all(r["n"] == r["k"] == 4 for r in counts), counts
    events = [r["message"] for r in rows(db, "SELECT message FROM events")]
    assert f"resuming: {before} of 6 questions already sampled" in events, events


@pytest.mark.slow
def test_a_run_started_at_one_endpoint_resumes_at_another_and_an_earlier_launchs_worker_is_refused(
    tmp_path: Path,
):
    """Stopped after sampling at endpoint A, the run resumes with `start --rdzv-endpoint B` and a new
    token (its stored config still says A); node 1 joins at B for train and eval, and a worker left from
    the first launch (its token) is refused at B."""
    a = _free_port()
    two = _config(tmp_path / "two.toml", 2, 1, a)
    wd = tmp_path / "run"
    worker = _worker(two, tmp_path / "node1")
    ctl = _start(two, wd, TOKEN)
    try:
        _wait_for(lambda: _stage_done(wd, "sample"), 400, "the sample stage")
        ctl.send_signal(signal.SIGTERM)
        out, _ = ctl.communicate(timeout=60)
    finally:
        said = _stop(worker)
        if ctl.poll() is None:
            ctl.kill()
    assert ctl.returncode == 5 and "joined the sample stage at 127.0.0.1" in said, out + said
    b = _free_port()
    new = "c" * 32
    at_b = ("--rdzv-endpoint", f"127.0.0.1:{b}")
    worker = _worker(two, tmp_path / "node1", new, *at_b)
    stale = _worker(two, tmp_path / "stale", TOKEN, *at_b)
    try:
        proc = cli("start", "--workdir", str(wd), *at_b, env={"SEALONG_RUN_TOKEN": new}, timeout=600)
        said, refused = _stop(worker), _stop(stale)
        assert proc.returncode == 0, proc.stdout + proc.stderr + said
    finally:
        _stop(worker), _stop(stale)
    assert (
        f"127.0.0.1:{b}" in said and "trained with the controller" in said and "joined the eval stage" in said
    )
    assert stale.returncode == 6 and "its run token is not this worker's" in refused, refused
    stored = json.loads(one(connect(wd, readonly=True), "SELECT config_json FROM runs")["config_json"])
    assert stored["distributed"]["rdzv_endpoint"] == f"127.0.0.1:{a}"  # the run keeps its config
    assert json.loads((wd / "launch.json").read_text())["endpoint"] == f"127.0.0.1:{b}"
    assert set(_output(wd, "eval")["nodes"]) == {"0", "1"}

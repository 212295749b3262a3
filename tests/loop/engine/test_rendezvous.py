"""Where the nodes meet is per launch (engine/rendezvous.py): the sources of the endpoint, node count,
node rank and run token, what a resumed run must still match, and the cluster examples."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from sealong.loop.config import config_from_dict
from sealong.loop.engine import rendezvous
from sealong.loop.engine.workdir import check_config_matches, ensure_run
from sealong.loop.errors import SealongError
from sealong.store.db import connect

from ...conftest import REPO, write_config


def _cfg(**distributed):
    return config_from_dict(
        {"distributed": {"nnodes": 2, "rdzv_endpoint": "cfg-host:29400", **distributed}}, check_paths=False
    )


def test_the_endpoint_count_and_rank_come_from_the_command_line_then_the_environment_then_the_config():
    cfg = _cfg()
    plain = rendezvous.resolve(cfg, env={}, controller=True)
    assert (plain.endpoint, plain.nnodes, plain.node_rank) == ("cfg-host:29400", 2, 0)
    assert len(plain.token) == 32 and plain.token != rendezvous.resolve(cfg, env={}, controller=True).token
    slurm = {"MASTER_ADDR": "n017", "MASTER_PORT": "29500", "SLURM_NNODES": "4", "SLURM_NODEID": "3"}
    got = rendezvous.resolve(cfg, env=slurm)
    assert (got.endpoint, got.nnodes, got.node_rank, got.work_endpoint) == (
        "n017:29500",
        4,
        3,
        ("n017", 29501),
    )
    lws = {"LWS_LEADER_ADDRESS": "lead.svc", "LWS_GROUP_SIZE": "3", "LWS_WORKER_INDEX": "2"}
    assert rendezvous.resolve(cfg, env=lws).endpoint == "lead.svc:29400"  # a bare host: the config's port
    assert rendezvous.resolve(cfg, env={**slurm, "SEALONG_RDZV_ENDPOINT": "x:1"}).endpoint == "x:1"
    cli = rendezvous.resolve(cfg, endpoint="cli:2", nnodes=2, node_rank=1, token="t", env=slurm)
    assert (cli.endpoint, cli.nnodes, cli.node_rank, cli.token) == ("cli:2", 2, 1, "t")
    assert rendezvous.resolve(cfg, env={"SEALONG_RUN_TOKEN": "e"}).token == "e"
    assert rendezvous.resolve(cfg, env={}).token == ""  # a worker never makes one up
    applied = rendezvous.apply(cfg, got)
    assert (applied.distributed.rdzv_endpoint, applied.distributed.nnodes) == ("n017:29500", 4)
    assert applied.policy == cfg.policy and cfg.distributed.nnodes == 2  # the original is untouched


def test_bad_launch_values_are_one_clear_error(tmp_path: Path):
    cfg = _cfg(sequence_parallel_size=2, nproc_per_node=1)
    with pytest.raises(SealongError, match=r"must be HOST:PORT with PORT < 65535 \(got 'h:99999'\)"):
        rendezvous.resolve(cfg, endpoint="h:99999", env={})
    with pytest.raises(SealongError, match="3 node\\(s\\) × distributed.nproc_per_node 1 = 3 ranks"):
        rendezvous.resolve(cfg, nnodes=3, env={})
    with pytest.raises(SealongError, match="runs on node 0 only; on node 2 run `sealong-loop worker`"):
        rendezvous.resolve(cfg, env={"SLURM_NODEID": "2"}, controller=True)
    with pytest.raises(SealongError, match=r"the node count must be a whole number \(got 'two'\)"):
        rendezvous.resolve(cfg, env={"SLURM_NNODES": "two"})
    with pytest.raises(SealongError, match="--run-token-file .*/none: cannot read it"):
        rendezvous.resolve(cfg, token_file=str(tmp_path / "none"), env={})
    (tmp_path / "tok").write_text("abc\n")
    assert rendezvous.resolve(cfg, token_file=str(tmp_path / "tok"), env={}).token == "abc"


def test_a_resumed_run_may_meet_elsewhere_but_not_change_its_model_or_layout(tmp_path: Path):
    wd = tmp_path / "run"
    wd.mkdir()
    first = write_config(tmp_path / "a.toml", distributed={"nnodes": 2, "rdzv_endpoint": "a:29400"})
    db = connect(wd)
    from sealong.loop.config import load_config

    ensure_run(db, load_config(first), wd, None)
    moved = write_config(
        tmp_path / "b.toml",
        distributed={
            "nnodes": 1,
            "rdzv_endpoint": "b:29500",
            "rdzv_id": "x",
            "join_timeout": 30,
            "heartbeat_timeout": 9,
        },
    )
    assert check_config_matches(db, load_config(moved), wd) is not None  # per launch: not compared
    for section, values, field in (
        ("distributed", {"nnodes": 2, "nproc_per_node": 2}, "[distributed] nproc_per_node"),
        ("policy", {"max_prompt_tokens": 128}, "[policy] max_prompt_tokens"),
    ):
        other = write_config(tmp_path / "c.toml", first, **{section: values})
        with pytest.raises(SealongError, match="differs in: .*" + re.escape(field)):
            check_config_matches(db, load_config(other), wd)


def test_the_cluster_examples_parse():
    sbatch = REPO / "examples" / "cluster" / "slurm.sbatch"
    proc = subprocess.run(["bash", "-n", str(sbatch)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = sbatch.read_text()
    assert "--requeue" in text and "--ntasks-per-node=1" in text and "SEALONG_RUN_TOKEN" in text
    yaml = pytest.importorskip("yaml")
    docs = list(yaml.safe_load_all((REPO / "examples" / "cluster" / "leaderworkerset.yaml").read_text()))
    lws = next(d for d in docs if d and d["kind"] == "LeaderWorkerSet")
    spec = lws["spec"]["leaderWorkerTemplate"]
    assert spec["size"] >= 2 and "leaderTemplate" in spec and "workerTemplate" in spec
    worker = spec["workerTemplate"]["spec"]["containers"][0]
    assert "worker" in " ".join(worker["command"] + worker.get("args", []))

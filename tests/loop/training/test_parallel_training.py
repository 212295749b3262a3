"""Training at scale on CPU: gloo process groups with sequence parallelism (ring attention + the SP-aware
fused ORPO loss) and data parallelism give the same LoRA weights as one process; the train stage runs
under torchrun from the controller."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from parallel_workers import (  # noqa: E402
    follower_that_disagrees,
    nan_on_one_data_parallel_rank,
    resume_on_rank0_only,
    run_distributed,
    tiny_setup,
    train_and_save,
)
from sealong.loop.training.orpo import lora_parameters, train_orpo  # noqa: E402

from ...conftest import cli, write_config  # noqa: E402

pytestmark = pytest.mark.distributed


def _single_process(checkpointing: bool = False):
    model, examples, cfg = tiny_setup(checkpointing=checkpointing)
    summary = train_orpo(model, examples, cfg, pad_id=0, seed=3)
    return lora_parameters(model), summary


@pytest.mark.parametrize(
    "world,sp,checkpointing,mode",
    [(2, 2, False, "ring"), (2, 1, False, "ring"), (2, 2, True, "ring"), (2, 2, True, "ulysses")],
    ids=[
        "sequence-parallel-2",
        "data-parallel-2",
        "sequence-parallel-2-gradient-checkpointing",
        "ulysses-2-gradient-checkpointing",
    ],
)
def test_parallel_training_matches_one_process(
    tmp_path: Path, world: int, sp: int, checkpointing: bool, mode: str
):
    """With gradient checkpointing the backward recomputes the attention: it must ring (or all-to-all) over
    the SP group again, or each rank's gradients see only its own tokens."""
    want, want_summary = _single_process(checkpointing)
    out = tmp_path / "rank0.pt"
    run_distributed(train_and_save, world, sp, str(out), checkpointing, mode)
    got = torch.load(out, weights_only=True)
    assert got["summary"]["steps"] == want_summary["steps"] == 2
    assert got["summary"]["last_loss"] == pytest.approx(want_summary["last_loss"], rel=1e-5)
    for name, ref in want.items():
        torch.testing.assert_close(got["lora"][name], ref, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_reads_the_checkpoint_on_rank0_and_every_rank_follows(tmp_path: Path):
    """Across nodes only rank 0 has the workdir: the other ranks get the starting LoRA weights and, when
    resuming, the optimizer state from rank 0 (training/checkpoints.py sync_from_main). Rank 1 starts from wrong weights."""
    want, want_summary = _single_process()
    out = tmp_path / "rank0.pt"
    run_distributed(resume_on_rank0_only, 2, 2, str(out), str(tmp_path / "ckpt"))
    got = torch.load(out, weights_only=True)
    assert got["first"]["steps"] == 1 and got["summary"]["resumed_from_step"] == 1
    assert got["summary"]["steps"] == want_summary["steps"] == 2
    for name, ref in want.items():
        torch.testing.assert_close(got["lora"][name], ref, rtol=1e-5, atol=1e-6, msg=name)


def test_a_nan_on_one_data_parallel_rank_stops_every_rank_at_the_same_step(tmp_path: Path):
    out = tmp_path / "said"
    run_distributed(nan_on_one_data_parallel_rank, 2, 1, str(out))
    rank0, rank1 = (Path(f"{out}.{r}").read_text() for r in (0, 1))
    assert rank0 == "NonFiniteLoss: non-finite ORPO loss at optimizer step 1 (on another rank)"
    assert rank1 == "NonFiniteLoss: non-finite ORPO loss at optimizer step 1 (nan on this rank)"


@pytest.mark.parametrize("case", ["base", "layout"])
def test_a_follower_that_cannot_follow_stops_every_rank_with_its_reason(tmp_path: Path, tiny_model_dir, case):
    out = tmp_path / "said"
    run_distributed(follower_that_disagrees, 2, 1, str(out), str(tiny_model_dir), case)
    rank0, rank1 = (Path(f"{out}.{r}").read_text() for r in (0, 1))
    assert rank0 == rank1  # both raise, with the same words
    want = (
        "is not rank 0's" if case == "base" else "layout (world 2, sequence_parallel_size 1) is not the run's"
    )
    assert rank0.startswith("RankDisagreement: rank 1: ") and want in rank0, rank0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_stage_under_torchrun_on_one_node_and_across_two(tmp_path: Path):
    """The train stage under torchrun from the controller (2 ranks, SP = 2), then the same run with the two
    ranks on two "nodes": node 1 is `sealong-loop worker`, with its own scratch directory and no workdir.
    The ranks compute the same things in the same order, so the adapters are equal."""
    import json
    import os
    import signal
    import subprocess

    from safetensors.torch import load_file
    from sealong.store.db import connect, one

    from ...conftest import CLI

    layout = {"sequence_parallel_size": 2, "backend": "gloo", "checkpoint_every": 1}
    cfg = write_config(
        tmp_path / "c.toml", distributed={**layout, "nproc_per_node": 2}, train={"loss": "fused"}
    )
    wd = tmp_path / "run"
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), check=True)
    assert "finished: 1 round(s) done" in proc.stdout
    out = json.loads(
        one(connect(wd, readonly=True), "SELECT output_json FROM stages WHERE name = 'train'")["output_json"]
    )
    assert out["world"] == 2 and out["sequence_parallel"] == 2 and out["steps"] >= 1
    assert not (wd / "checkpoints" / "round000").exists()  # spent checkpoints are removed once recorded

    two = write_config(
        tmp_path / "two.toml",
        distributed={
            **layout,
            "nnodes": 2,
            "nproc_per_node": 1,
            "rdzv_endpoint": f"127.0.0.1:{_free_port()}",
        },
        train={"loss": "fused"},
    )
    scratch = tmp_path / "node1"
    token = {"SEALONG_RUN_TOKEN": "t" * 32}  # this launch's (engine/rendezvous.py)
    worker = subprocess.Popen(
        [*CLI, "worker", "--config", str(two), "--node-rank", "1", "--scratch", str(scratch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **token},
    )
    try:
        wd2 = tmp_path / "run-two-nodes"
        proc = cli("start", "--config", str(two), "--workdir", str(wd2), check=True, env=token)
        assert "finished: 1 round(s) done" in proc.stdout
    finally:
        worker.send_signal(signal.SIGTERM)  # it would wait for the next stage (sample and eval: both nodes)
        said, _ = worker.communicate(timeout=120)
    assert worker.returncode == 143 and "node 1: trained with the controller" in said, said
    assert (scratch / "models" / "base" / "config.json").is_file()  # its own base, not the workdir's
    a = load_file(wd / "adapters" / "adapter-r000" / "adapter_model.safetensors")
    b = load_file(wd2 / "adapters" / "adapter-r000" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=k)

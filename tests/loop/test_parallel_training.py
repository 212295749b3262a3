"""Training at scale on CPU: gloo process groups with sequence parallelism (ring attention + the SP-aware
fused ORPO loss) and data parallelism give the same LoRA weights as one process; the train stage runs
under torchrun from the controller."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from parallel_workers import run_distributed, tiny_setup, train_and_save  # noqa: E402
from sealong.loop.training import lora_parameters, train_orpo  # noqa: E402

from ..conftest import cli, write_config  # noqa: E402

pytestmark = pytest.mark.distributed


def _single_process(checkpointing: bool = False):
    model, examples, cfg = tiny_setup(checkpointing=checkpointing)
    summary = train_orpo(model, examples, cfg, pad_id=0, seed=3)
    return lora_parameters(model), summary


@pytest.mark.parametrize(
    "world,sp,checkpointing",
    [(2, 2, False), (2, 1, False), (2, 2, True)],
    ids=["sequence-parallel-2", "data-parallel-2", "sequence-parallel-2-gradient-checkpointing"],
)
def test_parallel_training_matches_one_process(tmp_path: Path, world: int, sp: int, checkpointing: bool):
    """With gradient checkpointing the backward recomputes the attention: it must ring over the SP group
    again, or each rank's gradients see only its own tokens."""
    want, want_summary = _single_process(checkpointing)
    out = tmp_path / "rank0.pt"
    run_distributed(train_and_save, world, sp, str(out), checkpointing)
    got = torch.load(out, weights_only=True)
    assert got["summary"]["steps"] == want_summary["steps"] == 2
    assert got["summary"]["last_loss"] == pytest.approx(want_summary["last_loss"], rel=1e-5)
    for name, ref in want.items():
        torch.testing.assert_close(got["lora"][name], ref, rtol=1e-5, atol=1e-6, msg=name)


def test_train_stage_under_torchrun(tmp_path: Path):
    cfg = write_config(
        tmp_path / "c.toml",
        distributed={
            "nproc_per_node": 2,
            "sequence_parallel_size": 2,
            "backend": "gloo",
            "checkpoint_every": 1,
        },
        train={"loss": "fused"},
    )
    wd = tmp_path / "run"
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), check=True)
    assert "finished: 1 round(s) done" in proc.stdout
    import json

    from sealong.store.db import connect, one

    out = json.loads(
        one(connect(wd, readonly=True), "SELECT output_json FROM stages WHERE name = 'train'")["output_json"]
    )
    assert out["world"] == 2 and out["sequence_parallel"] == 2 and out["steps"] >= 1
    assert not (wd / "checkpoints" / "round000").exists()  # spent checkpoints are removed once recorded

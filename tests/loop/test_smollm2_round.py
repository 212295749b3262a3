"""One whole round with the real bundled SmolLM2-135M-Instruct and all-MiniLM-L6-v2, at small sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sealong.loop.config import DEFAULT_CONFIG
from sealong.store.artifacts import sha256_dir
from sealong.store.db import connect, one, rows

from ..conftest import cli, write_config


@pytest.mark.slow
def test_one_round_with_bundled_smollm2(tmp_path: Path):
    cfg = write_config(
        tmp_path / "small.toml",
        base=DEFAULT_CONFIG,
        run={"name": "smollm2-small", "max_rounds": 1},
        policy={"max_prompt_tokens": 512},
        data={
            "train_pool_size": 2,
            "questions_per_round": 2,
            "eval_questions_per_task": 1,
            "hops": [1, 2],
            "context_tokens_min": 150,
            "context_tokens_max": 200,
        },
        sample={"n": 3, "max_new_tokens": 24},
        train={"max_length": 600},
        eval={"max_new_tokens": 24},
    )
    wd = tmp_path / "run"
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), check=True, timeout=900)
    assert "finished: 1 round(s) done" in proc.stdout
    db = connect(wd, readonly=True)
    assert {s["status"] for s in rows(db, "SELECT status FROM stages")} == {"done"}
    samples = rows(db, "SELECT question_id, text, mbr_score FROM samples")
    assert len(samples) == 6 and all(
        s["mbr_score"] is not None and -1.0 <= s["mbr_score"] <= 1.0 + 1e-6 for s in samples
    )
    assert any(s["text"] for s in samples)  # the real model writes text
    adapter = one(db, "SELECT * FROM adapters")
    assert sha256_dir(wd / adapter["path"]) == adapter["sha256"]
    train = json.loads(adapter["train_json"])
    assert train["steps"] >= 1 and train["last_loss"] == train["last_loss"]

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(wd / "models" / "base")
    model = PeftModel.from_pretrained(base, wd / adapter["path"])
    assert model.peft_config["default"].r == 16
    evals = rows(db, "SELECT model_key, COUNT(*) AS n FROM evals GROUP BY model_key ORDER BY model_key")
    assert [(e["model_key"], e["n"]) for e in evals] == [(adapter["id"], 2), ("base", 2)]

"""Exports: the adapter in PEFT format, merged into the base model, and a round's pairs as TRL JSONL."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from sealong.loop.backends.models import load_causal_lm, load_tokenizer
from sealong.loop.config import config_from_dict
from sealong.loop.recipe.prompts import build_prompt
from sealong.store.db import connect, one, rows

from ...conftest import cli
from .test_status import copy_workdir, tiny_ops_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_ops_run(tmp_path_factory)


def _prompt_ids(run_dir: Path) -> torch.Tensor:
    tok = load_tokenizer(run_dir / "models" / "base")
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Where was Ada born?"}], tokenize=False, add_generation_prompt=True
    )
    return torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])


def test_export_peft_adapter_loads_with_peft(run_dir: Path, tmp_path: Path):
    from peft import PeftModel

    out = tmp_path / "adapter"
    proc = cli("export", "adapter-r001", "--workdir", str(run_dir), "--out", str(out), check=True)
    assert "sha256 verified" in proc.stdout
    src = run_dir / "adapters" / "adapter-r001"
    assert {p.name for p in src.iterdir()} | {"sealong_export.json"} == {p.name for p in out.iterdir()}
    provenance = json.loads((out / "sealong_export.json").read_text())
    assert provenance["adapter"] == "adapter-r001" and provenance["parent"] == "adapter-r000"
    mask = os.umask(0)
    os.umask(mask)  # the weights are as readable as the other files (safetensors writes them 0600)
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        p.name: 0o666 & ~mask for p in out.iterdir()
    }
    assert (out / "adapter_model.safetensors").read_bytes() == (
        src / "adapter_model.safetensors"
    ).read_bytes()
    model = PeftModel.from_pretrained(load_causal_lm(run_dir / "models" / "base"), out)
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and any(
        v.abs().sum() > 0 for v in lora_b
    )  # the trained weights were loaded, not a zero init


def test_merged_model_loads_with_transformers_and_matches_the_adapter(run_dir: Path, tmp_path: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged-fp32"
    cli(
        "export",
        "champion",
        "--workdir",
        str(run_dir),
        "--out",
        str(out),
        "--merge",
        "--dtype",
        "float32",
        check=True,
    )
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with_adapter = PeftModel.from_pretrained(
        load_causal_lm(run_dir / "models" / "base"), run_dir / "adapters" / "adapter-r001"
    ).eval()
    ids = _prompt_ids(run_dir)
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_merged_bf16_model_generates(run_dir: Path, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "merged"
    proc = cli("export", "adapter-r000", "--workdir", str(run_dir), "--out", str(out), "--merge", check=True)
    assert "bfloat16" in proc.stdout and "Traceback" not in proc.stderr
    # offline and quiet like the stages: no hub lookup, and no library's warning about one (bitsandbytes asks
    # the hub for a CPU kernel on import where the CPU has AVX512-BF16)
    assert "kernels-community" not in proc.stderr and "trust" not in proc.stderr, proc.stderr
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16
    ids = _prompt_ids(run_dir)
    with torch.no_grad():
        gen = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, min_new_tokens=4
        )
    assert gen.shape[1] == ids.shape[1] + 4


def test_export_refuses_changed_weights_and_a_used_target(run_dir: Path, tmp_path: Path):
    wd = copy_workdir(run_dir, tmp_path / "copy")
    weights = wd / "adapters" / "adapter-r000" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    proc = cli("export", "adapter-r000", "--workdir", str(wd), "--out", str(tmp_path / "x"))
    assert proc.returncode == 4 and proc.stderr.startswith("error: ") and "sha256" in proc.stderr
    assert not (tmp_path / "x").exists()
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep.txt").write_text("mine")
    proc = cli("export", "adapter-r001", "--workdir", str(wd), "--out", str(tmp_path / "used"))
    assert proc.returncode == 2 and "already exists" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "used" / "keep.txt").read_text() == "mine"
    proc = cli("export", "adapter-r9", "--workdir", str(wd), "--out", str(tmp_path / "y"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: no adapter")


@pytest.mark.parametrize("round_idx", [0, 1])
def test_export_pairs_is_trl_preference_jsonl(run_dir: Path, tmp_path: Path, round_idx: int):
    out = tmp_path / f"pairs{round_idx}.jsonl"
    proc = cli("export-pairs", str(round_idx), "--workdir", str(run_dir), "--out", str(out), check=True)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    db = connect(run_dir, readonly=True)
    pairs = rows(
        db,
        "SELECT q.context, q.question, c.text AS chosen, r.text AS rejected FROM pairs p "
        "JOIN rounds ON rounds.id = p.round_id JOIN questions q ON q.id = p.question_id "
        "JOIN samples c ON c.id = p.chosen_sample_id JOIN samples r ON r.id = p.rejected_sample_id "
        "WHERE rounds.idx = ? ORDER BY p.id",
        (round_idx,),
    )
    assert len(lines) == len(pairs) >= 1 and f"wrote {len(pairs)} pairs" in proc.stdout
    assert all(set(line) == {"prompt", "chosen", "rejected"} for line in lines)
    assert all(isinstance(v, str) for line in lines for v in line.values())
    cfg = config_from_dict(json.loads(one(db, "SELECT config_json FROM runs")["config_json"]), "stored")
    tok = load_tokenizer(run_dir / "models" / "base")
    for line, p in zip(lines, pairs):
        expected = build_prompt(
            tok, p["context"], p["question"], cfg.sample.instruction, cfg.policy.max_prompt_tokens
        )
        assert line["prompt"] == expected.text  # the chat-templated prompt the policy saw
        assert line["prompt"].endswith("<|im_start|>assistant\n") and p["question"] in line["prompt"]
        assert (line["chosen"], line["rejected"]) == (p["chosen"], p["rejected"])


def test_export_pairs_to_stdout_and_errors(run_dir: Path, tmp_path: Path):
    proc = cli("export-pairs", "0", "--workdir", str(run_dir), "--out", "-", check=True)
    assert (
        len(proc.stdout.splitlines())
        == one(
            connect(run_dir, readonly=True),
            "SELECT COUNT(*) AS n FROM pairs p JOIN rounds r ON r.id = p.round_id WHERE r.idx = 0",
        )["n"]
    )
    proc = cli("export-pairs", "5", "--workdir", str(run_dir), "--out", str(tmp_path / "p.jsonl"))
    assert (
        proc.returncode == 2
        and proc.stderr.startswith("error: no round 5")
        and "Traceback" not in proc.stderr
    )
    proc = cli("export-pairs", "-1", "--workdir", str(run_dir), "--out", str(tmp_path / "p.jsonl"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr

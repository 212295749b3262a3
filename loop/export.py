"""Taking results out: an adapter (PEFT format, or merged into the base model) and a round's pairs.

    sealong-loop export adapter-r001 --workdir runs/demo --out exported/adapter          # PEFT directory
    sealong-loop export champion --workdir runs/demo --out exported/merged --merge      # plain transformers model
    sealong-loop export-pairs 0 --workdir runs/demo --out pairs-r0.jsonl                # TRL DPO/ORPO JSONL

An adapter's files are checked against the sha256 the store recorded before anything is written. Outputs
are written to a temporary sibling and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import sqlite_utils
from sealong.loop.config import Config, config_from_dict
from sealong.loop.errors import IntegrityError, SealongError
from sealong.loop.lineage_view import resolve_adapter
from sealong.store.artifacts import atomic_dir, atomic_write_text, sha256_dir
from sealong.store.db import one, rows

PROVENANCE = "sealong_export.json"


def run_config(db: sqlite_utils.Database, workdir: Path) -> Config:
    run = one(db, "SELECT config_json FROM runs ORDER BY id LIMIT 1")
    if run is None:
        raise SealongError(f"{workdir} has no run yet")
    return config_from_dict(json.loads(run["config_json"]), str(workdir / "config.toml"))


def base_model_dir(cfg: Config, workdir: Path) -> Path:
    """The run's base model directory (<workdir>/models/base for bundled and test models)."""
    from sealong.loop.models import prepare_base_model

    return prepare_base_model(cfg.policy.model, workdir, cfg.run.seed)


def _free_target(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise SealongError(f"--out {out} is a file; give a new or empty directory")
        if any(out.iterdir()):
            raise SealongError(f"{out} already exists and is not an empty directory; choose another --out")
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)


def verified_adapter(db: sqlite_utils.Database, workdir: Path, name: str) -> tuple[dict[str, Any], Path]:
    a = resolve_adapter(db, name)
    path = workdir / a["path"]
    if not path.is_dir():
        raise IntegrityError(f"adapter {a['id']}: directory {path} is missing")
    if sha256_dir(path) != a["sha256"]:
        raise IntegrityError(
            f"adapter {a['id']}: files in {path} do not match the recorded sha256 (corrupted?); not exported"
        )
    return a, path


def export_adapter(
    db: sqlite_utils.Database,
    workdir: Path,
    name: str,
    out: Path,
    merge: bool = False,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Copy the verified adapter (PEFT format), or merge it into the base and save a transformers model."""
    adapter, src = verified_adapter(db, workdir, name)
    cfg = run_config(db, workdir)
    _free_target(out)
    provenance = {
        "adapter": adapter["id"],
        "sha256": adapter["sha256"],
        "parent": adapter["parent_id"],
        "status": adapter["status"],
        "run": cfg.run.name,
        "base_model": cfg.policy.model,
        "workdir": str(workdir),
        "merged": merge,
        "exported_at": time.time(),
    }
    if not merge:
        with atomic_dir(out) as tmp:
            for f in src.iterdir():
                if f.is_file():
                    shutil.copy2(f, tmp / f.name)
            (tmp / PROVENANCE).write_text(json.dumps(provenance, indent=2))
        return provenance
    import torch
    from peft import PeftModel
    from sealong.loop.models import load_causal_lm, load_tokenizer, torch_dtype
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    base = base_model_dir(cfg, workdir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers deprecation notes PEFT triggers
        # Merge in float32 (an exact W + BA), then cast once to the requested dtype.
        model = load_causal_lm(base, "float32", trust_remote_code=cfg.policy.trust_remote_code)
        merged = PeftModel.from_pretrained(model, src, is_trainable=False).merge_and_unload()
        merged = merged.to(torch_dtype(dtype))
        tok = load_tokenizer(base, cfg.policy.trust_remote_code)
        with atomic_dir(out) as tmp, torch.no_grad():
            merged.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            (tmp / PROVENANCE).write_text(json.dumps({**provenance, "dtype": dtype}, indent=2))
    return {**provenance, "dtype": dtype}


def pair_records(db: sqlite_utils.Database, workdir: Path, round_idx: int) -> list[dict[str, str]]:
    """{prompt, chosen, rejected} per pair: the chat-templated plan-and-solve prompt the policy saw in training."""
    from sealong.loop.models import load_tokenizer
    from sealong.loop.prompts import build_prompt
    from sealong.loop.stages.train import PAIRS_SQL  # the very pairs, in the order, that training read

    rnd = one(db, "SELECT id FROM rounds WHERE idx = ?", (round_idx,))
    if rnd is None:
        known = [str(r["idx"]) for r in rows(db, "SELECT idx FROM rounds ORDER BY idx")]
        raise SealongError(f"no round {round_idx} in this run (rounds: {', '.join(known) or 'none yet'})")
    pairs = rows(db, PAIRS_SQL, (rnd["id"],))
    if not pairs:
        raise SealongError(
            f"round {round_idx} has no preference pairs (its pairs stage has not run, or every question was skipped)"
        )
    cfg = run_config(db, workdir)
    tok = load_tokenizer(base_model_dir(cfg, workdir), cfg.policy.trust_remote_code)
    out = []
    for p in pairs:
        prompt = build_prompt(
            tok, p["context"], p["question"], cfg.sample.instruction, cfg.policy.max_prompt_tokens
        )
        out.append({"prompt": prompt.text, "chosen": p["chosen"], "rejected": p["rejected"]})
    return out


def export_pairs(db: sqlite_utils.Database, workdir: Path, round_idx: int, out: str) -> int:
    """Write the round's pairs as JSONL to `out` ('-': stdout). Returns the number of lines."""
    records = pair_records(db, workdir, round_idx)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if out == "-":
        sys.stdout.write(text)
    else:
        path = Path(out)
        if path.is_dir():
            raise SealongError(f"{path} is a directory; give a file name for --out")
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return len(records)

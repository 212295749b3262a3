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

import click
import sqlite_utils
from sealong.loop.commands import common
from sealong.loop.commands.lineage import resolve_adapter
from sealong.loop.config import Config, config_from_dict
from sealong.loop.errors import IntegrityError, SealongError
from sealong.store.artifacts import atomic_dir, atomic_write_text, verify_adapter
from sealong.store.db import one, rows

PROVENANCE = "sealong_export.json"


def run_config(db: sqlite_utils.Database, workdir: Path) -> Config:
    run = one(db, "SELECT config_json FROM runs ORDER BY id LIMIT 1")
    if run is None:
        raise SealongError(f"{workdir} has no run yet")
    return config_from_dict(json.loads(run["config_json"]), str(workdir / "config.toml"))


def base_model_dir(cfg: Config, workdir: Path) -> Path:
    """The run's base model directory (<workdir>/models/base for bundled and test models)."""
    from sealong.loop.backends.models import prepare_base_model

    return prepare_base_model(cfg.policy.model, workdir, cfg.run.seed)


def _free_target(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise SealongError(f"--out {out} is a file; give a new or empty directory")
        if any(out.iterdir()):
            raise SealongError(f"{out} already exists and is not an empty directory; choose another --out")
        out.rmdir()
    out.parent.mkdir(parents=True, exist_ok=True)


def export_adapter(
    db: sqlite_utils.Database,
    workdir: Path,
    name: str,
    out: Path,
    merge: bool = False,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Copy the verified adapter (PEFT format), or merge it into the base and save a transformers model."""
    adapter = resolve_adapter(db, name)
    try:
        src = verify_adapter(workdir, adapter)
    except IntegrityError as e:
        raise IntegrityError(f"{e}; not exported") from None
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
    from sealong.loop.backends.models import load_causal_lm, load_tokenizer, torch_dtype
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
    from sealong.loop.backends.models import load_tokenizer
    from sealong.loop.recipe.prompts import build_prompt
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


@click.command("export")
@click.argument("adapter")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", required=True, help="New (or empty) output directory.")
@click.option(
    "--merge", is_flag=True, help="Merge the adapter into the base model and save a plain transformers model."
)
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float32", "float16"]),
    default="bfloat16",
    show_default=True,
    help="Weights dtype of the merged model (the merge itself is done in float32).",
)
def export_command(adapter: str, workdir: str, out: str, merge: bool, dtype: str) -> None:
    """Export an adapter in PEFT format, or merged into the base model (--merge) as a transformers model directory.

    ADAPTER is an adapter id (see `lineage`) or `champion`. Its files are checked against the recorded sha256
    first. Load the result with `PeftModel.from_pretrained(base, OUT)` or `AutoModelForCausalLM.from_pretrained(OUT)`.

    Example: sealong-loop export champion --workdir runs/demo --out exported/champion-merged --merge
    """
    wd, db = common.readonly_db(workdir, need_schema=True)
    info = export_adapter(db, wd, adapter, Path(out), merge, dtype)
    what = f"merged into the base model ({dtype})" if merge else "PEFT adapter"
    click.echo(f"exported {info['adapter']} ({what}, sha256 verified) to {out}")


@click.command("export-pairs")
@click.argument("round_idx", metavar="ROUND", type=click.IntRange(min=0))
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", required=True, help="JSONL file to write ('-' for stdout).")
def export_pairs_command(round_idx: int, workdir: str, out: str) -> None:
    """Export a round's preference pairs as JSONL {prompt, chosen, rejected}: TRL's DPO/ORPO format.

    The prompt is the chat-templated plan-and-solve prompt the policy saw (context truncated the same way),
    so the lines train another trainer exactly as they trained this round's adapter.

    Example: sealong-loop export-pairs 0 --workdir runs/demo --out pairs-round0.jsonl
    """
    wd, db = common.readonly_db(workdir, need_schema=True)
    n = export_pairs(db, wd, round_idx, out)
    if out != "-":
        click.echo(f"wrote {n} pairs of round {round_idx} to {out}")

"""Helpers shared by the model-running stages: resolve the base model and verified adapters."""

from __future__ import annotations

from pathlib import Path

from sealong.loop.errors import IntegrityError, SealongError
from sealong.loop.models import prepare_base_model, require_safetensors_adapter
from sealong.loop.stages.base import StageContext
from sealong.store.artifacts import sha256_dir
from sealong.store.db import one


def base_dir(ctx: StageContext) -> Path:
    return prepare_base_model(ctx.cfg.policy.model, ctx.workdir, ctx.cfg.run.seed)


def verified_adapter_dir(ctx: StageContext, adapter_id: str | None) -> Path | None:
    """The adapter's directory, after checking its files against the sha256 the store recorded."""
    if adapter_id is None:
        return None
    row = one(ctx.db, "SELECT path, sha256 FROM adapters WHERE id = ?", (adapter_id,))
    if row is None:
        raise IntegrityError(f"adapter {adapter_id} is referenced but not recorded in the store")
    path = ctx.workdir / row["path"]
    if not path.is_dir():
        raise IntegrityError(f"adapter {adapter_id}: directory {path} is missing")
    actual = sha256_dir(path)
    if actual != row["sha256"]:
        raise IntegrityError(
            f"adapter {adapter_id}: files in {path} do not match the recorded sha256 (corrupted?)"
        )
    try:
        require_safetensors_adapter(path)
    except SealongError as e:
        raise IntegrityError(str(e)) from None
    return path


def policy_sampler(ctx: StageContext, adapter_id: str | None):
    """(sampler, tokenizer) for base + the (verified) adapter, on the configured backend."""
    from sealong.loop.samplers import make_sampler

    adapter_dir = verified_adapter_dir(ctx, adapter_id)
    sha = (
        one(ctx.db, "SELECT sha256 FROM adapters WHERE id = ?", (adapter_id,))["sha256"]
        if adapter_id
        else None
    )
    return make_sampler(
        ctx.cfg, base_dir(ctx), adapter_id, adapter_dir, sha, ctx.cfg.run.seed + ctx.round_idx
    )

"""The policy a stage runs: the base model's directory and the verified adapters it starts from."""

from __future__ import annotations

from pathlib import Path

from sealong.loop.backends.models import prepare_base_model
from sealong.loop.errors import IntegrityError
from sealong.loop.stages.base import StageContext
from sealong.store.artifacts import VerifiedAdapter, verify_adapter
from sealong.store.db import one


def base_dir(ctx: StageContext) -> Path:
    return prepare_base_model(ctx.cfg.policy.model, ctx.workdir, ctx.cfg.run.seed)


def verified_adapter_dir(ctx: StageContext, adapter_id: str | None) -> VerifiedAdapter | None:
    """The adapter's directory, after checking its files against the sha256 the store recorded."""
    if adapter_id is None:
        return None
    row = one(ctx.db, "SELECT id, path, sha256 FROM adapters WHERE id = ?", (adapter_id,))
    if row is None:
        raise IntegrityError(f"adapter {adapter_id} is referenced but not recorded in the store")
    return verify_adapter(ctx.workdir, row)


def policy_sampler(ctx: StageContext, adapter_id: str | None):
    """(sampler, tokenizer) for base + the (verified) adapter, on the configured backend."""
    from sealong.loop.backends.sampler import make_sampler

    adapter_dir = verified_adapter_dir(ctx, adapter_id)
    sha = (
        one(ctx.db, "SELECT sha256 FROM adapters WHERE id = ?", (adapter_id,))["sha256"]
        if adapter_id
        else None
    )
    return make_sampler(
        ctx.cfg, base_dir(ctx), adapter_id, adapter_dir, sha, ctx.cfg.run.seed + ctx.round_idx
    )

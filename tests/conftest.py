"""Shared fixtures: the tiny random-Llama config and helpers to run the real CLI."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomllib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "tests" / "configs" / "tiny-random.toml"
# `sealong-loop` as a separate process, from the source tree (-P: never the repo root on sys.path).
CLI = [sys.executable, "-P", "-m", "sealong.loop.cli"]


def write_config(path: Path, base: Path = TINY_CONFIG, **sections: dict) -> Path:
    """A copy of a config with some keys overridden: write_config(p, train={"epochs": 2})."""
    from sealong.loop.config import config_from_dict, dump_config_toml

    raw = tomllib.loads(base.read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(dump_config_toml(config_from_dict(raw, str(path))))
    return path


def cli(
    *args: str, env: dict | None = None, timeout: float = 600, check: bool = False
) -> subprocess.CompletedProcess:
    """Run `sealong-loop ARGS` as a user would (a separate process, plain output)."""
    cmd = [*CLI, *args]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def wait_for(pred, timeout: float, what: str = "condition", every: float = 0.2):
    """pred()'s first truthy value within `timeout` seconds (exceptions count as not yet: a database may be
    mid-creation), else AssertionError naming `what`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with contextlib.suppress(Exception):
            value = pred()
            if value:
                return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def built_once(tmp_path_factory, name: str):
    """A directory every pytest-xdist worker shares (`make test` runs 2), held under a lock while the caller
    builds it: the first worker to come builds, the others wait and reuse. Callers mark it complete."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield shared / name


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory):
    """One SEALONG_MODEL_CACHE for the session: each bundled model is converted once, not once per run
    (~8 s for the tiny Llama, ~35 s for SmolLM2). Every CLI the tests start inherits it."""
    from sealong.loop.backends.models import MODEL_CACHE_ENV

    d = tmp_path_factory.getbasetemp() / "model-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(MODEL_CACHE_ENV, str(d))
        yield d


@pytest.fixture(scope="session")
def tiny_model():
    """(model, tokenizer) of the 2-layer random Llama, built once per session."""
    from sealong.loop.backends.models import build_tiny_random_llama

    model, tok = build_tiny_random_llama(seed=0)
    model.eval()
    return model, tok


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model) -> Path:
    """The tiny random Llama saved as a transformers directory."""
    d = tmp_path_factory.mktemp("tiny-llama")
    model, tok = tiny_model
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return d

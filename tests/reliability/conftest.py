"""Fixtures of the reliability tests: a workdir paused at the start of round 1's training, made once.

Round 0 ran whole (its candidate promoted: the champion is adapter-r000); round 1 sampled, scored and
paired, then the controller was killed (SIGKILL) as round 1's train stage started. Tests copy it and
resume with a fault (NaN loss, full disk, corrupted champion, SIGTERM). The run is traced with strace when
the machine allows it, with HOME and TMPDIR pointing at empty directories, for the write-confinement test.
Its round 0 is also the uninterrupted reference of the replicated round in test_faults.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sealong.loop.backends.models import prepare_base_model

from ..conftest import CLI, TINY_CONFIG, built_once
from .harness import make_config

TRACED_CALLS = (
    "openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,symlink,symlinkat,"
    "truncate,socket,bind,listen,connect"
)


def reliability_config(path: Path, **sections) -> Path:
    """The tiny config, promoting every candidate (the lineage changes each round), checkpointing every
    training step, 4 epochs (12 steps: long enough to be interrupted mid-training), eval batch 1 (a greedy
    answer then does not depend on which questions share its padded batch)."""
    base = {
        "promote": {"rule": "margin", "margin": -1.0},
        "distributed": {"checkpoint_every": 1},
        "train": {"epochs": 4},
        "eval": {"batch_size": 1},
    }
    for section, values in sections.items():
        base[section] = {**base.get(section, {}), **values}
    return make_config(path, TINY_CONFIG, **base)


def strace_usable() -> bool:
    if not shutil.which("strace"):
        return False
    probe = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True)
    return probe.returncode == 0


@dataclass
class PausedRun:
    workdir: Path
    config: Path
    trace: Path | None  # strace output of the whole run, or None
    sandbox: Path  # HOME, TMPDIR and the working directory the run was given
    output: str


@pytest.fixture(scope="session")
def paused_at_round1_train(tmp_path_factory) -> PausedRun:
    with built_once(tmp_path_factory, "paused-run") as root:  # pytest-xdist workers share one
        done = root / "DONE"
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            output = _pause_at_round1_train(root)
            done.write_text(output)
        trace = root / "strace.txt"
        return PausedRun(
            root / "run",
            root / "c.toml",
            trace if trace.exists() else None,
            root / "sandbox",
            done.read_text(),
        )


def _pause_at_round1_train(root: Path) -> str:
    cfg = reliability_config(root / "c.toml")
    # The session's model cache (tests/conftest.py) is filled first: the traced run then only reads it.
    prepare_base_model("tiny-random-llama", root / "warm-cache")
    wd, sandbox = root / "run", root / "sandbox"
    for d in ("home", "tmp", "cwd"):
        (sandbox / d).mkdir(parents=True)
    (root / "faults").mkdir()
    env = {
        **os.environ,
        "HOME": str(sandbox / "home"),
        "TMPDIR": str(sandbox / "tmp"),
        "SEALONG_FAULT": "train#1:start:kill-controller",
        "SEALONG_FAULT_DIR": str(root / "faults"),
    }
    cmd = [
        *CLI,
        "start",
        "--config",
        str(cfg),
        "--workdir",
        str(wd),
        "--max-rounds",
        "2",
        "--plain",
    ]
    trace = root / "strace.txt" if strace_usable() else None
    if trace:
        cmd = [
            "strace",
            "-f",
            "-y",
            "-qq",
            "--seccomp-bpf",
            "-e",
            f"trace={TRACED_CALLS}",
            "-o",
            str(trace),
            *cmd,
        ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=sandbox / "cwd", timeout=900)
    assert any((root / "faults").iterdir()), (
        f"the controller was not killed at round 1's train:\n{proc.stdout}\n{proc.stderr}"
    )
    time.sleep(0.5)  # the stage process dies with its controller
    return proc.stdout + proc.stderr


@pytest.fixture
def paused_copy(tmp_path, paused_at_round1_train) -> Path:
    """A private copy of the paused workdir."""
    wd = tmp_path / "run"
    shutil.copytree(paused_at_round1_train.workdir, wd)
    return wd

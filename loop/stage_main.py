"""Child-process entry point for one stage: `python -P -m sealong.loop.stage_main --workdir W --stage-id N`.

The controller launches this; users normally do not. Exit codes: 0 done, 1 failed (retryable),
3 failed (not retryable: the same inputs would fail again, e.g. a NaN loss or a corrupted adapter).
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import json
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

EXIT_RETRYABLE, EXIT_FATAL = 1, 3


def _die_with_parent(parent_pid: int) -> None:
    """Exit when the controller dies, so a killed controller leaves no stage running.

    A direct child gets SIGKILL from the kernel (Linux PR_SET_PDEATHSIG). Under torchrun the parent is
    the torchrun agent, so a watchdog thread also polls the controller's pid once a second.
    """
    if os.getppid() == parent_pid:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(EXIT_RETRYABLE)
            except PermissionError:
                pass
            time.sleep(1.0)

    threading.Thread(target=watch, name="controller-watchdog", daemon=True).start()


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - cosmetics only
        pass


def _maybe_inject_fault(name: str, attempt: int) -> None:
    """Testing hook: SEALONG_FAULT="train:2" makes the first 2 attempts of the train stage fail."""
    spec = os.environ.get("SEALONG_FAULT", "")
    if ":" in spec:
        stage, _, count = spec.partition(":")
        if stage == name and attempt <= int(count or 0):
            raise RuntimeError(f"injected fault (SEALONG_FAULT={spec}, attempt {attempt})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--stage-id", type=int, required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args(argv)
    if args.parent_pid:
        _die_with_parent(args.parent_pid)
    _quiet_libraries()

    from sealong.loop.config import config_from_dict
    from sealong.loop.errors import IntegrityError, SealongError
    from sealong.loop.stages.base import StageContext
    from sealong.loop.training import NonFiniteLoss
    from sealong.store.db import connect, log_event, one

    workdir = Path(args.workdir).resolve()
    db = connect(workdir)
    stage = one(db, "SELECT * FROM stages WHERE id = ?", (args.stage_id,))
    rnd = one(db, "SELECT * FROM rounds WHERE id = ?", (stage["round_id"],))
    run = one(db, "SELECT * FROM runs WHERE id = ?", (rnd["run_id"],))
    cfg = config_from_dict(json.loads(run["config_json"]), f"{workdir}/config.toml")
    if cfg.policy.threads:
        import torch

        torch.set_num_threads(cfg.policy.threads)
    ctx = StageContext(db=db, cfg=cfg, workdir=workdir, run_id=run["id"], round_id=rnd["id"], round_idx=rnd["idx"],
                       stage_id=stage["id"], name=stage["name"])
    try:
        _maybe_inject_fault(stage["name"], stage["attempts"])
        importlib.import_module(f"sealong.loop.stages.{stage['name']}").run(ctx)
        return 0
    except BaseException as e:  # noqa: BLE001 - every failure is recorded, then reported by exit code
        fatal = isinstance(e, (NonFiniteLoss, IntegrityError))
        message = str(e) if isinstance(e, SealongError) else f"{type(e).__name__}: {e}"
        traceback.print_exc(file=sys.stderr)
        db.execute("UPDATE stages SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                   (message, time.time(), stage["id"]))
        log_event(db, f"{stage['name']} failed: {message}", "error", run["id"], rnd["id"], stage["name"])
        return EXIT_FATAL if fatal else EXIT_RETRYABLE


if __name__ == "__main__":
    sys.exit(main())

"""A workdir and its run: the controller's lock, creating the run and its question sets, and the check
that a resumed run uses the config it was started with.

One controller per workdir, enforced by an flock on controller.lock that the kernel releases when the
holder dies (so a kill -9 leaves no stale lock); `holder_pid` tells the other commands who holds it.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import sqlite_utils
from sealong.loop.config import Config, config_from_dict, dump_config_toml
from sealong.loop.engine.rendezvous import LAUNCH_KEYS
from sealong.loop.errors import (
    DataError,
    SealongError,
    WorkdirBusy,
)
from sealong.loop.tasks.records import QuestionRecord
from sealong.store import state
from sealong.store.artifacts import atomic_write_text
from sealong.store.db import Transaction, dumps, log_event, one

LOCK_NAME = "controller.lock"


class WorkdirLock:
    """An exclusive flock on <workdir>/controller.lock holding the owner's pid."""

    def __init__(self, workdir: Path):
        self.path = workdir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder_pid(self.path.parent)
            raise WorkdirBusy(
                f"another controller (pid {pid}) is already running on {self.path.parent}; "
                f"watch it with `sealong-loop status --workdir {self.path.parent}` or stop it with "
                f"`sealong-loop stop --workdir {self.path.parent}`"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            os.fsync(fd)
        except OSError:
            pass  # a full disk: the pid is only informational, the flock is the lock
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def holder_pid(workdir: Path) -> int | None:
    """The pid of the live controller on this workdir, or None (no lock file, or nobody holds it)."""
    path = Path(workdir) / LOCK_NAME
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None  # nobody holds it: stale file
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else None
    finally:
        os.close(fd)


def questions_for(cfg: Config) -> list[tuple[str, QuestionRecord]]:
    """The training pool and the eval set, built once when a run is created."""
    from sealong.loop.tasks import synthetic

    d = cfg.data
    if d.train_source == "synthetic":
        train = synthetic.generate(
            d.train_pool_size,
            cfg.run.seed,
            "train",
            d.hops,
            d.context_tokens_min,
            d.context_tokens_max,
            d.near_miss_rate,
        )
    elif d.train_source == "musique":
        from sealong.loop.tasks.musique import build_musique_pool

        train = build_musique_pool(
            d.train_path, d.train_pool_size, d.context_tokens_min, d.context_tokens_max, cfg.run.seed
        )
    else:
        from sealong.loop.tasks.userdata import FieldMap, load_folder, load_records

        fields = FieldMap.from_config(d)
        if d.train_source == "jsonl":
            train = load_records(d.train_path, fields, "train")
        else:
            train = load_folder(d.train_path, d.questions_path, fields)
    if d.eval_source == "synthetic":
        per_task = d.eval_questions_per_task
        evals = synthetic.generate(
            per_task * len(d.hops),
            cfg.run.seed,
            "eval",
            d.hops,
            d.context_tokens_min,
            d.context_tokens_max,
            d.near_miss_rate,
        )
    else:
        from sealong.loop.tasks.longbench import load_longbench
        from sealong.loop.tasks.userdata import FieldMap, load_records

        evals = []
        for path in d.eval_paths:
            if d.eval_source == "jsonl":
                loaded = load_records(path, FieldMap.from_config(d), "eval", limit=d.eval_questions_per_task)
            else:
                loaded = load_longbench(path, limit=d.eval_questions_per_task)
            if not loaded:
                raise DataError(path, None, None, "no records (an eval file needs at least one question)")
            evals += [(path, r) for r in loaded]
        seen = {}
        for path, r in evals:
            if r.id in seen:
                raise DataError(
                    path,
                    None,
                    "id",
                    f"duplicate id {r.id!r}: {seen[r.id]} has it too"
                    + (" (same dataset and _id)" if d.eval_source == "longbench" else ""),
                )
            seen[r.id] = path
        evals = [r for _, r in evals]
    if not train:
        raise DataError(d.train_path or "<synthetic>", None, None, "the training pool is empty")
    return [("train", q) for q in train] + [("eval", q) for q in evals]


def check_config_matches(db: sqlite_utils.Database, cfg: Config, workdir: Path) -> Config | None:
    """A resumed run keeps the config it started with: refuse another one, saying where they differ.
    Returns the stored config (None before the run exists)."""
    run = one(db, "SELECT config_json FROM runs ORDER BY id LIMIT 1")
    if run is None:
        return None
    stored = config_from_dict(json.loads(run["config_json"]), str(workdir / "config.toml"))
    if cfg.source_path == "<stored>":
        return stored
    old = stored.to_dict()
    diff = [
        f"[{s}] {k}"
        for s, sec in cfg.to_dict().items()
        for k, v in sec.items()
        if old[s][k] != v and k not in LAUNCH_KEYS.get(s, ())  # where the nodes meet: per launch
    ]
    if diff:
        rounds_hint = (
            "; to change the number of rounds, resume without --config and with --max-rounds N"
            if diff == ["[run] max_rounds"]
            else ""
        )
        raise SealongError(
            f"{workdir} holds a run started with a different config (differs in: {', '.join(diff[:6])}"
            f"{', …' if len(diff) > 6 else ''}); resume it without --config, or use a new --workdir"
            + rounds_hint
        )
    return stored


def ensure_run(
    db: sqlite_utils.Database,
    cfg: Config,
    workdir: Path,
    max_rounds: int | None,
    questions: list[tuple[str, QuestionRecord]] | None = None,
) -> int:
    """Create the workdir's run (config + questions, loaded here unless given) on first start; on resume
    check the config matches."""
    run = one(db, "SELECT * FROM runs ORDER BY id LIMIT 1")
    if run is not None:
        stored = check_config_matches(db, cfg, workdir)
        if max_rounds is not None:
            state.set_max_rounds(db, run["id"], max_rounds)
        if not (workdir / "config.toml").is_file():  # killed between creating the run and writing it
            atomic_write_text(workdir / "config.toml", dump_config_toml(stored))
        return run["id"]
    questions = questions if questions is not None else questions_for(cfg)
    with Transaction(db):
        run_id = state.create_run(
            db,
            cfg.run.name,
            dumps(cfg.to_dict()),
            cfg.source_path,
            cfg.run.max_rounds if max_rounds is None else max_rounds,
        )
        counters = insert_questions(db, questions)
        log_event(
            db,
            f"run created: {counters.get('train', -1) + 1} training questions, "
            f"{counters.get('eval', -1) + 1} eval questions" + _cut_note(cfg, questions),
            run_id=run_id,
        )
    atomic_write_text(workdir / "config.toml", dump_config_toml(cfg))
    return run_id


def insert_questions(
    db: sqlite_utils.Database,
    questions: list[tuple[str, QuestionRecord]],
    first: dict[str, int] | None = None,
) -> dict[str, int]:
    """Record questions (split, record) in the caller's transaction, numbered on from `first` (split ->
    the first pool_index; 0 by default). Returns split -> the last pool_index used."""
    counters = {split: i - 1 for split, i in (first or {}).items()}
    for split, q in questions:
        counters[split] = counters.get(split, -1) + 1
        db.execute(
            "INSERT INTO questions (id, split, task, source, question, context, answers_json, n_tokens, "
            "pool_index, meta_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                q.id,
                split,
                q.task,
                q.source,
                q.question,
                q.context,
                json.dumps(q.answers),
                q.n_tokens,
                counters[split],
                json.dumps(q.meta, ensure_ascii=False),
            ),
        )
    return counters


def _cut_note(cfg: Config, questions: list[tuple[str, QuestionRecord]]) -> str:
    """How many contexts are longer than the prompt budget (≈ tokens; they are cut in the middle)."""
    budget = cfg.policy.max_prompt_tokens
    cut = {
        s: sum(1 for split, q in questions if split == s and q.n_tokens > budget) for s in ("train", "eval")
    }
    if not any(cut.values()):
        return ""
    return (
        f"; {cut['train']} training and {cut['eval']} eval context(s) are longer than "
        f"policy.max_prompt_tokens = {budget} (about; whitespace words × 1.3) and will be cut in the middle"
    )


def load_stored_config(db: sqlite_utils.Database, workdir: Path) -> Config:
    run = one(db, "SELECT config_json FROM runs ORDER BY id LIMIT 1")
    if run is None:
        raise SealongError(f"{workdir} has no run yet; give --config to start one")
    cfg = config_from_dict(json.loads(run["config_json"]), str(workdir / "config.toml"))
    cfg.source_path = "<stored>"
    return cfg

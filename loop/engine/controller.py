"""The controller: a light process that runs rounds as a state machine over the store.

    round k:  sample → score → pairs → train → eval → promote   (each stage a child process)

It never runs model code itself. It records progress in SQLite, survives a crashed child (the error is
recorded and the stage retried up to `run.max_stage_retries` times), and on restart resumes at the first
unfinished stage of the unfinished round. One controller per workdir (engine/workdir.py: the lock, the
run's creation and the config check).

What a stage's process says about itself is only believed through the store: a stage is done when its
last transaction committed `done`, whatever its exit code (a process killed just after its commit has
still finished the stage), and nothing the controller does turns a done stage back.

Stopping: SIGTERM/SIGINT interrupt the stage in flight (SIGTERM to its process, SIGKILL after
STOP_GRACE_S) and the controller stops within that bound; a stop request in the store (`sealong-loop
stop`) lets the stage in flight finish. Either way the controller says in the event log what it is
waiting for and when it expects to stop. A full disk stops the run with one message (DiskFull); the
store is left consistent and `start` resumes once space is freed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils
from sealong.loop.config import Config
from sealong.loop.engine import rendezvous
from sealong.loop.engine.intake import Intake, choose_questions, record_round, trained, waiting_message
from sealong.loop.engine.launch import stage_command
from sealong.loop.engine.rendezvous import Launch
from sealong.loop.engine.stage_main import exit_code_file
from sealong.loop.engine.workdir import WorkdirLock, ensure_run
from sealong.loop.errors import (
    STAGE_EXIT_FATAL,
    DiskFull,
    StageFailed,
)
from sealong.loop.stages.base import champion
from sealong.loop.stages.registry import STAGE_NAMES
from sealong.store import faults, state
from sealong.store.artifacts import is_disk_full
from sealong.store.db import Transaction, connect, log_event, one, rows
from sealong.store.liveness import process_alive
from sealong.store.state import RoundStatus, RunStatus, StageStatus

STOP_GRACE_S = 10.0  # after SIGTERM, the stage process gets this long before SIGKILL
WAIT = "wait"  # _next_round: nothing new to train on yet, and the run goes on until stopped


def _is_stage_process(pid: int, stage_id: int, workdir: Path) -> bool:
    """Is `pid` still the process that ran this stage? (A pid recorded before a crash may since have been
    given to an unrelated process, which must not be killed.)"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    pairs = set(zip(argv, argv[1:]))
    return (
        "sealong.loop.engine.stage_main" in argv
        and ("--stage-id", str(stage_id)) in pairs
        and ("--workdir", str(workdir)) in pairs
    )


def _kill_and_wait(pid: int, timeout: float = 10.0) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < end:
        time.sleep(0.05)


class Controller:
    def __init__(
        self,
        workdir: Path,
        cfg: Config,
        max_rounds: int | None = None,
        on_tick: Callable[[], None] = lambda: None,
        tick_seconds: float = 0.5,
        launch: Launch | None = None,
    ):
        self.workdir = Path(workdir).resolve()
        # where the nodes meet is per launch (engine/rendezvous.py): the stored config's is only a default
        self.launch = launch or rendezvous.resolve(cfg, controller=True)
        self.cfg = rendezvous.apply(cfg, self.launch)
        self.max_rounds = max_rounds
        self.on_tick = on_tick
        self.tick_seconds = tick_seconds
        self.lock = WorkdirLock(self.workdir)
        self.stop_now = False
        self.stop_signal = 0
        self.stop_deadline = 0.0
        self.announced: set[str] = set()
        self.child: subprocess.Popen | None = None
        self.db: sqlite_utils.Database | None = None
        self.run_id = 0
        self.previous: dict | None = None  # the run's status and message before this start
        self.questions: list | None = None  # a new run's questions, when the caller loaded them already
        self.already_finished = ""  # started again with nothing left to do: why the run had finished
        self.intake: Intake | None = None  # your own data: new records between rounds
        self.waiting_since = 0.0  # when the run began waiting for new data (0: not waiting)
        self.waiting_message = ""  # the status line last written while waiting

    # -- lifecycle -------------------------------------------------------------------------------------
    def run(self) -> str:
        """Run rounds until done, stopped or failed. Returns the run's final status."""
        self.lock.acquire()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.db = connect(self.workdir)
            self.run_id = ensure_run(self.db, self.cfg, self.workdir, self.max_rounds, self.questions)
            self.intake = Intake(self.cfg, self.run_id)
            where = rendezvous.publish(self.workdir, self.launch)
            if where:
                self._event(where)
            self.previous = one(
                self.db, "SELECT status, message, finished_at FROM runs WHERE id = ?", (self.run_id,)
            )
            self._recover()
            return self._loop()
        except (OSError, sqlite3.Error) as e:
            if not is_disk_full(e):
                raise
            self._kill_child()
            raise DiskFull(
                f"disk full: the controller could not write to {self.workdir} ({e}). Stages already "
                f"recorded as done are intact; free space (df -h {self.workdir}) and run "
                f"`sealong-loop start --workdir {self.workdir}` to resume"
            ) from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self.lock.release()

    def _on_signal(self, signum, frame) -> None:
        """Only flags and a SIGTERM to the stage here; the wait loop logs and enforces the grace period."""
        if not self.stop_now:
            self.stop_now, self.stop_signal, self.stop_deadline = (
                True,
                signum,
                time.monotonic() + STOP_GRACE_S,
            )
        if self.child and self.child.poll() is None:
            self.child.terminate()

    def _kill_child(self) -> None:
        if self.child and self.child.poll() is None:
            self.child.kill()
            self.child.wait()

    def _event(
        self, message: str, level: str = "info", round_id: int | None = None, stage: str | None = None
    ) -> None:
        log_event(self.db, message, level, self.run_id, round_id, stage)

    def _recover(self) -> None:
        """Undo what a killed controller left: running stages back to pending, failed ones retried afresh."""
        db = self.db
        for st in rows(db, "SELECT * FROM stages WHERE status = ?", (StageStatus.RUNNING,)):
            if process_alive(st["pid"]) and _is_stage_process(st["pid"], st["id"], self.workdir):
                _kill_and_wait(st["pid"])
            state.reset_interrupted(db, st["id"])
            self._event(
                f"{st['name']} was interrupted (controller stopped or killed); it will run again",
                "warn",
                st["round_id"],
                st["name"],
            )
        with Transaction(db):
            state.reopen_failed(db, self.run_id)

    def _finish(self, status: RunStatus, message: str) -> str:
        state.finish_run(self.db, self.run_id, status, message)
        self._event(message, "error" if status == RunStatus.FAILED else "info")
        self.on_tick()
        return status

    # -- the state machine -----------------------------------------------------------------------------
    def _next_round(self) -> dict | str:
        """The round to work on, a reason to finish, or WAIT (nothing new yet; the run has no max_rounds)."""
        db = self.db
        current = one(
            db,
            "SELECT * FROM rounds WHERE run_id = ? AND status != ? ORDER BY idx LIMIT 1",
            (self.run_id, RoundStatus.DONE),
        )
        if current:
            return current
        done = rows(db, "SELECT promoted FROM rounds WHERE run_id = ? ORDER BY idx", (self.run_id,))
        max_rounds = one(db, "SELECT max_rounds FROM runs WHERE id = ?", (self.run_id,))["max_rounds"]
        if max_rounds and len(done) >= max_rounds:
            return f"finished: {len(done)} round(s) done (max_rounds = {max_rounds})"
        streak = 0
        for r in reversed(done):
            if r["promoted"]:
                break
            streak += 1
        if streak >= self.cfg.run.patience:
            return f"finished: {streak} round(s) in a row without a promotion (patience = {self.cfg.run.patience})"
        self.intake.sync(db)
        chosen = choose_questions(db, self.cfg, self.run_id, len(done))
        if not chosen:
            if not max_rounds:
                return WAIT
            return (
                f"finished: no new questions to train on ({len(trained(db, self.run_id))} trained, "
                f"[data] new_questions = {self.cfg.data.new_questions})"
            )
        champ = champion(db, self.run_id)
        with Transaction(db):
            round_id = state.start_round(
                db, self.run_id, len(done), champ["id"] if champ else None, STAGE_NAMES
            )
            record_round(db, round_id, chosen)
            state.set_run_message(db, self.run_id, None)
            self._event(
                f"round {len(done)} started; policy = {champ['id'] if champ else 'base model'}; "
                f"{len(chosen)} training question(s), {sum(new for _, new in chosen)} new",
                round_id=round_id,
            )
        return one(db, "SELECT * FROM rounds WHERE id = ?", (round_id,))

    def _stop_requested(self) -> bool:
        return self.stop_now or self._stop_flag()

    def _stop_flag(self) -> bool:
        """`sealong-loop stop` was run (a request in the store, as opposed to a signal)."""
        return bool(
            one(self.db, "SELECT stop_requested FROM runs WHERE id = ?", (self.run_id,))["stop_requested"]
        )

    def _loop(self) -> str:
        while True:
            if self._stop_requested():
                return self._finish(RunStatus.STOPPED, "stopped on request; `sealong-loop start` resumes it")
            rnd = self._next_round()
            if rnd == WAIT:
                self._wait_for_data()
                continue
            self.waiting_since, self.waiting_message = 0.0, ""
            if isinstance(rnd, str):
                prev = self.previous or {}
                if prev.get("status") == RunStatus.FINISHED and prev.get("message") == rnd:
                    # started again with nothing left to do: say so once, without a second identical event
                    self.already_finished = rnd
                    state.finish_run(  # as it was, its finish time included
                        self.db, self.run_id, RunStatus.FINISHED, rnd, prev.get("finished_at")
                    )
                    return RunStatus.FINISHED
                return self._finish(RunStatus.FINISHED, rnd)
            for st in rows(self.db, "SELECT * FROM stages WHERE round_id = ? ORDER BY seq", (rnd["id"],)):
                if st["status"] == StageStatus.DONE:
                    continue
                if self._stop_requested():
                    return self._finish(
                        RunStatus.STOPPED,
                        f"stopped on request before {st['name']} of round {rnd['idx']}; "
                        "`sealong-loop start` resumes it",
                    )
                try:
                    self._run_stage(rnd, st)
                except StageFailed as e:
                    state.mark_round_failed(self.db, rnd["id"])
                    return self._finish(RunStatus.FAILED, str(e))
                if self.stop_now:
                    return self._finish(
                        RunStatus.STOPPED,
                        f"stopped by signal during {st['name']} of round {rnd['idx']}; "
                        "`sealong-loop start` resumes it",
                    )
            faults.point("before-done", stage="round", round_idx=rnd["idx"])
            with Transaction(self.db):
                state.mark_round_done(self.db, rnd["id"])
                self._event(f"round {rnd['idx']} done", round_id=rnd["id"])

    def _wait_for_data(self) -> None:
        """Nothing new to train on: say so in the run's status, then sleep up to run.poll_seconds, waking
        at once for a stop request or a signal."""
        if not self.waiting_since:
            self.waiting_since = time.time()
            self._event(waiting_message(self.db, self.run_id, self.waiting_since))
        message = waiting_message(self.db, self.run_id, self.waiting_since, self.intake.note)
        if message != self.waiting_message:  # a write only when the line changes
            self.waiting_message = message
            with Transaction(self.db):
                state.set_run_message(self.db, self.run_id, message)
        self.on_tick()
        end = time.monotonic() + self.cfg.run.poll_seconds
        while time.monotonic() < end and not self._stop_requested():
            time.sleep(min(self.tick_seconds, max(0.0, end - time.monotonic())))
            self.on_tick()

    def _run_stage(self, rnd: dict, st: dict) -> None:
        """Run one stage in a child process, retrying failures up to the bound."""
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        name = st["name"]
        while True:
            attempt = one(self.db, "SELECT attempts FROM stages WHERE id = ?", (st["id"],))["attempts"] + 1
            log_path = logs / f"round{rnd['idx']:03d}-{name}.log"
            # Recorded as running before the process exists: a crash in between leaves 'running' with no
            # pid, which the next controller resets to pending.
            with Transaction(self.db):
                state.claim_stage(self.db, st["id"], attempt)
                self._event(f"{name} started (attempt {attempt})", round_id=rnd["id"], stage=name)
            exit_file = exit_code_file(self.workdir, st["id"])
            exit_file.unlink(missing_ok=True)
            with open(log_path, "ab") as log:
                cmd = stage_command(self.cfg, name, self.workdir, st["id"])
                self.child = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
                )
            state.set_stage_pid(self.db, st["id"], self.child.pid)
            faults.point("launched", stage=name, round_idx=rnd["idx"])
            self._wait_for_child(rnd, name)
            code = self.child.returncode
            self.child = None
            if code and exit_file.is_file():  # under torchrun: rank 0's own code (fatal or not)
                try:
                    code = int(exit_file.read_text().strip() or code)
                except (OSError, ValueError):
                    pass
                exit_file.unlink(missing_ok=True)
            faults.point("child-exited", stage=name, round_idx=rnd["idx"])
            row = one(self.db, "SELECT * FROM stages WHERE id = ?", (st["id"],))
            if row["status"] == StageStatus.DONE:  # its commit is what counts, not how its process ended
                if code != 0:
                    self._event(
                        f"{name} was recorded done, then its process exited with code {code}; kept as done",
                        "warn",
                        rnd["id"],
                        name,
                    )
                if (
                    name == "train"
                ):  # its checkpoints are spent once the adapter is recorded (a kill may have kept them)
                    shutil.rmtree(self.workdir / "checkpoints" / f"round{rnd['idx']:03d}", ignore_errors=True)
                self._event(f"{name} done", round_id=rnd["id"], stage=name)
                self.on_tick()
                return
            if self.stop_now:
                # An interruption the user asked for is not a failure: it does not count against the
                # retry bound (a SIGKILLed controller cannot tell, so that attempt still counts)
                state.release_stage(self.db, st["id"])
                self._event(
                    f"{name} interrupted by a stop signal; `sealong-loop start` resumes it"
                    + (" (finished questions are kept)" if name in ("sample", "eval") else ""),
                    "warn",
                    rnd["id"],
                    name,
                )
                return
            error = row["error"] or f"the stage process exited with code {code}; see {log_path}"
            state.mark_stage_failed(self.db, st["id"], error)
            retries = self.cfg.run.max_stage_retries
            if code == STAGE_EXIT_FATAL or attempt > retries:
                why = "not retryable" if code == STAGE_EXIT_FATAL else f"{attempt} attempt(s)"
                raise StageFailed(f"{name} of round {rnd['idx']} failed ({why}): {error}\n  log: {log_path}")
            self._event(
                f"{name} failed (attempt {attempt} of {retries + 1}): {error}; retrying",
                "warn",
                rnd["id"],
                name,
            )

    def _wait_for_child(self, rnd: dict, name: str) -> None:
        """Tick until the stage process exits; announce stops; enforce the grace period after a signal."""
        where = f"{name} of round {rnd['idx']}"
        while self.child.poll() is None:
            self.on_tick()
            self._announce_signal(rnd, where)
            if self.stop_now and time.monotonic() > self.stop_deadline:
                self._event(
                    f"{name} did not exit {STOP_GRACE_S:.0f} s after SIGTERM; killing it",
                    "warn",
                    rnd["id"],
                    name,
                )
                self._kill_child()
                break
            if "request" not in self.announced and not self.stop_now and self._stop_flag():
                self.announced.add("request")
                self._event(
                    f"stop requested: the run stops when {where} finishes{self._eta()}; "
                    "`sealong-loop stop --now` interrupts it instead (`start` resumes it)",
                    "info",
                    rnd["id"],
                    name,
                )
            time.sleep(self.tick_seconds)
        self._announce_signal(rnd, where)

    def _announce_signal(self, rnd: dict, where: str) -> None:
        if self.stop_now and "signal" not in self.announced:
            self.announced.add("signal")
            sig = signal.Signals(self.stop_signal).name if self.stop_signal else "a signal"
            self._event(
                f"{sig} received: interrupting {where} (pid {self.child.pid}); the controller stops within "
                f"{STOP_GRACE_S:.0f} s and `sealong-loop start` resumes the stage",
                "warn",
                rnd["id"],
                where.split()[0],
            )

    def _eta(self) -> str:
        from sealong.loop.commands.status_state import stage_eta

        st = one(self.db, "SELECT * FROM stages WHERE status = ?", (StageStatus.RUNNING,))
        left = stage_eta(st, time.time()) if st else None
        return "" if left is None else f" (in about {left:.0f} s at its current rate)"

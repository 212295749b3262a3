"""Fault-injection harness: run the real controller, kill it or its stage process at chosen points, restart
it until the run finishes, and check the workdir's integrity after every fault.

Two kinds of fault:
- a named point (sealong.store.faults): the process reaching it SIGKILLs itself or the controller there,
  e.g. between an adapter's rename and the commit that records it;
- a timer: the harness SIGKILLs the controller or the stage process a random delay after the stage began.

Used by tests/reliability/test_faults.py (a handful of faults in one run) and scripts/fault_campaign.py
(hundreds). Each fault that fires is one trial: after it, `sealong.loop.engine.integrity.verify` must report
nothing (checked in a read snapshot while the controller carries on, or after it died), the stage
process must die with a killed controller, and the run must finish after restarts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sealong.loop.engine.integrity import verify
from sealong.store import faults
from sealong.store.artifacts import sha256_file
from sealong.store.db import connect, one, rows

STAGES = ["sample", "score", "pairs", "train", "eval", "promote"]
CHILD_POINTS = {
    "sample": [
        "start",
        "progress",
        "write-partial@base",
        "before-rename@base",
        "after-rename@base",
        "mark-done",
        "after-commit",
    ],
    "score": ["start", "progress", "mark-done", "after-commit"],
    "pairs": ["start", "mark-done", "after-commit"],
    "train": [
        "start",
        "progress",
        "write-partial@step-*",
        "after-rename@step-*",
        "write-partial@adapter-*",
        "before-rename@adapter-*",
        "after-rename@adapter-*",
        "mark-done",
        "after-commit",
    ],
    "eval": ["start", "progress", "mark-done", "after-commit"],
    "promote": ["start", "mark-done", "after-commit"],
}
CONTROLLER_POINTS = ["launched", "child-exited"]
ROUND_ONLY_ZERO = {
    "write-partial@base",
    "before-rename@base",
    "after-rename@base",
}  # the base model is written once


@dataclass
class Fault:
    stage: str  # a stage name, or "round" (point before-done)
    round: int
    where: str  # a point name (optionally @target), or "timer"
    victim: str  # "child" or "controller"
    delay: float = 0.0  # timer faults: seconds after the stage process started
    fired: bool = False
    note: str = ""

    @property
    def label(self) -> str:
        at = f"+{self.delay:.1f}s" if self.where == "timer" else self.where
        return f"{self.stage}#{self.round} {at} -> kill {self.victim}"

    def entry(self) -> str:
        """The SEALONG_FAULT entry of a point fault."""
        point, _, target = self.where.partition("@")
        in_controller = self.stage == "round" or point in CONTROLLER_POINTS
        action = "kill" if (in_controller or self.victim == "child") else "kill-controller"
        return f"{self.stage}#{self.round}:{point}{'@' + target if target else ''}:{action}"


@dataclass
class Lifetime:
    """One controller process, from start to exit."""

    exit_code: int
    seconds: float
    fired: list[Fault]
    violations: list[str]
    output_tail: str


@dataclass
class RunReport:
    workdir: Path
    faults: list[Fault]
    lifetimes: list[Lifetime] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)  # (fault label or "final"): problem
    inet_sockets: list[str] = field(default_factory=list)
    finished: bool = False
    seconds: float = 0.0

    @property
    def fired(self) -> list[Fault]:
        return [f for f in self.faults if f.fired]


def make_config(path: Path, base: Path, **sections: dict) -> Path:
    """A copy of a TOML config with some keys overridden, validated: make_config(p, base, train={"epochs": 2})."""
    import tomllib
    from sealong.loop.config import config_from_dict, dump_config_toml

    raw = tomllib.loads(Path(base).read_text())
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    path.write_text(dump_config_toml(config_from_dict(raw, str(path))))
    return path


def stage_seconds(wd: Path) -> dict[str, float]:
    """Mean wall seconds per stage name in a finished run (to aim the timer faults)."""
    db = connect(wd, readonly=True)
    try:
        return {
            r["name"]: r["s"]
            for r in rows(
                db,
                "SELECT name, AVG(finished_at - started_at) AS s FROM stages "
                "WHERE status = 'done' GROUP BY name",
            )
        }
    finally:
        db.conn.close()


def plan_faults(
    rng: random.Random,
    rounds: int,
    per_stage: float = 0.6,
    timer_share: float = 0.3,
    typical: dict[str, float] | None = None,
    second: float = 0.0,
    checkpoints: bool = True,
) -> list[Fault]:
    """Random faults over every stage of `rounds` rounds: each stage execution gets one with probability
    `per_stage` (a second one with probability `second`), and every stage name gets at least one."""
    typical = typical or {"sample": 10, "score": 8, "pairs": 3, "train": 8, "eval": 8, "promote": 3}
    out = []
    for r in range(rounds):
        for stage in STAGES:
            if rng.random() < per_stage or (r == rounds - 1 and not any(f.stage == stage for f in out)):
                out.append(_random_fault(rng, stage, r, timer_share, typical[stage], checkpoints))
                if rng.random() < second:
                    out.append(_random_fault(rng, stage, r, timer_share, typical[stage], checkpoints))
        if rng.random() < per_stage / 3:
            out.append(Fault("round", r, "before-done", "controller"))
    unique = {
        f.label if f.where == "timer" else f.entry(): f for f in out
    }  # one SEALONG_FAULT entry fires once
    return list(unique.values())


def _random_fault(
    rng: random.Random, stage: str, r: int, timer_share: float, typical: float, checkpoints: bool
) -> Fault:
    victim = rng.choice(["child", "controller"])
    if rng.random() < timer_share:
        return Fault(stage, r, "timer", victim, delay=round(rng.uniform(0.05, 0.9 * typical), 2))
    points = [
        p
        for p in CHILD_POINTS[stage]
        if (r == 0 or p not in ROUND_ONLY_ZERO) and (checkpoints or "@step-" not in p)
    ]
    points += CONTROLLER_POINTS
    where = rng.choice(points)
    return Fault(stage, r, where, "controller" if where in CONTROLLER_POINTS else victim)


def inet_sockets(pid: int) -> list[str]:
    """TCP/UDP/raw sockets the process holds (listening or not), from /proc: 'tcp 0100007F:1F90 state 0A'."""
    try:
        inodes = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
        if not inodes:
            return []
        found = []
        for proto in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6"):
            for line in Path(f"/proc/{pid}/net/{proto}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    found.append(f"{proto} {cols[1]} state {cols[3]}")
        return found
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []


def _stage_row(wd: Path, stage: str, round_idx: int) -> dict | None:
    try:
        db = connect(wd, readonly=True)
    except Exception:  # noqa: BLE001 - not created yet
        return None
    try:
        return one(
            db,
            "SELECT s.* FROM stages s JOIN rounds r ON r.id = s.round_id WHERE r.idx = ? AND s.name = ?",
            (round_idx, stage),
        )
    except Exception:  # noqa: BLE001 - tables not created yet
        return None
    finally:
        db.conn.close()


def _is_our_stage_process(pid: int, wd: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"sealong.loop.engine.stage_main" in argv and str(wd).encode() in argv


def process_alive(pid: int) -> bool:
    """Whether pid is a running process (not gone, not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class _TimerKiller:
    """Fires the timer faults: waits for the stage's process, then for the delay, then kills."""

    def __init__(self, wd: Path, faults: list[Fault]):
        self.wd, self.pending = wd, [f for f in faults if f.where == "timer"]
        self.seen_at: float | None = None

    def poll(self, controller: subprocess.Popen) -> Fault | None:
        if not self.pending:
            return None
        f = self.pending[0]
        row = _stage_row(self.wd, f.stage, f.round)
        if row is None:
            return None
        if row["status"] == "done":
            f.note = "stage finished before the timer"
            self.pending.pop(0)
            self.seen_at = None
            return None
        if row["status"] != "running" or not row["pid"]:
            return None
        if self.seen_at is None:
            self.seen_at = time.monotonic()
        if time.monotonic() - self.seen_at < f.delay:
            return None
        pid = controller.pid if f.victim == "controller" else row["pid"]
        if f.victim == "child" and not _is_our_stage_process(pid, self.wd):
            return None
        os.kill(pid, signal.SIGKILL)
        f.fired, self.seen_at = True, None
        self.pending.pop(0)
        return f


def run_with_faults(
    workdir: Path,
    config: Path,
    faults: list[Fault],
    log=print,
    max_lifetimes: int | None = None,
    env: dict | None = None,
    check_sockets: bool = True,
    timeout: float = 1800,
) -> RunReport:
    """Run `sealong-loop start` on `workdir` until the run finishes, injecting `faults`; verify after each."""
    wd = Path(workdir).resolve()
    markers = wd.parent / f"{wd.name}.faults"
    markers.mkdir(parents=True, exist_ok=True)
    point_faults = {f.entry(): f for f in faults if f.where != "timer"}
    fault_env = (
        {"SEALONG_FAULT": ",".join(point_faults), "SEALONG_FAULT_DIR": str(markers)} if point_faults else {}
    )
    report = RunReport(wd, faults)
    timers = _TimerKiller(wd, faults)
    max_lifetimes = max_lifetimes or 2 * len(faults) + 4
    t_start = time.monotonic()
    for life in range(max_lifetimes):
        cmd = [sys.executable, "-P", "-m", "sealong.loop.cli", "start", "--workdir", str(wd), "--plain"]
        if life == 0:
            cmd += ["--config", str(config)]
        t0 = time.monotonic()
        log_path = markers / f"controller-{life:02d}.log"
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {}), **fault_env}
            )
        fired: list[Fault] = []
        while proc.poll() is None:
            if time.monotonic() - t_start > timeout:
                proc.kill()
                raise AssertionError(f"fault run did not finish within {timeout:.0f} s")
            f = timers.poll(proc)
            if f is not None:
                fired.append(f)
                if f.victim == "child":
                    time.sleep(0.3)  # the controller records the death and carries on: check in between
                    _check(report, f.label, verify(wd))
            fired += _claimed_point_faults(markers, point_faults, life, report, wd, live=proc.poll() is None)
            if check_sockets:
                for pid in [proc.pid, *_children(proc.pid)]:
                    report.inet_sockets += [f"pid {pid}: {s}" for s in inet_sockets(pid)]
            time.sleep(0.05)
        fired += _claimed_point_faults(markers, point_faults, life, report, wd, live=False)
        output = log_path.read_text(errors="replace")
        if proc.returncode not in (0, 3, -signal.SIGKILL):
            report.violations.append(
                f"controller exited {proc.returncode} (expected 0, 3 or killed):\n{output[-2000:]}"
            )
        if "Traceback" in output:
            report.violations.append(f"a traceback reached the controller's output:\n{output[-2000:]}")
        orphans = _stage_orphans(wd)
        if orphans:
            report.violations.append(f"stage process(es) {orphans} outlived their controller")
        problems = verify(wd)
        for f in fired:
            _check(report, f.label, problems)
        if not fired:
            _check(report, f"lifetime {life}", problems)
        report.lifetimes.append(
            Lifetime(proc.returncode, time.monotonic() - t0, fired, problems, output[-3000:])
        )
        status = _run_status(wd)
        log(
            f"  lifetime {life}: exit {proc.returncode} after {time.monotonic() - t0:.0f} s; faults fired: "
            f"{[f.label for f in fired] or '-'}; run {status}"
        )
        if status == "finished":
            report.finished = True
            break
    report.seconds = time.monotonic() - t_start
    final = verify(wd, finished=True)
    _check(report, "final", final)
    if not report.finished:
        report.violations.append(f"the run did not finish within {max_lifetimes} controller lifetimes")
    return report


def _check(report: RunReport, label: str, problems: list[str]) -> None:
    report.violations += [f"{label}: {p}" for p in problems]


def _claimed_point_faults(
    markers: Path, point_faults: dict[str, Fault], life: int, report: RunReport, wd: Path, live: bool
) -> list[Fault]:
    """Point faults whose marker appeared since the last look."""
    out = []
    for entry, f in point_faults.items():
        if f.fired:
            continue
        marker = markers / faults.marker_name(entry)
        if marker.exists():
            f.fired = True
            out.append(f)
            if live and f.victim == "child":
                time.sleep(0.3)
                _check(report, f.label, verify(wd))
    return out


def _stage_orphans(wd: Path, grace: float = 3.0) -> list[int]:
    """Stage processes of this workdir still alive `grace` s after their controller exited."""
    end = time.monotonic() + grace
    while True:
        pids = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit() and process_alive(int(d.name)) and _is_our_stage_process(int(d.name), wd):
                pids.append(int(d.name))
        if not pids or time.monotonic() > end:
            return pids
        time.sleep(0.1)


def _run_status(wd: Path) -> str | None:
    db = connect(wd, readonly=True)
    try:
        r = one(db, "SELECT status FROM runs ORDER BY id LIMIT 1")
        return r["status"] if r else None
    finally:
        db.conn.close()


# -- comparing with an uninterrupted run -----------------------------------------------------------------------


def snapshot(wd: Path) -> dict[str, dict]:
    """The run's data keyed by natural keys (not row ids, which differ after a rerun)."""
    db = connect(wd, readonly=True)
    try:
        samples = {
            (r["idx"], r["question_id"], r["sample_idx"]): (r["text"], round(r["mbr_score"], 5))
            for r in rows(
                db,
                "SELECT r.idx, s.question_id, s.sample_idx, s.text, s.mbr_score FROM samples s "
                "JOIN rounds r ON r.id = s.round_id",
            )
        }
        pairs = {
            (r["idx"], r["question_id"]): (r["c"], r["r"])
            for r in rows(
                db,
                "SELECT r.idx, p.question_id, c.sample_idx AS c, x.sample_idx AS r FROM pairs p "
                "JOIN rounds r ON r.id = p.round_id JOIN samples c ON c.id = p.chosen_sample_id "
                "JOIN samples x ON x.id = p.rejected_sample_id",
            )
        }
        evals = {
            (r["model_key"], r["question_id"]): (r["output"], r["subem"])
            for r in rows(db, "SELECT model_key, question_id, output, subem FROM evals")
        }
        # The weights' hash: adapter_config.json and README.md name the workdir, which differs between runs.
        adapters = {
            r["id"]: (r["parent_id"], r["status"], sha256_file(wd / r["path"] / "adapter_model.safetensors"))
            for r in rows(db, "SELECT * FROM adapters")
        }
        return {"samples": samples, "pairs": pairs, "evals": evals, "adapters": adapters}
    finally:
        db.conn.close()


def compare(reference: dict[str, dict], got: dict[str, dict]) -> dict[str, dict[str, int]]:
    """Per table: rows of the reference missing here, rows here the reference lacks, rows that differ."""
    out = {}
    for table, ref in reference.items():
        mine = got[table]
        out[table] = {
            "missing": len(ref.keys() - mine.keys()),
            "extra": len(mine.keys() - ref.keys()),
            "differ": sum(ref[k] != mine[k] for k in ref.keys() & mine.keys()),
        }
    return out


def summary_json(report: RunReport) -> str:
    return json.dumps(
        {
            "finished": report.finished,
            "seconds": round(report.seconds, 1),
            "faults": [f.label + (f" ({f.note})" if f.note else "") for f in report.faults],
            "fired": [f.label for f in report.fired],
            "violations": report.violations,
        },
        indent=2,
    )

"""Faults beyond the kill campaign, most resumed from a workdir paused at round 1's training (see conftest):
kill -9 of the controller mid-training, a NaN loss, a corrupted champion adapter, a full disk (injected, on
a tiny tmpfs under adapters/, and under the whole workdir), SIGTERM and `stop`, a hung stage, a second
controller and a stale lock."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sealong.loop.engine.controller import STOP_GRACE_S
from sealong.loop.engine.integrity import verify
from sealong.loop.engine.workdir import holder_pid
from sealong.loop.errors import EXIT_STOPPED
from sealong.store.artifacts import sha256_dir
from sealong.store.db import connect, one, rows

from ..conftest import CLI, cli, wait_for, write_config
from .harness import process_alive


def _db(wd: Path):
    return connect(wd, readonly=True)


def _start_background(wd: Path, env: dict | None = None, config: Path | None = None) -> subprocess.Popen:
    cmd = [*CLI, "start", "--workdir", str(wd), "--plain"]
    cmd += ["--config", str(config)] if config else []
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )


def _wait_for(pred, timeout: float = 120, what: str = "condition"):
    return wait_for(pred, timeout, what, every=0.05)


def _stage(wd: Path, name: str, round_idx: int = 1) -> dict:
    return one(
        _db(wd),
        "SELECT s.* FROM stages s JOIN rounds r ON r.id = s.round_id WHERE r.idx = ? AND s.name = ?",
        (round_idx, name),
    )


def _steps(wd: Path, round_idx: int = 1) -> int:
    return one(
        _db(wd),
        "SELECT COUNT(*) AS n FROM train_steps t JOIN rounds r ON r.id = t.round_id WHERE r.idx = ?",
        (round_idx,),
    )["n"]


def _champion(wd: Path) -> tuple[str, str]:
    a = one(_db(wd), "SELECT id, sha256 FROM adapters WHERE status = 'champion'")
    return a["id"], sha256_dir(wd / "adapters" / a["id"])


def _events(wd: Path) -> str:
    return "\n".join(e["message"] for e in rows(_db(wd), "SELECT message FROM events ORDER BY id"))


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text, text[-3000:]


# -- kill -9 -----------------------------------------------------------------------------------------------------


def test_kill_9_of_the_controller_mid_training_then_resume(paused_copy: Path, tmp_path: Path):
    """The controller is SIGKILLed while round 1 trains (its stage held after a step is recorded): the stage
    process dies with it, and the next `start` finishes the round without redoing a finished stage."""
    wd = paused_copy
    attempts = {name: _stage(wd, name)["attempts"] for name in ("sample", "score", "pairs", "train")}
    samples = rows(_db(wd), "SELECT * FROM samples ORDER BY id")
    # The train stage stops after its first recorded step and ignores SIGTERM (it can only be killed).
    first = _start_background(wd, _fault_env(tmp_path, "train#1:progress:hang"))
    try:
        _wait_for(lambda: any((tmp_path / "faults").iterdir()), what="round 1's training to record a step")
        pid = _stage(wd, "train")["pid"]
        assert _steps(wd) >= 1 and process_alive(pid)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        _wait_for(lambda: not process_alive(pid), 30, "the train process to die with its controller")
    finally:
        if first.poll() is None:
            first.kill()
    proc = cli("start", "--workdir", str(wd), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _no_traceback(proc.stdout + proc.stderr)
    assert "interrupted" in proc.stdout
    assert one(_db(wd), "SELECT status FROM rounds WHERE idx = 1")["status"] == "done"
    assert rows(_db(wd), "SELECT * FROM samples ORDER BY id") == samples  # not resampled, not rescored
    for name in ("sample", "score", "pairs"):
        assert _stage(wd, name)["attempts"] == attempts[name], name  # never redone
    assert _stage(wd, "train")["attempts"] == attempts["train"] + 2  # the killed attempt, then the last
    assert sorted(p.name for p in (wd / "adapters").iterdir()) == ["adapter-r000", "adapter-r001"]
    assert verify(wd, finished=True) == []


# -- NaN / inf loss ---------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_fails_the_round_and_keeps_the_champion(paused_copy: Path):
    wd = paused_copy
    champ = _champion(wd)
    proc = cli("start", "--workdir", str(wd), "--plain", env={"SEALONG_FAULT": "train:loss@2:nan"})
    assert proc.returncode == 3, proc.stdout + proc.stderr
    _no_traceback(proc.stdout + proc.stderr)
    assert (
        "train of round 1 failed (not retryable): non-finite ORPO loss (nan) at optimizer step 2"
        in proc.stdout
    )
    db = _db(wd)
    train = _stage(wd, "train")
    assert train["status"] == "failed" and "at optimizer step 2" in train["error"]
    assert train["attempts"] == 2  # the interrupted attempt, then this one: not retried
    assert one(db, "SELECT status FROM rounds WHERE idx = 1")["status"] == "failed"
    assert one(db, "SELECT status FROM runs")["status"] == "failed"
    assert _champion(wd) == champ
    assert (
        one(db, "SELECT COUNT(*) AS n FROM adapters WHERE round_id = (SELECT id FROM rounds WHERE idx = 1)")[
            "n"
        ]
        == 0
    )
    assert not (wd / "adapters" / "adapter-r001").exists()
    assert _steps(wd) == 1  # step 1 was recorded; training stopped at step 2
    assert verify(wd) == []


# -- corrupted adapter ------------------------------------------------------------------------------------------


def test_corrupted_champion_is_detected_by_its_hash_before_use(paused_copy: Path):
    wd = paused_copy
    weights = wd / "adapters" / "adapter-r000" / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, deep in the tensors: still loadable, silently wrong
    weights.write_bytes(bytes(data))
    assert any(
        "adapter-r000: files in adapters/adapter-r000 do not match the recorded sha256" in p
        for p in verify(wd)
    )
    proc = cli("start", "--workdir", str(wd), "--plain")
    assert proc.returncode == 3
    _no_traceback(proc.stdout + proc.stderr)
    assert "train of round 1 failed (not retryable): adapter adapter-r000: files in" in proc.stdout
    assert "do not match the recorded sha256" in proc.stdout
    log = (wd / "logs" / "round001-train.log").read_text()
    assert "IntegrityError" in log and "add_lora" not in log  # refused before the adapter was loaded


def test_adapter_with_pickled_weights_is_refused(paused_copy: Path):
    from sealong.store.artifacts import sha256_dir as digest

    wd = paused_copy
    adapter = wd / "adapters" / "adapter-r000"
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    db = connect(wd)  # re-record the hash, as an attacker with write access to the workdir could
    db.execute("UPDATE adapters SET sha256 = ? WHERE id = 'adapter-r000'", (digest(adapter),))
    db.conn.close()
    proc = cli("start", "--workdir", str(wd), "--plain")
    assert proc.returncode == 3
    assert "must hold adapter_model.safetensors and no pickled weights" in proc.stdout


# -- full disk --------------------------------------------------------------------------------------------------


def _assert_disk_full_failure(wd: Path, proc_out: str, code: int) -> None:
    assert code == 3, proc_out
    _no_traceback(proc_out)
    assert "disk full" in proc_out and f"sealong-loop start --workdir {wd}" in proc_out
    assert not list((wd / "adapters").glob(".tmp-*"))
    assert not (wd / "adapters" / "adapter-r001").exists()
    assert one(_db(wd), "SELECT COUNT(*) AS n FROM adapters WHERE id = 'adapter-r001'")["n"] == 0
    assert verify(wd) == []


def test_disk_full_during_the_adapter_write_injected(paused_copy: Path):
    wd = paused_copy
    proc = cli(
        "start",
        "--workdir",
        str(wd),
        "--plain",
        env={"SEALONG_FAULT": "train:write-partial@adapter-*:enospc"},
    )
    _assert_disk_full_failure(wd, proc.stdout + proc.stderr, proc.returncode)
    train = _stage(wd, "train")
    assert train["status"] == "failed" and train["error"].startswith("disk full during train: [Errno 28]")
    assert "train of round 1 failed (not retryable): disk full during train" in proc.stdout


@contextlib.contextmanager
def _tmpfs(where: Path, size_kb: int):
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(directory: Path) -> Path:
    """Write a ballast file until the filesystem is full."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)
    return ballast


@pytest.mark.slow  # and root, for the tmpfs
def test_disk_full_under_adapters(paused_copy: Path, tmp_path: Path):
    """A real ENOSPC from safetensors' writer, on a full tmpfs mounted over adapters/ (the whole-workdir test
    below shows the resume after space is freed)."""
    wd = paused_copy
    saved = tmp_path / "adapters-saved"
    (wd / "adapters").rename(saved)
    with _tmpfs(wd / "adapters", 256) as adapters:
        subprocess.run(["cp", "-a", f"{saved}/.", str(adapters)], check=True)
        ballast = _fill(adapters)
        proc = cli("start", "--workdir", str(wd), "--plain")
        ballast.unlink()  # the checks below must not count the ballast as a leftover
        _assert_disk_full_failure(wd, proc.stdout + proc.stderr, proc.returncode)
        assert "train of round 1 failed (not retryable): disk full during train" in proc.stdout
        assert _champion(wd)[0] == "adapter-r000"


@pytest.mark.slow  # and root, for the tmpfs
def test_disk_full_under_the_whole_workdir_mid_training_then_resumed(paused_at_round1_train, tmp_path: Path):
    src = paused_at_round1_train.workdir
    used_kb = int(subprocess.run(["du", "-sk", str(src)], capture_output=True, text=True).stdout.split()[0])
    with _tmpfs(tmp_path / "fs", used_kb + 8192) as fs:
        wd = fs / "run"
        subprocess.run(["cp", "-a", str(src), str(wd)], check=True)
        proc = _start_background(wd)
        _wait_for(lambda: _steps(wd) >= 2, what="round 1's training to take 2 steps")
        ballast = _fill(fs)
        out, _ = proc.communicate(timeout=120)
        ballast.unlink()
        assert proc.returncode == 3, out
        _no_traceback(out)
        assert "disk full" in out
        assert verify(wd) == []
        done = cli("start", "--workdir", str(wd), "--plain")
        assert done.returncode == 0, done.stdout + done.stderr
        assert verify(wd, finished=True) == []


# -- stopping ---------------------------------------------------------------------------------------------------


def test_stop_request_and_sigterm_stop_at_safe_points_and_say_when(paused_copy: Path):
    wd = paused_copy
    proc = _start_background(wd)
    try:
        _wait_for(lambda: _steps(wd) >= 2, what="round 1's training to take 2 steps")
        stop = cli("stop", "--workdir", str(wd), check=True)
        assert "stops when the stage in flight (train) finishes" in stop.stdout
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED and "stopped on request" in out  # resumable, not finished
    assert "stop requested: the run stops when train of round 1 finishes (in about" in _events(wd)
    assert _stage(wd, "train")["status"] == "done" and _stage(wd, "eval")["status"] == "pending"

    proc = _start_background(wd)
    try:
        _wait_for(lambda: _stage(wd, "eval")["progress_done"] >= 1, what="eval to commit a batch")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=STOP_GRACE_S + 30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED, out
    assert took < STOP_GRACE_S + 5
    events = _events(wd)
    assert "SIGTERM received: interrupting eval of round 1 (pid" in events
    assert f"the controller stops within {STOP_GRACE_S:.0f} s and `sealong-loop start` resumes" in events
    assert "stopped by signal during eval of round 1" in events
    assert one(_db(wd), "SELECT status FROM runs")["status"] == "stopped"
    # the interruption does not count against the retry bound
    assert _stage(wd, "eval")["status"] == "pending" and _stage(wd, "eval")["attempts"] == 0
    assert verify(wd) == []
    nothing = cli("stop", "--workdir", str(wd))
    assert nothing.returncode == 2 and "no controller is running" in nothing.stderr
    done = cli("start", "--workdir", str(wd), "--plain")
    assert done.returncode == 0 and "finished: 2 round(s) done" in done.stdout, done.stdout + done.stderr
    assert verify(wd, finished=True) == []


def _fault_env(tmp_path: Path, spec: str) -> dict:
    once = tmp_path / "faults"
    once.mkdir(exist_ok=True)
    return {"SEALONG_FAULT": spec, "SEALONG_FAULT_DIR": str(once)}


def _hung_sample(wd: Path, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A controller whose sample stage hangs ignoring SIGTERM; returns it and the stage's pid."""
    cfg = write_config(tmp_path / "c.toml")
    env = _fault_env(tmp_path, "sample:start:hang")
    proc = _start_background(wd, env, cfg)
    _wait_for(lambda: any((tmp_path / "faults").iterdir()), what="the sample stage to hang")
    return proc, _stage(wd, "sample", 0)["pid"]


def test_a_stage_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path):
    wd = tmp_path / "run"
    proc, child = _hung_sample(wd, tmp_path)
    try:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=STOP_GRACE_S + 30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED, out
    assert STOP_GRACE_S <= took < STOP_GRACE_S + 5
    assert f"sample did not exit {STOP_GRACE_S:.0f} s after SIGTERM; killing it" in _events(wd)
    assert not process_alive(child)
    assert _stage(wd, "sample", 0)["status"] == "pending"


def test_second_controller_stale_lock_and_recorded_pid_reused(tmp_path: Path):
    wd = tmp_path / "run"
    first, _ = _hung_sample(wd, tmp_path)
    try:
        second = cli("start", "--workdir", str(wd))
        assert second.returncode == 2 and f"(pid {first.pid}) is already running" in second.stderr
        _no_traceback(second.stderr)
        first.kill()  # kill -9: the lock file keeps its pid, the kernel drops the flock
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
    assert (wd / "controller.lock").read_text() == str(first.pid)
    assert holder_pid(wd) is None
    stopped = cli("stop", "--workdir", str(wd))
    assert stopped.returncode == 2 and "no controller is running" in stopped.stderr
    # The dead stage's pid is recorded as running. Pretend the kernel gave it to an unrelated process:
    # the next controller must not kill that process.
    bystander = subprocess.Popen(["sleep", "60"])
    db = connect(wd)
    db.execute("UPDATE stages SET pid = ? WHERE status = 'running'", (bystander.pid,))
    db.conn.close()
    env = _fault_env(tmp_path, "sample:start:hang")  # its marker is claimed: this time the stage runs
    racers = [
        _start_background(
            wd, {"SEALONG_FAULT": "sample:progress:hang", "SEALONG_FAULT_DIR": env["SEALONG_FAULT_DIR"]}
        )
        for _ in range(2)
    ]
    try:
        loser = _wait_for(
            lambda: next((p for p in racers if p.poll() is not None), None), what="one racer to give up"
        )
        winner = next(p for p in racers if p is not loser)
        out = loser.stdout.read()
        assert loser.returncode == 2 and "already running" in out, out
        _wait_for(lambda: holder_pid(wd) == winner.pid, what="the winner to hold the lock")
        _wait_for(
            lambda: "interrupted" in json.dumps(rows(_db(wd), "SELECT message FROM events")), what="recovery"
        )
        assert bystander.poll() is None, "the controller killed a process that only had a recorded stage pid"
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
        bystander.kill()

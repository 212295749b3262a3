"""The `sealong-loop` command line.

    sealong-loop start  --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    sealong-loop status --workdir runs/demo
    sealong-loop lineage --workdir runs/demo --json
    sealong-loop stop   --workdir runs/demo

Library errors (bad config, bad data, a busy workdir, a failed stage) print one clear message and exit
non-zero, without a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from sealong.loop.config import DEFAULT_CONFIG, load_config
from sealong.loop.errors import SealongError

WORKDIR_HELP = "Run directory holding the database, adapters and logs. Default: runs/<run name> (start) or runs/tiny-cpu."


def _default_workdir(workdir: str | None, cfg_name: str = "tiny-cpu") -> Path:
    return Path(workdir) if workdir else Path("runs") / cfg_name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """sealong-loop: a self-improvement daemon for long-context reasoning (SEALONG).

    Each round samples N plan-and-solve answers per question from the current policy, scores them by
    Minimum Bayes Risk, builds preference pairs, trains a LoRA adapter with ORPO, evaluates it, and
    promotes it if it beats the champion. Everything is recorded in <workdir>/sealong.db.

    Quick start: sealong-loop start --config configs/tiny-cpu.toml --max-rounds 1
    """


@cli.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help=f"TOML run config. Default: the embedded {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])} "
                   "for a new workdir; the stored config when resuming.")
@click.option("--workdir", default=None, help=WORKDIR_HELP)
@click.option("--max-rounds", type=click.IntRange(min=1), default=None, help="Total rounds for this run (overrides [run] max_rounds).")
@click.option("--detach", is_flag=True, help="Run the controller in the background and return; watch it with `status`.")
@click.option("--plain", is_flag=True, help="Print progress as plain lines instead of the live view (the default off a terminal).")
def start(config_path: str | None, workdir: str | None, max_rounds: int | None, detach: bool, plain: bool) -> None:
    """Start a run, or resume the run in WORKDIR at its first unfinished stage.

    Example: sealong-loop start --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    """
    from sealong.loop.controller import Controller, holder_pid, load_stored_config
    from sealong.store.db import connect, db_path

    wd = None if workdir is None else Path(workdir)
    if config_path is None and (wd is None or not db_path(wd).exists()):
        config_path = str(DEFAULT_CONFIG)
    cfg = load_config(config_path) if config_path else None
    wd = (wd or _default_workdir(None, cfg.run.name if cfg else "tiny-cpu")).resolve()
    pid = holder_pid(wd)
    if pid:
        raise SealongError(f"a controller (pid {pid}) is already running on {wd}; "
                           f"watch it with `sealong-loop status --workdir {wd}` or stop it with `sealong-loop stop --workdir {wd}`")
    if detach:
        _detach(config_path, wd, max_rounds)
        return
    db = connect(wd)
    if cfg is None:
        cfg = load_stored_config(db, wd)
    console = Console()
    live_view = console.is_terminal and not plain
    ui = _LiveUI(wd, console) if live_view else _PlainUI(wd, console)
    console.print(f"sealong-loop: run '{cfg.run.name}' in {wd}  (config {cfg.source_path})")
    controller = Controller(wd, cfg, max_rounds, on_tick=ui.tick)
    with ui:
        status = controller.run()
    ui.final()
    if status == "failed":
        sys.exit(3)


class _PlainUI:
    """Off a terminal (CI, logs): new events as lines, and the running stage's progress every 10 s."""

    def __init__(self, workdir: Path, console: Console):
        self.workdir, self.console, self.last_event, self.last_progress = workdir, console, 0, 0.0
        self.last_line = ""
        self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.tick()

    def _db(self):
        if self.db is None:
            from sealong.store.db import connect

            self.db = connect(self.workdir, readonly=True)
        return self.db

    def tick(self) -> None:
        from sealong.store.db import one, rows

        db = self._db()
        for e in rows(db, "SELECT id, ts, stage, level, message FROM events WHERE id > ? ORDER BY id", (self.last_event,)):
            self.last_event = e["id"]
            stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
            self.console.print(f"[{stamp}] {e['level']:5} {e['stage'] or '-':8} {e['message']}", highlight=False, markup=False)
        if time.monotonic() - self.last_progress > 10:
            st = one(db, "SELECT name, progress_done, progress_total, progress_unit, progress_note FROM stages WHERE status = 'running'")
            line = st and (f"           progress {st['name']:8} {st['progress_done']:g}/{st['progress_total']:g} "
                           f"{st['progress_unit']} {st['progress_note']}")
            if line and st["progress_total"] and line != self.last_line:
                self.last_progress, self.last_line = time.monotonic(), line
                self.console.print(line, highlight=False, markup=False)

    def final(self) -> None:
        from sealong.loop.monitor import load_state, render

        self.console.print(render(load_state(self._db())))


class _LiveUI(_PlainUI):
    """On a terminal: the rich live view, refreshed from the store on every controller tick."""

    def __enter__(self):
        from rich.live import Live

        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def tick(self) -> None:
        from sealong.loop.monitor import load_state, render

        self.live.update(render(load_state(self._db(), os.getpid())))

    def final(self) -> None:
        pass


def _detach(config_path: str | None, wd: Path, max_rounds: int | None) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-P", "-m", "sealong.loop.cli", "start", "--workdir", str(wd), "--plain"]
    if config_path:
        cmd += ["--config", str(Path(config_path).resolve())]
    if max_rounds:
        cmd += ["--max-rounds", str(max_rounds)]
    log = open(wd / "controller.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    from sealong.loop.controller import holder_pid

    for _ in range(100):
        if holder_pid(wd) == proc.pid or proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SealongError(f"the controller exited at once (code {proc.returncode}); see {wd / 'controller.log'}")
    click.echo(f"controller started in the background (pid {proc.pid}); log: {wd / 'controller.log'}\n"
               f"watch: sealong-loop status --workdir {wd}\nstop:  sealong-loop stop --workdir {wd}")


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--now", is_flag=True, help="Interrupt the stage in flight (it reruns on resume) instead of letting it finish.")
def stop(workdir: str, now: bool) -> None:
    """Ask the controller to stop: after the stage in flight by default, at once with --now.

    Example: sealong-loop stop --workdir runs/demo
    """
    import signal

    from sealong.loop.controller import holder_pid
    from sealong.store.db import connect, one

    wd = Path(workdir).resolve()
    pid = holder_pid(wd)
    if pid is None:
        raise SealongError(f"no controller is running on {wd}")
    db = connect(wd)
    db.execute("UPDATE runs SET stop_requested = 1")
    running = one(db, "SELECT name FROM stages WHERE status = 'running'")
    if now:
        os.kill(pid, signal.SIGTERM)
        click.echo(f"sent SIGTERM to controller pid {pid}: it interrupts {running['name'] if running else 'its work'} and stops within seconds")
    else:
        what = f"when the stage in flight ({running['name']}) finishes" if running else "before its next stage"
        click.echo(f"stop requested: controller pid {pid} stops {what}. Use --now to interrupt the stage.")


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
def status(workdir: str, as_json: bool) -> None:
    """Show the run: current stage and progress, rounds, eval metrics, recent events.

    Example: sealong-loop status --workdir runs/demo --json
    """
    from sealong.loop.controller import holder_pid
    from sealong.loop.monitor import load_state, render
    from sealong.store.db import connect

    wd = Path(workdir).resolve()
    state = load_state(connect(wd, readonly=True), holder_pid(wd))
    if as_json:
        click.echo(json.dumps(state.to_json(), indent=2, default=str))
    else:
        Console().print(render(state))


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print adapters, parents and metrics as JSON.")
def lineage(workdir: str, as_json: bool) -> None:
    """The adapter tree: each adapter's parent (the champion that sampled its data), round, status, metrics.

    Example: sealong-loop lineage --workdir runs/demo --json
    """
    from rich.tree import Tree
    from sealong.store.db import connect, rows
    from sealong.store.lineage import adapter_metrics

    db = connect(Path(workdir).resolve(), readonly=True)
    adapters = rows(db, "SELECT a.id, a.parent_id, a.status, a.sha256, a.path, r.idx AS round FROM adapters a "
                        "JOIN rounds r ON r.id = a.round_id ORDER BY a.created_at")
    metrics = {m["model_key"]: m for m in adapter_metrics(db)}
    for a in adapters:
        m = metrics.get(a["id"])
        a["mean_subem"] = m["mean_subem"] if m else None
        a["per_task"] = json.loads(m["per_task_json"]) if m else {}
    base = metrics.get("base")
    if as_json:
        click.echo(json.dumps({"base": {"mean_subem": base["mean_subem"] if base else None}, "adapters": adapters}, indent=2))
        return
    root = Tree(f"base model  SubEM {base['mean_subem']:.1f}" if base else "base model")
    nodes = {None: root}
    for a in adapters:
        score = f"SubEM {a['mean_subem']:.1f}" if a["mean_subem"] is not None else "not evaluated"
        parent = nodes.get(a["parent_id"], root)
        nodes[a["id"]] = parent.add(f"{a['id']}  round {a['round']}  {a['status']}  {score}  sha256 {a['sha256'][:12]}")
    Console().print(root)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except SealongError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

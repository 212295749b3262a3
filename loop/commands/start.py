"""`sealong-loop start` and `sealong-loop stop`: run (or resume) the loop in a workdir, and ask it to stop.

    sealong-loop start --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    sealong-loop start --workdir runs/demo --detach      # the controller in the background
    sealong-loop stop  --workdir runs/demo [--now]

The controller itself is sealong.loop.engine.controller; the live view, sealong.loop.commands.status_watch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from sealong.loop.commands import common
from sealong.loop.config import DEFAULT_CONFIG, load_config
from sealong.loop.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STOPPED, SealongError


@click.command("start")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"TOML run config. Default: the embedded {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])} "
    "for a new workdir; the stored config when resuming.",
)
@click.option("--workdir", default=None, help=common.WORKDIR_HELP)
@click.option(
    "--max-rounds",
    type=click.IntRange(min=0),
    default=None,
    help="Total rounds for this run (overrides [run] max_rounds); 0: until stopped (your own data: waits "
    "for new records when every question has been trained on).",
)
@click.option(
    "--detach",
    is_flag=True,
    help="Run the controller in the background and return; watch it with `status --watch`.",
)
@click.option(
    "--plain",
    is_flag=True,
    help="Print progress as plain lines instead of the live view (the default off a terminal).",
)
@click.option(
    "--rdzv-endpoint",
    default=None,
    metavar="HOST:PORT",
    help="Multi-node: this node's address as the others reach it, for this launch only (default: "
    "SEALONG_RDZV_ENDPOINT, MASTER_ADDR:MASTER_PORT, LWS_LEADER_ADDRESS, else [distributed] rdzv_endpoint). "
    "Sample/eval also use PORT + 1. Example: --rdzv-endpoint node017:29400",
)
@click.option(
    "--nnodes",
    type=click.IntRange(min=1),
    default=None,
    help="Multi-node: nodes in this launch (default: SEALONG_NNODES, SLURM_NNODES, LWS_GROUP_SIZE, else "
    "[distributed] nnodes); a resumed run may change it. The run token is SEALONG_RUN_TOKEN, else a new "
    "one in WORKDIR/run-token. Example: --nnodes 1 (resume on this node alone)",
)
def start_command(
    config_path: str | None,
    workdir: str | None,
    max_rounds: int | None,
    detach: bool,
    plain: bool,
    rdzv_endpoint: str | None = None,
    nnodes: int | None = None,
) -> None:
    """Start a run, or resume the run in WORKDIR at its first unfinished stage.

    On a terminal it shows the live view of `status --watch` in the foreground, unless --detach or --plain.

    Example: sealong-loop start --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    """
    from sealong.loop.commands.status_watch import LiveUI, PlainUI
    from sealong.loop.engine.controller import Controller
    from sealong.loop.engine.workdir import check_config_matches, holder_pid, load_stored_config
    from sealong.store.db import connect, db_path, require_not_a_file

    wd = None if workdir is None else Path(workdir)
    if config_path is None and (wd is None or not db_path(wd).exists()):
        config_path = str(DEFAULT_CONFIG)
    cfg = load_config(config_path) if config_path else None
    wd = (wd or Path("runs") / (cfg.run.name if cfg else "tiny-cpu")).resolve()
    require_not_a_file(wd)  # before --detach makes it, or questions are read for it
    pid = holder_pid(wd)
    if pid:
        raise SealongError(
            f"a controller (pid {pid}) is already running on {wd}; "
            f"watch it with `sealong-loop status --workdir {wd}` or stop it with `sealong-loop stop --workdir {wd}`"
        )
    questions = None
    if cfg is not None and not db_path(wd).exists():
        # A new run: read its questions before anything is created, so bad data leaves no workdir behind
        from sealong.loop.engine.workdir import questions_for

        questions = questions_for(cfg)
    if detach:
        _detach(config_path, wd, max_rounds, rdzv_endpoint, nnodes)
        return
    db = connect(wd)
    if cfg is None:
        cfg = load_stored_config(db, wd)
    check_config_matches(db, cfg, wd)  # before any output: a refusal is the only thing printed
    from sealong.loop.engine import rendezvous

    launch = rendezvous.resolve(cfg, endpoint=rdzv_endpoint, nnodes=nnodes, controller=True)
    console = common.console()
    live_view = console.is_terminal and not plain
    ui = LiveUI(wd, console) if live_view else PlainUI(wd, console)
    source = "its stored config" if cfg.source_path == "<stored>" else f"config {cfg.source_path}"
    console.print(f"sealong-loop: run '{cfg.run.name}' in {wd}  ({source})")
    if launch.nnodes > 1:
        console.print(
            f"sealong-loop: {launch.nnodes} nodes meet at {launch.endpoint}; workers: sealong-loop worker "
            f"--node-rank K --rdzv-endpoint {launch.endpoint} --run-token-file {wd / rendezvous.TOKEN_FILE}"
        )
    controller = Controller(wd, cfg, max_rounds, on_tick=ui.tick, launch=launch)
    controller.questions = questions
    with ui:
        status = controller.run()
    if controller.already_finished:
        reason = controller.already_finished.removeprefix("finished: ")
        click.echo(
            f"nothing to do: this run had already finished ({reason}); "
            + (
                f"add rounds with `sealong-loop start --workdir {wd} --max-rounds N` (N > the rounds done)"
                if "max_rounds" in reason
                else "append records to the training data and start it again, or give `--max-rounds 0` to "
                "wait for them"
                if "no new questions" in reason
                else "it ended by run.patience, which a run keeps; for more rounds start a new --workdir with a "
                "larger run.patience"
            )
        )
    ui.final()
    if status == "failed":
        sys.exit(EXIT_FAILED)
    if status == "stopped":  # resumable; 130 is the shell's code for Ctrl-C
        sys.exit(EXIT_INTERRUPTED if controller.stop_signal == signal.SIGINT else EXIT_STOPPED)


def _detach(
    config_path: str | None, wd: Path, max_rounds: int | None, endpoint: str | None, nnodes: int | None
) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-P", "-m", "sealong.loop.cli", "start", "--workdir", str(wd), "--plain"]
    if config_path:
        cmd += ["--config", str(Path(config_path).resolve())]
    if max_rounds is not None:
        cmd += ["--max-rounds", str(max_rounds)]
    cmd += ["--rdzv-endpoint", endpoint] if endpoint else []
    cmd += ["--nnodes", str(nnodes)] if nnodes else []
    log = open(wd / "controller.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    from sealong.loop.engine.workdir import holder_pid

    for _ in range(100):
        if holder_pid(wd) == proc.pid or proc.poll() is not None:
            break
        time.sleep(0.1)
    if proc.poll() is not None:
        raise SealongError(
            f"the controller exited at once (code {proc.returncode}); see {wd / 'controller.log'}"
        )
    click.echo(
        f"controller started in the background (pid {proc.pid}); log: {wd / 'controller.log'}\n"
        f"watch: sealong-loop status --workdir {wd}\nstop:  sealong-loop stop --workdir {wd}"
    )


@click.command("stop")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option(
    "--now",
    is_flag=True,
    help="Interrupt the stage in flight instead of letting it finish (`start` resumes it).",
)
def stop_command(workdir: str, now: bool) -> None:
    """Ask the controller to stop: after the stage in flight by default, at once with --now.

    Example: sealong-loop stop --workdir runs/demo
    """

    from sealong.loop.engine.workdir import holder_pid
    from sealong.store.db import connect, one
    from sealong.store.state import request_stop

    wd = Path(workdir).resolve()
    pid = holder_pid(wd)
    if pid is None:
        raise SealongError(f"no controller is running on {wd}")
    db = connect(wd)
    request_stop(db)
    running = one(db, "SELECT name FROM stages WHERE status = 'running'")
    if now:
        os.kill(pid, signal.SIGTERM)
        click.echo(
            f"sent SIGTERM to controller pid {pid}: it interrupts {running['name'] if running else 'its work'} and stops within seconds"
        )
    else:
        what = (
            f"when the stage in flight ({running['name']}) finishes" if running else "before its next stage"
        )
        click.echo(f"stop requested: controller pid {pid} stops {what}. Use --now to interrupt the stage.")

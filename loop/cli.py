"""The `sealong-loop` command line.

    sealong-loop start   --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    sealong-loop status  --workdir runs/demo [--watch | --json]
    sealong-loop lineage --workdir runs/demo --json
    sealong-loop show    adapter-r000 --workdir runs/demo
    sealong-loop query   "SELECT model_key, task, subem FROM eval_summary" --workdir runs/demo
    sealong-loop report  --workdir runs/demo
    sealong-loop export  champion --workdir runs/demo --out exported/ --merge
    sealong-loop export-pairs 0 --workdir runs/demo --out pairs.jsonl
    sealong-loop stop    --workdir runs/demo
    sealong-loop doctor  --config configs/llama31-8b-8xh100.toml
    sealong-loop verify  --workdir runs/demo --finished

Library errors (bad config, bad data, a busy workdir, a failed stage) print one clear message and exit
non-zero, without a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from sealong.loop.config import DEFAULT_CONFIG, load_config
from sealong.loop.errors import EXIT_FAILED, EXIT_STOPPED, SealongError

WORKDIR_HELP = "Run directory holding the database, adapters and logs. Default: runs/<run name> (start) or runs/tiny-cpu."


def _console() -> Console:
    """A terminal's own width; off a terminal (a log, a pipe) 160 columns unless COLUMNS says otherwise,
    so that wide tables are not folded into unreadable 80-column stubs."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


def _default_workdir(workdir: str | None, cfg_name: str = "tiny-cpu") -> Path:
    return Path(workdir) if workdir else Path("runs") / cfg_name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sealong-loop", prog_name="sealong-loop")
def cli() -> None:
    """sealong-loop: a self-improvement daemon for long-context reasoning (SEALONG).

    Each round samples N plan-and-solve answers per question from the current policy, scores them by
    Minimum Bayes Risk, builds preference pairs, trains a LoRA adapter with ORPO, evaluates it, and
    promotes it if it beats the champion. Everything is recorded in <workdir>/sealong.db.

    Quick start: sealong-loop start --config configs/tiny-cpu.toml --max-rounds 1
    """


@cli.command()
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"TOML run config. Default: the embedded {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[1])} "
    "for a new workdir; the stored config when resuming.",
)
@click.option("--workdir", default=None, help=WORKDIR_HELP)
@click.option(
    "--max-rounds",
    type=click.IntRange(min=1),
    default=None,
    help="Total rounds for this run (overrides [run] max_rounds).",
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
def start(
    config_path: str | None, workdir: str | None, max_rounds: int | None, detach: bool, plain: bool
) -> None:
    """Start a run, or resume the run in WORKDIR at its first unfinished stage.

    On a terminal it shows the live view of `status --watch` in the foreground, unless --detach or --plain.

    Example: sealong-loop start --config configs/tiny-cpu.toml --workdir runs/demo --max-rounds 1
    """
    from sealong.loop.controller import Controller, check_config_matches, holder_pid, load_stored_config
    from sealong.loop.live import LiveUI, PlainUI
    from sealong.store.db import connect, db_path, require_not_a_file

    wd = None if workdir is None else Path(workdir)
    if config_path is None and (wd is None or not db_path(wd).exists()):
        config_path = str(DEFAULT_CONFIG)
    cfg = load_config(config_path) if config_path else None
    wd = (wd or _default_workdir(None, cfg.run.name if cfg else "tiny-cpu")).resolve()
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
        from sealong.loop.controller import questions_for

        questions = questions_for(cfg)
    if detach:
        _detach(config_path, wd, max_rounds)
        return
    db = connect(wd)
    if cfg is None:
        cfg = load_stored_config(db, wd)
    check_config_matches(db, cfg, wd)  # before any output: a refusal is the only thing printed
    console = _console()
    live_view = console.is_terminal and not plain
    ui = LiveUI(wd, console) if live_view else PlainUI(wd, console)
    source = "its stored config" if cfg.source_path == "<stored>" else f"config {cfg.source_path}"
    console.print(f"sealong-loop: run '{cfg.run.name}' in {wd}  ({source})")
    controller = Controller(wd, cfg, max_rounds, on_tick=ui.tick)
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
                else "it ended by run.patience, which a run keeps; for more rounds start a new --workdir with a "
                "larger run.patience"
            )
        )
    ui.final()
    if status == "failed":
        sys.exit(EXIT_FAILED)
    if status == "stopped":  # resumable; 130 is the shell's code for Ctrl-C
        sys.exit(130 if controller.stop_signal == signal.SIGINT else EXIT_STOPPED)


def _detach(config_path: str | None, wd: Path, max_rounds: int | None) -> None:
    wd.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-P", "-m", "sealong.loop.cli", "start", "--workdir", str(wd), "--plain"]
    if config_path:
        cmd += ["--config", str(Path(config_path).resolve())]
    if max_rounds:
        cmd += ["--max-rounds", str(max_rounds)]
    log = open(wd / "controller.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    from sealong.loop.controller import holder_pid

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


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option(
    "--now",
    is_flag=True,
    help="Interrupt the stage in flight instead of letting it finish (`start` resumes it).",
)
def stop(workdir: str, now: bool) -> None:
    """Ask the controller to stop: after the stage in flight by default, at once with --now.

    Example: sealong-loop stop --workdir runs/demo
    """

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
        click.echo(
            f"sent SIGTERM to controller pid {pid}: it interrupts {running['name'] if running else 'its work'} and stops within seconds"
        )
    else:
        what = (
            f"when the stage in flight ({running['name']}) finishes" if running else "before its next stage"
        )
        click.echo(f"stop requested: controller pid {pid} stops {what}. Use --now to interrupt the stage.")


def _readonly_db(workdir: str, need_schema: bool = False):
    """The workdir's database, read-only. need_schema: refuse the moment a controller is creating it (the
    commands that read tables without checking; status, lineage, show and verify show that state)."""
    from sealong.store.db import connect, has_schema

    wd = Path(workdir).resolve()
    db = connect(wd, readonly=True)
    if need_schema and not has_schema(db):
        raise SealongError(f"a controller is creating the database in {wd} right now; try again in a moment")
    return wd, db


def _echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the state as JSON.")
@click.option(
    "--watch",
    is_flag=True,
    help="Keep the view live (read-only), refreshed every --interval seconds; Ctrl-C leaves. "
    "Waits for a run that has not started yet.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1, max=60.0),
    default=1.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
def status(workdir: str, as_json: bool, watch: bool, interval: float) -> None:
    """Show the run: current stage with progress and rates, champion and candidate, rounds, recent events.

    Without --watch the view is printed once. The database is only read, never locked for writing, so
    watching never slows the controller.

    Example: sealong-loop status --workdir runs/demo --watch
    """
    from sealong.loop.controller import holder_pid
    from sealong.loop.dashboard import render
    from sealong.loop.monitor import load_state

    if watch and as_json:
        raise SealongError("--watch and --json do not go together; use --json alone for one snapshot")
    if watch:
        import signal

        from sealong.loop.live import watch as watch_loop

        # Ctrl-C (SIGINT) leaves, even when the shell that started it ignores SIGINT (a background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        watch_loop(Path(workdir).resolve(), interval)
        return
    wd, db = _readonly_db(workdir)
    state = load_state(db, holder_pid(wd), workdir=wd)
    if as_json:
        _echo_json(state.to_json())
    else:
        _console().print(render(state))


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print adapters, parents and metrics as JSON.")
def lineage(workdir: str, as_json: bool) -> None:
    """The adapter tree: each adapter's parent (the champion that sampled its data), round, status, SubEM per task.

    Example: sealong-loop lineage --workdir runs/demo --json
    """
    from sealong.loop.lineage_view import lineage as lineage_data
    from sealong.loop.lineage_view import render_lineage

    _, db = _readonly_db(workdir)
    data = lineage_data(db)
    if as_json:
        _echo_json(data)
    else:
        _console().print(render_lineage(data))


@cli.command()
@click.argument("adapter")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def show(adapter: str, workdir: str, as_json: bool) -> None:
    """One adapter's record: parent chain, training config, the pairs that trained it (round, question ids,
    count, sha256 of their texts), its metrics and promotion decision, and its weights (sha256 checked now).

    ADAPTER is an adapter id (see `lineage`) or `champion`.

    Example: sealong-loop show adapter-r001 --workdir runs/demo
    """
    from sealong.loop.lineage_view import adapter_details, render_details

    wd, db = _readonly_db(workdir)
    details = adapter_details(db, wd, adapter)
    if as_json:
        _echo_json(details)
    else:
        _console().print(render_details(details))


@cli.command()
@click.argument("sql")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list of objects.")
def query(sql: str, workdir: str, as_json: bool) -> None:
    """Run one SQL statement on the run's database, read-only: SQLite itself refuses any write.

    Tables and views are listed in the README ("The database"); `eval_summary` holds SubEM per model and task.

    Example: sealong-loop query "SELECT model_key, task, subem FROM eval_summary" --workdir runs/demo
    """
    from sealong.loop.lineage_view import query_json, render_query, run_query

    _, db = _readonly_db(workdir)
    columns, result = run_query(db, sql)
    if as_json:
        _echo_json(query_json(columns, result))
    else:
        _console().print(render_query(columns, result))


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", default=None, help="Output directory. Default: <workdir>/report.")
def report(workdir: str, out: str | None) -> None:
    """Write PNG plots (SubEM per round with promotion decisions, MBR diagnostics, stage wall times, training
    loss) and a Markdown summary, report.md, that links them.

    Example: sealong-loop report --workdir runs/demo --out runs/demo/report
    """
    from sealong.loop.report import write_report

    wd, db = _readonly_db(workdir, need_schema=True)
    target = Path(out) if out else wd / "report"
    if target.exists() and not target.is_dir():
        raise SealongError(f"--out {target} is a file; give a directory (it is created if missing)")
    try:
        written = write_report(db, target)
    except OSError as e:
        raise SealongError(f"cannot write the report to {target}: {e.strerror or e}") from None
    click.echo(f"wrote {len(written)} files to {target}: " + ", ".join(p.name for p in written))


@cli.command()
@click.argument("adapter")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", required=True, help="New (or empty) output directory.")
@click.option(
    "--merge", is_flag=True, help="Merge the adapter into the base model and save a plain transformers model."
)
@click.option(
    "--dtype",
    type=click.Choice(["bfloat16", "float32", "float16"]),
    default="bfloat16",
    show_default=True,
    help="Weights dtype of the merged model (the merge itself is done in float32).",
)
def export(adapter: str, workdir: str, out: str, merge: bool, dtype: str) -> None:
    """Export an adapter in PEFT format, or merged into the base model (--merge) as a transformers model directory.

    ADAPTER is an adapter id (see `lineage`) or `champion`. Its files are checked against the recorded sha256
    first. Load the result with `PeftModel.from_pretrained(base, OUT)` or `AutoModelForCausalLM.from_pretrained(OUT)`.

    Example: sealong-loop export champion --workdir runs/demo --out exported/champion-merged --merge
    """
    from sealong.loop.export import export_adapter

    wd, db = _readonly_db(workdir, need_schema=True)
    info = export_adapter(db, wd, adapter, Path(out), merge, dtype)
    what = f"merged into the base model ({dtype})" if merge else "PEFT adapter"
    click.echo(f"exported {info['adapter']} ({what}, sha256 verified) to {out}")


@cli.command("export-pairs")
@click.argument("round_idx", metavar="ROUND", type=click.IntRange(min=0))
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--out", required=True, help="JSONL file to write ('-' for stdout).")
def export_pairs(round_idx: int, workdir: str, out: str) -> None:
    """Export a round's preference pairs as JSONL {prompt, chosen, rejected}: TRL's DPO/ORPO format.

    The prompt is the chat-templated plan-and-solve prompt the policy saw (context truncated the same way),
    so the lines train another trainer exactly as they trained this round's adapter.

    Example: sealong-loop export-pairs 0 --workdir runs/demo --out pairs-round0.jsonl
    """
    from sealong.loop.export import export_pairs as write_pairs

    wd, db = _readonly_db(workdir, need_schema=True)
    n = write_pairs(db, wd, round_idx, out)
    if out != "-":
        click.echo(f"wrote {n} pairs of round {round_idx} to {out}")


@cli.command()
@click.option(
    "--config",
    "config_path",
    default=None,
    help="Config to check against this machine. Default: the embedded configs/tiny-cpu.toml.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the probe and the checks as JSON.")
def doctor(config_path: str | None, as_json: bool) -> None:
    """What this machine can run (Python, torch, CUDA GPUs, optional packages) and what a config needs.

    Lists every requirement of the config (GPUs for vLLM and sequence parallelism, vllm, flash-attn and
    ring-flash-attn, bitsandbytes for NF4, model and data paths) as ok, MISSING or OPTIONAL (a faster
    path with a working fallback), with the fix. Exits 1 when something is MISSING, so it can gate a
    launch script. Touches no network and loads no model.

    Example: sealong-loop doctor --config configs/llama31-8b-8xh100.toml
    """
    from dataclasses import asdict

    from sealong.loop.doctor import config_notes, needs, probe, report

    cfg = load_config(config_path or DEFAULT_CONFIG, check_paths=False)
    p = probe()
    if as_json:
        checks = needs(cfg, p)
        ready = all(ok or optional for _, ok, _, optional in checks)
        _echo_json(
            {
                "probe": asdict(p),
                "config": str(cfg.source_path),
                "checks": [
                    {"need": w, "ok": ok, "fix": fix, "optional": optional} for w, ok, fix, optional in checks
                ],
                "ready": ready,
                "notes": config_notes(cfg),
            }
        )
    else:
        lines, ready = report(cfg, p)
        for line in lines:
            click.echo(line)
    sys.exit(0 if ready else 1)


@cli.command()
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option(
    "--finished",
    is_flag=True,
    help="Also require a finished run: every round done and no temporary or unreferenced artifact left.",
)
def verify(workdir: str, finished: bool) -> None:
    """Check a workdir's integrity, read-only: SQLite's own checks, every round's rows against its stage
    states, the lineage (one champion, parents), and every adapter's files against their sha256.

    Safe while a run writes (one read snapshot). Prints each problem on one line and exits 1 if there
    is any; prints `ok` and exits 0 otherwise.

    Example: sealong-loop verify --workdir runs/demo --finished
    """
    from sealong.loop.integrity import verify as check

    wd, db = _readonly_db(workdir)  # a clear error when there is no database
    db.conn.close()
    problems = check(wd, finished=finished)
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {wd}", err=True)
        sys.exit(1)
    click.echo(f"ok: {wd} is consistent" + (" and finished" if finished else ""))


@cli.command()
@click.option("--config", "config_path", required=True, help="The run's config (its [distributed] section).")
@click.option("--node-rank", type=int, required=True, help="This node's number: 1 … distributed.nnodes - 1.")
@click.option(
    "--scratch",
    default="~/.cache/sealong-worker",
    show_default=True,
    help="This node's own directory: logs, temp files, bundled models rebuilt here.",
)
@click.option(
    "--wait",
    "wait_s",
    type=click.IntRange(10, 86400),
    default=600,
    show_default=True,
    help="Seconds to wait for a training stage before starting to wait again.",
)
@click.option("--once", is_flag=True, help="Leave after one training stage (exit 0 if it succeeded here).")
def worker(config_path: str, node_rank: int, scratch: str, wait_s: int, once: bool) -> None:
    """Another node's share of a multi-node training stage (distributed.nnodes > 1).

    Run once on each node other than the controller's: it waits for each training stage, joins it with
    nproc_per_node ranks, and waits for the next, until Ctrl-C. Its ranks get the round's data and the
    starting weights from rank 0 on the controller's node, so this node needs the config and the base
    model (at policy.model), not the workdir. distributed.rdzv_endpoint is the controller node's
    HOST:PORT as this node reaches it.

    Example: sealong-loop worker --config configs/llama31-8b-8xh100.toml --node-rank 1
    """
    from sealong.loop.worker import serve

    def log(msg: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {msg}")

    try:
        rc = serve(Path(config_path), node_rank, Path(os.path.expanduser(scratch)), wait_s, once, log)
    except KeyboardInterrupt:
        rc = 130
    except SystemExit as e:  # a stop signal, after the agent and its ranks were stopped
        rc = int(e.code or 0)
    if rc >= 128:
        click.echo("worker stopped", err=True)
    sys.exit(rc)


def main() -> None:
    try:
        cli.main(prog_name="sealong-loop", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except getattr(
        click.exceptions, "NoArgsIsHelpError", ()
    ) as e:  # bare `sealong-loop`: its help (click 8.2+)
        click.echo(e.ctx.get_help() if e.ctx else e.format_message())
        sys.exit(e.exit_code)
    except click.UsageError as e:  # one line, like every other error, with where to read more
        cmd = e.ctx.command_path if e.ctx else "sealong-loop"
        click.echo(f"error: {e.format_message()} (see `{cmd} --help`)", err=True)
        sys.exit(e.exit_code)
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

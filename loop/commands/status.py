"""`sealong-loop status`: the run's state, printed once, as JSON, or kept live with --watch.

    sealong-loop status --workdir runs/demo [--watch | --json]

Split in three: status_state reads the store into a MonitorState, status_render draws it (pure functions),
status_watch runs the live loop.
"""

from __future__ import annotations

from pathlib import Path

import click
from sealong.loop.commands import common
from sealong.loop.errors import SealongError


@click.command("status")
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
def status_command(workdir: str, as_json: bool, watch: bool, interval: float) -> None:
    """Show the run: current stage with progress and rates, champion and candidate, rounds, recent events.

    Without --watch the view is printed once. The database is only read, never locked for writing, so
    watching never slows the controller.

    Example: sealong-loop status --workdir runs/demo --watch
    """
    from sealong.loop.commands.status_render import render
    from sealong.loop.commands.status_state import load_state
    from sealong.loop.engine.workdir import holder_pid

    if watch and as_json:
        raise SealongError("--watch and --json do not go together; use --json alone for one snapshot")
    if watch:
        import signal

        from sealong.loop.commands.status_watch import watch as watch_loop

        # Ctrl-C (SIGINT) leaves, even when the shell that started it ignores SIGINT (a background job)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        watch_loop(Path(workdir).resolve(), interval)
        return
    wd, db = common.readonly_db(workdir)
    state = load_state(db, holder_pid(wd), workdir=wd)
    if as_json:
        common.echo_json(state.to_json())
    else:
        common.console().print(render(state))

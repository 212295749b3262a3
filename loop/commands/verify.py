"""`sealong-loop verify`: a workdir's integrity check (sealong.loop.engine.integrity), read-only.

    sealong-loop verify --workdir runs/demo [--finished]

Prints each problem on one line and exits 1 if there is any; the reliability tests run the same check.
"""

from __future__ import annotations

import sys

import click
from sealong.loop.commands import common
from sealong.loop.errors import EXIT_CHECK_FAILED


@click.command("verify")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option(
    "--finished",
    is_flag=True,
    help="Also require a finished run: every round done and no temporary or unreferenced artifact left.",
)
def verify_command(workdir: str, finished: bool) -> None:
    """Check a workdir's integrity, read-only: SQLite's own checks, every round's rows against its stage
    states, the lineage (one champion, parents), and every adapter's files against their sha256.

    Safe while a run writes (one read snapshot). Prints each problem on one line and exits 1 if there
    is any; prints `ok` and exits 0 otherwise.

    Example: sealong-loop verify --workdir runs/demo --finished
    """
    from sealong.loop.engine.integrity import verify as check

    wd, db = common.readonly_db(workdir)  # a clear error when there is no database
    db.conn.close()
    problems = check(wd, finished=finished)
    for p in problems:
        click.echo(p)
    if problems:
        click.echo(f"{len(problems)} problem(s) in {wd}", err=True)
        sys.exit(EXIT_CHECK_FAILED)
    click.echo(f"ok: {wd} is consistent" + (" and finished" if finished else ""))

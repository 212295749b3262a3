"""What the command modules share: the console, the read-only database, JSON output, the --workdir help."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click
import sqlite_utils
from rich.console import Console
from sealong.loop.errors import SealongError

WORKDIR_HELP = "Run directory holding the database, adapters and logs. Default: runs/<run name> (start) or runs/tiny-cpu."


def console() -> Console:
    """A terminal's own width; off a terminal (a log, a pipe) 160 columns unless COLUMNS says otherwise,
    so that wide tables are not folded into unreadable 80-column stubs."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=160)


def readonly_db(workdir: str, need_schema: bool = False) -> tuple[Path, sqlite_utils.Database]:
    """The workdir's database, read-only. need_schema: refuse the moment a controller is creating it (the
    commands that read tables without checking; status, lineage, show and verify show that state)."""
    from sealong.store.db import connect, has_schema

    wd = Path(workdir).resolve()
    db = connect(wd, readonly=True)
    if need_schema and not has_schema(db):
        raise SealongError(f"a controller is creating the database in {wd} right now; try again in a moment")
    return wd, db


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))

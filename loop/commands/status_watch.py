"""The live loops: `status --watch` and the foreground view of `start`.

    sealong-loop status --workdir runs/demo --watch              # refreshed every second; Ctrl-C leaves
    sealong-loop status --workdir runs/demo --watch | tee log    # off a terminal: events as plain lines

Each tick reads a fresh `MonitorState` over a read-only connection and hands it to the pure render
functions in `sealong.loop.commands.status_render`; nothing here decides what is shown.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import sqlite_utils
from rich.console import Console
from sealong.loop.commands.status_render import render
from sealong.loop.commands.status_state import MonitorState, load_state
from sealong.store.db import has_schema, one, rows


def watch(workdir: Path, interval: float = 1.0, console: Console | None = None) -> None:
    """Show the live view until Ctrl-C (alternate screen; the last view is printed on exit).

    Off a terminal, prints new events and progress as plain lines instead. Waits for a run that has not
    started yet (no database), and keeps going across stages, crashes and the end of the run.
    """
    from rich.live import Live
    from sealong.loop.engine.workdir import holder_pid
    from sealong.store.db import connect, db_path

    console = console or Console()
    if not console.is_terminal:
        _follow_plain(workdir, interval, console)
        return
    db, state = None, MonitorState(workdir=str(workdir), now=time.time())
    try:
        with Live(
            render(state), console=console, screen=True, auto_refresh=False, vertical_overflow="crop"
        ) as live:
            while True:
                if db is None and db_path(workdir).exists():
                    db = connect(workdir, readonly=True)
                if db is not None:
                    state = load_state(db, holder_pid(workdir), workdir=workdir)
                else:
                    state = MonitorState(workdir=str(workdir), now=time.time())
                live.update(render(state, height=console.size.height), refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    console.print(render(state))


def _follow_plain(workdir: Path, interval: float, console: Console) -> None:
    from sealong.store.db import db_path

    try:
        if not db_path(workdir).exists():
            console.print(f"waiting for a run in {workdir} (`sealong-loop start --workdir {workdir}`)")
        while not db_path(workdir).exists():
            time.sleep(interval)
        ui = PlainUI(workdir, console, progress_every=max(interval, 1.0))
        while True:
            ui.tick()
            time.sleep(interval)
    except KeyboardInterrupt:
        pass


class PlainUI:
    """Off a terminal (CI, logs): new events as lines, and the running stage's progress every 10 s."""

    def __init__(self, workdir: Path, console: Console, progress_every: float = 10.0):
        self.workdir, self.console, self.last_event, self.last_progress = workdir, console, 0, 0.0
        self.progress_every = progress_every
        self.last_line = ""
        self.db = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.tick()

    def _db(self) -> sqlite_utils.Database:
        if self.db is None:
            from sealong.store.db import connect

            self.db = connect(self.workdir, readonly=True)
        return self.db

    def tick(self) -> None:
        db = self._db()
        if not has_schema(db):
            return
        for e in rows(
            db,
            "SELECT id, ts, stage, level, message FROM events WHERE id > ? ORDER BY id",
            (self.last_event,),
        ):
            self.last_event = e["id"]
            stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
            self.console.print(
                f"[{stamp}] {e['level']:5} {e['stage'] or '-':8} {e['message']}",
                highlight=False,
                markup=False,
                soft_wrap=True,
            )
        if time.monotonic() - self.last_progress > self.progress_every:
            st = one(
                db,
                "SELECT name, progress_done, progress_total, progress_unit, progress_note FROM stages WHERE status = 'running'",
            )
            line = st and (
                f"           progress {st['name']:8} {st['progress_done']:g}/{st['progress_total']:g} "
                f"{st['progress_unit']} {st['progress_note']}"
            )
            if line and st["progress_total"] and line != self.last_line:
                self.last_progress, self.last_line = time.monotonic(), line
                self.console.print(line, highlight=False, markup=False, soft_wrap=True)

    def final(self) -> None:
        self.console.print(render(load_state(self._db(), workdir=self.workdir)))


class LiveUI(PlainUI):
    """On a terminal: the live view in the foreground of `start`, refreshed from the store on every tick."""

    def __enter__(self):
        from rich.live import Live

        self.live = Live(
            console=self.console, refresh_per_second=4, transient=False, vertical_overflow="crop"
        )
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)

    def tick(self) -> None:
        state = load_state(self._db(), os.getpid(), workdir=self.workdir)
        self.live.update(render(state, height=self.console.size.height))

    def final(self) -> None:
        pass

"""`sealong-loop ablate`: the same loop run once per [pairs] selection arm, and the paired comparison.

    sealong-loop ablate --config configs/tiny-cpu-ablation.toml --arms mbr-embedding,random --rounds 3 \
        --workdir runs/ablation
    sealong-loop ablate --workdir runs/ablation               # resume where it stopped
    sealong-loop ablate --workdir runs/ablation --report-only # tables and plot from what is done

Each arm is an ordinary run in <workdir>/<arm>/ (so `status`, `lineage`, `show`, `report` and `verify` work
on it), made by sealong.loop.recipe.ablation.arm_config. Rounds are interleaved (every arm's round 1,
then every arm's round 2, ...), so an ablation stopped early still compares the arms on the rounds all of
them finished. The report (<workdir>/report/: ablation.md, ablation.json, ablation.png) is written at the
end and by --report-only; the statistics are sealong.loop.recipe.ablation.analyse.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import click
from sealong.loop.commands import common
from sealong.loop.config import DEFAULT_CONFIG, load_config
from sealong.loop.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_STOPPED, SealongError
from sealong.loop.recipe import ablation


@click.command("ablate")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Base TOML config for a new ablation (default: the embedded {DEFAULT_CONFIG.name}); "
    "every arm runs it with its own [pairs] selection.",
)
@click.option(
    "--arms",
    default=None,
    help="Comma-separated selections, the first is the reference the others are compared with "
    "(default for a new ablation: mbr-embedding,random). Choices: mbr-embedding, mbr-token, "
    "mbr-rouge-l, random, greedy-as-chosen.",
)
@click.option("--rounds", type=click.IntRange(min=1), default=None, help="Rounds per arm (default 3).")
@click.option("--workdir", default="runs/ablation", show_default=True, help="The ablation's directory.")
@click.option(
    "--report-only", is_flag=True, help="Write the report from the rounds done so far; run nothing."
)
@click.option("--plain", is_flag=True, help="Progress as plain lines instead of the live view.")
def ablate_command(
    config_path: str | None,
    arms: str | None,
    rounds: int | None,
    workdir: str,
    report_only: bool,
    plain: bool,
) -> None:
    """Run the loop once per selection arm from the same base, seeds and questions, and compare the arms:
    SubEM per arm and round with 95% bootstrap CIs, paired differences with CIs and p-values, a plot.

    Resumable: run the same command again (or with only --workdir) and it goes on at the first unfinished
    stage. Each arm's lineage is an ordinary run: `sealong-loop lineage --workdir WORKDIR/ARM`.

    Example: sealong-loop ablate --arms mbr-embedding,random --rounds 3 --workdir runs/ablation
    """
    wd = Path(workdir).resolve()
    if wd.exists() and not wd.is_dir():
        raise SealongError(f"--workdir {wd} is a file; give a directory")
    plan = ablation.load_plan(wd)
    arm_list = ablation.parse_arms(arms) if arms is not None else None
    if report_only:
        if plan is None:
            raise SealongError(f"{wd} holds no ablation (no {ablation.PLAN}); start one first")
        _report(wd, plan)
        return
    base = load_config(config_path or DEFAULT_CONFIG) if (config_path or plan is None) else None
    if plan is None:
        assert base is not None
        plan = ablation.Plan(
            arm_list or ["mbr-embedding", "random"],
            rounds or 3,
            str(Path(config_path or DEFAULT_CONFIG).resolve()),
            ablation.config_sha(base),
        )
    else:
        plan = ablation.check_resume(plan, arm_list, rounds, base)
    wd.mkdir(parents=True, exist_ok=True)
    from sealong.store.artifacts import atomic_write_text
    from sealong.store.db import db_path

    atomic_write_text(wd / ablation.PLAN, json.dumps(plan.to_dict(), indent=2) + "\n")
    console = common.console()
    console.print(
        f"sealong-loop ablate: arms {', '.join(plan.arms)}; {plan.rounds} round(s) each; base config "
        f"{plan.base_config}; in {wd}"
    )
    if base is None and not all(db_path(wd / a).exists() for a in plan.arms):
        base = load_config(
            plan.base_config
        )  # resuming without --config: only an arm not yet started needs it
    for r in range(1, plan.rounds + 1):
        for arm in plan.arms:
            status, code = _run_arm(wd, plan, base, arm, r, console, plain)
            if status in ("failed", "stopped"):
                console.print(
                    f"arm {arm} {status} in round {r}; resume with `sealong-loop ablate --workdir {wd}`"
                )
                _report(wd, plan)
                sys.exit(code)
    _report(wd, plan)


def _run_arm(
    wd: Path, plan: ablation.Plan, base, arm: str, upto: int, console, plain: bool
) -> tuple[str, int]:
    from sealong.loop.commands.status_watch import LiveUI, PlainUI
    from sealong.loop.engine.controller import Controller
    from sealong.loop.engine.workdir import holder_pid, load_stored_config
    from sealong.store.db import connect, db_path

    arm_wd = wd / arm
    pid = holder_pid(arm_wd)
    if pid:
        raise SealongError(f"a controller (pid {pid}) is already running on {arm_wd}; stop it first")
    questions = None
    if not db_path(arm_wd).exists():
        assert base is not None  # loaded above whenever an arm has no run yet
        cfg = ablation.arm_config(base, arm, plan.rounds)
        if ablation.config_sha(base) != plan.base_config_sha256:
            raise SealongError(
                f"{plan.base_config} changed since this ablation started; restore it or use a new --workdir"
            )
        from sealong.loop.engine.workdir import questions_for

        questions = questions_for(cfg)
    else:
        cfg = load_stored_config(connect(arm_wd), arm_wd)
        if cfg.pairs.selection != arm:
            raise SealongError(f"{arm_wd} holds a run with selection {cfg.pairs.selection}, not {arm}")
    console.print(f"[bold]arm {arm}[/bold]: up to round {upto} of {plan.rounds}  ({arm_wd})")
    ui = LiveUI(arm_wd, console) if (console.is_terminal and not plain) else PlainUI(arm_wd, console)
    if questions is None:  # a resumed arm: its earlier rounds' events were printed when they happened
        ui.last_event = (
            connect(arm_wd, readonly=True).execute("SELECT MAX(id) FROM events").fetchone()[0] or 0
        )
    controller = Controller(arm_wd, cfg, upto, on_tick=ui.tick)
    controller.questions = questions
    with ui:
        status = controller.run()
    if status == "stopped":
        return status, EXIT_INTERRUPTED if controller.stop_signal == signal.SIGINT else EXIT_STOPPED
    return status, EXIT_FAILED


def _report(wd: Path, plan: ablation.Plan) -> None:
    from sealong.loop.commands.ablate_report import write_ablation_report

    t = time.monotonic()
    written = write_ablation_report(wd, plan)
    click.echo(f"wrote {', '.join(str(p) for p in written)} ({time.monotonic() - t:.1f} s)")

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

This module is the group and that error handling; each command lives in sealong.loop.commands (start and
stop in commands/start.py, export and export-pairs in commands/export.py, lineage, show and query in
commands/lineage.py, the others in the module of their name).
"""

from __future__ import annotations

import sys

import click
from sealong.loop.commands.ablate import ablate_command
from sealong.loop.commands.doctor import doctor_command
from sealong.loop.commands.export import export_command, export_pairs_command
from sealong.loop.commands.lineage import lineage_command, query_command, show_command
from sealong.loop.commands.report import report_command
from sealong.loop.commands.start import start_command, stop_command
from sealong.loop.commands.status import status_command
from sealong.loop.commands.verify import verify_command
from sealong.loop.commands.worker import worker_command
from sealong.loop.errors import EXIT_INTERRUPTED, SealongError, exit_code_for


@click.group(
    commands=[
        start_command,
        stop_command,
        status_command,
        lineage_command,
        show_command,
        query_command,
        report_command,
        ablate_command,
        export_command,
        export_pairs_command,
        doctor_command,
        verify_command,
        worker_command,
    ],
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="sealong-loop", prog_name="sealong-loop")
def cli() -> None:
    """sealong-loop: a self-improvement daemon for long-context reasoning (SEALONG).

    Each round samples N plan-and-solve answers per question from the current policy, scores them by
    Minimum Bayes Risk, builds preference pairs, trains a LoRA adapter with ORPO, evaluates it, and
    promotes it if it beats the champion. Everything is recorded in <workdir>/sealong.db.

    Quick start: sealong-loop start --config configs/tiny-cpu.toml --max-rounds 1
    """


def main() -> None:
    try:
        cli.main(prog_name="sealong-loop", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_INTERRUPTED)
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
        sys.exit(exit_code_for(e))
    except KeyboardInterrupt as e:
        click.echo("interrupted", err=True)
        sys.exit(exit_code_for(e))


if __name__ == "__main__":
    main()

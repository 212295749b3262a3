"""`sealong-loop worker`: another node's share of a multi-node training stage (sealong.loop.training.multinode).

    sealong-loop worker --config configs/llama31-8b-8xh100.toml --node-rank 1 [--scratch DIR] [--once]

The command line of sealong.loop.training.multinode.serve, which does the waiting and the joining.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click
from sealong.loop.errors import EXIT_INTERRUPTED


@click.command("worker")
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
def worker_command(config_path: str, node_rank: int, scratch: str, wait_s: int, once: bool) -> None:
    """Another node's share of a multi-node training stage (distributed.nnodes > 1).

    Run once on each node other than the controller's: it waits for each training stage, joins it with
    nproc_per_node ranks, and waits for the next, until Ctrl-C. Its ranks get the round's data and the
    starting weights from rank 0 on the controller's node, so this node needs the config and the base
    model (at policy.model), not the workdir. distributed.rdzv_endpoint is the controller node's
    HOST:PORT as this node reaches it.

    Example: sealong-loop worker --config configs/llama31-8b-8xh100.toml --node-rank 1
    """
    from sealong.loop.training.multinode import serve

    def log(msg: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {msg}")

    try:
        rc = serve(Path(config_path), node_rank, Path(os.path.expanduser(scratch)), wait_s, once, log)
    except KeyboardInterrupt:
        rc = EXIT_INTERRUPTED
    except SystemExit as e:  # a stop signal, after the agent and its ranks were stopped
        rc = int(e.code or 0)
    if rc >= 128:
        click.echo("worker stopped", err=True)
    sys.exit(rc)

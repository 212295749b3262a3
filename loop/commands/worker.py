"""`sealong-loop worker`: another node's share of multi-node stages: training (sealong.loop.training.multinode)
and sample/eval (sealong.loop.engine.nodes).

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
@click.option(
    "--node-rank",
    type=int,
    default=None,
    help="This node's number: 1 … nnodes - 1 (default: SEALONG_NODE_RANK, SLURM_NODEID, LWS_WORKER_INDEX).",
)
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
    help="Seconds to wait for a stage before saying so and waiting again.",
)
@click.option("--once", is_flag=True, help="Leave after one stage (exit 0 if it succeeded here).")
@click.option(
    "--rdzv-endpoint",
    default=None,
    metavar="HOST:PORT",
    help="Node 0's rendezvous for this launch (default: SEALONG_RDZV_ENDPOINT, MASTER_ADDR:MASTER_PORT, "
    "LWS_LEADER_ADDRESS, else [distributed] rdzv_endpoint). Example: --rdzv-endpoint node017:29400",
)
@click.option(
    "--nnodes",
    type=click.IntRange(min=2),
    default=None,
    help="Nodes in this launch (default: SEALONG_NNODES, SLURM_NNODES, LWS_GROUP_SIZE, else [distributed] "
    "nnodes). Example: --nnodes 8",
)
@click.option(
    "--run-token-file",
    default=None,
    help="A file holding this launch's run token (else the SEALONG_RUN_TOKEN environment variable); "
    "read again at each stage. A worker with another token is refused. Example: --run-token-file "
    "/shared/runs/demo/run-token",
)
@click.option(
    "--max-idle",
    type=click.IntRange(min=0),
    default=0,
    help="Leave (exit 0) after this many seconds without a stage; 0: never. Example: --max-idle 900",
)
def worker_command(
    config_path: str,
    node_rank: int | None,
    scratch: str,
    wait_s: int,
    once: bool,
    rdzv_endpoint: str | None = None,
    nnodes: int | None = None,
    run_token_file: str | None = None,
    max_idle: int = 0,
) -> None:
    """Another node's share of multi-node stages (nnodes > 1): train, sample and eval.

    Run once on each node other than the controller's: it waits for each stage, joins it (train: with
    nproc_per_node torchrun ranks; sample/eval: with sample.replicas engines that take questions from node
    0), and waits for the next, until Ctrl-C. It gets the round's data and the weights from node 0, so this
    node needs the config and the base model (at policy.model), not the workdir. The rendezvous endpoint
    is the controller node's HOST:PORT as this node reaches it (sample/eval use PORT + 1). The run token
    (SEALONG_RUN_TOKEN or --run-token-file) must be this launch's: the store has no authentication, run
    on trusted networks only (docs/CLUSTER.md).

    Example: SEALONG_RUN_TOKEN=... sealong-loop worker --config run.toml --node-rank 1 --rdzv-endpoint node0:29400
    """
    from sealong.loop.training.multinode import serve

    def log(msg: str) -> None:
        click.echo(f"{time.strftime('%H:%M:%S')} {msg}")

    try:
        rc = serve(
            Path(config_path),
            node_rank,
            Path(os.path.expanduser(scratch)),
            wait_s,
            once,
            log,
            endpoint=rdzv_endpoint,
            nnodes=nnodes,
            token_file=run_token_file,
            max_idle=max_idle,
        )
    except KeyboardInterrupt:
        rc = EXIT_INTERRUPTED
    except SystemExit as e:  # a stop signal, after the agent and its ranks were stopped
        rc = int(e.code or 0)
    if rc >= 128:
        click.echo("worker stopped", err=True)
    sys.exit(rc)

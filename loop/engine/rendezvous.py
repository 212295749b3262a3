"""Where the nodes of a multi-node run meet: decided at each launch, never frozen into the run.

A run's stored config fixes what must not change when it resumes (the model, the recipe, nproc_per_node
and the rest of the world layout); the rendezvous endpoint, the node count and this node's rank come from
the command line or the environment at each start (a SLURM requeue can land on another head node), in
this order, the first that is set:

    endpoint    --rdzv-endpoint · SEALONG_RDZV_ENDPOINT · MASTER_ADDR:MASTER_PORT · LWS_LEADER_ADDRESS:port
                · [distributed] rdzv_endpoint  (a bare host takes the config's port)
    node count  --nnodes · SEALONG_NNODES · SLURM_NNODES · LWS_GROUP_SIZE · [distributed] nnodes
    node rank   --node-rank · SEALONG_NODE_RANK · SLURM_NODEID · LWS_WORKER_INDEX   (start: always 0)
    run token   --run-token-file (worker) · SEALONG_RUN_TOKEN · (start only) a new random one

The controller writes the launch it resolved to <workdir>/launch.json (mode 0600), which its stage
processes read; the run token is per launch, so a worker of another run, or of an earlier launch of this
one, is refused (engine/nodes.py) instead of joining. The token is not a password: the c10d store has no
authentication, so nodes must talk over a trusted network (docs/CLUSTER.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from sealong.loop.config import Config
from sealong.loop.errors import SealongError

# Per launch, not per run: a resumed run need not match the stored values of these config keys.
LAUNCH_KEYS = {
    "distributed": ("nnodes", "rdzv_endpoint", "rdzv_id", "rdzv_timeout", "join_timeout", "heartbeat_timeout")
}
LAUNCH_FILE = "launch.json"
TOKEN_FILE = "run-token"


@dataclass
class Launch:
    endpoint: str  # HOST:PORT of node 0 as the other nodes reach it (training: torchrun; port + 1: nodes.py)
    nnodes: int
    node_rank: int
    token: str
    join_timeout: int
    heartbeat_timeout: int

    @property
    def token_sha(self) -> str:
        return token_sha(self.token)

    @property
    def work_endpoint(self) -> tuple[str, int]:
        """Where node 0's sample/eval stage hosts its work store: the rendezvous port + 1."""
        host, _, port = self.endpoint.rpartition(":")
        return host, int(port) + 1


def token_sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _first(*values: object) -> str | None:
    for v in values:
        if v is not None and str(v).strip() != "":
            return str(v).strip()
    return None


def _int(value: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise SealongError(f"{what} must be a whole number (got {value!r})") from None


def resolve(
    cfg: Config,
    *,
    endpoint: str | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    token: str | None = None,
    token_file: str | None = None,
    env: Mapping[str, str] | None = None,
    controller: bool = False,
) -> Launch:
    """This launch's rendezvous (see the module's docstring for the order of sources)."""
    env = os.environ if env is None else env
    d = cfg.distributed
    port = d.rdzv_endpoint.rpartition(":")[2]
    master = f"{env['MASTER_ADDR']}:{env.get('MASTER_PORT') or port}" if env.get("MASTER_ADDR") else None
    lws = f"{env['LWS_LEADER_ADDRESS']}:{port}" if env.get("LWS_LEADER_ADDRESS") else None
    ep = _first(endpoint, env.get("SEALONG_RDZV_ENDPOINT"), master, lws, d.rdzv_endpoint)
    if ep and ":" not in ep:
        ep = f"{ep}:{port}"
    host, _, p = ep.rpartition(":")
    if not host or not p.isdigit() or not 0 < int(p) < 65535:
        raise SealongError(f"rendezvous endpoint must be HOST:PORT with PORT < 65535 (got {ep!r})")
    n = _int(
        _first(
            nnodes, env.get("SEALONG_NNODES"), env.get("SLURM_NNODES"), env.get("LWS_GROUP_SIZE"), d.nnodes
        ),
        "the node count",
    )
    rank_src = _first(
        node_rank, env.get("SEALONG_NODE_RANK"), env.get("SLURM_NODEID"), env.get("LWS_WORKER_INDEX")
    )
    rank = 0 if controller else _int(rank_src, "--node-rank") if rank_src is not None else -1
    if n < 1:
        raise SealongError(f"the node count must be >= 1 (got {n})")
    world, sp = n * d.nproc_per_node, d.sequence_parallel_size
    if world % sp:
        raise SealongError(
            f"{n} node(s) × distributed.nproc_per_node {d.nproc_per_node} = {world} ranks, which "
            f"distributed.sequence_parallel_size {sp} does not divide"
        )
    if controller and rank_src not in (None, "0") and node_rank is None:
        raise SealongError(
            f"this node's rank is {rank_src} (from the environment): `sealong-loop start` runs on node 0 "
            f"only; on node {rank_src} run `sealong-loop worker`"
        )
    tok = _first(token)
    if tok is None and token_file:
        try:
            tok = Path(token_file).expanduser().read_text().strip()
        except OSError as e:
            raise SealongError(f"--run-token-file {token_file}: cannot read it ({e.strerror})") from None
    tok = _first(tok, env.get("SEALONG_RUN_TOKEN"))
    if tok is None and controller:
        tok = secrets.token_hex(16)
    return Launch(ep, n, rank, tok or "", d.join_timeout, d.heartbeat_timeout)


def apply(cfg: Config, launch: Launch) -> Config:
    """The config with this launch's rendezvous and node count in place of the stored ones."""
    d = dataclasses.replace(cfg.distributed, rdzv_endpoint=launch.endpoint, nnodes=launch.nnodes)
    out = dataclasses.replace(cfg, distributed=d)
    out.source_path = cfg.source_path
    return out


def publish(workdir: Path, launch: Launch) -> str | None:
    """At a controller's start: for more than one node, write the launch (`write`) and return the event
    that says where the nodes meet; for one node, remove an earlier launch's files."""
    if launch.nnodes > 1:  # the stage processes read it; a worker needs the token
        write(workdir, launch)
        return (
            f"this launch: {launch.nnodes} nodes meet at {launch.endpoint} (sample/eval: port + 1); "
            f"workers need its run token ({workdir / TOKEN_FILE})"
        )
    for name in (LAUNCH_FILE, TOKEN_FILE):
        (workdir / name).unlink(missing_ok=True)
    return None


def write(workdir: Path, launch: Launch) -> None:
    """<workdir>/launch.json for the stage processes, and the token alone in <workdir>/run-token (0600)."""
    from sealong.store.artifacts import atomic_write_text

    for name, text in (
        (LAUNCH_FILE, json.dumps(dataclasses.asdict(launch))),
        (TOKEN_FILE, launch.token + "\n"),
    ):
        atomic_write_text(workdir / name, text)
        os.chmod(workdir / name, 0o600)


def read(workdir: Path) -> Launch | None:
    """The launch the controller wrote (None: a run from before launches were recorded: the config's)."""
    try:
        return Launch(**json.loads((workdir / LAUNCH_FILE).read_text()))
    except FileNotFoundError:
        return None

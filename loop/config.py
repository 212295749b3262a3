"""Typed run configuration, loaded from TOML and validated at load.

Every problem (unknown key, wrong type, impossible value, missing file) is collected and reported in one
ConfigError naming the file, the line and the field. The embedded default is configs/tiny-cpu.toml, which
ships in the package (sealong.configs) with the other built-in configs.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib
from sealong.loop.errors import ConfigError

# The built-in configs are package data (configs/ in the source tree, sealong/configs/ once installed), so
# `--config`-less commands work from any directory; pip installs them unpacked, as plain files.
BUILTIN_CONFIGS = Path(str(importlib.resources.files("sealong.configs")))
DEFAULT_CONFIG = BUILTIN_CONFIGS / "tiny-cpu.toml"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLAN_AND_SOLVE = (
    "Let's first understand the problem and devise a plan to solve it. "
    "Then, let's carry out the plan and solve the problem step-by-step."
)


@dataclass
class RunConfig:
    name: str = "sealong"
    seed: int = 0
    max_rounds: int = 3
    patience: int = 2  # stop after this many rounds in a row without a promotion
    max_stage_retries: int = 2


@dataclass
class PolicyConfig:
    # "bundled:smollm2-135m-instruct", "tiny-random-llama", or a path to a transformers model directory.
    model: str = "bundled:smollm2-135m-instruct"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    max_prompt_tokens: int = 1536  # longer prompts are truncated in the middle of the context
    trust_remote_code: bool = False
    threads: int = 0  # torch threads per stage (or replica) process; 0 = torch's default
    # where the transformers backend and training put the model: "auto" = the process's CUDA GPU if it
    # sees one (under torchrun: cuda:LOCAL_RANK), else the CPU
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class EmbedderConfig:
    model: str = "bundled:all-minilm-l6-v2"
    batch_size: int = 64
    trust_remote_code: bool = False  # jina-embeddings-v3 (the paper's embedder) needs it
    # extra keyword arguments for sentence-transformers' encode(), wherever embeddings are made; SEALONG
    # encodes with jina-embeddings-v3 as encode(texts, task="text-matching", max_length=8192)
    encode_kwargs: dict = field(default_factory=dict)
    max_length: int = 0  # tokens an embedded text keeps (the model's max_seq_length); 0 = the model's own


@dataclass
class DataConfig:
    # "jsonl": your own records (a JSONL or .parquet file); "folder": a folder of documents + questions_path
    train_source: Literal["synthetic", "musique", "jsonl", "folder"] = "synthetic"
    train_path: str = ""  # MuSiQue JSONL, your records file, or your documents folder
    questions_path: str = ""  # train_source = "folder": the questions, one JSON object a line
    train_pool_size: int = 64
    questions_per_round: int = 16
    eval_source: Literal["synthetic", "longbench", "jsonl"] = "synthetic"
    # LongBench JSONL files when eval_source = "longbench"; your records, with answers, when "jsonl"
    eval_paths: list[str] = field(default_factory=list)
    # Your own data's field names; "" looks each up under its common names (README "Your own data")
    id_field: str = ""
    question_field: str = ""
    context_field: str = ""
    context_file_field: str = ""
    answers_field: str = ""
    document_field: str = ""
    eval_questions_per_task: int = 10
    context_tokens_min: int = 400  # target context length, drawn uniformly per question
    context_tokens_max: int = 700
    hops: list[int] = field(default_factory=lambda: [1, 2, 3])
    near_miss_rate: float = 0.5  # share of questions whose context holds a near-miss distractor


@dataclass
class SampleConfig:
    backend: Literal["transformers", "vllm"] = "transformers"
    n: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 160
    instruction: str = PLAN_AND_SOLVE
    shared_prefill: bool = True  # prefill each prompt once and draw all N continuations from it
    greedy_diagnostics: bool = True  # also decode each training question greedily (diagnostics only)
    # Data parallelism for the sample and eval stages: this many independent copies of the policy, each in
    # its own process with a fixed share of the questions (vllm: each over vllm.tensor_parallel_size GPUs;
    # transformers: one GPU each, or on the CPU policy.threads threads each).
    replicas: int = 1


@dataclass
class ScoreConfig:
    utility: Literal["embedding", "bertscore", "rouge-l", "random"] = "embedding"
    backend: Literal["auto", "torch", "triton"] = "auto"
    # Other utilities scored on the same samples, for the per-round diagnostics only.
    diagnostic_utilities: list[str] = field(default_factory=lambda: ["random", "rouge-l"])


# [pairs] selection: how each question's chosen answer is picked; the rejected one is always drawn
# uniformly from the lower half of the samples by [score] utility (SEALONG's rule). Each MBR arm (and
# `random`) ranks by one utility, so it and [score] utility name the same thing: set either, the other follows.
SELECTION_UTILITY: dict[str, str | None] = {
    "mbr-embedding": "embedding",  # the paper's: consensus by sentence-embedding cosine
    "mbr-token": "bertscore",  # consensus by BERTScore F1 over token embeddings
    "mbr-rouge-l": "rouge-l",
    "random": "random",  # chosen: a uniformly random sample (no selection)
    "greedy-as-chosen": None,  # chosen: the round's greedy answer; rejected ranked by [score] utility
}
UTILITY_SELECTION = {u: s for s, u in SELECTION_UTILITY.items() if u}
# keyword arguments the score stage sets itself
_OWN_ENCODE_KWARGS = (
    "inputs", "sentences", "batch_size", "convert_to_tensor", "convert_to_numpy", "output_value",
    "show_progress_bar", "device", "pool",
)  # fmt: skip


@dataclass
class PairsConfig:
    selection: Literal["mbr-embedding", "mbr-token", "mbr-rouge-l", "random", "greedy-as-chosen"] = (
        "mbr-embedding"
    )


@dataclass
class TrainConfig:
    init: Literal["champion", "base"] = "champion"
    quantize: Literal["none", "nf4"] = "none"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    beta: float = 0.1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.1
    epochs: int = 1
    batch_size: int = 1  # pairs per micro-batch
    grad_accum: int = 1
    max_length: int = 2048
    loss: Literal["naive", "fused", "liger"] = "naive"
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    # fp32 copies of the non-quantised base weights and an fp32 residual stream (PEFT's k-bit preparation);
    # off: a bf16 policy trains in bf16 end to end (LoRA weights and optimizer state stay fp32)
    upcast_base: bool = False


@dataclass
class DistributedConfig:
    """Training at scale: torchrun processes, sequence parallelism (ring attention) within a group,
    data parallelism across groups."""

    nnodes: int = 1
    nproc_per_node: int = 1
    sequence_parallel_size: int = 1  # ranks that split one sequence
    # How those ranks share attention: "ring" passes K/V around the ring (any head counts); "ulysses"
    # all-to-alls heads (query and KV heads must divide by sequence_parallel_size). docs/SCALE.md §5.2.
    sequence_parallel: Literal["ring", "ulysses"] = "ring"
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    # nnodes > 1: the controller's node is node 0 and hosts the rendezvous at rdzv_endpoint (its address
    # as the other nodes see it); every other node runs `sealong-loop worker --node-rank K`.
    rdzv_backend: Literal["static", "c10d"] = "static"
    rdzv_endpoint: str = "localhost:29400"
    rdzv_id: str = "sealong"
    rdzv_timeout: int = (
        600  # seconds the controller's node waits for the other nodes to join a training stage
    )
    checkpoint_every: int = 0  # optimizer steps between resumable training checkpoints (0: none)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


# The LoRA ranks a vLLM engine accepts (MaxLoRARanks in vllm/config/lora.py); older releases stop at 256.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class VllmConfig:
    tensor_parallel_size: int = 1  # GPUs per engine; sample.replicas engines use replicas × this many
    max_model_len: int = 32768
    max_lora_rank: int = 128
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    # Cascade attention reads a shared prompt's KV once per decode step for all N samples of a question
    # (docs/SCALE.md, sampling). vLLM turned it off by default in 2026 (vllm-project/vllm#36318, numerical
    # reports on some GPUs); false here lets vLLM's heuristic use it, true turns it off.
    disable_cascade_attn: bool = False
    dtype: Literal["bfloat16", "float16", "auto"] = "bfloat16"
    # How the sample stage feeds the engine (docs/SCALE.md §3.2, §3.4; the device check's A/B measures it).
    # "per-question": one question (one request, n = N) per generate() call, so its N streams are all that
    # runs and cascade attention reads the shared prefix once per step. "continuous": each chunk of
    # questions in one call, batched together; every stream then reads its own prefix KV each step.
    # "auto" (what configs without the key get): per-question unless disable_cascade_attn.
    batching: Literal["auto", "per-question", "continuous"] = "auto"
    # true: the engine core runs in the stage's process (VLLM_ENABLE_V1_MULTIPROCESSING=0), so a killed
    # stage frees its GPU memory at once. false: vLLM's default, an engine-core child process that overlaps
    # the front end's work with the GPU's, but outlives a SIGKILLed parent unless its group is killed.
    engine_in_process: bool = True


@dataclass
class EvalConfig:
    max_new_tokens: int = 160
    batch_size: int = 4


@dataclass
class PromoteConfig:
    rule: Literal["margin", "bootstrap", "mcnemar"] = "bootstrap"
    margin: float = 0.0  # the gain in mean-over-tasks SubEM must exceed this many points
    # bootstrap: lower bound of this two-sided CI > margin; mcnemar: p < 1 - confidence
    confidence: float = 0.9
    bootstrap_samples: int = 2000
    # flag a promotion whose mean output length grew by more than this share
    max_length_increase: float = 0.25
    block_on_length: bool = False  # refuse (rather than only flag) such a promotion


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    promote: PromoteConfig = field(default_factory=PromoteConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    vllm: VllmConfig = field(default_factory=VllmConfig)
    source_path: str = field(default="<defaults>", compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source_path")
        return d


# Keys that earlier versions took: (their only value then, what to write instead). The old value is
# accepted and ignored (every stored config of an earlier run holds it); any other value is an error.
MOVED_KEYS: dict[tuple[str, str], tuple[Any, str]] = {
    ("vllm", "data_parallel_size"): (
        1,
        "was replaced by [sample] replicas (independent engines, each over vllm.tensor_parallel_size "
        "GPUs, each with its share of the questions); move the value there",
    ),
}

SECTIONS: dict[str, type] = {
    f.name: f.default_factory().__class__ for f in dataclasses.fields(Config) if f.name != "source_path"
}  # type: ignore[misc]


def _type_problem(value: Any, annotation: Any) -> str | None:
    """None if value fits the annotation, else a description of what was expected."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = typing.get_args(annotation)
        return None if value in choices else f"must be one of {', '.join(map(repr, choices))} (got {value!r})"
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, list):
            return f"must be a list of {item.__name__} (got {type(value).__name__})"
        bad = [v for v in value if _type_problem(v, item)]
        return f"must be a list of {item.__name__} (got {bad[0]!r})" if bad else None
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, annotation)
    return None if ok else f"must be {annotation.__name__} (got {type(value).__name__} {value!r})"


def _line_of(text: str, section: str, key: str | None) -> int | None:
    """Line number of [section] (or of key inside it) in the TOML text; None if not found."""
    lines = text.splitlines()
    in_section = section == ""  # "": keys before the first [section]
    for i, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            in_section = stripped.strip("[] ") == section
            if in_section and key is None:
                return i
            continue
        if in_section and key is not None and re.match(rf"^{re.escape(key)}\s*=", stripped):
            return i
    return None


def _value_problems(cfg: Config) -> list[tuple[str, str, str]]:
    """(section, key, problem) for impossible values."""
    p: list[tuple[str, str, str]] = []

    def need(cond: bool, section: str, key: str, msg: str) -> None:
        if not cond:
            p.append((section, key, msg))

    r, s, t, d = cfg.run, cfg.sample, cfg.train, cfg.data
    for section, spec, known in (
        ("policy", cfg.policy.model, BUILTIN_POLICIES),
        ("embedder", cfg.embedder.model, BUILTIN_EMBEDDERS),
    ):
        need(
            not is_builtin_model(spec) or spec in known,
            section,
            "model",
            f"unknown built-in model {spec!r}: {_did_you_mean(spec, known)}known: {', '.join(known)}, "
            "or a local model directory",
        )
    need(r.max_rounds >= 1, "run", "max_rounds", f"must be >= 1 (got {r.max_rounds})")
    need(r.patience >= 1, "run", "patience", f"must be >= 1 (got {r.patience})")
    need(r.max_stage_retries >= 0, "run", "max_stage_retries", f"must be >= 0 (got {r.max_stage_retries})")
    need(
        bool(re.fullmatch(r"[A-Za-z0-9_.-]+", r.name)),
        "run",
        "name",
        f"must be letters, digits, _ . - (got {r.name!r})",
    )
    need(s.n >= 2, "sample", "n", f"must be >= 2: MBR needs at least two samples (got {s.n})")
    need(s.temperature > 0, "sample", "temperature", f"must be > 0 for sampling (got {s.temperature})")
    need(0 < s.top_p <= 1, "sample", "top_p", f"must be in (0, 1] (got {s.top_p})")
    need(s.max_new_tokens >= 1, "sample", "max_new_tokens", f"must be >= 1 (got {s.max_new_tokens})")
    need(t.lr > 0, "train", "lr", f"must be > 0 (got {t.lr})")
    need(t.beta >= 0, "train", "beta", f"must be >= 0 (got {t.beta})")
    need(t.lora_r >= 1, "train", "lora_r", f"must be >= 1 (got {t.lora_r})")
    need(t.lora_alpha >= 1, "train", "lora_alpha", f"must be >= 1 (got {t.lora_alpha})")
    need(0 <= t.lora_dropout < 1, "train", "lora_dropout", f"must be in [0, 1) (got {t.lora_dropout})")
    need(t.epochs >= 1, "train", "epochs", f"must be >= 1 (got {t.epochs})")
    need(t.batch_size >= 1, "train", "batch_size", f"must be >= 1 (got {t.batch_size})")
    need(t.grad_accum >= 1, "train", "grad_accum", f"must be >= 1 (got {t.grad_accum})")
    need(t.max_length >= 64, "train", "max_length", f"must be >= 64 (got {t.max_length})")
    need(0 <= t.warmup_ratio < 1, "train", "warmup_ratio", f"must be in [0, 1) (got {t.warmup_ratio})")
    need(
        "lm_head" not in t.target_modules,
        "train",
        "target_modules",
        "must not include lm_head (fused losses read lm_head.weight)",
    )
    need(len(t.target_modules) > 0, "train", "target_modules", "must name at least one module")
    sel, arm_utility = cfg.pairs.selection, SELECTION_UTILITY.get(cfg.pairs.selection)
    need(
        arm_utility is None or arm_utility == cfg.score.utility,
        "pairs",
        "selection",
        f"{sel!r} ranks by the {arm_utility!r} utility but [score] utility = {cfg.score.utility!r}; "
        "set one to match the other, or leave [score] utility out",
    )
    need(
        sel != "greedy-as-chosen" or s.greedy_diagnostics,
        "pairs",
        "selection",
        "'greedy-as-chosen' needs the greedy answers: set [sample] greedy_diagnostics = true",
    )
    e = cfg.embedder
    need(e.max_length >= 0, "embedder", "max_length", f"must be >= 0 (0 = the model's own; got {e.max_length})")
    own = sorted(set(e.encode_kwargs) & set(_OWN_ENCODE_KWARGS))
    need(not own, "embedder", "encode_kwargs", f"must not set {', '.join(own)} (the score stage sets it)")
    odd = sorted(str(k) for k, v in e.encode_kwargs.items() if not isinstance(v, (str, int, float, bool)))
    need(
        not odd,
        "embedder",
        "encode_kwargs",
        f"values must be strings, numbers or booleans (not: {', '.join(odd)})",
    )
    need(
        "max_length" not in e.encode_kwargs,
        "embedder",
        "encode_kwargs",
        "max_length is not an encode() argument in sentence-transformers: set [embedder] max_length",
    )
    need(d.train_pool_size >= 1, "data", "train_pool_size", f"must be >= 1 (got {d.train_pool_size})")
    own_data = d.train_source in ("jsonl", "folder")  # the pool is every record: train_pool_size is unused
    need(
        1 <= d.questions_per_round <= (10**9 if own_data else d.train_pool_size),
        "data",
        "questions_per_round",
        f"must be in [1, train_pool_size={d.train_pool_size}] (got {d.questions_per_round})"
        if not own_data
        else f"must be >= 1 (got {d.questions_per_round})",
    )
    need(
        d.eval_questions_per_task >= 1,
        "data",
        "eval_questions_per_task",
        f"must be >= 1 (got {d.eval_questions_per_task})",
    )
    need(
        0 < d.context_tokens_min <= d.context_tokens_max,
        "data",
        "context_tokens_min",
        f"must be in (0, context_tokens_max={d.context_tokens_max}] (got {d.context_tokens_min})",
    )
    need(
        all(h in (1, 2, 3) for h in d.hops) and len(d.hops) > 0,
        "data",
        "hops",
        f"must be a non-empty list from 1, 2, 3 (got {d.hops})",
    )
    need(0 <= d.near_miss_rate <= 1, "data", "near_miss_rate", f"must be in [0, 1] (got {d.near_miss_rate})")
    if d.train_source in ("musique", "jsonl", "folder"):
        need(bool(d.train_path), "data", "train_path", f"is required when train_source = {d.train_source!r}")
    if d.train_source == "folder":
        need(bool(d.questions_path), "data", "questions_path", "is required when train_source = 'folder'")
    else:
        need(not d.questions_path, "data", "questions_path", "is read only when train_source = 'folder'")
    if d.eval_source in ("longbench", "jsonl"):
        need(len(d.eval_paths) > 0, "data", "eval_paths", f"is required when eval_source = {d.eval_source!r}")
    for key in ("id", "question", "context", "context_file", "answers", "document"):
        name = getattr(d, f"{key}_field")
        need(
            name == "" or bool(name.strip()),
            "data",
            f"{key}_field",
            'must be a field name, or "" for the common names',
        )
    need(
        cfg.policy.max_prompt_tokens >= 64,
        "policy",
        "max_prompt_tokens",
        f"must be >= 64 (got {cfg.policy.max_prompt_tokens})",
    )
    need(cfg.policy.threads >= 0, "policy", "threads", f"must be >= 0 (got {cfg.policy.threads})")
    need(
        cfg.eval.max_new_tokens >= 1,
        "eval",
        "max_new_tokens",
        f"must be >= 1 (got {cfg.eval.max_new_tokens})",
    )
    need(cfg.eval.batch_size >= 1, "eval", "batch_size", f"must be >= 1 (got {cfg.eval.batch_size})")
    utilities = ("embedding", "bertscore", "rouge-l", "random")
    need(
        all(u in utilities for u in cfg.score.diagnostic_utilities),
        "score",
        "diagnostic_utilities",
        f"must be a list from {', '.join(utilities)} (got {cfg.score.diagnostic_utilities})",
    )
    pr = cfg.promote
    need(0.5 <= pr.confidence < 1, "promote", "confidence", f"must be in [0.5, 1) (got {pr.confidence})")
    need(
        pr.bootstrap_samples >= 100,
        "promote",
        "bootstrap_samples",
        f"must be >= 100 (got {pr.bootstrap_samples})",
    )
    need(
        pr.max_length_increase >= 0,
        "promote",
        "max_length_increase",
        f"must be >= 0 (got {pr.max_length_increase})",
    )
    ds = cfg.distributed
    need(ds.nnodes >= 1, "distributed", "nnodes", f"must be >= 1 (got {ds.nnodes})")
    need(ds.nproc_per_node >= 1, "distributed", "nproc_per_node", f"must be >= 1 (got {ds.nproc_per_node})")
    need(
        ds.sequence_parallel_size >= 1 and ds.world_size % ds.sequence_parallel_size == 0,
        "distributed",
        "sequence_parallel_size",
        f"must divide the world size {ds.world_size} (got {ds.sequence_parallel_size})",
    )
    sp = ds.sequence_parallel_size
    heads = _model_heads(cfg.policy.model) if ds.sequence_parallel == "ulysses" and sp > 1 else None
    need(
        heads is None or (heads[0] % sp == 0 and heads[1] % sp == 0),
        "distributed",
        "sequence_parallel",
        f"'ulysses' splits attention heads over the sequence-parallel ranks, but {cfg.policy.model}'s "
        f"{heads[0] if heads else 0} query / {heads[1] if heads else 0} key-value heads do not divide by "
        f"sequence_parallel_size {ds.sequence_parallel_size}; use 'ring'",
    )
    need(
        ds.checkpoint_every >= 0,
        "distributed",
        "checkpoint_every",
        f"must be >= 0 (got {ds.checkpoint_every})",
    )
    need(
        ds.nnodes == 1 or ds.rdzv_backend == "static",
        "distributed",
        "rdzv_backend",
        "must be 'static' when nnodes > 1: rank 0, which records the stage, must run on the controller's "
        "node, and c10d numbers the nodes in its own order",
    )
    need(
        ds.nnodes == 1 or _has_port(ds.rdzv_endpoint),
        "distributed",
        "rdzv_endpoint",
        f"must be HOST:PORT, this node's address as the other nodes reach it (got {ds.rdzv_endpoint!r})",
    )
    need(ds.rdzv_timeout >= 1, "distributed", "rdzv_timeout", f"must be >= 1 (got {ds.rdzv_timeout})")
    v = cfg.vllm
    need(
        v.max_lora_rank >= cfg.train.lora_r,
        "vllm",
        "max_lora_rank",
        f"must be >= train.lora_r = {cfg.train.lora_r} (got {v.max_lora_rank})",
    )
    need(
        cfg.sample.backend != "vllm" or v.max_lora_rank in VLLM_LORA_RANKS,
        "vllm",
        "max_lora_rank",
        f"must be one of vLLM's {', '.join(map(str, VLLM_LORA_RANKS))} (got {v.max_lora_rank})",
    )
    need(
        0 < v.gpu_memory_utilization <= 1,
        "vllm",
        "gpu_memory_utilization",
        f"must be in (0, 1] (got {v.gpu_memory_utilization})",
    )
    need(
        v.tensor_parallel_size >= 1,
        "vllm",
        "tensor_parallel_size",
        f"must be >= 1 (got {v.tensor_parallel_size})",
    )
    need(
        v.engine_in_process or s.backend != "vllm" or s.replicas >= 2,
        "vllm",
        "engine_in_process",
        "false needs sample.replicas >= 2: a replica is killed with its process group, engine child "
        "included, but a lone stage process is killed alone and its engine child would keep the GPU",
    )
    need(s.replicas >= 1, "sample", "replicas", f"must be >= 1 (got {s.replicas})")
    need(
        not (cfg.policy.device == "cpu" and cfg.distributed.backend == "nccl"),
        "distributed",
        "backend",
        "'nccl' reduces CUDA tensors only, but policy.device = 'cpu'; use 'gloo' or 'auto'",
    )
    need(
        cfg.embedder.batch_size >= 1,
        "embedder",
        "batch_size",
        f"must be >= 1 (got {cfg.embedder.batch_size})",
    )
    return p


def _model_heads(model_dir: str) -> tuple[int, int] | None:
    """(query heads, key/value heads) from a local model directory's config.json; None if unknown here
    (the train stage checks again once the model is loaded)."""
    try:
        c = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    c = c.get("text_config", c)
    if not isinstance(c.get("num_attention_heads"), int):
        return None
    kv = c.get("num_key_value_heads") or c["num_attention_heads"]
    return c["num_attention_heads"], kv


def _has_port(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


# The models a spec can name without a directory (loop/backends/models.py builds or converts them)
BUILTIN_POLICIES = ("bundled:smollm2-135m-instruct", "tiny-random-llama")
BUILTIN_EMBEDDERS = ("bundled:all-minilm-l6-v2",)


def is_builtin_model(spec: str) -> bool:
    return spec.startswith("bundled:") or spec == "tiny-random-llama"


def _did_you_mean(word: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def path_problems(cfg: Config) -> list[tuple[str, str, str]]:
    """(section, key, problem) for model directories and data files that do not exist on this machine."""

    def unset(path: str) -> str:
        names = re.findall(r"\$\{?(\w+)\}?", path)
        return f" (environment variable {', '.join(names)} is not set)" if names else ""

    p = []
    for section, key, spec in (
        ("policy", "model", cfg.policy.model),
        ("embedder", "model", cfg.embedder.model),
    ):
        if not is_builtin_model(spec) and not Path(spec).is_dir():
            p.append((section, key, f"model directory not found: {spec}{unset(spec)}"))
        elif not is_builtin_model(spec):
            p += [(section, key, m) for m in model_dir_problems(Path(spec), chat=section == "policy")]
    d = cfg.data
    if d.train_source in ("musique", "jsonl") and d.train_path and not Path(d.train_path).is_file():
        p.append(("data", "train_path", f"file not found: {d.train_path}{unset(d.train_path)}"))
    if d.train_source == "folder" and d.train_path and not Path(d.train_path).is_dir():
        p.append(("data", "train_path", f"folder not found: {d.train_path}{unset(d.train_path)}"))
    if d.train_source == "folder" and d.questions_path and not Path(d.questions_path).is_file():
        p.append(("data", "questions_path", f"file not found: {d.questions_path}{unset(d.questions_path)}"))
    if d.eval_source in ("longbench", "jsonl"):
        p += [
            ("data", "eval_paths", f"file not found: {ep}{unset(ep)}")
            for ep in d.eval_paths
            if not Path(ep).is_file()
        ]
    return p


def model_dir_problems(d: Path, chat: bool) -> list[str]:
    """What makes a local model directory unusable, found without loading it: no config.json, no
    safetensors weights (pickled weights are never loaded), or (policy) no chat template."""
    out = []
    if not (d / "config.json").is_file():
        out.append(f"{d} has no config.json (not a transformers model directory)")
    if not any(d.glob("*.safetensors")):
        out.append(f"{d} has no *.safetensors weights (sealong-loop never loads pickled .bin/.pt weights)")
    if chat and not _has_chat_template(d):
        out.append(
            f"{d} has no chat template (chat_template.jinja, or 'chat_template' in tokenizer_config.json); "
            "sealong-loop prompts a chat model"
        )
    return out


def _has_chat_template(d: Path) -> bool:
    if (d / "chat_template.jinja").is_file() or (d / "chat_template.json").is_file():
        return True
    try:
        return bool(
            json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
        )
    except (OSError, ValueError, AttributeError):
        return False


def _expand_paths(cfg: Config) -> None:
    """`~` and ${VARS} in model and data paths, so one config serves several machines."""

    def expand(x: str) -> str:
        return os.path.expanduser(os.path.expandvars(x)) if x else x

    if not is_builtin_model(cfg.policy.model):
        cfg.policy.model = expand(cfg.policy.model)
    if not is_builtin_model(cfg.embedder.model):
        cfg.embedder.model = expand(cfg.embedder.model)

    # Data paths are made absolute (relative ones are from where the config is loaded, the directory
    # `start` runs in): stage processes run in the workdir and re-read the stored config there.
    def data(x: str) -> str:
        return os.path.abspath(expand(x)) if x else x

    cfg.data.train_path = data(cfg.data.train_path)
    cfg.data.questions_path = data(cfg.data.questions_path)
    cfg.data.eval_paths = [data(x) for x in cfg.data.eval_paths]


def config_from_dict(
    raw: dict[str, Any], path: str = "<dict>", text: str = "", check_paths: bool = True
) -> Config:
    """Build and validate a Config; raise one ConfigError listing every problem.

    check_paths=False skips the existence of model directories and data files (`doctor` reports those).
    """
    problems: list[str] = []

    def where(section: str, key: str | None = None) -> str:
        line = _line_of(text, section, key) if text else None
        loc = f"line {line}: " if line else ""
        return f"{loc}[{section}]" + (f" {key}" if key else "")

    sections: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in SECTIONS:
            line = (_line_of(text, "", name) if not isinstance(value, dict) else None) if text else None
            problems.append(
                f"{f'line {line}: ' if line else ''}{where(name)}: unknown section "
                f"({_did_you_mean(name, SECTIONS)}known: {', '.join(SECTIONS)})"
            )
            continue
        if not isinstance(value, dict):
            line = _line_of(text, "", name) if text else None
            problems.append(
                f"{f'line {line}: ' if line else ''}[{name}]: must be a table (a [{name}] section), "
                f"got {type(value).__name__}"
            )
            continue
        cls = SECTIONS[name]
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, v in value.items():
            if key not in hints:
                old, moved = MOVED_KEYS.get((name, key), (None, None))
                if moved and v == old:
                    continue
                problems.append(
                    f"{where(name, key)}: {moved}"
                    if moved
                    else f"{where(name, key)}: unknown key ({_did_you_mean(key, hints)}known: {', '.join(hints)})"
                )
                continue
            bad = _type_problem(v, hints[key])
            if bad:
                problems.append(f"{where(name, key)}: {bad}")
                continue
            kwargs[key] = float(v) if hints[key] is float else v
        sections[name] = cls(**kwargs)
    cfg = Config(**sections, source_path=path)
    _expand_paths(cfg)
    _follow_selection(cfg, raw)
    # A key with a type error kept its default, so its value check would only repeat the problem.
    value_problems = _value_problems(cfg) + (path_problems(cfg) if check_paths else [])
    problems += [
        f"{where(s, k)}: {m}" for s, k, m in value_problems if not any(f"[{s}] {k}:" in q for q in problems)
    ]
    if problems:
        raise ConfigError(path, sorted(problems, key=_line_key))
    return cfg


def _follow_selection(cfg: Config, raw: dict[str, Any]) -> None:
    """[pairs] selection and [score] utility: one given, the other follows. A config from before [pairs]
    (every stored config of an earlier run) gets the MBR arm of its utility, as its pairs were made."""
    given = {
        (s, k)
        for s, k in (("pairs", "selection"), ("score", "utility"))
        if isinstance(raw.get(s), dict) and k in raw[s]
    }
    if ("pairs", "selection") not in given:
        cfg.pairs.selection = UTILITY_SELECTION.get(cfg.score.utility, cfg.pairs.selection)  # type: ignore[assignment]
    elif ("score", "utility") not in given and SELECTION_UTILITY.get(cfg.pairs.selection):
        cfg.score.utility = SELECTION_UTILITY[cfg.pairs.selection]  # type: ignore[assignment]


def _line_key(problem: str) -> tuple[int, int]:
    """Problems in file order: those with a line number by it, the others after them."""
    m = re.match(r"line (\d+): ", problem)
    return (0, int(m.group(1))) if m else (1, 0)


def load_config(path: str | Path, check_paths: bool = True) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["file not found"])
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            str(path), [f"line {line}: not valid UTF-8 (byte {data[e.start]:#04x}); TOML files are UTF-8"]
        ) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None
    if not raw:
        raise ConfigError(
            str(path),
            [
                f"the file sets nothing (empty, or only comments); copy {DEFAULT_CONFIG} and edit it, "
                "or leave out --config to run the embedded default"
            ],
        )
    return config_from_dict(raw, str(path), text, check_paths)


def dump_config_toml(cfg: Config) -> str:
    """A TOML rendering of a config (stored with each run so a resumed run uses the same settings), by
    tomli-w: any string (a multi-line instruction, control characters) comes back unchanged. A None (an
    unset optional key) is left out: TOML has no null, and loading gives the default, None, again."""
    import tomli_w

    return tomli_w.dumps(
        {s: {k: v for k, v in vals.items() if v is not None} for s, vals in cfg.to_dict().items()}
    )

"""Typed run configuration, loaded from TOML and validated at load.

Every problem (unknown key, wrong type, impossible value, missing file) is collected and reported in one
ConfigError naming the file, the line and the field. The embedded default is configs/tiny-cpu.toml, which
ships in the package (sealong.configs) with the other built-in configs.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
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
    max_rounds: int = 3  # 0: until stopped (with your own data: waits for new records between rounds)
    patience: int = 2  # stop after this many rounds in a row without a promotion
    max_stage_retries: int = 2
    # max_rounds = 0 and nothing new to train on: seconds between looks at train_path for new records
    poll_seconds: float = 10.0


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
    # Your own data grows: what a round trains on. "only-new": questions no earlier round had (none new: the
    # run finishes, or with max_rounds = 0 waits for some); "mix": as many new ones, plus
    # old_question_fraction of questions_per_round from those trained before (least recently first);
    # "rotate": a rotating slice of the whole pool, new and old alike (never waits). Built-in sources rotate.
    new_questions: Literal["only-new", "mix", "rotate"] = "only-new"
    old_question_fraction: float = 0.5
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
    rdzv_timeout: int = 600  # seconds torchrun's agents wait for each other at a training stage
    join_timeout: int = 120  # seconds a sample/eval stage waits for every node to join (names the missing)
    heartbeat_timeout: int = 60  # seconds without a node's heartbeat before a sample/eval stage fails
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


# The models a spec can name without a directory (loop/backends/models.py builds or converts them)
BUILTIN_POLICIES = ("bundled:smollm2-135m-instruct", "tiny-random-llama")
BUILTIN_EMBEDDERS = ("bundled:all-minilm-l6-v2",)


def is_builtin_model(spec: str) -> bool:
    return spec.startswith("bundled:") or spec == "tiny-random-llama"


def _did_you_mean(word: str, known) -> str:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


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
    from sealong.loop import config_checks  # it imports this module's schema

    # A key with a type error kept its default, so its value check would only repeat the problem.
    value_problems = config_checks.value_problems(cfg) + (
        config_checks.path_problems(cfg) if check_paths else []
    )
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

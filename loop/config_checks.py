"""The config's checks beyond types: values in range and consistent across sections, and what it names on
disk (model directories, data files). `loop/config.py` calls them while loading; `doctor` reuses the path
checks. Each problem is (section, key, message), so the loader can report the file, line and field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sealong.loop.config import (
    _OWN_ENCODE_KWARGS,
    BUILTIN_EMBEDDERS,
    BUILTIN_POLICIES,
    SELECTION_UTILITY,
    VLLM_LORA_RANKS,
    Config,
    _did_you_mean,
    is_builtin_model,
)


def value_problems(cfg: Config) -> list[tuple[str, str, str]]:
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
    need(r.max_rounds >= 0, "run", "max_rounds", f"must be >= 0, 0 = until stopped (got {r.max_rounds})")
    need(r.poll_seconds > 0, "run", "poll_seconds", f"must be > 0 (got {r.poll_seconds})")
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
    need(
        e.max_length >= 0, "embedder", "max_length", f"must be >= 0 (0 = the model's own; got {e.max_length})"
    )
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
        0 <= d.old_question_fraction < 1,
        "data",
        "old_question_fraction",
        f"must be in [0, 1): a round needs at least one new question (got {d.old_question_fraction})",
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
    need(ds.join_timeout >= 1, "distributed", "join_timeout", f"must be >= 1 (got {ds.join_timeout})")
    need(
        ds.heartbeat_timeout >= 2,
        "distributed",
        "heartbeat_timeout",
        f"must be >= 2 (got {ds.heartbeat_timeout}; nodes beat once a second)",
    )
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

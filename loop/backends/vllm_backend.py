"""vLLM sampling backend for GPUs (sample.backend = "vllm").

The base weights are served in bf16 with `enable_lora`; the champion adapter rides along as a
LoRARequest and is never merged into a quantised base. Every adapter version gets its own name and
integer id (a same-name reload can reuse stale prefix-cache blocks). One request per question with
n = N shares the long prompt's prefill across the N samples; prefix caching is on. vLLM splits such a
request into N children seeded seed, seed + 1, …, seed + N - 1 (vllm/v1/engine/parallel_sampling.py;
the seed recorded per sample is the question's). Token counts exclude the stop token, as the
transformers backend counts them.

Two throughput choices are config, not code (docs/SCALE.md §3.2, §3.4), and the device check measures both
(bench/bench_device_pass.py --vllm-ab):
- `vllm.batching`: `sampling_calls` turns a chunk of questions into generate() calls, one per question
  ("per-question": its N streams run alone, so cascade attention can read the shared prefix once per
  step) or one for the chunk ("continuous": one seeded SamplingParams per question, in a list paired with
  the prompts, as LLM.generate takes it). Seeds are per request, so both give each question the same
  samples up to the numerics of a different batch.
- `vllm.engine_in_process`: `engine_env` sets VLLM_ENABLE_V1_MULTIPROCESSING for this process (and
  sealong.loop.engine.replicas for each replica): "0" keeps the engine core in-process, "1" is vLLM's default.

The request-building functions are pure and tested without vLLM. `VllmEngine` needs vLLM and a CUDA
GPU and is UNTESTED until it has run on one (no GPU was available where this was written); so are the
throughputs of both choices.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealong.loop.backends.transformers_backend import Completion
from sealong.loop.config import Config
from sealong.loop.errors import SealongError
from sealong.store.artifacts import VerifiedAdapter


@dataclass(frozen=True)
class AdapterRef:
    name: str  # unique per adapter version: id + the first 12 hex digits of its sha256
    int_id: int  # vLLM's integer id, > 0, derived from the name
    path: str


def adapter_ref(adapter_id: str, sha256: str, path: VerifiedAdapter) -> AdapterRef:
    name = f"{adapter_id}-{sha256[:12]}"
    return AdapterRef(name=name, int_id=(zlib.crc32(name.encode()) & 0x7FFFFFFF) or 1, path=str(path))


def engine_kwargs(cfg: Config, base_dir: Path, seed: int) -> dict[str, Any]:
    v = cfg.vllm
    return {
        "model": str(base_dir),
        "tokenizer": str(base_dir),
        "dtype": v.dtype,
        "enable_lora": True,
        "max_lora_rank": v.max_lora_rank,
        "max_loras": 1,
        "enable_prefix_caching": v.enable_prefix_caching,
        "disable_cascade_attn": v.disable_cascade_attn,
        "tensor_parallel_size": v.tensor_parallel_size,
        "max_model_len": v.max_model_len,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "seed": seed,
        "trust_remote_code": cfg.policy.trust_remote_code,
    }


def prompt_token_budget(cfg: Config, max_new_tokens: int) -> int:
    """Longest prompt that leaves room for the answer within max_model_len (and the policy's own limit)."""
    budget = min(cfg.vllm.max_model_len - max_new_tokens, cfg.policy.max_prompt_tokens)
    if budget < 64:
        raise SealongError(
            f"vllm.max_model_len = {cfg.vllm.max_model_len} leaves {budget} prompt tokens "
            f"after {max_new_tokens} new tokens; raise it"
        )
    return budget


def sampling_kwargs(
    n: int, temperature: float, top_p: float, max_tokens: int, seed: int | None, stop_ids: list[int]
) -> dict[str, Any]:
    """SamplingParams arguments. temperature 0 → greedy (n must be 1)."""
    if temperature == 0 and n != 1:
        raise ValueError("greedy decoding draws one sample (n = 1)")
    return {
        "n": n,
        "temperature": temperature,
        "top_p": top_p if temperature else 1.0,
        "max_tokens": max_tokens,
        "seed": seed,
        "stop_token_ids": stop_ids,
        "skip_special_tokens": True,
    }


def batching_mode(cfg: Config) -> str:
    """vllm.batching resolved: "auto" is per-question while cascade attention is allowed, else continuous
    (without cascade, one question alone would re-read its prefix per stream and gain nothing)."""
    if cfg.vllm.batching == "auto":
        return "continuous" if cfg.vllm.disable_cascade_attn else "per-question"
    return cfg.vllm.batching


def sampling_calls(
    prompts: list[list[int]], params: list[dict[str, Any]], batching: str
) -> list[tuple[list[list[int]], dict[str, Any] | list[dict[str, Any]]]]:
    """The generate() calls that sample these questions, in order: (prompts, SamplingParams arguments).

    per-question: one call per question with its own params; continuous: one call for all of them with
    the list of params, one per prompt. Concatenating the calls' outputs gives one entry per question.
    """
    if len(prompts) != len(params):
        raise ValueError(f"{len(prompts)} prompts but {len(params)} sampling params")
    if batching == "per-question":
        return [([p], kw) for p, kw in zip(prompts, params)]
    if batching == "continuous":
        return [(list(prompts), list(params))] if prompts else []
    raise ValueError(f"batching must be 'per-question' or 'continuous', got {batching!r}")


def engine_env(cfg: Config) -> dict[str, str]:
    """Environment an engine reads at start: where its engine core runs (vllm.engine_in_process)."""
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0" if cfg.vllm.engine_in_process else "1"}


class VllmEngine:
    """An offline vLLM engine. UNTESTED on hardware."""

    def __init__(self, cfg: Config, base_dir: Path, seed: int):
        import os

        # vllm.engine_in_process (true: the engine core in this process, not in a child that would outlive a
        # killed stage holding GPU memory); sealong.loop.engine.replicas sets the same for each replica.
        os.environ.update(engine_env(cfg))
        try:
            from vllm import LLM
        except ImportError as e:
            raise SealongError(
                "sample.backend = 'vllm' needs vLLM and a CUDA GPU (`pip install vllm`); "
                "run `sealong-loop doctor --config …` to see what this machine has"
            ) from e
        self.llm = LLM(**engine_kwargs(cfg, base_dir, seed))

    def generate(
        self,
        prompts: list[list[int]],
        params: dict[str, Any] | list[dict[str, Any]],
        adapter: AdapterRef | None,
    ) -> list[list[Completion]]:
        """Completions per prompt; `params` for all prompts, or a list with one per prompt."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        lora = LoRARequest(adapter.name, adapter.int_id, adapter.path) if adapter else None
        outs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=p) for p in prompts],
            [SamplingParams(**p) for p in params] if isinstance(params, list) else SamplingParams(**params),
            lora_request=lora,
            use_tqdm=False,
        )
        return [[completion(c) for c in o.outputs] for o in outs]


def completion(c: Any) -> Completion:
    """A vLLM CompletionOutput as a Completion. vLLM keeps the EOS or stop-token id that ended a sequence in
    `token_ids` (finish_reason "stop" with stop_reason None or that int; a stop string gives a str)."""
    n = len(c.token_ids)
    if c.finish_reason == "stop" and not isinstance(c.stop_reason, str) and n:
        n -= 1
    return Completion(c.text.strip(), n)

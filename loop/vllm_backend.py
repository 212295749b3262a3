"""vLLM sampling backend for GPUs (sample.backend = "vllm").

The base weights are served in bf16 with `enable_lora`; the champion adapter rides along as a
LoRARequest and is never merged into a quantised base. Every adapter version gets its own name and
integer id (a same-name reload can reuse stale prefix-cache blocks). One request per question with
n = N shares the long prompt's prefill across the N samples; prefix caching is on. vLLM splits such a
request into N children seeded seed, seed + 1, …, seed + N - 1 (the seed recorded per sample is the
question's). Token counts exclude the stop token, as the transformers backend counts them.

The request-building functions are pure and tested without vLLM. `VllmEngine` needs vLLM and a CUDA
GPU and is UNTESTED until it has run on one (no GPU was available where this was written).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealong.loop.config import Config
from sealong.loop.errors import SealongError
from sealong.loop.sampling import Completion


@dataclass(frozen=True)
class AdapterRef:
    name: str  # unique per adapter version: id + the first 12 hex digits of its sha256
    int_id: int  # vLLM's integer id, > 0, derived from the name
    path: str


def adapter_ref(adapter_id: str, sha256: str, path: Path) -> AdapterRef:
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


class VllmEngine:
    """An offline vLLM engine. UNTESTED on hardware."""

    def __init__(self, cfg: Config, base_dir: Path, seed: int):
        import os

        # The engine core in this process, not in a child that would outlive a killed stage holding GPU
        # memory (sealong.loop.replicas sets the same for each replica).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
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

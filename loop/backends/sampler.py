"""Sampling backends behind one small interface, used by the sample and eval stages.

- transformers (CPU, or one GPU): one prefill per question shared by its N samples; greedy in batches.
- vllm (GPUs): one request per question with n = N, the adapter as a LoRARequest; questions sent one per
  generate() call or a chunk per call (vllm.batching; see vllm_backend). UNTESTED on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from sealong.loop.backends.transformers_backend import Completion, greedy_batch, sample_n, stop_ids
from sealong.loop.config import Config
from sealong.store.artifacts import VerifiedAdapter


class Sampler(Protocol):
    chunk: int  # prompts per call: results are committed after each chunk
    prompt_budget: int  # the longest prompt (tokens) this backend takes for the configured answer length

    def sample(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Completion]]: ...

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]: ...


class TransformersSampler:
    def __init__(self, cfg: Config, tokenizer, model):
        self.cfg, self.tok, self.model = cfg, tokenizer, model
        self.chunk = 1
        self.prompt_budget = cfg.policy.max_prompt_tokens

    def sample(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Completion]]:
        s = self.cfg.sample
        return [
            sample_n(
                self.model, self.tok, p, s.n, s.temperature, s.top_p, s.max_new_tokens, seed, s.shared_prefill
            )
            for p, seed in zip(prompts, seeds)
        ]

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        out: list[Completion] = []
        for i in range(0, len(prompts), self.cfg.eval.batch_size):
            out += greedy_batch(
                self.model, self.tok, prompts[i : i + self.cfg.eval.batch_size], max_new_tokens
            )
        return out


_ENGINES: dict[tuple[str, int], object] = {}


class VllmSampler:
    """UNTESTED until run on a GPU with vLLM installed."""

    def __init__(self, cfg: Config, tokenizer, base_dir: Path, adapter, seed: int):
        from sealong.loop.backends.vllm_backend import VllmEngine, prompt_token_budget

        self.cfg, self.adapter, self.stop = cfg, adapter, stop_ids(tokenizer)
        # One engine per process, whatever the adapter: eval asks for the base and then the candidate,
        # and a second engine would not fit beside the first (the adapter rides on each request).
        key = (str(base_dir), seed)
        if key not in _ENGINES:
            _ENGINES[key] = VllmEngine(cfg, base_dir, seed)
        self.engine = _ENGINES[key]
        self.chunk = 64
        self.prompt_budget = prompt_token_budget(cfg, max(cfg.sample.max_new_tokens, cfg.eval.max_new_tokens))

    def sample(self, prompts: list[list[int]], seeds: list[int]) -> list[list[Completion]]:
        """One request with n = N per question (shared prefill, the question's seed), sent one question per
        generate() call or the chunk in one call as vllm.batching says (see vllm_backend.sampling_calls)."""
        from sealong.loop.backends.vllm_backend import batching_mode, sampling_calls, sampling_kwargs

        s = self.cfg.sample
        params = [
            sampling_kwargs(s.n, s.temperature, s.top_p, s.max_new_tokens, seed, self.stop) for seed in seeds
        ]
        out: list[list[Completion]] = []
        for call_prompts, call_params in sampling_calls(prompts, params, batching_mode(self.cfg)):
            out += self.engine.generate(call_prompts, call_params, self.adapter)
        return out

    def greedy(self, prompts: list[list[int]], max_new_tokens: int) -> list[Completion]:
        from sealong.loop.backends.vllm_backend import sampling_kwargs

        outs = self.engine.generate(
            prompts, sampling_kwargs(1, 0.0, 1.0, max_new_tokens, None, self.stop), self.adapter
        )
        return [o[0] for o in outs]


def make_sampler(
    cfg: Config,
    base_dir: Path,
    adapter_id: str | None,
    adapter_dir: VerifiedAdapter | None,
    adapter_sha: str | None,
    seed: int,
) -> tuple[Sampler, object]:
    """(sampler, tokenizer) for the policy base + adapter."""
    from sealong.loop.backends.models import load_policy, load_tokenizer

    tok = load_tokenizer(base_dir, cfg.policy.trust_remote_code)
    if cfg.sample.backend == "vllm":
        from sealong.loop.backends.vllm_backend import adapter_ref

        ref = adapter_ref(adapter_id, adapter_sha, adapter_dir) if adapter_dir else None
        return VllmSampler(cfg, tok, base_dir, ref, seed), tok
    model = load_policy(
        base_dir, adapter_dir, cfg.policy.dtype, cfg.policy.trust_remote_code, cfg.policy.device
    )
    return TransformersSampler(cfg, tok, model), tok

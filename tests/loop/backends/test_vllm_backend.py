"""The vLLM backend's pure request building, tested without vLLM installed, and VllmSampler's calls
against a stand-in with vLLM's offline API (the real engine path needs a GPU and stays untested here)."""

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sealong.loop.backends.vllm_backend import (
    adapter_ref,
    engine_kwargs,
    prompt_token_budget,
    sampling_kwargs,
)
from sealong.loop.config import config_from_dict
from sealong.loop.errors import SealongError


def test_every_adapter_version_gets_its_own_name_and_id():
    a = adapter_ref("adapter-r001", "ab" * 32, Path("/w/adapters/adapter-r001"))
    b = adapter_ref("adapter-r001", "cd" * 32, Path("/w/adapters/adapter-r001"))  # same id, new weights
    c = adapter_ref("adapter-r002", "ab" * 32, Path("/w/adapters/adapter-r002"))
    assert len({a.name, b.name, c.name}) == 3 and len({a.int_id, b.int_id, c.int_id}) == 3
    assert all(0 < r.int_id < 2**31 for r in (a, b, c))
    assert a == adapter_ref("adapter-r001", "ab" * 32, Path("/w/adapters/adapter-r001"))  # stable


def test_engine_kwargs_follow_the_config():
    cfg = config_from_dict(
        {
            "vllm": {"tensor_parallel_size": 2, "max_model_len": 32768, "max_lora_rank": 128},
            "train": {"lora_r": 128, "lora_alpha": 128},
        },
        check_paths=False,
    )
    kw = engine_kwargs(cfg, Path("/models/llama"), seed=3)
    assert kw["enable_lora"] and kw["enable_prefix_caching"] and kw["dtype"] == "bfloat16"
    assert kw["tensor_parallel_size"] == 2 and kw["max_lora_rank"] == 128 and kw["max_model_len"] == 32768
    assert kw["trust_remote_code"] is False and kw["seed"] == 3


def test_sampling_kwargs_one_request_with_n():
    kw = sampling_kwargs(32, 0.7, 1.0, 512, seed=11, stop_ids=[2])
    assert kw["n"] == 32 and kw["temperature"] == 0.7 and kw["seed"] == 11 and kw["stop_token_ids"] == [2]
    greedy = sampling_kwargs(1, 0.0, 0.9, 512, seed=None, stop_ids=[2])
    assert greedy["top_p"] == 1.0
    with pytest.raises(ValueError):
        sampling_kwargs(4, 0.0, 1.0, 16, None, [])


def test_prompt_budget_leaves_room_for_the_answer():
    cfg = config_from_dict(
        {"vllm": {"max_model_len": 4096}, "policy": {"max_prompt_tokens": 100000}}, check_paths=False
    )
    assert prompt_token_budget(cfg, 512) == 4096 - 512
    cfg = config_from_dict({"vllm": {"max_model_len": 600}}, check_paths=False)
    with pytest.raises(SealongError, match="max_model_len"):
        prompt_token_budget(cfg, 560)


def test_engine_without_vllm_is_a_clear_error():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vLLM is installed here")
    except ImportError:
        pass
    from sealong.loop.backends.vllm_backend import VllmEngine

    with pytest.raises(SealongError, match="needs vLLM"):
        VllmEngine(config_from_dict({}, check_paths=False), Path("/nope"), 0)


# --- VllmSampler against a stand-in for vLLM's offline API ---------------------------------------------
# Real vLLM needs a CUDA GPU, so the engine path itself stays untested here. The stand-in below has the
# signatures of vLLM's offline API as read in its source (vllm/entrypoints/llm.py: LLM(model, **engine
# args) and generate(prompts, sampling_params=None, *, use_tqdm, lora_request, ...); vllm/sampling_params.py;
# vllm/lora/request.py: LoRARequest(lora_name, lora_int_id, lora_path); vllm/outputs.py: CompletionOutput
# keeps the EOS / stop-token id that ended a sequence in token_ids). It checks how our code calls it.

# EngineArgs fields our engine_kwargs may pass (vllm/engine/arg_utils.py); any other key is a TypeError there.
ENGINE_ARGS = {
    "model", "tokenizer", "dtype", "enable_lora", "max_lora_rank", "max_loras", "enable_prefix_caching",
    "disable_cascade_attn", "tensor_parallel_size", "max_model_len", "gpu_memory_utilization", "seed",
    "trust_remote_code",
}  # fmt: skip
EOS = 7


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True


@dataclass
class FakeLoRARequest:
    lora_name: str
    lora_int_id: int
    lora_path: str = ""


@dataclass
class FakeCompletion:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    prompt_token_ids: list[int]
    outputs: list[FakeCompletion] = field(default_factory=list)


class FakeLLM:
    made: list[dict] = []
    calls: list[tuple] = []

    def __init__(self, model: str, **kwargs):
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs got unexpected keyword arguments {sorted(unknown)}")
        FakeLLM.made.append({"model": model, **kwargs})

    def generate(
        self, prompts, sampling_params=None, *, use_tqdm=True, lora_request=None, priority=None,
        tokenization_kwargs=None,
    ):  # fmt: skip
        FakeLLM.calls.append((prompts, sampling_params, lora_request))
        per_prompt = (
            sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        )
        assert len(per_prompt) == len(prompts), "vLLM needs one SamplingParams per prompt in a list"
        outs = []
        for prompt, p in zip(prompts, per_prompt):
            ids = prompt["prompt_token_ids"]
            comps = []
            for k in range(p.n):
                seed = None if p.seed is None else p.seed + k  # vLLM seeds child k with seed + k
                words = 3 + (len(ids) + (seed or 0)) % 4
                if words < p.max_tokens:  # ended by EOS, which stays in token_ids
                    comps.append(FakeCompletion(k, f" s{seed} w{words} ", [11] * words + [EOS], "stop"))
                else:
                    comps.append(FakeCompletion(k, f"s{seed}", [11] * p.max_tokens, "length"))
            outs.append(FakeRequestOutput(ids, comps))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.made, FakeLLM.calls = [], []
    mods = {
        name: types.ModuleType(name) for name in ("vllm", "vllm.inputs", "vllm.lora", "vllm.lora.request")
    }
    mods["vllm"].LLM, mods["vllm"].SamplingParams = FakeLLM, FakeSamplingParams
    mods["vllm.inputs"].TokensPrompt = lambda prompt_token_ids: {"prompt_token_ids": prompt_token_ids}
    mods["vllm.lora.request"].LoRARequest = FakeLoRARequest
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)
    from sealong.loop.backends import sampler as samplers

    monkeypatch.setattr(samplers, "_ENGINES", {})
    return FakeLLM


def _vllm_cfg(**sample):
    return config_from_dict(
        {"sample": {"backend": "vllm", "n": 4, "max_new_tokens": 6, **sample}, "vllm": {"max_lora_rank": 16}},
        check_paths=False,
    )


def test_vllm_sampler_one_request_per_question_with_n_and_the_adapter(fake_vllm, tiny_model_dir, tmp_path):
    from sealong.loop.backends.sampler import make_sampler

    cfg = _vllm_cfg()
    sampler, tok = make_sampler(cfg, tiny_model_dir, "adapter-r001", tmp_path / "a1", "ab" * 32, seed=5)
    prompts = [[1, 2, 3], [1, 2, 3, 4, 5]]
    out = sampler.sample(prompts, seeds=[100, 200])
    assert len(fake_vllm.calls) == 2  # one request per question: its N samples share the prefill
    for (sent, params, lora), prompt, seed in zip(fake_vllm.calls, prompts, [100, 200]):
        assert sent == [{"prompt_token_ids": prompt}]
        assert params.n == 4 and params.seed == seed and params.temperature == cfg.sample.temperature
        assert params.max_tokens == 6 and tok.eos_token_id in params.stop_token_ids
        ref = adapter_ref("adapter-r001", "ab" * 32, tmp_path / "a1")
        assert (lora.lora_name, lora.lora_int_id, lora.lora_path) == (ref.name, ref.int_id, ref.path)
    assert [len(c) for c in out] == [4, 4]
    # texts stripped; the EOS that ended a sample is not counted, a length cut-off counts every token
    words = 3 + (3 + 101) % 4
    assert out[0][1].text == f"s101 w{words}" and out[0][1].n_tokens == words
    assert all(c.n_tokens == 6 for q in out for c in q if c.text.count(" ") == 0)
    assert fake_vllm.made[0]["seed"] == 5 and fake_vllm.made[0]["enable_lora"]


def test_vllm_sampler_greedy_in_one_call_and_one_engine_per_process(fake_vllm, tiny_model_dir, tmp_path):
    from sealong.loop.backends.sampler import make_sampler

    cfg = _vllm_cfg()
    base, _ = make_sampler(cfg, tiny_model_dir, None, None, None, seed=5)
    cand, _ = make_sampler(cfg, tiny_model_dir, "adapter-r002", tmp_path / "a2", "cd" * 32, seed=5)
    assert len(fake_vllm.made) == 1  # eval: the base and then the candidate share one engine
    out = base.greedy([[1, 2], [3, 4, 5], [6]], max_new_tokens=9)
    cand.greedy([[1, 2]], max_new_tokens=9)
    (sent, params, lora), (_, _, lora2) = fake_vllm.calls
    assert len(sent) == 3 and params.n == 1 and params.temperature == 0 and params.seed is None
    assert lora is None and lora2.lora_name.startswith("adapter-r002-")
    assert len(out) == 3 and all(c.n_tokens == 3 + len(p) % 4 for c, p in zip(out, [[1, 2], [3, 4, 5], [6]]))


def test_vllm_config_rejects_a_rank_vllm_does_not_take():
    from sealong.loop.errors import ConfigError

    with pytest.raises(ConfigError, match="max_lora_rank"):
        config_from_dict(
            {"sample": {"backend": "vllm"}, "vllm": {"max_lora_rank": 96}, "train": {"lora_r": 64}},
            check_paths=False,
        )
    # the transformers backend never starts an engine, so any rank >= lora_r is fine there
    config_from_dict({"vllm": {"max_lora_rank": 96}, "train": {"lora_r": 64}}, check_paths=False)


def test_vllm_sampler_without_cascade_sends_the_chunk_in_one_call(fake_vllm, tiny_model_dir):
    from sealong.loop.backends.sampler import make_sampler

    cfg = config_from_dict(
        {"sample": {"backend": "vllm", "n": 4, "max_new_tokens": 6}, "vllm": {"disable_cascade_attn": True}},
        check_paths=False,
    )
    sampler, _ = make_sampler(cfg, tiny_model_dir, None, None, None, seed=5)
    assert fake_vllm.made[0]["disable_cascade_attn"] is True
    prompts = [[1, 2, 3], [1, 2, 3, 4, 5], [9]]
    out = sampler.sample(prompts, seeds=[100, 200, 300])
    ((sent, params, _),) = fake_vllm.calls  # all questions in flight together, each with its own seed
    assert [p.seed for p in params] == [100, 200, 300] and all(p.n == 4 for p in params)
    assert len(sent) == 3 and [len(c) for c in out] == [4, 4, 4]
    fake_vllm.calls.clear()
    # the same samples as one call per question (the stand-in, like vLLM, seeds by request)
    cascade, _ = make_sampler(_vllm_cfg(), tiny_model_dir, None, None, None, seed=6)
    assert cascade.sample(prompts, seeds=[100, 200, 300]) == out and len(fake_vllm.calls) == 3


# --- vllm.batching and vllm.engine_in_process ---------------------------------------------------------


def test_sampling_calls_per_question_and_continuous():
    from sealong.loop.backends.vllm_backend import sampling_calls

    prompts = [[1, 2], [3], [4, 5, 6]]
    params = [sampling_kwargs(4, 0.7, 1.0, 8, seed, [2]) for seed in (10, 20, 30)]
    per_q = sampling_calls(prompts, params, "per-question")
    assert per_q == [([[1, 2]], params[0]), ([[3]], params[1]), ([[4, 5, 6]], params[2])]
    ((sent, sent_params),) = sampling_calls(prompts, params, "continuous")
    assert sent == prompts and sent_params == params  # one params per prompt, paired in order
    assert sampling_calls([], [], "continuous") == [] == sampling_calls([], [], "per-question")
    with pytest.raises(ValueError, match="2 prompts but 3"):
        sampling_calls(prompts[:2], params, "continuous")
    with pytest.raises(ValueError, match="batching"):
        sampling_calls(prompts, params, "auto")  # resolve it first (batching_mode)


def test_batching_mode_resolves_auto_by_cascade_and_keeps_an_explicit_choice():
    from sealong.loop.backends.vllm_backend import batching_mode

    def mode(**vllm):
        return batching_mode(config_from_dict({"vllm": vllm}, check_paths=False))

    assert mode() == "per-question" and mode(disable_cascade_attn=True) == "continuous"
    assert mode(batching="continuous") == "continuous"
    assert mode(batching="per-question", disable_cascade_attn=True) == "per-question"  # e.g. to measure it


@pytest.mark.parametrize("n_questions", [1, 5])
def test_both_batching_modes_give_each_question_the_same_samples_and_seeds(
    fake_vllm, tiny_model_dir, n_questions
):
    from sealong.loop.backends.sampler import make_sampler

    prompts = [[1, 2, 3, 4][: 1 + k % 4] + [k] for k in range(n_questions)]
    seeds = [1000 + 17 * k for k in range(n_questions)]
    outs, calls = {}, {}
    for batching in ("per-question", "continuous"):
        fake_vllm.calls.clear()
        cfg = config_from_dict(
            {"sample": {"backend": "vllm", "n": 3, "max_new_tokens": 6}, "vllm": {"batching": batching}},
            check_paths=False,
        )
        sampler, _ = make_sampler(cfg, tiny_model_dir, None, None, None, seed=5)
        outs[batching], calls[batching] = sampler.sample(prompts, seeds), list(fake_vllm.calls)
    assert len(calls["per-question"]) == n_questions and len(calls["continuous"]) == 1
    sent_seeds = {
        "per-question": [p.seed for _, p, _ in calls["per-question"]],
        "continuous": [p.seed for p in calls["continuous"][0][1]],
    }
    assert sent_seeds["per-question"] == sent_seeds["continuous"] == seeds
    assert outs["per-question"] == outs["continuous"]
    # each question's N samples carry its seed's children (seed, seed + 1, ...), in question order
    assert [[c.text.split()[0] for c in q] for q in outs["continuous"]] == [
        [f"s{s + k}" for k in range(3)] for s in seeds
    ]


@pytest.mark.parametrize("in_process, expected", [(True, "0"), (False, "1")])
def test_engine_in_process_sets_vllm_multiprocessing_for_the_engine_and_each_replica(
    fake_vllm, tiny_model_dir, monkeypatch, in_process, expected
):
    import os

    from sealong.loop.backends.sampler import make_sampler
    from sealong.loop.engine.replicas import replica_envs

    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "unset by the test")  # restored afterwards
    cfg = config_from_dict(
        {"sample": {"backend": "vllm", "replicas": 2}, "vllm": {"engine_in_process": in_process}},
        check_paths=False,
    )
    make_sampler(cfg, tiny_model_dir, None, None, None, seed=5)
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == expected  # set before LLM() read it
    envs = replica_envs(cfg, {"VLLM_ENABLE_V1_MULTIPROCESSING": "inherited"}, ["0", "1"], 8)
    assert [e["VLLM_ENABLE_V1_MULTIPROCESSING"] for e in envs] == [expected, expected]

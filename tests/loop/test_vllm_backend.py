"""The vLLM backend's pure request building, tested without vLLM installed."""

from pathlib import Path

import pytest
from sealong.loop.config import config_from_dict
from sealong.loop.errors import SealongError
from sealong.loop.vllm_backend import adapter_ref, engine_kwargs, prompt_token_budget, sampling_kwargs


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
    from sealong.loop.vllm_backend import VllmEngine

    with pytest.raises(SealongError, match="needs vLLM"):
        VllmEngine(config_from_dict({}, check_paths=False), Path("/nope"), 0)

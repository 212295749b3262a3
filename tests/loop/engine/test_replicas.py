"""Data-parallel sample and eval stages (sample.replicas): how questions and devices are shared, per-replica
settings, the replaced config key and fatal setup errors. A real replicated round, with kills, is in
tests/reliability/test_faults.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from sealong.loop.config import ConfigError, config_from_dict, load_config
from sealong.loop.engine.replicas import ENV, gpus_per_replica, replica_envs, share
from sealong.loop.errors import SealongError

from ...conftest import REPO


def test_shares_partition_the_questions_in_a_fixed_order():
    items = list(range(11))
    parts = [share(items, i, 3) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert sorted(x for p in parts for x in p) == items
    assert share(items[:2], 2, 3) == []  # more replicas than questions: an empty share
    with pytest.raises(ValueError):
        share(items, 3, 3)


def _cfg(**sections):
    return config_from_dict(sections, "<test>", check_paths=False)


def test_vllm_replicas_get_disjoint_tensor_parallel_slices_of_the_visible_gpus():
    cfg = _cfg(sample={"backend": "vllm", "replicas": 2}, vllm={"tensor_parallel_size": 2})
    envs = replica_envs(cfg, {"CUDA_VISIBLE_DEVICES": "3,5,6,7"}, ["3", "5", "6", "7"], cpu_count=16)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3,5", "6,7"]
    assert [e[ENV] for e in envs] == ["0/2", "1/2"]
    assert [e["VLLM_PORT"] for e in envs] == ["30000", "30100"]  # each engine scans its own port range
    assert all(e["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" for e in envs)  # no engine child to orphan
    assert replica_envs(cfg, {"VLLM_PORT": "41000"}, ["0", "1", "2", "3"], 16)[1]["VLLM_PORT"] == "41100"
    # vLLM's own data parallelism (dense models refuse it) is not inherited; other settings are
    inherited = replica_envs(cfg, {"VLLM_DP_SIZE": "8", "HF_HOME": "/h"}, ["0", "1", "2", "3"], 16)
    assert all("VLLM_DP_SIZE" not in e and e["HF_HOME"] == "/h" for e in inherited)
    eight = _cfg(sample={"backend": "vllm", "replicas": 8})
    envs = replica_envs(eight, {}, [str(i) for i in range(8)], cpu_count=64)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == [str(i) for i in range(8)]


def test_too_few_gpus_is_one_clear_error():
    cfg = _cfg(sample={"backend": "vllm", "replicas": 4}, vllm={"tensor_parallel_size": 2})
    with pytest.raises(
        SealongError, match=r"needs 8 GPUs; this process sees 4 \(CUDA_VISIBLE_DEVICES=0,1,2,3\)"
    ) as e:
        replica_envs(cfg, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, ["0", "1", "2", "3"], cpu_count=8)
    assert e.value.fatal  # a retry would fail the same way: the stage fails at once


def test_transformers_replicas_take_one_gpu_each_or_split_the_cpu_cores():
    cfg = _cfg(sample={"replicas": 3})
    assert gpus_per_replica(cfg, have_gpus=True) == 1 and gpus_per_replica(cfg, have_gpus=False) == 0
    envs = replica_envs(cfg, {}, ["0", "1", "2", "3"], cpu_count=8)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "2"]
    cpu = replica_envs(cfg, {}, [], cpu_count=8)
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in cpu)
    assert [e["OMP_NUM_THREADS"] for e in cpu] == ["2", "2", "2"]  # 8 cores // 3 replicas
    pinned = replica_envs(_cfg(sample={"replicas": 2}, policy={"threads": 3}), {}, [], cpu_count=8)
    assert [e["OMP_NUM_THREADS"] for e in pinned] == ["3", "3"]
    forced_cpu = _cfg(sample={"replicas": 2}, policy={"device": "cpu"})
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in replica_envs(forced_cpu, {}, ["0", "1"], 8))


def test_the_old_vllm_data_parallel_key_points_to_its_replacement(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text("[vllm]\ntensor_parallel_size = 1\ndata_parallel_size = 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p, check_paths=False)
    assert f"{p}: 1 problem(s)" in str(e.value)
    assert "line 3: [vllm] data_parallel_size: was replaced by [sample] replicas" in str(e.value)
    # earlier runs stored data_parallel_size = 1 in their config: those still load (and resume)
    p.write_text("[vllm]\ndata_parallel_size = 1\n")
    assert load_config(p, check_paths=False).sample.replicas == 1
    with pytest.raises(ConfigError, match=r"\[sample\] replicas: must be >= 1 \(got 0\)"):
        _cfg(sample={"replicas": 0})
    for name in ("llama31-8b-8xh100.toml", "qwen25-7b-8xh100.toml"):
        cfg = load_config(REPO / "configs" / name, check_paths=False)
        assert cfg.sample.replicas * cfg.vllm.tensor_parallel_size == 8

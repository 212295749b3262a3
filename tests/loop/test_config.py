from pathlib import Path

import pytest
from sealong.loop.config import DEFAULT_CONFIG, Config, config_from_dict, dump_config_toml, load_config
from sealong.loop.errors import ConfigError

from ..conftest import REPO, TINY_CONFIG, cli


def test_embedded_default_loads():
    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.policy.model == "bundled:smollm2-135m-instruct"
    assert cfg.embedder.model == "bundled:all-minilm-l6-v2"
    assert cfg.sample.n >= 2 and cfg.train.loss in ("naive", "fused", "liger")
    assert "lm_head" not in cfg.train.target_modules


def test_every_shipped_config_validates():
    for path in [*REPO.glob("configs/*.toml"), TINY_CONFIG]:
        load_config(path, check_paths=False)  # paper configs name model/data paths of a GPU machine
    load_config(DEFAULT_CONFIG)
    load_config(TINY_CONFIG)


def test_dump_roundtrips():
    import tomllib

    cfg = load_config(TINY_CONFIG)
    again = config_from_dict(tomllib.loads(dump_config_toml(cfg)))
    assert again.to_dict() == cfg.to_dict()


def test_dump_keeps_any_string():
    """A multi-line instruction, quotes, backslashes and control characters survive the stored config (the
    hand-written writer once emitted invalid TOML for a newline)."""
    import tomllib

    cfg = load_config(TINY_CONFIG)
    cfg.sample.instruction = 'First line.\nSecond "quoted" line\\ with a tab\tand a bell\x07.\r\n'
    again = config_from_dict(tomllib.loads(dump_config_toml(cfg)))
    assert again.sample.instruction == cfg.sample.instruction


def test_all_problems_reported_together_with_lines(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sample]\nn = 1\ncolour = 'red'\n\n[train]\nlr = -0.5\nlora_r = 'big'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    msg = str(exc.value)
    assert str(bad) in msg
    assert "line 2: [sample] n: must be >= 2" in msg
    assert "line 3: [sample] colour: unknown key" in msg
    assert "line 6: [train] lr: must be > 0" in msg
    assert "line 7: [train] lora_r: must be int" in msg
    assert len(exc.value.problems) == 4


def test_unknown_section_and_missing_files(tmp_path: Path):
    with pytest.raises(ConfigError) as exc:
        config_from_dict(
            {
                "trian": {"lr": 1.0},
                "policy": {"model": str(tmp_path / "nope")},
                "data": {"train_source": "musique"},
            }
        )
    msg = str(exc.value)
    assert "[trian]: unknown section" in msg
    assert "[policy] model: model directory not found" in msg
    assert "[data] train_path: is required" in msg


def test_impossible_values():
    problems = None
    try:
        config_from_dict(
            {
                "data": {"train_pool_size": 4, "questions_per_round": 9, "hops": [4]},
                "train": {"target_modules": ["lm_head"], "lora_dropout": 1.5},
            }
        )
    except ConfigError as e:
        problems = "\n".join(e.problems)
    assert problems is not None
    for needle in ("questions_per_round", "hops", "lm_head", "lora_dropout"):
        assert needle in problems


def test_multi_node_needs_a_static_rendezvous_at_a_host_and_port():
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {
                "distributed": {
                    "nnodes": 2,
                    "rdzv_backend": "c10d",
                    "rdzv_endpoint": "node0",
                    "rdzv_timeout": 0,
                }
            }
        )
    problems = "\n".join(e.value.problems)
    assert "rdzv_backend: must be 'static' when nnodes > 1" in problems
    assert "rdzv_endpoint: must be HOST:PORT" in problems and "rdzv_timeout: must be >= 1" in problems
    ok = config_from_dict({"distributed": {"nnodes": 2, "rdzv_endpoint": "10.0.0.1:29400"}})
    assert ok.distributed.rdzv_backend == "static" and ok.distributed.world_size == 2
    assert (
        config_from_dict({"distributed": {"rdzv_backend": "c10d"}}).distributed.nnodes == 1
    )  # stored configs


def test_defaults_are_valid():
    assert isinstance(config_from_dict({}), Config)


def test_cli_reports_two_mistakes_without_traceback(tmp_path: Path):
    bad = tmp_path / "two.toml"
    bad.write_text("[sample]\nn = 0\n[train]\nlr = -1\n")
    proc = cli("start", "--config", str(bad), "--workdir", str(tmp_path / "w"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "[sample] n" in proc.stderr and "[train] lr" in proc.stderr
    assert not (tmp_path / "w" / "sealong.db").exists()


def test_a_misspelt_built_in_model_is_a_config_error_with_a_suggestion(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[run]\nname = "x"\n\n[embedder]\nmodel = "bundled:all-mpnet-base-v2"\n\n'
        '[policy]\nmodel = "bundled:smollm2-135m-instuct"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    first, second = e.value.problems  # in file order
    assert first.startswith("line 5: [embedder] model: unknown built-in model 'bundled:all-mpnet-base-v2'")
    assert "known: bundled:all-minilm-l6-v2, or a local model directory" in first
    assert second.startswith("line 8: [policy] model: unknown built-in model")
    assert "did you mean 'bundled:smollm2-135m-instruct'?" in second


def test_unknown_keys_suggest_the_closest_and_problems_come_in_file_order(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nepochs = "two"\nlora_rr = 8\n\n[samples]\nn = 4\n\n[run]\nseed = -1.5\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    lines = [int(p.split(":")[0].removeprefix("line ")) for p in e.value.problems]
    assert lines == sorted(lines) == [2, 3, 5, 9], e.value.problems
    assert "did you mean 'lora_r'?" in e.value.problems[1]
    assert "did you mean 'sample'?" in e.value.problems[2]


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_an_empty_config_is_refused(tmp_path: Path, text: str):
    path = tmp_path / "empty.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="the file sets nothing"):
        load_config(path)


def test_vllm_batching_and_engine_process_are_validated_with_their_names(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[sample]\nbackend = "vllm"\n\n[vllm]\nbatching = "per-request"\nengine_in_process = "no"\n'
    )
    with pytest.raises(ConfigError) as e:
        load_config(path, check_paths=False)
    text = str(e.value)
    assert "line 5: [vllm] batching: must be one of 'auto', 'per-question', 'continuous'" in text
    assert "line 6: [vllm] engine_in_process: must be bool" in text
    for batching in ("auto", "per-question", "continuous"):
        cfg = config_from_dict({"vllm": {"batching": batching}}, check_paths=False)
        assert cfg.vllm.batching == batching


def test_an_engine_process_child_needs_replicas_that_are_killed_with_their_group():
    with pytest.raises(ConfigError, match=r"\[vllm\] engine_in_process: false needs sample.replicas >= 2"):
        config_from_dict(
            {"sample": {"backend": "vllm"}, "vllm": {"engine_in_process": False}}, check_paths=False
        )
    cfg = config_from_dict(
        {"sample": {"backend": "vllm", "replicas": 2}, "vllm": {"engine_in_process": False}},
        check_paths=False,
    )
    assert cfg.vllm.engine_in_process is False
    # the transformers backend starts no engine, so the setting is inert there
    config_from_dict({"vllm": {"engine_in_process": False}}, check_paths=False)


def test_a_stored_config_from_before_the_vllm_throughput_keys_still_loads():
    stored = Config().to_dict()
    del stored["vllm"]["batching"], stored["vllm"]["engine_in_process"]
    for cascade_off in (False, True):
        stored["vllm"]["disable_cascade_attn"] = cascade_off
        cfg = config_from_dict(stored, "<stored>", check_paths=False)
        # what these configs did before the keys existed: the engine core in-process, and batching by cascade
        assert cfg.vllm.batching == "auto" and cfg.vllm.engine_in_process is True
        from sealong.loop.backends.vllm_backend import batching_mode

        assert batching_mode(cfg) == ("continuous" if cascade_off else "per-question")


def test_paper_configs_sample_one_question_per_call_with_cascade_and_the_engine_in_process():
    for name in ("llama31-8b-8xh100.toml", "qwen25-7b-8xh100.toml"):
        cfg = load_config(REPO / "configs" / name, check_paths=False)
        v = cfg.vllm
        assert (v.batching, v.disable_cascade_attn, v.engine_in_process) == ("per-question", False, True)
        assert "rouge-l" in cfg.score.diagnostic_utilities  # rapidfuzz: seconds a round, not hours


def test_sequence_parallel_mode_is_checked_against_the_models_heads(tmp_path: Path):
    """[distributed] sequence_parallel: 'ring' or 'ulysses'; Ulysses needs query and KV heads that divide by
    the SP size, checked here when the model directory says them (else at the train stage's start)."""
    import json

    qwen = tmp_path / "qwen"
    qwen.mkdir()
    (qwen / "config.json").write_text(json.dumps({"num_attention_heads": 28, "num_key_value_heads": 4}))
    layout = {"nproc_per_node": 8, "sequence_parallel_size": 8}
    with pytest.raises(ConfigError) as e:
        config_from_dict(
            {"policy": {"model": str(qwen)}, "distributed": {**layout, "sequence_parallel": "ulysses"}},
            check_paths=False,
        )
    (problem,) = e.value.problems
    assert "[distributed] sequence_parallel" in problem and "28 query / 4 key-value heads" in problem
    ok = {"policy": {"model": str(qwen)}, "distributed": {**layout, "sequence_parallel": "ring"}}
    assert config_from_dict(ok, check_paths=False).distributed.sequence_parallel == "ring"
    four = {"policy": {"model": str(qwen)}, "distributed": {"nproc_per_node": 4, "sequence_parallel_size": 4,
                                                             "sequence_parallel": "ulysses"}}  # fmt: skip
    assert config_from_dict(four, check_paths=False).distributed.sequence_parallel == "ulysses"
    with pytest.raises(ConfigError, match=r"sequence_parallel: must be one of 'ring', 'ulysses'"):
        config_from_dict({"distributed": {"sequence_parallel": "stripe"}})
    paper = load_config(REPO / "configs" / "llama31-8b-8xh100.toml", check_paths=False)
    qwen_paper = load_config(REPO / "configs" / "qwen25-7b-8xh100.toml", check_paths=False)
    assert paper.distributed.sequence_parallel == "ulysses"
    assert qwen_paper.distributed.sequence_parallel == "ring"

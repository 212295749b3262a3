"""The kit for issue 4's GPU check: what bench/device_check.sh needs on a lent GPU machine that it lacks.

That machine (the `device` tool) has torch, triton, transformers, peft, sentence-transformers and pytest,
but not this package, bitsandbytes, liger-kernel or sqlite-utils, and not the bundled models. Nothing can be
downloaded there, and at most 64 MiB travel with a call. SmolLM2-135M's GGUF (94 MB) and MiniLM's weights
(87 MB) do not fit, so the kit carries each model's shape (config and tokenizer files, no weights) and the
check builds same-shape models with seeded random weights there. Times, memory and tokens/s are then those
of the real shapes; answer quality (SubEM, MBR choices) means nothing.

Here, once per change (needs pip's package index, as `make setup` does; about 1 minute):
    .venv/bin/python -P bench/device_kit.py                  # writes .devkit/ (git-ignored), ~14 MB
There (bench/device_check.sh does this):
    python3 -P bench/device_kit.py --materialize /tmp/models  # random weights for each shape

.devkit/ holds: site/ (the wheels unpacked, bitsandbytes without the CUDA libraries that torch's CUDA 13
does not load), shapes/<model>/ (no weights; a RANDOM_WEIGHTS file says what the check builds) and
MANIFEST.json (git sha, versions, sizes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / ".devkit"
# Distributions the device image lacks (its package list: /work/.library/device/KINDS.md), at the versions
# this checkout's venv runs; their other requirements are in the image.
WHEELS = ["bitsandbytes", "liger-kernel", "sqlite-utils", "sqlite-fts4", "click-default-group"]
# bitsandbytes picks libbitsandbytes_cuda<torch's CUDA>.so; the image's torch is built for CUDA 13.0.
BNB_KEEP = ("libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so", "libbitsandbytes_cuda132.so")
# pip download's target: the device image's Python and platform (the device README's recipe)
PLATFORM_ARGS = [
    "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    *[a for n in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                  "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
      for a in ("--platform", n)],
]  # fmt: skip
LIMIT_MIB = 48  # the kit's share of the 64 MiB that may travel (the checkout is ~2 MiB)
RANDOM_NOTE = (
    "Shape only: config and tokenizer files of {name}, no weights (they do not fit the device's 64 MiB).\n"
    "bench/device_kit.py --materialize builds this model with seeded random weights.\n"
)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"device_kit: {' '.join(cmd[:6])} … failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in WHEELS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            sys.exit(f"device_kit: {name} is not installed here; run `make setup` first")
    return out


def _site(versions: dict[str, str], site: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pins = [f"{n}=={v}" for n, v in versions.items()]
        _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PLATFORM_ARGS, "-d", tmp, *pins])
        for whl in sorted(Path(tmp).glob("*.whl")):
            with zipfile.ZipFile(whl) as z:
                for member in z.namelist():
                    leaf = member.rsplit("/", 1)[-1]
                    if leaf.startswith("libbitsandbytes_") and leaf not in BNB_KEEP:
                        continue
                    z.extract(member, site)


def _shape(src: Path, dst: Path, name: str) -> None:
    shutil.copytree(
        src,
        dst,
        ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.gguf", "README.md", "SEALONG_SOURCE.json"),
    )
    (dst / "RANDOM_WEIGHTS").write_text(RANDOM_NOTE.format(name=name))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build() -> None:
    from sealong.loop.backends.models import bundled_minilm_dir, prepare_base_model

    versions = _versions()
    sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    tmp = KIT.with_name(".devkit.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shapes").mkdir(parents=True)
    print("device_kit: downloading " + ", ".join(f"{n} {v}" for n, v in versions.items()), flush=True)
    _site(versions, tmp / "site")
    print("device_kit: SmolLM2-135M's shape (converting the bundled GGUF once, ~35 s)", flush=True)
    with tempfile.TemporaryDirectory() as wd:
        _shape(
            prepare_base_model("bundled:smollm2-135m-instruct", wd),
            tmp / "shapes" / "smollm2-135m-instruct",
            "SmolLM2-135M-Instruct",
        )
    _shape(bundled_minilm_dir(), tmp / "shapes" / "all-minilm-l6-v2", "all-MiniLM-L6-v2")
    size = _size(tmp)
    if size > LIMIT_MIB * 2**20:
        sys.exit(
            f"device_kit: the kit is {size / 2**20:.1f} MiB, over its {LIMIT_MIB} MiB share of what travels"
        )
    manifest = {
        "git_sha": (sha.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else ""),
        "wheels": versions,
        "bitsandbytes_libraries": list(BNB_KEEP),
        "shapes": sorted(p.name for p in (tmp / "shapes").iterdir()),
        "bytes": size,
    }
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(KIT, ignore_errors=True)
    tmp.rename(KIT)
    print(f"device_kit: wrote {KIT} ({size / 2**20:.1f} MiB, git {manifest['git_sha']})")


def materialize(out: Path, seed: int = 0) -> None:
    """Each shape with seeded random weights, saved as safetensors under OUT/<name>."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    shapes = sorted((KIT / "shapes").iterdir()) if (KIT / "shapes").is_dir() else []
    if not shapes:
        sys.exit(f"device_kit: no shapes in {KIT}/shapes; build the kit first (see --help)")
    for shape in shapes:
        dst = out / shape.name
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(shape, dst)
        config = AutoConfig.from_pretrained(dst, local_files_only=True)
        torch.manual_seed(seed)
        # a sentence-transformers folder (modules.json) holds an encoder; the others a causal LM
        cls = AutoModel if (dst / "modules.json").is_file() else AutoModelForCausalLM
        model = cls.from_config(config)
        model.save_pretrained(dst, safe_serialization=True)
        params = sum(p.numel() for p in model.parameters())
        print(f"device_kit: {dst}: {type(model).__name__}, {params / 1e6:.1f}M random parameters", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--materialize", type=Path, metavar="DIR", help="build random-weight models into DIR")
    args = ap.parse_args()
    if args.materialize:
        materialize(args.materialize)
    else:
        build()


if __name__ == "__main__":
    main()

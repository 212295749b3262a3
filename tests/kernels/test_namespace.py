"""Our top-level kernels/ folder must never shadow Hugging Face's `kernels` distribution, which transformers
and bitsandbytes import: from the repository root (plain `python`, a notebook) the current directory comes
first on sys.path, and a kernels/__init__.py there once broke `import transformers`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_transformers_hub_kernels_imports_from_the_repository_root():
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, kernels, transformers.integrations.hub_kernels, sealong.kernels.mbr; "
            "assert sys.path[0] == '', sys.path[0]; print(kernels.__file__)",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not proc.stdout.strip().startswith(str(REPO / "kernels")), proc.stdout


def test_no_top_level_folder_is_a_regular_package_named_like_an_installed_distribution():
    from importlib import metadata

    installed = {(d.metadata["Name"] or "").lower().replace("-", "_") for d in metadata.distributions()}
    for folder in ("loop", "kernels", "store"):
        if (REPO / folder / "__init__.py").exists():
            assert folder not in installed, f"{folder}/__init__.py shadows the installed {folder!r}"

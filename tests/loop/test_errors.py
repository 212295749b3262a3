"""Every project exception lives in sealong.loop.errors and says whether it is fatal; each exit code has one
meaning, and README's exit-code table is the one the code uses; faults are injected through named points,
never by replacing a module's attribute."""

from __future__ import annotations

import ast
import builtins
import errno
import inspect
import re
from pathlib import Path

import pytest
from sealong.loop import errors
from sealong.loop.errors import (
    EXIT_BAD_INPUT,
    EXIT_CANNOT_JOIN,
    EXIT_FAILED,
    EXIT_INTEGRITY,
    EXIT_INTERRUPTED,
    STAGE_EXIT_FATAL,
    STAGE_EXIT_RETRYABLE,
    exit_code_for,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = ("loop", "store", "kernels")
SOURCE_DIRS = (*PACKAGE_DIRS, "scripts", "bench", "tests")

# One row per exception: (fatal, the command's exit code). A new exception fails this test until it has a row.
DECISIONS = {
    "SealongError": (False, EXIT_BAD_INPUT),
    "ConfigError": (False, EXIT_BAD_INPUT),
    "DataError": (False, EXIT_BAD_INPUT),
    "WorkdirBusy": (False, EXIT_BAD_INPUT),
    "QueryError": (False, EXIT_BAD_INPUT),
    "SetupError": (True, EXIT_BAD_INPUT),
    "IntegrityError": (True, EXIT_INTEGRITY),
    "NonFiniteLoss": (True, EXIT_FAILED),
    "StageFailed": (True, EXIT_FAILED),
    "DiskFull": (True, EXIT_FAILED),
    "ReplicaFailed": (False, EXIT_FAILED),
    "FatalReplicaFailure": (True, EXIT_FAILED),
    "RankDisagreement": (False, EXIT_FAILED),
    "NodeLost": (False, EXIT_FAILED),
    "JoinRefused": (True, EXIT_CANNOT_JOIN),
}


def _exception_classes() -> dict[str, type[BaseException]]:
    return {
        name: cls
        for name, cls in vars(errors).items()
        if inspect.isclass(cls) and issubclass(cls, BaseException) and cls.__module__ == errors.__name__
    }


def _python_files(*dirs: str):
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            if "__pycache__" not in path.parts:
                yield path


def test_every_exception_has_a_decision_in_its_own_class_body():
    classes = _exception_classes()
    assert sorted(classes) == sorted(DECISIONS), "add a row to DECISIONS for each new exception"
    for name, cls in classes.items():
        assert "fatal" in vars(cls) and "exit_code" in vars(cls), f"{name} must declare fatal and exit_code"
        assert isinstance(cls.fatal, bool) and cls.fatal is DECISIONS[name][0], name


@pytest.mark.parametrize("name", sorted(DECISIONS))
def test_exit_code_for_each_exception(name: str):
    fatal, code = DECISIONS[name]
    cls = _exception_classes()[name]
    exc = cls.__new__(cls)  # exit_code_for reads only the class (and, for a full disk, the message)
    assert exit_code_for(exc) == code
    assert exit_code_for(exc, stage=True) == (STAGE_EXIT_FATAL if fatal else STAGE_EXIT_RETRYABLE)


def test_exit_code_for_other_errors():
    full = OSError(errno.ENOSPC, "No space left on device")
    assert exit_code_for(full, stage=True) == STAGE_EXIT_FATAL  # a retry would fail until space is freed
    wrapped = RuntimeError("saving failed")
    wrapped.__cause__ = full
    assert exit_code_for(wrapped, stage=True) == STAGE_EXIT_FATAL
    assert exit_code_for(RuntimeError("flaky"), stage=True) == STAGE_EXIT_RETRYABLE
    assert exit_code_for(KeyboardInterrupt()) == EXIT_INTERRUPTED == 130
    assert exit_code_for(RuntimeError("a bug")) == 1  # as Python exits on an uncaught exception


def test_no_exception_class_is_defined_outside_the_errors_module():
    exception_names = {
        n for n, v in vars(builtins).items() if inspect.isclass(v) and issubclass(v, BaseException)
    }
    exception_names |= set(DECISIONS)
    elsewhere = []
    for path in _python_files(*PACKAGE_DIRS):
        if path == ROOT / "loop" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases}
                if bases & exception_names:
                    elsewhere.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not elsewhere, f"define exceptions in loop/errors.py: {elsewhere}"


def _readme_exit_table() -> list[tuple[int, str]]:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| exit | name | meaning |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        code, name, _ = (c.strip() for c in line.strip("|").split("|", 2))
        rows.append((int(code), name.strip("`")))
    return rows


def test_readme_exit_code_table_is_the_one_the_code_uses():
    rows = _readme_exit_table()
    assert [code for code, _ in rows] == sorted({code for code, _ in rows}), "one row per code, in order"
    for code, name in rows:
        assert getattr(errors, name) == code, f"README says {name} is {code}"
    constants = {n for n in vars(errors) if n.startswith("EXIT_")}
    assert constants == {name for _, name in rows}, "every EXIT_ constant has its row in README"
    assert STAGE_EXIT_FATAL not in {code for code, _ in rows}  # a stage's fatal code is no command's code


def _sealong_names(tree: ast.AST) -> set[str]:
    """Names a file binds to something imported from the sealong package (a module or its members)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sealong"):
            names |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("sealong")}
    return names


def test_no_code_replaces_an_attribute_of_a_sealong_module():
    """Faults are injected at named points (sealong.store.faults.point / tamper), not by swapping a
    function such as training.orpo_step_loss at run time."""
    found = []
    for path in _python_files(*SOURCE_DIRS):
        text = path.read_text()
        tree = ast.parse(text)
        ours = _sealong_names(tree)
        for node in ast.walk(tree):
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if not isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
                continue
            for t in targets:
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id in ours:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {t.value.id}.{t.attr} = ...")
        if re.search(r"\borpo_step_loss\s*=[^=]|setattr\([^)]*orpo_step_loss", text):
            found.append(f"{path.relative_to(ROOT)}: replaces orpo_step_loss")
    assert not found, found

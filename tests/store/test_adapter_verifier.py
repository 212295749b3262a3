"""The one adapter check (store.artifacts.verify_adapter), and a scan that keeps it the only way in.

The scan's rules, over loop/, store/ and kernels/:
- only store/artifacts.py names an adapter's weight file or lists the pickled weight suffixes;
- safetensors is read (load_file, safe_open) only by store/artifacts.py and the allow-listed training
  checkpoint loader, never on an adapter;
- PEFT (PeftModel.from_pretrained), and every function whose parameter is typed VerifiedAdapter, gets
  None, a parameter typed VerifiedAdapter, or a value bound from a call returning one (verify_adapter);
  only store/artifacts.py makes a VerifiedAdapter, and vLLM's LoRARequest takes only an AdapterRef's path,
  made from one.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
from sealong.loop.errors import IntegrityError, SealongError
from sealong.store.artifacts import (
    PICKLED_WEIGHT_SUFFIXES,
    adapter_problems,
    require_adapter_files,
    sha256_dir,
    verify_adapter,
)

ROOT = Path(__file__).resolve().parents[2]
VERIFIER = "store/artifacts.py"
# (file, function) that may read safetensors: training checkpoints (checkpoints/step-N), never an adapter
SAFETENSORS_READERS = {("loop/training/checkpoints.py", "load_checkpoint")}


def _adapter(workdir: Path, name: str = "adapter-r000") -> dict:
    d = workdir / "adapters" / name
    d.mkdir(parents=True)
    (d / "adapter_model.safetensors").write_bytes(b"weights")
    (d / "adapter_config.json").write_text(json.dumps({"r": 4}))
    return {"id": name, "path": f"adapters/{name}", "sha256": sha256_dir(d)}


def test_a_sound_adapter_passes(tmp_path: Path):
    rec = _adapter(tmp_path)
    assert verify_adapter(tmp_path, rec) == tmp_path / "adapters" / "adapter-r000"
    assert adapter_problems(tmp_path, rec) == []


@pytest.mark.parametrize(
    "damage,expected",
    [
        (lambda d: d.joinpath("adapter_model.safetensors").write_bytes(b"weightz"), None),
        (
            lambda d: [f.unlink() for f in d.iterdir()] and d.rmdir(),
            "directory adapters/adapter-r000 is missing",
        ),
    ],
    ids=["one byte changed", "directory gone"],
)
def test_a_changed_or_missing_adapter_is_refused(tmp_path: Path, damage, expected):
    rec = _adapter(tmp_path)
    damage(tmp_path / rec["path"])
    expected = expected or "files in adapters/adapter-r000 do not match the recorded sha256 (corrupted?)"
    with pytest.raises(IntegrityError) as e:
        verify_adapter(tmp_path, rec)
    assert str(e.value) == f"adapter adapter-r000: {expected}"
    assert e.value.exit_code == 4 and isinstance(e.value, SealongError)


@pytest.mark.parametrize("name", ["adapter_model.bin", "sub/adapter_model.bin", "extra.pt", "state.ckpt"])
def test_pickled_weights_are_refused_even_with_a_matching_hash(tmp_path: Path, name: str):
    rec = _adapter(tmp_path)
    d = tmp_path / rec["path"]
    (d / name).parent.mkdir(exist_ok=True)
    (d / name).write_bytes(b"pickle")
    if name == "adapter_model.bin":
        (d / "adapter_model.safetensors").unlink()
    rec["sha256"] = sha256_dir(d)  # re-recorded, as someone with write access to the workdir could
    with pytest.raises(IntegrityError, match="must hold adapter_model.safetensors and no pickled weights"):
        verify_adapter(tmp_path, rec)
    with pytest.raises(IntegrityError, match=f"adapter {d} must hold adapter_model.safetensors"):
        require_adapter_files(d)


def test_an_adapter_without_its_config_is_refused(tmp_path: Path):
    rec = _adapter(tmp_path)
    (tmp_path / rec["path"] / "adapter_config.json").unlink()
    rec["sha256"] = sha256_dir(tmp_path / rec["path"])
    assert adapter_problems(tmp_path, rec) == ["adapters/adapter-r000 lacks adapter_config.json"]


# -- the scan ---------------------------------------------------------------------------------------------


def _name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _typed_verified(annotation: ast.expr | None, type_name: str = "VerifiedAdapter") -> bool:
    return annotation is not None and type_name in ast.unparse(annotation)


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _params(fn) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *a.kwonlyargs]


class _Scan:
    def __init__(self, sources: dict[str, str]):
        self.trees = {path: ast.parse(src, path) for path, src in sources.items()}
        self.producers = {"verify_adapter"}  # functions returning a VerifiedAdapter
        # consumer -> {position or keyword: ...}: where an adapter path goes in
        self.consumers: dict[str, set[int | str]] = {"from_pretrained": {1, "model_id"}}
        for tree in self.trees.values():
            for fn in _functions(tree):
                if _typed_verified(fn.returns):
                    self.producers.add(fn.name)
                for i, p in enumerate(_params(fn)):
                    if _typed_verified(p.annotation):
                        self.consumers.setdefault(fn.name, set()).update({i, p.arg})

    def violations(self) -> list[str]:
        out = []
        for path, tree in self.trees.items():
            out += self._file(path, tree)
        return out

    def _file(self, path: str, tree: ast.AST) -> list[str]:
        out = []
        verifier = path == VERIFIER
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not verifier:
                if node.value.startswith("adapter_model."):
                    out.append(f"{path}:{node.lineno}: names an adapter weight file ({node.value})")
            if isinstance(node, ast.Tuple) and not verifier:
                strings = {e.value for e in node.elts if isinstance(e, ast.Constant)}
                if len(strings & set(PICKLED_WEIGHT_SUFFIXES)) >= 2:
                    out.append(f"{path}:{node.lineno}: its own list of pickled weight suffixes")
        for fn in _functions(tree):
            for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call)):
                out += self._call(path, fn, call, verifier)
        return out

    def _call(self, path: str, fn, call: ast.Call, verifier: bool) -> list[str]:
        name, where = _name(call), f"{path}:{call.lineno} ({fn.name})"
        if name in ("load_file", "safe_open") and not verifier and (path, fn.name) not in SAFETENSORS_READERS:
            return [f"{where}: reads safetensors outside the verifier"]
        if name == "VerifiedAdapter" and not verifier:
            return [f"{where}: makes a VerifiedAdapter without verify_adapter"]
        if name == "AdapterRef" and not any(_typed_verified(p.annotation) for p in _params(fn)):
            return [f"{where}: makes an AdapterRef from an unverified path"]
        if name == "LoRARequest":
            arg = _argument(call, {2, "lora_path"})
            ok = (
                isinstance(arg, ast.Attribute)
                and arg.attr == "path"
                and self._typed(fn, arg.value, "AdapterRef")
            )
            return [] if ok else [f"{where}: gives vLLM an adapter path that is not a verified AdapterRef's"]
        if name == "from_pretrained" and not _is_peft(call):
            return []
        if name in self.consumers:
            arg = _argument(call, self.consumers[name])
            if arg is not None and not self._verified(fn, arg):
                return [f"{where}: passes {ast.unparse(arg)} to {name} without verify_adapter"]
        return []

    def _typed(self, fn, expr: ast.expr, type_name: str) -> bool:
        return isinstance(expr, ast.Name) and any(
            p.arg == expr.id and _typed_verified(p.annotation, type_name) for p in _params(fn)
        )

    def _verified(self, fn, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Constant) and expr.value is None:
            return True
        if isinstance(expr, ast.Call):
            return _name(expr) in self.producers
        if isinstance(expr, ast.IfExp):
            return self._verified(fn, expr.body) and self._verified(fn, expr.orelse)
        if not isinstance(expr, ast.Name):
            return False
        if self._typed(fn, expr, "VerifiedAdapter"):
            return True
        bound = [
            n.value
            for n in ast.walk(fn)
            if isinstance(n, (ast.Assign, ast.AnnAssign))
            and any(
                isinstance(t, ast.Name) and t.id == expr.id
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target])
            )
        ]
        return bool(bound) and all(v is not None and self._verified(fn, v) for v in bound)


def _is_peft(call: ast.Call) -> bool:
    return isinstance(call.func, ast.Attribute) and ast.unparse(call.func.value).endswith("PeftModel")


def _argument(call: ast.Call, where: set[int | str]) -> ast.expr | None:
    for i, a in enumerate(call.args):
        if i in where:
            return a
    return next((k.value for k in call.keywords if k.arg in where), None)


def _tree_sources() -> dict[str, str]:
    return {
        f.relative_to(ROOT).as_posix(): f.read_text()
        for d in ("loop", "store", "kernels")
        for f in sorted((ROOT / d).rglob("*.py"))
    }


def test_only_the_verifier_lets_an_adapter_be_read():
    assert _Scan(_tree_sources()).violations() == []


PLANTED = {
    "reads the weights itself": (
        "from safetensors.torch import load_file\n"
        "def weights(d):\n    return load_file(d / 'adapter_model.safetensors')\n",
        ["names an adapter weight file", "reads safetensors outside the verifier"],
    ),
    "opens safetensors elsewhere": (
        "def peek(p):\n    with safe_open(p, 'pt') as f:\n        return f.keys()\n",
        ["reads safetensors outside the verifier"],
    ),
    "PEFT on a raw path": (
        "def load(model, workdir, row):\n    d = workdir / row['path']\n"
        "    return PeftModel.from_pretrained(model, d)\n",
        ["passes d to from_pretrained without verify_adapter"],
    ),
    "PEFT on an untyped parameter": (
        "def load(model, adapter_dir):\n    return PeftModel.from_pretrained(model, model_id=adapter_dir)\n",
        ["passes adapter_dir to from_pretrained"],
    ),
    "a raw path into a VerifiedAdapter parameter": (
        "def load_policy(base, adapter: VerifiedAdapter | None):\n    pass\n"
        "def caller(base, d):\n    return load_policy(base, d / 'x')\n",
        ["to load_policy without verify_adapter"],
    ),
    "a VerifiedAdapter made by hand": (
        "def fake(p):\n    return VerifiedAdapter(p)\n",
        ["makes a VerifiedAdapter without verify_adapter"],
    ),
    "vLLM on a raw path": (
        "def gen(path):\n    return LoRARequest('a', 1, path)\n",
        ["gives vLLM an adapter path"],
    ),
    "its own pickle list": ("REFUSED = ('.bin', '.pt')\n", ["its own list of pickled weight suffixes"]),
}


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_the_scan_catches_a_planted_violation(case: str):
    source, expected = PLANTED[case]
    found = _Scan({**_tree_sources(), "loop/planted.py": source}).violations()
    assert len(found) == len(expected) and all(
        f.startswith("loop/planted.py:") and e in f for f, e in zip(found, expected)
    ), found


def test_the_scan_accepts_a_verified_path():
    source = (
        "def load(model, workdir, row, flag):\n"
        "    d = verify_adapter(workdir, row) if flag else None\n"
        "    return PeftModel.from_pretrained(model, d)\n"
    )
    assert _Scan({**_tree_sources(), "loop/planted.py": source}).violations() == []

"""The bad-input matrix: every row is a broken data file or config given to the real `sealong-loop start`,
and must end in one clear message naming the file, the line and the field, exit code 2, no traceback,
and no run recorded. The CLI runs in this process (its `main`, as the console script calls it), so the
matrix costs milliseconds a row; tests/loop/test_config.py runs it as a separate process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sealong.loop.errors import IntegrityError
from sealong.store.db import connect

from ..conftest import TINY_CONFIG, cli, write_config

GOOD = {"input": "Who met Bob?", "context": "Ann met Bob.", "answers": ["Ann"], "_id": "a", "dataset": "toy"}


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`sealong-loop ARGS` through the console script's entry point; (exit code, stdout, stderr)."""
    from sealong.loop import cli

    argv, sys.argv = sys.argv, ["sealong-loop", *args]
    try:
        cli.main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def _jsonl(path: Path, lines: list) -> Path:
    path.write_bytes(
        b"".join(
            (x if isinstance(x, bytes) else (x if isinstance(x, str) else json.dumps(x)).encode()) + b"\n"
            for x in lines
        )
    )
    return path


def _start(capsys, tmp_path: Path, cfg: Path) -> tuple[int, str]:
    wd = tmp_path / "wd"
    code, out, err = run_cli(capsys, "start", "--config", str(cfg), "--workdir", str(wd), "--plain")
    assert "Traceback" not in out + err, out + err
    assert not wd.exists(), "the refused start left a workdir behind"  # nothing recorded, nothing created
    return code, err


# -- data files: (name, lines of an eval file, expected "file:line: field 'x': problem" after the path) ------

EVAL_ROWS = [
    (
        "invalid JSON",
        [GOOD, '{"input": "q", "context": "c"'],
        ":2: invalid JSON (Expecting ',' delimiter at column 30)",
    ),
    ("not an object", [GOOD, '["q", "c"]'], ":2: expected a JSON object, got list"),
    ("missing field", [GOOD, {"context": "c", "answers": ["a"]}], ":2: field 'input': missing"),
    (
        "mistyped answers",
        [GOOD, {**GOOD, "_id": "b", "answers": "Ann"}],
        ":2: field 'answers': expected list, got str",
    ),
    (
        "answers not strings",
        [GOOD, {**GOOD, "_id": "b", "answers": [1]}],
        ":2: field 'answers': expected a list of strings",
    ),
    (
        "mistyped length",
        [GOOD, {**GOOD, "_id": "b", "length": "long"}],
        ":2: field 'length': expected int or null, got str",
    ),
    ("mistyped id", [GOOD, {**GOOD, "_id": [1]}], ":2: field '_id': expected str/int or null, got list"),
    ("empty context", [GOOD, {**GOOD, "_id": "b", "context": ""}], ":2: field 'context': must not be empty"),
    ("blank question", [GOOD, {**GOOD, "_id": "b", "input": "  \n"}], ":2: field 'input': must not be empty"),
    (
        "non-UTF-8 bytes",
        [GOOD, b'{"input": "caf\xe9", "context": "c", "answers": ["a"]}'],
        ":2: not valid UTF-8 (byte 14)",
    ),
    (
        "unpaired surrogate",
        [GOOD, '{"input": "q", "context": "x\\ud800y", "answers": ["a"], "_id": "b"}'],
        ":2: field 'context': holds an unpaired surrogate '\\ud800'",
    ),
    (
        "duplicate id",
        [GOOD, {**GOOD, "context": "other"}],
        ":2: field 'id': duplicate id 'lb-toy-a' (first on line 1)",
    ),
    ("no records", ["", "  "], ": no records (an eval file needs at least one question)"),
]


@pytest.mark.parametrize("name,lines,expected", EVAL_ROWS, ids=[r[0] for r in EVAL_ROWS])
def test_bad_eval_file(capsys, tmp_path: Path, name: str, lines: list, expected: str):
    data = _jsonl(tmp_path / "toy.jsonl", lines)
    cfg = write_config(tmp_path / "c.toml", data={"eval_source": "longbench", "eval_paths": [str(data)]})
    code, err = _start(capsys, tmp_path, cfg)
    assert code == 2
    assert f"error: {data}{expected}" in err, err


def test_duplicate_ids_across_eval_files(capsys, tmp_path: Path):
    a = _jsonl(tmp_path / "a.jsonl", [GOOD])
    b = _jsonl(tmp_path / "b.jsonl", [{**GOOD, "context": "another context"}])
    cfg = write_config(tmp_path / "c.toml", data={"eval_source": "longbench", "eval_paths": [str(a), str(b)]})
    code, err = _start(capsys, tmp_path, cfg)
    assert code == 2
    assert f"error: {b}: field 'id': duplicate id 'lb-toy-a': {a} has it too (same dataset and _id)" in err


def _musique(i: int, **over) -> dict:
    item = {
        "id": f"m{i}",
        "question": f"Q{i}?",
        "answer": f"A{i}",
        "answer_aliases": [],
        "answerable": True,
        "paragraphs": [{"title": "T", "paragraph_text": f"A{i} is it.", "is_supporting": True}],
    }
    return {**item, **over}


MUSIQUE_ROWS = [
    (
        "paragraph without text",
        [_musique(0), _musique(1, paragraphs=[{"title": "x"}])],
        ":2: field 'paragraphs[0].paragraph_text': missing or not a string",
    ),
    (
        "aliases not strings",
        [_musique(0, answer_aliases=[3])],
        ":1: field 'answer_aliases': expected a list of strings",
    ),
    ("empty question", [_musique(0, question="")], ":1: field 'question': must not be empty"),
    ("duplicate id", [_musique(0), _musique(0)], ":2: field 'id': duplicate id 'm0' (first on line 1)"),
    (
        "nothing answerable",
        [_musique(0, answerable=False)],
        ": no answerable items among 1 record(s): the training pool would be empty",
    ),
]


@pytest.mark.parametrize("name,lines,expected", MUSIQUE_ROWS, ids=[r[0] for r in MUSIQUE_ROWS])
def test_bad_training_file(capsys, tmp_path: Path, name: str, lines: list, expected: str):
    data = _jsonl(tmp_path / "musique.jsonl", lines)
    cfg = write_config(tmp_path / "c.toml", data={"train_source": "musique", "train_path": str(data)})
    code, err = _start(capsys, tmp_path, cfg)
    assert code == 2
    assert f"error: {data}{expected}" in err, err


def test_a_50_mb_line_is_refused_with_bounded_memory(tmp_path: Path):
    """The loader never holds more than one 16 MiB line: measured in a fresh process."""
    data = tmp_path / "huge.jsonl"
    with open(data, "w") as f:
        f.write(json.dumps(GOOD) + "\n")
        f.write('{"input": "q", "answers": ["a"], "context": "' + "x" * (50 << 20) + '"}\n')
    probe = (
        "import resource, sys\n"
        "from sealong.loop.errors import DataError\n"
        "from sealong.loop.tasks.longbench import load_longbench\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        f"    load_longbench({str(data)!r})\n"
        "except DataError as e:\n"
        "    print(e)\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)\n"
    )
    proc = subprocess.run([sys.executable, "-P", "-c", probe], capture_output=True, text=True, timeout=120)
    message, grew_mb = proc.stdout.strip().splitlines()
    assert (
        message == f"{data}:2: line is longer than the 16 MiB limit for one record; shorten it "
        "(prompts keep max_prompt_tokens of a context)"
    )
    assert int(grew_mb) < 40, f"peak memory grew by {grew_mb} MB reading a 50 MB line"


# -- configs: (name, TOML text or None for a missing file, expected problem lines) -----------------------------


def _model_dir(
    tmp_path: Path, tiny_model_dir: Path, drop: tuple[str, ...] = (), pickled: bool = False
) -> Path:
    d = tmp_path / "model"
    subprocess.run(["cp", "-r", str(tiny_model_dir), str(d)], check=True)
    for name in drop:
        (d / name).unlink()
    cfg = d / "tokenizer_config.json"
    if "chat_template.jinja" in drop and cfg.exists():
        tc = json.loads(cfg.read_text())
        tc.pop("chat_template", None)
        cfg.write_text(json.dumps(tc))
    if pickled:
        (d / "model.safetensors").rename(d / "pytorch_model.bin")
    return d


CONFIG_ROWS = [
    (
        "unknown key",
        "[sample]\nn = 4\ncolour = 'red'\n",
        ["line 3: [sample] colour: unknown key (known: backend, n,"],
    ),
    (
        "unknown section",
        "[trian]\nlr = 0.1\n",
        ["line 1: [trian]: unknown section (did you mean 'train'? known: run, policy,"],
    ),
    (
        "section not a table",
        "sample = 4\n",
        ["line 1: [sample]: must be a table (a [sample] section), got int"],
    ),
    ("wrong type", "[train]\nlora_r = 'big'\n", ["line 2: [train] lora_r: must be int (got str 'big')"]),
    (
        "wrong list item",
        "[data]\nhops = [1, 'two']\n",
        ["line 2: [data] hops: must be a list of int (got 'two')"],
    ),
    ("bool for int", "[sample]\nn = true\n", ["line 2: [sample] n: must be int (got bool True)"]),
    (
        "impossible value",
        "[sample]\nn = 1\n",
        ["line 2: [sample] n: must be >= 2: MBR needs at least two samples (got 1)"],
    ),
    (
        "impossible relation",
        "[data]\ntrain_pool_size = 4\nquestions_per_round = 9\n",
        ["line 3: [data] questions_per_round: must be in [1, train_pool_size=4] (got 9)"],
    ),
    (
        "several at once",
        "[sample]\nn = 0\ntop_p = 2.0\n[train]\nlr = -1\n",
        [
            "line 2: [sample] n: must be >= 2",
            "line 3: [sample] top_p: must be in (0, 1]",
            "line 5: [train] lr: must be > 0",
        ],
    ),
    ("invalid TOML", "[sample]\nn = = 3\n", ["not valid TOML: Invalid value (at line 2, column 5)"]),
    (
        "non-UTF-8",
        b"[run]\nname = 'caf\xe9'\n",
        ["line 2: not valid UTF-8 (byte 0xe9); TOML files are UTF-8"],
    ),
    (
        "model dir missing",
        "[policy]\nmodel = '/nonexistent/model'\n",
        ["line 2: [policy] model: model directory not found: /nonexistent/model"],
    ),
    (
        "unset variable",
        "[policy]\nmodel = '${SEALONG_TEST_UNSET}/m'\n",
        [
            "line 2: [policy] model: model directory not found: ${SEALONG_TEST_UNSET}/m (environment variable SEALONG_TEST_UNSET is not set)"
        ],
    ),
    (
        "data file missing",
        "[data]\neval_source = 'longbench'\neval_paths = ['/nonexistent/lb.jsonl']\n",
        ["line 3: [data] eval_paths: file not found: /nonexistent/lb.jsonl"],
    ),
    (
        "data path required",
        "[data]\ntrain_source = 'musique'\n",
        ["[data] train_path: is required when train_source = 'musique'"],
    ),
]


@pytest.mark.parametrize("name,text,expected", CONFIG_ROWS, ids=[r[0] for r in CONFIG_ROWS])
def test_bad_config(capsys, tmp_path: Path, monkeypatch, name: str, text, expected: list[str]):
    monkeypatch.delenv("SEALONG_TEST_UNSET", raising=False)
    cfg = tmp_path / "bad.toml"
    cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, err = _start(capsys, tmp_path, cfg)
    assert code == 2
    assert err.startswith(f"error: {cfg}: {len(expected)} problem(s) in the config:"), err
    for line in expected:
        assert f"  - {line}" in err, err
    assert not (tmp_path / "wd" / "sealong.db").exists()


def test_missing_config_file(capsys, tmp_path: Path):
    code, err = _start(capsys, tmp_path, tmp_path / "nope.toml")
    assert (
        code == 2
        and f"error: {tmp_path / 'nope.toml'}: 1 problem(s) in the config:\n  - file not found" in err
    )


@pytest.mark.parametrize(
    "drop,pickled,expected",
    [
        (
            ("chat_template.jinja",),
            False,
            "has no chat template (chat_template.jinja, or 'chat_template' in tokenizer_config.json)",
        ),
        (("config.json",), False, "has no config.json (not a transformers model directory)"),
        ((), True, "has no *.safetensors weights (sealong-loop never loads pickled .bin/.pt weights)"),
    ],
    ids=["no chat template", "no config.json", "pickled weights only"],
)
def test_bad_model_directory(capsys, tmp_path: Path, tiny_model_dir: Path, drop, pickled, expected):
    model = _model_dir(
        tmp_path, tiny_model_dir, tuple(d for d in drop if (tiny_model_dir / d).exists()), pickled
    )
    cfg = tmp_path / "c.toml"
    cfg.write_text(TINY_CONFIG.read_text().replace('model = "tiny-random-llama"', f'model = "{model}"'))
    code, err = _start(capsys, tmp_path, cfg)
    assert code == 2
    line = cfg.read_text().splitlines().index(f'model = "{model}"') + 1
    assert f"  - line {line}: [policy] model: {model} {expected}" in err, err


def test_every_row_exits_2_through_the_console_script(tmp_path: Path):
    """One row of each kind through a separate `sealong-loop` process, as a user runs it."""
    data = _jsonl(tmp_path / "toy.jsonl", [GOOD, {**GOOD, "_id": "b", "context": ""}])
    bad_data = write_config(tmp_path / "d.toml", data={"eval_source": "longbench", "eval_paths": [str(data)]})
    bad_cfg = tmp_path / "bad.toml"
    bad_cfg.write_text("[sample]\nn = 1\n")
    exe = Path(sys.executable).with_name("sealong-loop")
    for cfg, needle in (
        (bad_data, f"{data}:2: field 'context': must not be empty"),
        (bad_cfg, "line 2: [sample] n"),
    ):
        proc = subprocess.run(
            [
                str(exe) if exe.exists() else sys.executable,
                *([] if exe.exists() else ["-P", "-m", "sealong.loop.cli"]),
                "start",
                "--config",
                str(cfg),
                "--workdir",
                str(tmp_path / "wd"),
            ],
            capture_output=True,
            text=True,
            env={**os.environ},
            timeout=120,
        )
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


# -- workdirs whose database is not ours: every command that reads it, and `start`, through the real CLI --------


def _not_sqlite(db: Path) -> None:
    db.write_text("junk\n")


def _zero_bytes(db: Path) -> None:
    db.touch()
    t = time.time() - 60  # not a database a controller is creating this moment
    os.utime(db, (t, t))


def _foreign(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    c.close()


DAMAGED_DBS = [
    ("not SQLite", _not_sqlite, " is not a SQLite database (file is not a database)"),
    ("zero bytes", _zero_bytes, " is empty or not a sealong-loop database (no `runs` table)"),
    (
        "another application's database",
        _foreign,
        " is not a sealong-loop database: it holds tables (notes) but no `_migrations` table",
    ),
]
READERS = [
    ("status",),
    ("status", "--json"),
    ("verify",),
    ("lineage",),
    ("show", "champion"),
    ("query", "SELECT 1"),
    ("start", "--plain"),  # a writer: refuses before it migrates anything into the file
]


# `start` migrates an empty database (what a controller killed before its first migration leaves): not a row
DAMAGED_ROWS = [
    pytest.param(make, expected, command, id=f"{name}-{' '.join(command)}")
    for name, make, expected in DAMAGED_DBS
    for command in READERS
    if not (make is _zero_bytes and command[0] == "start")
]


@pytest.mark.parametrize("make,expected,command", DAMAGED_ROWS)
def test_a_damaged_or_foreign_database_is_one_error_line(
    tmp_path: Path, make, expected: str, command: tuple[str, ...]
):
    wd = (tmp_path / "wd").resolve()
    wd.mkdir()
    db = wd / "sealong.db"
    make(db)
    before = db.read_bytes()
    proc = cli(*command, "--workdir", str(wd), timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == IntegrityError.exit_code, (proc.returncode, proc.stderr)
    assert proc.stderr == f"error: {db}{expected}\n", proc.stderr
    assert db.read_bytes() == before and sorted(p.name for p in wd.iterdir()) == ["sealong.db"]


@pytest.mark.parametrize("name,make,expected", DAMAGED_DBS, ids=[r[0] for r in DAMAGED_DBS])
def test_verify_reports_a_damaged_or_foreign_database_as_a_problem(tmp_path: Path, name: str, make, expected):
    from sealong.loop.engine.integrity import verify

    make(tmp_path / "sealong.db")
    assert verify(tmp_path) == [f"{tmp_path.resolve() / 'sealong.db'}{expected}"]


@pytest.mark.parametrize("command", [("start", "--plain"), ("status",), ("verify",)], ids=lambda c: c[0])
def test_a_workdir_that_is_a_file_is_a_usage_error(tmp_path: Path, command: tuple[str, ...]):
    wd = (tmp_path / "wd").resolve()
    wd.write_text("not a directory\n")
    proc = cli(*command, "--workdir", str(wd), timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 2 and proc.stderr == f"error: --workdir {wd} is a file, not a directory\n", (
        proc.returncode,
        proc.stderr,
    )
    assert wd.read_text() == "not a directory\n"


def test_query_that_would_change_the_database_says_it_is_read_only(tmp_path: Path):
    connect(tmp_path).conn.close()
    proc = cli("query", "PRAGMA journal_mode=DELETE", "--workdir", str(tmp_path), timeout=120)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert proc.returncode == 2 and proc.stderr.startswith(
        "error: refused: the statement tries to change the database, which `query` opens read-only"
    ), proc.stderr

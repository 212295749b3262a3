"""Your own data: records from JSONL (and Parquet), a folder of documents, field mapping, bad records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sealong.loop.config import config_from_dict, load_config
from sealong.loop.errors import ConfigError, DataError
from sealong.loop.tasks.records import read_jsonl
from sealong.loop.tasks.userdata import FieldMap, list_documents, load_folder, load_records

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "examples" / "python-docs"


def _jsonl(path: Path, lines: list, end: bytes = b"\n") -> Path:
    path.write_bytes(b"".join((x if isinstance(x, str) else json.dumps(x)).encode() + end for x in lines))
    return path


# -- the reader: files as people produce them ------------------------------------------------------------


def test_bom_and_crlf_are_read(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"question": "q1", "context": "c"}\r\n{"question": "q2", "context": "d"}\r\n'
    )
    assert [obj["question"] for _, obj in read_jsonl(path)] == ["q1", "q2"]


def test_an_unfinished_last_line_is_never_half_a_record(tmp_path: Path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"question": "q1", "context": "c"}\n{"question": "q2", "cont')
    with pytest.raises(DataError, match=r"r.jsonl:2: unfinished record"):
        list(read_jsonl(path))
    path.write_bytes(b'{"question": "q1", "context": "c"}\n{"question": "q2", "context": "d"}')
    assert len(list(read_jsonl(path))) == 2  # a complete last line without a line end is fine


# -- records ----------------------------------------------------------------------------------------------


def test_three_context_shapes_ids_and_metadata(tmp_path: Path):
    (tmp_path / "notes.md").write_bytes(b"\xef\xbb\xbf# Notes\r\nAnn met Bob.\r\n")
    path = _jsonl(
        tmp_path / "mine.jsonl",
        [
            {"id": "a", "question": "Who met Bob?", "context": "Ann met Bob.", "source_url": "x", "n": 3},
            {"question": "Q2?", "passages": ["First.", {"title": "T", "text": "Second."}]},
            {"id": 7, "question": "Q3?", "context_file": "notes.md", "task": "notes"},
        ],
    )
    a, b, c = load_records(path, FieldMap(), "train")
    assert (a.id, a.context, a.answers, a.source, a.task) == ("a", "Ann met Bob.", [], "jsonl", "mine")
    assert a.meta == {"file": str(path), "line": 1, "source_url": "x", "n": 3}
    assert b.id == "mine-2" and b.context == "Passage 1:\nFirst.\n\nPassage 2:\nT\nSecond."
    assert c.id == "7" and c.context == "# Notes\nAnn met Bob.\n" and c.task == "notes"
    assert "task" not in c.meta


def test_field_mapping(tmp_path: Path):
    path = _jsonl(
        tmp_path / "m.jsonl", [{"key": "k1", "ask": "Q?", "body": "text", "gold": ["g"], "id": "x"}]
    )
    fields = FieldMap(id="key", question="ask", context="body", answers="gold")
    (r,) = load_records(path, fields, "eval")
    assert (r.id, r.question, r.context, r.answers) == ("eval:k1", "Q?", "text", ["g"])
    assert r.meta["id"] == "x"  # a common-name field that was not mapped stays metadata
    with pytest.raises(DataError, match=r"m.jsonl:1: field 'question': missing \(looked for question"):
        load_records(path, FieldMap(), "train")


@pytest.mark.parametrize(
    "record,split,needle",
    [
        ({"context": "c"}, "train", "field 'question': missing (looked for question, input, query"),
        ({"question": " ", "context": "c"}, "train", "field 'question': must not be empty"),
        ({"question": "q"}, "train", "field 'context': missing: give the context inline"),
        ({"question": "q", "context": ""}, "train", "field 'context': must not be empty"),
        ({"question": "q", "context": []}, "train", "field 'context': must not be empty"),
        ({"question": "q", "context": [1]}, "train", "field 'context[0]': expected a string or an object"),
        ({"question": "q", "context": 5}, "train", "field 'context': expected str, got int"),
        ({"question": "q", "context_file": "nope.md"}, "train", "field 'context_file': file not found"),
        ({"question": "q", "context": "c"}, "eval", "field 'answers': missing"),
        ({"question": "q", "context": "c", "answers": []}, "eval", "field 'answers': must not be empty"),
        ({"question": "q", "context": "c", "answers": [1]}, "train", "field 'answers': expected a string"),
        ({"question": "q", "context": "c", "id": ""}, "train", "field 'id': must not be empty"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path: Path, record: dict, split: str, needle: str):
    good = {"question": "ok?", "context": "fine", "answers": "yes"}
    path = _jsonl(tmp_path / "bad.jsonl", [good, record])
    with pytest.raises(DataError) as exc:
        load_records(path, FieldMap(), split)
    assert str(exc.value).startswith(f"{path}:2:") and needle in str(exc.value), str(exc.value)


def test_duplicate_ids_and_empty_files(tmp_path: Path):
    path = _jsonl(tmp_path / "d.jsonl", [{"id": "a", "question": "q", "context": "c"}] * 2)
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'id': duplicate id 'a' \(first on line 1\)"):
        load_records(path, FieldMap(), "train")
    with pytest.raises(DataError, match=r"e.jsonl: no records"):
        load_records(_jsonl(tmp_path / "e.jsonl", ["", " "]), FieldMap(), "train")


def test_parquet(tmp_path: Path):
    path = tmp_path / "r.parquet"
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        path.write_bytes(b"PAR1")
        with pytest.raises(DataError, match=r"r.parquet: reading Parquet needs pyarrow"):
            load_records(path, FieldMap(), "train")
        pytest.skip("pyarrow (the 'parquet' extra) is not installed: only the message was checked")
    pq.write_table(pa.table({"question": ["q1", "q2"], "context": ["c1", "c2"], "tag": [1, 2]}), path)
    recs = load_records(path, FieldMap(), "train")
    assert [r.id for r in recs] == ["r-1", "r-2"] and recs[1].meta["tag"] == 2


# -- a folder of documents ------------------------------------------------------------------------------


def test_folder_questions_name_a_document_or_apply_to_all(tmp_path: Path):
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "a.md").write_text("Alpha doc.")
    (docs / "sub" / "b.txt").write_bytes(b"Beta doc.\r\n")
    (docs / ".hidden.md").write_text("skip me")
    (docs / "image.png").write_bytes(b"\x89PNG")
    assert list_documents(docs) == [Path("a.md"), Path("sub/b.txt")]
    qs = _jsonl(
        tmp_path / "q.jsonl",
        [{"id": "q1", "question": "About a?", "document": "a.md"}, {"id": "all", "question": "Summary?"}],
    )
    recs = load_folder(docs, qs, FieldMap())
    assert [(r.id, r.context) for r in recs] == [
        ("q1", "Alpha doc."),
        ("all@a.md", "Alpha doc."),
        ("all@sub/b.txt", "Beta doc.\n"),
    ]
    assert (
        recs[2].meta == {"file": str(qs), "line": 2, "document": "sub/b.txt"} and recs[0].source == "folder"
    )
    _jsonl(qs, [{"question": "About c?", "document": "c.md"}])
    with pytest.raises(
        DataError, match=r"q.jsonl:1: field 'document': no document 'c.md' in .*a.md, sub/b.txt"
    ):
        load_folder(docs, qs, FieldMap())


# -- config and the run --------------------------------------------------------------------------------


def _cfg(**data):
    return config_from_dict({"data": data}, check_paths=False)


def test_config_validates_own_data_keys():
    with pytest.raises(ConfigError) as exc:
        _cfg(train_source="folder", eval_source="jsonl", context_field=" ")
    msg = str(exc.value)
    for needle in (
        "[data] train_path: is required when train_source = 'folder'",
        "[data] questions_path: is required when train_source = 'folder'",
        "[data] eval_paths: is required when eval_source = 'jsonl'",
        "[data] context_field: must be a field name",
    ):
        assert needle in msg, msg
    with pytest.raises(ConfigError, match=r"questions_path: is read only when train_source = 'folder'"):
        _cfg(questions_path="q.jsonl")
    # the pool is every record: questions_per_round is not bounded by train_pool_size
    assert (
        _cfg(train_source="jsonl", train_path="x.jsonl", questions_per_round=500).data.questions_per_round
        == 500
    )


def test_relative_data_paths_are_made_absolute(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(train_source="jsonl", train_path="mine.jsonl")
    assert cfg.data.train_path == str(tmp_path / "mine.jsonl")  # stage processes run in the workdir


@pytest.mark.parametrize("name", ["config.toml", "config-folder.toml"])
def test_the_example_loads_and_stores_metadata(tmp_path: Path, monkeypatch, name: str):
    from sealong.loop.engine.workdir import ensure_run, questions_for
    from sealong.store.db import connect, rows

    monkeypatch.chdir(REPO)
    cfg = load_config(EXAMPLE / name)
    questions = questions_for(cfg)
    assert [s for s, _ in questions].count("train") == 16 and [s for s, _ in questions].count("eval") == 16
    cfg.policy.max_prompt_tokens = 200  # some of the example's documents are longer: the user is told
    db = connect(tmp_path)
    ensure_run(db, cfg, tmp_path, 1, questions)
    (event,) = [r["message"] for r in rows(db, "SELECT message FROM events") if "run created" in r["message"]]
    assert "training and" in event and "longer than policy.max_prompt_tokens = 200" in event, event
    meta = json.loads(rows(db, "SELECT meta_json FROM questions WHERE id = 't00'")[0]["meta_json"])
    assert meta["line"] == 1


def test_example_files_match_their_generator(tmp_path: Path, monkeypatch):
    """train/eval records point at documents that exist and eval answers occur in their document."""
    from sealong.loop.recipe.metrics import subem

    monkeypatch.chdir(REPO)
    for r in load_records(EXAMPLE / "eval.jsonl", FieldMap(), "eval"):
        assert subem(r.context, r.answers) == 1.0, (r.id, r.answers)
    assert len(load_records(EXAMPLE / "train.jsonl", FieldMap(), "train")) == 16


def test_a_bad_record_is_one_line_through_the_cli(tmp_path: Path):
    from ...conftest import cli, write_config

    data = _jsonl(
        tmp_path / "mine.jsonl", [{"question": "ok?", "context": "c"}, {"question": "q", "context": 3}]
    )
    cfg = write_config(tmp_path / "c.toml", data={"train_source": "jsonl", "train_path": str(data)})
    proc = cli("start", "--config", str(cfg), "--workdir", str(tmp_path / "wd"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{data}:2: field 'context': expected str, got int" in proc.stderr
    assert not (tmp_path / "wd").exists()


def test_a_file_changed_after_the_run_began_loses_or_redoes_nothing(tmp_path: Path):
    """Records are stored when the run is created: rewriting or truncating the file later changes nothing
    recorded (resuming reads nothing here; the controller's pickup between rounds: engine/test_intake.py)."""
    from sealong.loop.engine.workdir import ensure_run, questions_for
    from sealong.store.db import connect, rows

    data = _jsonl(
        tmp_path / "mine.jsonl", [{"id": f"q{i}", "question": f"Q{i}?", "context": "c"} for i in range(3)]
    )
    cfg = _cfg(train_source="jsonl", train_path=str(data), questions_per_round=2)
    db = connect(tmp_path / "wd")
    run_id = ensure_run(db, cfg, tmp_path / "wd", 1, questions_for(cfg))
    data.write_bytes(b'{"id": "new", "question": "half')  # truncated and rewritten mid-record
    assert ensure_run(db, cfg, tmp_path / "wd", 2) == run_id
    ids = [r["id"] for r in rows(db, "SELECT id FROM questions WHERE split = 'train' ORDER BY pool_index")]
    assert ids == ["q0", "q1", "q2"]


def test_missing_own_data_paths_are_config_problems(tmp_path: Path):
    from sealong.loop.config_checks import path_problems

    cfg = _cfg(
        train_source="folder",
        train_path=str(tmp_path / "nodocs"),
        questions_path=str(tmp_path / "q.jsonl"),
        eval_source="jsonl",
        eval_paths=[str(tmp_path / "e.jsonl")],
    )
    got = [(k, m.split(":")[0]) for _, k, m in path_problems(cfg)]
    assert got == [
        ("train_path", "folder not found"),
        ("questions_path", "file not found"),
        ("eval_paths", "file not found"),
    ]

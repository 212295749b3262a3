import json
from pathlib import Path

import pytest
from sealong.loop.errors import DataError
from sealong.loop.recipe.metrics import subem
from sealong.loop.tasks import synthetic
from sealong.loop.tasks.longbench import load_longbench
from sealong.loop.tasks.musique import build_musique_pool
from sealong.loop.tasks.records import approx_tokens


def test_synthetic_is_deterministic_and_answerable_from_context():
    a = synthetic.generate(12, 3, "train", [1, 2, 3], 200, 300)
    b = synthetic.generate(12, 3, "train", [1, 2, 3], 200, 300)
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert {r.task for r in a} == {"synthetic-1hop", "synthetic-2hop", "synthetic-3hop"}
    for r in a:
        assert r.answers and subem(r.context, r.answers) == 1.0  # the answer is in the context
        assert 200 <= approx_tokens(r.context) <= 300 + 80  # filled to the target (one passage of slack)


def test_synthetic_train_and_eval_share_no_entities():
    train = synthetic.generate(20, 0, "train", [1, 2, 3], 100, 150)
    evals = synthetic.generate(20, 0, "eval", [1, 2, 3], 100, 150)
    train_answers = {a for r in train for a in r.answers}
    assert not train_answers & {a for r in evals for a in r.answers}
    assert not {r.id for r in train} & {r.id for r in evals}


def test_synthetic_near_miss_shares_the_surname():
    recs = synthetic.generate(6, 1, "train", [1], 100, 150, near_miss_rate=1.0)
    for r in recs:
        person = r.question.removeprefix("In which town was ").removesuffix(" born?")
        surname = person.split(" ")[1]
        born = [line for line in r.context.split("\n\n") if f"{surname} was born in" in line]
        assert len(born) >= 2, "a near-miss person with the same surname is in the context"


def _write(path: Path, lines: list) -> Path:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_longbench_loader(tmp_path: Path):
    rec = {
        "input": "Who?",
        "context": "Ann met Bob.",
        "answers": ["Bob"],
        "length": 3,
        "dataset": "hotpotqa",
        "language": "en",
        "all_classes": None,
        "_id": "x1",
    }
    recs = load_longbench(_write(tmp_path / "hotpotqa.jsonl", [rec, {**rec, "_id": "x2"}]))
    assert [r.task for r in recs] == ["hotpotqa", "hotpotqa"] and recs[0].answers == ["Bob"]


@pytest.mark.parametrize(
    "line,needle",
    [
        ('{"input": "q", "context": "c", "answers": ["a"]', "line 2: invalid JSON"),
        ('{"context": "c", "answers": ["a"]}', "line 2: field 'input': missing"),
        ('{"input": "q", "context": "", "answers": ["a"]}', "line 2: field 'context': must not be empty"),
        ('{"input": "q", "context": "c", "answers": "a"}', "line 2: field 'answers': expected list"),
        ('["not", "an", "object"]', "line 2: expected a JSON object"),
    ],
)
def test_longbench_bad_lines_name_file_and_line(tmp_path: Path, line: str, needle: str):
    good = {"input": "q", "context": "c", "answers": ["a"], "_id": "ok"}
    path = _write(tmp_path / "lb.jsonl", [good, line])
    with pytest.raises(DataError) as exc:
        load_longbench(path)
    assert str(path) in str(exc.value) and needle.split(": ", 1)[1] in str(exc.value)
    assert f"{path}:2:" in str(exc.value)


def test_non_utf8_and_duplicate_ids(tmp_path: Path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(b'{"input": "q", "context": "c", "answers": ["a"]}\n{"input": "\xff"}\n')
    with pytest.raises(DataError, match=r"bytes.jsonl:2: not valid UTF-8"):
        load_longbench(path)
    rec = {"input": "q", "context": "c", "answers": ["a"], "_id": "same"}
    with pytest.raises(DataError, match=r"dup.jsonl:2: field 'id': duplicate id"):
        load_longbench(_write(tmp_path / "dup.jsonl", [rec, rec]))


def _musique_item(i: int) -> dict:
    return {
        "id": f"m{i}",
        "question": f"Question {i}?",
        "answer": f"Answer{i}",
        "answer_aliases": [f"A{i}"],
        "answerable": True,
        "paragraphs": [
            {
                "idx": 0,
                "title": f"Support {i}",
                "paragraph_text": f"Answer{i} is the answer to question {i}. " * 3,
                "is_supporting": True,
            },
            {
                "idx": 1,
                "title": f"Other {i}",
                "paragraph_text": f"Filler text number {i}. " * 20,
                "is_supporting": False,
            },
        ],
    }


def test_musique_builder_paper_construction(tmp_path: Path):
    path = _write(tmp_path / "musique.jsonl", [_musique_item(i) for i in range(30)])
    pool = build_musique_pool(path, n=10, min_tokens=300, max_tokens=400, seed=0)
    assert len(pool) == 10
    for r in pool:
        i = r.id.removeprefix("musique-m")
        assert f"Support {i}" in r.context  # supporting paragraph kept
        assert f"Other {i}\n" in r.context  # and its own distractors, as SEALONG's process_data.py
        assert r.n_tokens >= 300 and r.answers == [f"Answer{i}", f"A{i}"]
    assert pool == build_musique_pool(path, n=10, min_tokens=300, max_tokens=400, seed=0)


def test_musique_bad_paragraph(tmp_path: Path):
    item = _musique_item(0)
    item["paragraphs"][1] = {"title": "x"}
    with pytest.raises(DataError, match=r"musique.jsonl:1: field 'paragraphs\[1\].paragraph_text'"):
        build_musique_pool(_write(tmp_path / "musique.jsonl", [item]), 1, 10, 20)

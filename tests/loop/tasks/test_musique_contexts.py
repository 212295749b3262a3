"""MuSiQue contexts built as SEALONG builds them: own distractors first, then filler, no title twice."""

import json
import re
from pathlib import Path

from sealong.loop.tasks.musique import build_musique_pool


def _item(i: int, shared_title: str) -> dict:
    paras = [
        {
            "title": f"Support {i}",
            "paragraph_text": f"Answer{i} answers question {i}. " * 3,
            "is_supporting": True,
        },
        {"title": f"Own {i}a", "paragraph_text": f"Own distractor {i}a. " * 8, "is_supporting": False},
        {"title": f"Own {i}a", "paragraph_text": f"Same title, other text {i}. " * 8, "is_supporting": False},
        {"title": f"Own {i}b", "paragraph_text": f"Own distractor {i}b. " * 8, "is_supporting": False},
        # a title every item carries (MuSiQue's items share Wikipedia pages)
        {"title": shared_title, "paragraph_text": f"Shared page, item {i}. " * 8, "is_supporting": False},
    ]
    return {"id": f"m{i}", "question": f"Question {i}?", "answer": f"Answer{i}", "paragraphs": paras}


def _titles(context: str) -> list[str]:
    return re.findall(r"Passage \d+:\n(.*)\n", context)


def test_own_distractors_present_and_no_title_twice(tmp_path: Path):
    path = tmp_path / "musique.jsonl"
    path.write_text("".join(json.dumps(_item(i, "Shared")) + "\n" for i in range(20)))
    pool = build_musique_pool(path, n=8, min_tokens=400, max_tokens=600, seed=3)
    for r in pool:
        i = r.id.removeprefix("musique-m")
        titles = _titles(r.context)
        assert len(titles) == len(set(titles)), titles  # deduplicated by title, filler included
        assert {f"Support {i}", f"Own {i}a", f"Own {i}b", "Shared"} <= set(titles)
        assert f"Own distractor {i}a." in r.context and f"Same title, other text {i}." not in r.context
        assert f"Shared page, item {i}." in r.context  # the item's own copy of the shared page, first
        assert any(t.startswith("Own ") and not t.startswith(f"Own {i}") for t in titles)  # filler
        assert r.n_tokens >= 400


def test_supporting_paragraphs_are_never_dropped(tmp_path: Path):
    item = _item(0, "Shared")
    item["paragraphs"].append(
        {"title": "Support 0", "paragraph_text": "A second supporting paragraph.", "is_supporting": True}
    )
    path = tmp_path / "musique.jsonl"
    path.write_text(json.dumps(item) + "\n" + json.dumps(_item(1, "Shared")) + "\n")
    (r,) = [r for r in build_musique_pool(path, n=2, min_tokens=10, max_tokens=20) if r.id == "musique-m0"]
    assert "A second supporting paragraph." in r.context and "Answer0 answers question 0." in r.context

"""Regenerate this example's documents and question files from text that ships with Python (no downloads).

    python examples/python-docs/make_example.py

docs/*.md are module docstrings of the standard library (and the Zen of Python from `this`); train.jsonl
asks questions about them with no answers (training needs none); eval.jsonl asks other questions, with
answers, as the held-out set; questions.jsonl is the same training questions for the folder shape
(config-folder.toml). The files are committed, so running this is only needed to rebuild them.
"""

from __future__ import annotations

import codecs
import importlib
import inspect
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODULES = ["heapq", "sched", "colorsys", "statistics"]

TRAIN = [
    ("heapq", "What is always the smallest element of a heap?"),
    ("heapq", "Which function transforms a list into a heap in linear time?"),
    ("heapq", "What does heappop return?"),
    ("heapq", "Which indexing does the heapq API use?"),
    ("sched", "What two functions parametrize a scheduler instance?"),
    ("sched", "How are events specified in the sched module?"),
    ("sched", "Does a lower priority number mean higher or lower priority?"),
    ("sched", "Is multi-threading implied by the scheduler class?"),
    ("colorsys", "What range do colorsys inputs and outputs lie in?"),
    ("colorsys", "Which color systems does colorsys support?"),
    ("colorsys", "What do the letters HSV stand for?"),
    ("statistics", "Which function gives the median of grouped data?"),
    ("statistics", "What does fmean compute?"),
    ("statistics", "Which function returns a list of modes?"),
    ("zen", "According to the Zen of Python, what is better than ugly?"),
    ("zen", "What should errors never do, unless explicitly silenced?"),
]
EVAL = [
    ("heapq", "Is heap[0] the smallest or the largest item of a heap?", ["smallest"]),
    ("heapq", "Which function pushes a new item and then returns the smallest item?", ["heappushpop"]),
    ("heapq", "What does heapreplace do to the heap size?", ["unchanged"]),
    ("heapq", "Which method keeps the heap invariant when called on a heap list?", ["sort"]),
    ("sched", "What kind of numbers can time be expressed as?", ["integers", "floating point"]),
    ("sched", "Which module's time and sleep give real-time scheduling?", ["time"]),
    ("sched", "What may the delay function modify?", ["queue"]),
    ("sched", "What name does the sched docstring give the keyword parameters of an event?", ["kwargs"]),
    ("colorsys", "Which color system is used by composite video signals?", ["YIQ"]),
    ("colorsys", "What does the L in HLS stand for?", ["Luminance"]),
    ("colorsys", "What may inputs outside the valid range cause?", ["exceptions", "invalid outputs"]),
    ("statistics", "What is the mean of [-1.0, 2.5, 3.25, 5.75]?", ["2.625"]),
    ("statistics", "What is the median of [2, 3, 4, 5]?", ["3.5"]),
    ("statistics", "Which function computes the sample variance of data?", ["variance"]),
    ("zen", "According to the Zen of Python, what counts?", ["Readability"]),
    ("zen", "Who wrote the Zen of Python?", ["Tim Peters"]),
]


def docs() -> dict[str, str]:
    out = {m: inspect.getdoc(importlib.import_module(m)) or "" for m in MODULES}
    out["statistics"] = (
        out["statistics"].split("Calculating variability")[0].rstrip()
        + "\n\n"
        + (
            "Calculating variability or spread: pvariance (population variance of data), variance (sample "
            "variance of data), pstdev (population standard deviation), stdev (sample standard deviation)."
        )
    )
    import this  # noqa: F401  (prints the Zen once; its text is kept rot13-encoded in this.s)

    out["zen"] = codecs.decode(this.s, "rot13")
    return out


def main() -> None:
    (HERE / "docs").mkdir(exist_ok=True)
    for name, text in docs().items():
        (HERE / "docs" / f"{name}.md").write_text(f"# {name}\n\n{text.strip()}\n", encoding="utf-8")
    with open(HERE / "train.jsonl", "w", encoding="utf-8") as f:
        for i, (doc, q) in enumerate(TRAIN):
            f.write(json.dumps({"id": f"t{i:02d}", "context_file": f"docs/{doc}.md", "question": q}) + "\n")
    with open(HERE / "questions.jsonl", "w", encoding="utf-8") as f:
        for i, (doc, q) in enumerate(TRAIN):
            f.write(json.dumps({"id": f"t{i:02d}", "document": f"{doc}.md", "question": q}) + "\n")
    with open(HERE / "eval.jsonl", "w", encoding="utf-8") as f:
        for i, (doc, q, answers) in enumerate(EVAL):
            rec = {"id": f"e{i:02d}", "context_file": f"docs/{doc}.md", "question": q, "answers": answers}
            f.write(json.dumps({**rec, "task": doc}) + "\n")


if __name__ == "__main__":
    main()

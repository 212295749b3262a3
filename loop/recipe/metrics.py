"""Substring exact match (SubEM), the paper's metric, with LongBench's normalisations: SQuAD-style for
English, LongBench's `normalize_zh_answer` for its Chinese tasks."""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
# LongBench metrics.py normalize_zh_answer: ASCII punctuation plus these (the set is LongBench's, quirks
# included: "》" is in it, "《" is not)
_ZH_PUNCT = _PUNCT | set(
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏."
)
# LongBench's Chinese datasets (its `dataset` field); any other task named *_zh counts as Chinese too
ZH_TASKS = frozenset({"multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"})


def is_zh_task(task: str | None) -> bool:
    return bool(task) and (task in ZH_TASKS or task.endswith("_zh"))  # type: ignore[union-attr]


def normalize(text: str) -> str:
    """Lowercase, strip punctuation, drop articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def normalize_zh(text: str) -> str:
    """LongBench's normalize_zh_answer: lowercase, strip Chinese and English punctuation, drop all whitespace."""
    return "".join("".join(ch for ch in text.lower() if ch not in _ZH_PUNCT).split())


def subem(prediction: str, answers: list[str], task: str | None = None) -> float:
    """1.0 if some normalised gold answer is a substring of the normalised prediction, else 0.0. A LongBench
    Chinese task (`task`, see is_zh_task) is normalised as LongBench normalises Chinese answers."""
    if isinstance(answers, (str, bytes)) or not all(isinstance(a, str) for a in answers):
        raise TypeError(f"answers must be a list of strings, not {type(answers).__name__} {answers!r:.60}")
    norm = normalize_zh if is_zh_task(task) else normalize
    pred = norm(prediction)
    return float(any(g and g in pred for g in map(norm, answers)))

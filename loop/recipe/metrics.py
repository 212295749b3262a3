"""Substring exact match (SubEM), the paper's metric, with SQuAD-style normalisation."""

from __future__ import annotations

import re
import string

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lowercase, strip punctuation, drop articles a/an/the, squeeze whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def subem(prediction: str, answers: list[str]) -> float:
    """1.0 if some normalised gold answer is a substring of the normalised prediction, else 0.0."""
    pred = normalize(prediction)
    golds = [normalize(a) for a in answers]
    return float(any(g and g in pred for g in golds))

"""Answer normalization and matching shared by the QA tasks (SQuAD-style).

`normalize_answer` lowercases, drops punctuation and the articles a/an/the, and squeezes
whitespace (the SQuAD v1.1 evaluation script's rule). Matches are only ever taken against the
model's generated continuation, never against the prompt.
"""
from __future__ import annotations

import re
import string
import unicodedata

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation) | {"‘", "’", "“", "”", "–", "—", "…", "´", "`"}


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, strip punctuation, articles and extra whitespace.

    Unicode is NFKC-normalized first so that e.g. full-width characters compare equal.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expected a string, got {type(text).__name__}: {text!r}.")
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCTUATION else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _normalized_golds(golds) -> list[str]:
    if isinstance(golds, str):
        golds = [golds]
    normalized = [normalize_answer(g) for g in golds if isinstance(g, str)]
    return [g for g in dict.fromkeys(normalized) if g]  # unique, non-empty, order kept


def exact_match(prediction: str, golds) -> bool:
    """True when the normalized prediction equals one normalized gold answer (or alias)."""
    prediction = normalize_answer(prediction)
    return any(prediction == g for g in _normalized_golds(golds))


def contains_match(prediction: str, golds) -> bool:
    """True when a normalized gold answer appears in the normalized prediction as whole words.

    Whole words: "paris" matches "it is paris france" but "art" does not match "party".
    """
    padded = f" {normalize_answer(prediction)} "
    return any(f" {g} " in padded for g in _normalized_golds(golds))


def first_line(text: str) -> str:
    """The first line of the stripped text (how open-domain QA reads a short answer)."""
    return text.strip().split("\n")[0].strip()

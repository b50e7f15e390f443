"""Step quality: Gopher-style repetition and line-shape rules (Rae et al. 2021, appendix A), off by
default since OpenWebText had none; turn it on with `corpus.pipeline.quality.enabled=true`."""
from __future__ import annotations

from collections import Counter

from tasks.corpus.document import Document
from tasks.corpus.step import Step


def duplicate_line_fraction(lines: list[str]) -> float:
    """Share of the lines that repeat an earlier line of the same document."""
    counts = Counter(lines)
    return sum(n - 1 for n in counts.values()) / len(lines) if lines else 0.0


class Quality(Step):
    """Drop documents made of repeated lines, or of lines too short to be prose (menus, lists)."""

    name, label = "quality", "quality"

    def __init__(self, max_duplicate_lines: float = 0.3, min_words_per_line: float = 3.0):
        super().__init__()
        self.max_duplicate_lines, self.min_words_per_line = max_duplicate_lines, min_words_per_line

    def reject(self, doc: Document) -> str | None:
        lines = [line.strip() for line in doc.text.split("\n") if line.strip()]
        if duplicate_line_fraction(lines) > self.max_duplicate_lines:
            return "repeated_lines"
        if lines and sum(len(line.split()) for line in lines) / len(lines) < self.min_words_per_line:
            return "short_lines"
        return None

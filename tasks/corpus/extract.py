"""Step extract: the article text of each fetched page (newspaper3k, trafilatura or their ensemble)."""
from __future__ import annotations

import logging
import os
import re

# tldextract (used by newspaper3k) would otherwise download the public suffix list.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import newspaper  # noqa: E402
import trafilatura  # noqa: E402

from tasks.corpus.document import Document  # noqa: E402
from tasks.corpus.step import Step  # noqa: E402

# trafilatura warns once per page it finds no article in ("discarding data"); the step counts those
# pages (extract/empty), and at scale the warnings would bury every other log line.
logging.getLogger("trafilatura").setLevel(logging.ERROR)
PLACEHOLDER_URL = "http://localhost/"
NEARLY_EMPTY_WORDS = 50  # below this, the precision pass may have dropped the article itself
SOCIAL_LINE = re.compile(r"^(share|follow|like this|also on|read more|related|advertisement|sign up|subscribe|"
                         r"click here|image:|photo:|credit:)", re.I)


def _newspaper_config() -> newspaper.Config:
    config = newspaper.Config()
    config.fetch_images = False
    config.memoize_articles = False
    return config


NEWSPAPER_CONFIG = _newspaper_config()


def trafilatura_text(html: str, url: str | None, favor_precision: bool = False, fast: bool = False) -> str:
    return trafilatura.extract(html, url=url, include_comments=False, include_tables=False,
                               favor_precision=favor_precision, fast=fast) or ""


def without_edge_boilerplate(text: str) -> str:
    """Drop share/follow/subscribe lines, and one-word lines (datelines, labels) at either end."""
    lines = [line for line in text.split("\n") if not SOCIAL_LINE.match(line.strip())]
    while lines and len(lines[0].split()) < 2:
        lines.pop(0)
    while lines and len(lines[-1].split()) < 2:
        lines.pop()
    return "\n".join(lines)


def ensemble_text(html: str, url: str | None) -> str:
    """trafilatura's precision-favouring output, cleaned at the edges.

    The pass runs first without trafilatura's fallback extractors (readability, jusText): they take a
    third of its time, and on the pages measured (the 60 real pages, the sample web) they change its
    output only where it came out nearly empty. So only then does the pass run again with them. If
    that too is nearly empty, the default pass runs as well, and wins if the precision pass lost over
    half of its text (then it cut into the article, not just the clutter around it)."""
    precise = trafilatura_text(html, url, favor_precision=True, fast=True)
    if len(precise.split()) < NEARLY_EMPTY_WORDS:
        precise = trafilatura_text(html, url, favor_precision=True)
    if len(precise.split()) < NEARLY_EMPTY_WORDS:
        default = trafilatura_text(html, url)
        precise = precise if len(precise) >= len(default) / 2 else default
    return without_edge_boilerplate(precise)


EXTRACTORS = ("newspaper", "trafilatura", "ensemble")


def checked_method(method: str) -> str:
    if method not in EXTRACTORS:
        raise ValueError(f"unknown extractor {method!r}: use one of {', '.join(EXTRACTORS)}")
    return method


def extract(html: str, url: str | None = None, method: str = "newspaper") -> str:
    """The main article text of a page, or '' when it has none.

    Methods: "newspaper" (newspaper3k, the original OpenWebText's), "trafilatura", and
    "ensemble" (trafilatura's precision pass, with the default pass as a fallback, see `ensemble_text`).
    """
    if not html.strip():
        return ""
    if method == "trafilatura":
        return trafilatura_text(html, url)
    if method == "ensemble":
        return ensemble_text(html, url)
    checked_method(method)
    article = newspaper.Article(url or PLACEHOLDER_URL, config=NEWSPAPER_CONFIG)
    article.download(input_html=html)
    article.parse()
    return article.text.strip()


def shingle_scores(predicted: str, truth: str, n: int = 4) -> tuple[float, float, float]:
    """Precision, recall and F1 of the predicted text's word n-grams against the true article's
    (the article-extraction-benchmark's metric; averaged over pages by the caller)."""
    def grams(text: str) -> set[tuple[str, ...]]:
        words = re.findall(r"\w+", text.lower())
        return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}

    pred, gold = grams(predicted), grams(truth)
    if not pred or not gold:
        return (1.0, 1.0, 1.0) if pred == gold else (0.0, 0.0, 0.0)
    overlap = len(pred & gold)
    precision, recall = overlap / len(pred), overlap / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall) if overlap else 0.0


class Extract(Step):
    """The article text of each fetched page; pages without one, or that break the extractor, are dropped."""

    name, label = "extract", "extracted"

    def __init__(self, method: str = "ensemble"):
        super().__init__()
        self.method = checked_method(method)  # at the door: per page it would only count errors

    def reject(self, doc: Document) -> str | None:
        if "\x00" in doc.html[:1024]:  # a binary body served as HTML (a WARC from elsewhere): not text
            doc.html = ""
            return "binary"
        doc.text, doc.html = extract(doc.html, doc.url, self.method), ""
        return None if doc.text else "empty"

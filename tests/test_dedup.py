import json
import random

import numpy as np
import pytest

from bench.neardup import benchmark_stream, exact_duplicates, precision_recall
from flows.corpus import band_groups
from sample.build import TOPICS, article
from tasks.corpus.document import Document, write_documents
from tasks.corpus.neardup import (Source, band_hashes, band_table, confirm, dropped, jaccard as exact_jaccard,
                                  near_duplicates, shard_pairs, shingle_hashes, write_band_pairs)
from tests.conftest import shared_path


def story(seed: int) -> str:
    rng = random.Random(seed)
    return "\n".join(article(rng, rng.choice(sorted(TOPICS)))[1])


def edit_words(text: str, every: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = text.split()
    for i in range(0, len(words), every):
        words[i] = rng.choice(["alpha", "beta", "gamma"])
    return " ".join(words)


def jaccard(a: str, b: str) -> float:
    sa, sb = ({" ".join(w[i:i + 5]) for i in range(len(w) - 4)} for w in (a.lower().split(), b.lower().split()))
    return len(sa & sb) / len(sa | sb)


def test_hashed_jaccard_equals_jaccard_of_the_5gram_strings():
    a, b = story(7), edit_words(story(7), every=9)
    assert exact_jaccard(shingle_hashes(a), shingle_hashes(b)) == pytest.approx(jaccard(a, b))


def test_light_edit_is_dropped_and_first_occurrence_kept():
    original = story(1)
    copy = edit_words(original, every=60)
    assert jaccard(original, copy) > 0.7
    assert near_duplicates([("a", original), ("b", story(2)), ("c", copy)]) == ["c"]


def test_distinct_stories_are_all_kept():
    docs = [(str(i), story(i)) for i in range(40)]
    assert near_duplicates(docs) == []


def test_heavy_edit_below_threshold_is_kept():
    original = story(3)
    rewrite = edit_words(original, every=3)
    assert jaccard(original, rewrite) < 0.2
    assert near_duplicates([("a", original), ("b", rewrite)]) == []


def test_empty_and_tiny_documents_do_not_break_the_index():
    assert near_duplicates([("a", ""), ("b", "   "), ("c", "hello"), ("d", "hello"), ("e", story(5))]) == ["b", "d"]


def test_shingles_are_lowercased_word_5grams():
    assert shingle_hashes("A b c d e F").size == 2
    assert (shingle_hashes("A b c d e F") == shingle_hashes("a B c D e f")).all()
    assert shingle_hashes("too short").size == 1 and shingle_hashes("").size == 0


def test_precision_and_recall_against_exact_jaccard_on_real_articles():
    truth = json.loads(shared_path("data", "article-pages", "ground-truth.json").read_text())
    docs = benchmark_stream([item["articleBody"] for item in truth.values()])
    exact = exact_duplicates(docs)
    precision, recall = precision_recall(set(near_duplicates(docs)), exact)
    assert len(exact) > 300 and precision >= 0.995 and recall >= 0.995


def write_sources(tmp_path, docs: list[tuple[str, str]], n_shards: int, earlier: bool = False) -> list[Source]:
    """The documents cut into `n_shards` shard files with their band keys, as the corpus flow writes them."""
    sources = []
    for k, part in enumerate(np.array_split(np.arange(len(docs)), n_shards)):
        folder = tmp_path / f"{'old' if earlier else 'new'}-{n_shards}-{k}"
        folder.mkdir()
        write_documents(folder / "docs.jsonl.zst", [Document(id=docs[i][0], url=docs[i][0], text=docs[i][1]) for i in part])
        np.save(folder / "bands.npy", band_table(np.array([band_hashes(docs[i][1]) for i in part],
                                                           dtype=np.uint64).reshape(-1, 20)))
        sources.append(Source(str(folder / "docs.jsonl.zst"), str(folder / "bands.npy"), len(part), earlier))
    return sources


def sharded_run(sources: list[Source], max_bucket: int = 64, chunk_docs: int = 7) -> np.ndarray:
    """The flow's phases: pair files band by band (key ranges of `chunk_docs` documents), exact
    confirmation shard by shard over its slices of the pair files, the decision."""
    bands = []
    for b in range(20):
        path = f"{sources[0].bands}.pairs-{b}.npy"
        bands.append((path, write_band_pairs(sources, b, max_bucket, chunk_docs, path)))
    confirmed = [confirm(shard_pairs([(path, bounds[s], bounds[s + 1]) for path, bounds in bands]), sources, 0.5, 5)
                 for s in range(len(sources))]
    return dropped(np.concatenate(confirmed))


def stream(n: int = 30) -> list[tuple[str, str]]:
    rng = random.Random(0)
    docs = []
    for i in range(n):
        docs.append((f"{i}", story(i)))
        if i % 3 == 0:
            docs.append((f"{i}.copy", edit_words(story(i), every=rng.choice([20, 40, 80]), seed=i)))
    rng.shuffle(docs)
    return docs


@pytest.mark.parametrize("n_shards", [1, 4, 7])
def test_sharded_phases_drop_what_exact_jaccard_drops_whatever_the_shard_count(tmp_path, n_shards):
    docs = stream()
    gone = sharded_run(write_sources(tmp_path, docs, n_shards))
    assert {docs[g][0] for g in gone} == exact_duplicates(docs) == set(near_duplicates(docs))
    assert len(gone) == 10


def test_earlier_versions_are_never_dropped_and_their_copies_are(tmp_path):
    old = [(f"old{i}", story(i)) for i in range(6)]
    new = [("copy", edit_words(story(2), every=50)), ("fresh", story(50)), ("copy2", edit_words(story(4), every=60))]
    sources = write_sources(tmp_path, old, 2, earlier=True) + write_sources(tmp_path, new, 1)
    assert [new[g - len(old)][0] for g in sharded_run(sources)] == ["copy", "copy2"]


def test_a_huge_bucket_of_copies_keeps_only_the_first(tmp_path):
    docs = [(f"{i}", story(1)) for i in range(300)] + [("other", story(2))]
    gone = sharded_run(write_sources(tmp_path, docs, 3), max_bucket=8)
    assert sorted(gone.tolist()) == list(range(1, 300))


def test_a_chain_of_copies_is_judged_against_kept_documents_only():
    # b near-duplicates a, c near-duplicates b but not a: b goes, and c stays, since its only match was dropped
    words = [f"w{i}" for i in range(140)]
    a, b, c = (" ".join(words[k:k + 100]) for k in (0, 20, 40))
    assert jaccard(a, b) > 0.5 and jaccard(b, c) > 0.5 and jaccard(a, c) < 0.5
    assert near_duplicates([("a", a), ("b", b), ("c", c)]) == ["b"]


def test_a_band_task_holds_one_key_range_whatever_the_corpus_size(tmp_path):
    import tracemalloc

    def peak(n: int, run: str) -> tuple[int, int]:  # every text 8 times: the pairs (28 a text) grow too
        (tmp_path / run).mkdir()
        rng = random.Random(n)
        texts = [" ".join(f"w{rng.randrange(10**6)}" for _ in range(60)) for _ in range(n // 8)]
        sources = write_sources(tmp_path / run, [(f"{i}", texts[i % len(texts)]) for i in range(n)], 8)
        tracemalloc.start()
        bounds = write_band_pairs(sources, 0, 64, 100, str(tmp_path / run / "pairs.npy"))
        used = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return used, bounds[-1]

    peak(200, "warm-up")  # first calls allocate once-only caches
    # the lower of two runs: tracemalloc also counts what other threads of the test process allocate
    # meanwhile (7 KB more once in a full run, past the bound below)
    (small, small_pairs), (large, large_pairs) = (min(peak(n, f"{n}-{i}") for i in range(2)) for n in (200, 3200))
    assert (small_pairs, large_pairs) == (28 * 25, 28 * 400)
    # 16 times the documents and pairs in the same shards, ranges of the same size: the peak is the
    # heaviest range's, and the heaviest of 32 is a little heavier than that of 2 (holding every
    # pair of the band, as this task once did, measured 4.4 times)
    assert large < 1.5 * small


@pytest.mark.parametrize("workers, tasks", [(1, 2), (2, 4), (64, 20)])
def test_bands_are_cut_into_two_tasks_per_worker_in_order(workers, tasks):
    groups = band_groups(20, workers)
    assert len(groups) == tasks and [band for group in groups for band in group] == list(range(20))

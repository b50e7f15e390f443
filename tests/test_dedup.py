import json
import random
import shutil
import socket
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from bench.neardup import benchmark_stream, exact_duplicates, precision_recall
from sample.build import TOPICS, article
from tasks.corpus.neardup import NearDuplicateIndex, drop_near_duplicates, jaccard as exact_jaccard, near_duplicates, shingle_hashes
from tasks.corpus.document import Document
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


def test_drop_near_duplicates_counts():
    docs = [Document(id="a", url="a", text=story(4)), Document(id="b", url="b", text=story(4))]
    stats = Counter()
    kept = list(drop_near_duplicates(docs, NearDuplicateIndex(), stats))
    assert [d.id for d in kept] == ["a"] and stats == Counter({"dedup/dropped": 1, "dedup/kept": 1})


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


def test_index_persists_between_runs(tmp_path):
    cfg = {"threshold": 0.5, "bands": 20, "rows": 2, "ngram": 5, "backend": "disk"}
    first = NearDuplicateIndex.open(cfg, tmp_path / "index.pkl")
    assert near_duplicates([("a", story(1)), ("b", story(2))], index=first) == []
    first.save(tmp_path / "index.pkl")
    later = NearDuplicateIndex.open(cfg, tmp_path / "index.pkl")
    copy = edit_words(story(2), every=50)
    assert near_duplicates([("a", story(1)), ("c", copy), ("d", story(3))], index=later) == ["c"]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real redis-server on 127.0.0.1, on a free port, for this module."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: `apt-get install redis-server` (.ci/run does this)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--dir", str(tmp_path_factory.mktemp("redis"))], stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield {"host": "127.0.0.1", "port": port, "db": 0}
    proc.terminate()
    proc.wait()


def redis_cfg(server, name):
    return {"threshold": 0.5, "bands": 20, "rows": 2, "ngram": 5, "backend": "redis", "redis": {**server, "name": name}}


def test_redis_index_is_shared_between_workers(redis_server):
    first = NearDuplicateIndex.open(redis_cfg(redis_server, "shared"))
    second = NearDuplicateIndex.open(redis_cfg(redis_server, "shared"))
    assert near_duplicates([("a", story(1))], index=first) == []
    assert near_duplicates([("b", edit_words(story(1), every=40)), ("c", story(2))], index=second) == ["b"]


def test_concurrent_redis_workers_never_keep_both_halves_of_a_pair(redis_server):
    pairs = [(story(100 + i), edit_words(story(100 + i), every=30, seed=i)) for i in range(12)]
    workers = [NearDuplicateIndex.open(redis_cfg(redis_server, "race")) for _ in range(2)]

    def run(w: int) -> list[str]:
        # worker 0 sees the originals, worker 1 the copies, at the same time
        return [f"{i}.{w}" for i, pair in enumerate(pairs) if workers[w].add_if_new(f"{i}.{w}", pair[w])]

    with ThreadPoolExecutor(2) as pool:
        kept = [k for ks in pool.map(run, [0, 1]) for k in ks]
    assert sorted(int(k.split(".")[0]) for k in kept) == list(range(12))  # one of each pair, never two

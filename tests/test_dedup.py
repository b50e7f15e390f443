import random
from collections import Counter

from sample.build import TOPICS, article
from tasks.dedup import drop_near_duplicates, near_duplicates, shingles
from tasks.document import Document


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
    sa, sb = shingles(a, 5), shingles(b, 5)
    return len(sa & sb) / len(sa | sb)


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
    kept = list(drop_near_duplicates(docs, {"threshold": 0.5, "num_perm": 128, "ngram": 5}, stats))
    assert [d.id for d in kept] == ["a"] and stats == Counter({"dedup/dropped": 1, "dedup/kept": 1})


def test_shingles_are_lowercased_word_5grams():
    assert shingles("A b c d e F", 5) == {b"a b c d e", b"b c d e f"}
    assert shingles("too short", 5) == {b"too short"}

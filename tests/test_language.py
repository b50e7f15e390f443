from collections import Counter

import pytest

from sample.build import NON_ENGLISH
from tasks.corpus.document import Document
from tasks.corpus.language import Language, detector, identify

ENGLISH = ("The council agreed on Tuesday to extend the bus lanes along the harbour road, "
           "after residents complained about long delays during the morning rush.")


@pytest.mark.parametrize("lang", sorted(NON_ENGLISH))
def test_identifies_the_sample_languages(lang):
    assert identify(" ".join(NON_ENGLISH[lang][1]))[0] == lang


def test_english_with_high_probability():
    lang, prob = identify(ENGLISH)
    assert lang == "en" and prob > 0.9


def test_whole_document_is_read():
    # a German preamble longer than 80 characters, then far more English: a detector that reads only
    # the first 80 characters says "de", one that reads the whole document "en"
    assert detector().config.max_input_length is None
    preamble = " ".join(NON_ENGLISH["de"][1])[:200]
    assert len(preamble) > 80 and identify(preamble[:80])[0] == "de"
    assert identify(preamble + " " + " ".join([ENGLISH] * 20))[0] == "en"


def test_language_step_filters_and_counts():
    docs = [Document(id="1", url="u1", text=ENGLISH), Document(id="2", url="u2", text=" ".join(NON_ENGLISH["fr"][1])),
            Document(id="3", url="u3", text=ENGLISH)]
    stats = Counter()
    kept = list(Language(keep=["en"], min_prob=0.5)(docs, stats))
    assert [d.id for d in kept] == ["1", "3"] and kept[0].lang == "en" and kept[0].lang_prob > 0.5
    assert stats == Counter({"language/in": 3, "language/lang_en": 2, "language/lang_fr": 1, "language/kept": 2,
                             "language/other_language": 1})


def test_a_probability_below_the_bar_is_dropped_with_its_reason():
    stats = Counter()
    assert list(Language(keep=["en"], min_prob=0.999999)([Document(id="1", url="u", text="ok then")], stats)) == []
    assert stats["language/low_probability"] == 1

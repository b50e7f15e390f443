from collections import Counter

import pytest

from sample.build import NON_ENGLISH
from tasks.corpus.document import Document
from tasks.corpus.language import detector, identify, keep_language

ENGLISH = ("The council agreed on Tuesday to extend the bus lanes along the harbour road, "
           "after residents complained about long delays during the morning rush.")


@pytest.mark.parametrize("lang", sorted(NON_ENGLISH))
def test_identifies_the_sample_languages(lang):
    assert identify(" ".join(NON_ENGLISH[lang][1]))[0] == lang


def test_english_with_high_probability():
    lang, prob = identify(ENGLISH)
    assert lang == "en" and prob > 0.9


def test_whole_document_is_read():
    # a long German preamble followed by English: truncation at 80 characters would say "de"
    assert detector().config.max_input_length is None
    mixed = "Guten Tag. " + " ".join([ENGLISH] * 20)
    assert identify(mixed)[0] == "en"


def test_keep_language_filters_and_counts():
    docs = [Document(id="1", url="u1", text=ENGLISH), Document(id="2", url="u2", text=" ".join(NON_ENGLISH["fr"][1]))]
    stats = Counter()
    kept = list(keep_language(docs, {"keep": ["en"], "min_prob": 0.5}, stats))
    assert [d.id for d in kept] == ["1"] and kept[0].lang == "en" and kept[0].lang_prob > 0.5
    assert stats == Counter({"language/en": 1, "language/fr": 1, "language/kept": 1})

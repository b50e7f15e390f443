import gzip
import json

import pytest

from sample.web import WEB_ROOT
from tasks.corpus.extract import (NEARLY_EMPTY_WORDS, extract, shingle_scores, trafilatura_text,
                                  without_edge_boilerplate)
from tasks.corpus.warc import decode_html
from tests.conftest import shared_path

SAMPLE_PAGE = WEB_ROOT / "www.harbourgazette.example" / "news" / "2019" / "recycling-00.html"
BOILERPLATE = ["We use cookies", "Related stories", "All rights reserved", "Sign up", "Accept all"]


@pytest.mark.parametrize("method", ["newspaper", "trafilatura", "ensemble"])
def test_extracts_the_story_without_boilerplate(method):
    html = SAMPLE_PAGE.read_text()
    text = extract(html, "http://www.harbourgazette.example/news/2019/recycling-00", method)
    first_paragraph = html.split("<p>")[1].split("</p>")[0]
    assert first_paragraph in text
    assert not any(phrase in text for phrase in BOILERPLATE)


@pytest.mark.parametrize("html", ["", "   ", "<html><head><title>x</title></head><body><script>var x = 1;</script></body></html>"])
@pytest.mark.parametrize("method", ["newspaper", "trafilatura", "ensemble"])
def test_no_article_gives_empty_string(html, method):
    assert extract(html, None, method) == ""


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown extractor"):
        extract("<p>x</p>", None, "magic")


@pytest.mark.parametrize("body, content_type, expected", [
    ("Grüße aus Köln".encode("utf-8"), "text/html; charset=utf-8", "Grüße aus Köln"),
    ("Grüße aus Köln".encode("latin-1"), "text/html; charset=iso-8859-1", "Grüße aus Köln"),
    ('<meta charset="windows-1252"><p>naïve café</p>'.encode("cp1252"), "text/html",
     '<meta charset="windows-1252"><p>naïve café</p>'),
    # mislabelled: the header claims UTF-8 but the bytes are Latin-1; the meta tag is right
    ('<meta charset="iso-8859-1"><p>déjà vu</p>'.encode("latin-1"), "text/html; charset=utf-8",
     '<meta charset="iso-8859-1"><p>déjà vu</p>'),
])
def test_decode_html_finds_the_charset(body, content_type, expected):
    assert decode_html(body, content_type) == expected


def test_shingle_scores():
    assert shingle_scores("a b c d e", "a b c d e") == (1.0, 1.0, 1.0)
    p, r, f1 = shingle_scores("a b c d e", "a b c d e f g")  # 2 of 2 predicted grams right, 2 of 4 found
    assert (p, r) == (1.0, 0.5) and f1 == pytest.approx(2 / 3)
    assert shingle_scores("", "a b c d") == (0.0, 0.0, 0.0)


def test_edge_boilerplate_is_dropped():
    text = "BERLIN\nThe council met on Monday.\nIt agreed.\nShare this story with a friend!\nTags"
    assert without_edge_boilerplate(text) == "The council met on Monday.\nIt agreed."


@pytest.mark.parametrize("method, min_f1", [("newspaper", 0.94), ("trafilatura", 0.955), ("ensemble", 0.965)])
def test_quality_on_real_news_pages(method, min_f1):
    root = shared_path("data", "article-pages")
    truth = json.loads((root / "ground-truth.json").read_text())
    f1s = []
    for page_id, item in truth.items():
        html = gzip.decompress((root / "html" / f"{page_id}.html.gz").read_bytes()).decode("utf-8")
        f1s.append(shingle_scores(extract(html, item["url"], method), item["articleBody"])[2])
    assert sum(f1s) / len(f1s) >= min_f1


def test_the_ensemble_skips_trafilaturas_fallbacks_only_where_they_change_nothing():
    """The ensemble's cheap first pass (no readability, no jusText) gives the very text of the pass
    with them on every sample page, including one where the cheap pass alone comes out short."""
    def with_fallbacks(html: str) -> str:
        precise = trafilatura_text(html, None, favor_precision=True)
        if len(precise.split()) < NEARLY_EMPTY_WORDS:
            default = trafilatura_text(html, None)
            precise = precise if len(precise) >= len(default) / 2 else default
        return without_edge_boilerplate(precise)

    pages = [p.read_text() for p in sorted(WEB_ROOT.rglob("*.html"))]
    rescued = [html for html in pages if trafilatura_text(html, None, favor_precision=True, fast=True)
               != trafilatura_text(html, None, favor_precision=True)]
    assert rescued, "no sample page needs the fallbacks: the test would not exercise that branch"
    assert [extract(html, None, "ensemble") for html in pages] == [with_fallbacks(html) for html in pages]


def test_a_binary_body_in_a_warc_is_counted_as_binary_not_empty():
    from collections import Counter

    from tasks.corpus.document import Document
    from tasks.corpus.extract import Extract

    body = decode_html(bytes(range(256)) * 20, "text/html")  # a file served as HTML
    docs = [Document(id="b", url="u", html=body), Document(id="p", url="v", html=SAMPLE_PAGE.read_text())]
    stats = Counter()
    assert [d.id for d in Extract("trafilatura")(docs, stats)] == ["p"]
    assert stats["extract/binary"] == 1 and stats["extract/empty"] == 0

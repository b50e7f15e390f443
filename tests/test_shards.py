"""Shards: WARC byte ranges, done markers, the step base, the quality filter, cheap cache keys and
the lazy token loader."""
import io
import json
import os
from collections import Counter

import numpy as np
from pydantic import TypeAdapter
import pytest
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from flows.common import load_config
from model.data import RandomDraws, TokenShards, WindowBatches
from tasks.storage import file_key
from tasks.corpus.document import Document, read_documents
from tasks.corpus.warc import warc_records
from tasks.corpus.quality import Quality
from tasks.corpus.prefect_tasks import shard_task
from tasks.corpus.shards import ShardPlan, ShardResult, plan_warc_shards
from tasks.corpus.step import Step, StepFailed, build_steps, check_errors, funnel_rows
from tests.test_dedup import story


def write_warc(path, n: int, gzip: bool = True, host: str = "example.com") -> None:
    """A WARC of `n` article pages, https://`host`/i holding story i."""
    with open(path, "wb") as fh:
        writer = WARCWriter(fh, gzip=gzip)
        for i in range(n):
            html = f"<html><body><article><p>{story(i)}</p></article></body></html>".encode()
            headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html")], protocol="HTTP/1.1")
            writer.write_record(writer.create_warc_record(f"https://{host}/{i}", "response",
                                                          payload=io.BytesIO(html), http_headers=headers))


@pytest.mark.parametrize("name", ["a.warc.gz", "a.warc"])
def test_byte_range_shards_read_every_record_exactly_once(tmp_path, name):
    write_warc(tmp_path / name, 40, gzip=name.endswith(".gz"))
    size = (tmp_path / name).stat().st_size
    shards = plan_warc_shards([str(tmp_path / name)], -(-size // 5))  # ceil: exactly 5 ranges
    assert len(shards) == 5
    per_shard = [[page.url for page in warc_records(tmp_path / name, s.start, s.end)] for s in shards]
    assert [url for urls in per_shard for url in urls] == [f"https://example.com/{i}" for i in range(40)]
    assert all(len(urls) >= 6 for urls in per_shard)  # each range holds its own records


def shard_of(tmp_path) -> ShardPlan:
    write_warc(tmp_path / "a.warc.gz", 6)
    return plan_warc_shards([str(tmp_path / "a.warc.gz")], 10**9)[0]


def test_a_finished_shard_is_reused_and_a_changed_one_redone(tmp_path):
    cfg = load_config(["logger=none"])["corpus"]
    shard, out = shard_of(tmp_path), tmp_path / "out"
    first = shard_task.fn(shard, str(out), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"])
    assert first["stats"]["extract/kept"] == 6
    written = os.stat(out / "docs.jsonl.zst").st_mtime_ns
    assert shard_task.fn(shard, str(out), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"]) == first
    assert os.stat(out / "docs.jsonl.zst").st_mtime_ns == written  # reused from its done marker
    cfg["pipeline"]["language"]["keep"] = ["de"]  # other settings: the marker no longer matches
    redone = shard_task.fn(shard, str(out), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"])
    assert redone["stats"]["language/other_language"] == 6 and redone["source"].n == 0
    assert TypeAdapter(ShardResult).validate_python(json.loads((out / "done.json").read_text())["result"]) == redone


def test_a_killed_shard_leaves_no_marker_and_is_redone(tmp_path):
    cfg = load_config(["logger=none"])["corpus"]
    shard, out = shard_of(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "docs.jsonl.zst").write_bytes(b"half a file")  # what a kill -9 leaves behind
    result = shard_task.fn(shard, str(out), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"])
    assert len(list(read_documents(out / "docs.jsonl.zst"))) == result["source"].n == 6


class Shouty(Step):
    name, label = "shouty", "not shouting"

    def reject(self, doc: Document) -> str | None:
        if doc.text == "boom":
            raise RuntimeError("bad page")
        return "shouting" if doc.text.isupper() else None


def test_the_base_counts_in_kept_reasons_and_errors_for_every_step():
    docs = [Document(id=str(i), url=str(i), text=t) for i, t in enumerate(["calm", "LOUD", "boom", "fine"])]
    stats = Counter()
    assert [d.text for d in Shouty()(docs, stats)] == ["calm", "fine"]
    assert stats == Counter({"shouty/in": 4, "shouty/kept": 2, "shouty/shouting": 1, "shouty/error_RuntimeError": 1})


def test_steps_are_named_and_one_is_overridden_alone_keeping_the_order():
    base = load_config([])["corpus"]["pipeline"]
    pipeline = load_config(["corpus.pipeline.quality.enabled=true", "corpus.pipeline.extract.method=trafilatura"])[
        "corpus"]["pipeline"]
    assert list(pipeline) == list(base) == ["extract", "language", "quality", "decontaminate"]
    assert pipeline["language"] == base["language"] and pipeline["extract"]["method"] == "trafilatura"
    assert [type(s).__name__ for s in build_steps(pipeline)] == ["Extract", "Language", "Quality"]
    assert [label for label, _ in funnel_rows(pipeline)] == ["extracted", "English", "quality"]


def test_quality_drops_repeated_and_list_like_documents():
    prose = "\n".join(f"Line {i} of a story that reads like ordinary prose today." for i in range(10))
    docs = [Document(id="1", url="1", text=prose), Document(id="2", url="2", text="Buy now\n" * 10),
            Document(id="3", url="3", text="\n".join(["Home", "News", "Sport", "Weather", "Travel", "x y"]))]
    stats = Counter()
    assert [d.id for d in Quality()(docs, stats)] == ["1"]
    assert stats["quality/repeated_lines"] == 1 and stats["quality/short_lines"] == 1


def test_cache_keys_follow_size_and_mtime_without_reading_the_bytes(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"a" * 1000)
    key = file_key(path)
    os.utime(path, ns=(1, 1))
    touched = file_key(path)
    assert touched != key
    path.write_bytes(b"b" * 1000)  # same size and mtime: the same key, since the bytes are never read
    os.utime(path, ns=(1, 1))
    assert file_key(path) == touched
    path.write_bytes(b"b" * 1001)
    os.utime(path, ns=(1, 1))
    assert file_key(path) != touched


def test_a_cache_key_sees_the_files_a_record_names(tmp_path):
    from tasks.caching import fingerprint
    from tasks.corpus import neardup

    warc, docs = tmp_path / "a.warc.gz", tmp_path / "docs.jsonl.zst"
    warc.write_bytes(b"x" * 10)
    docs.write_bytes(b"y" * 10)

    def key() -> str:
        inputs = {"shard": ShardPlan("00000", str(warc)), "sources": [neardup.Source(str(docs), str(docs), 1)]}
        return fingerprint(inputs, ("shard", "sources"), neardup)

    before = key()
    assert key() == before
    os.utime(warc, ns=(1, 1))  # a record's file changed: a new key
    assert key() != before
    changed = key()
    docs.write_bytes(b"y" * 11)  # a file inside a list of records, too
    assert key() != changed


@pytest.fixture
def three_shards(tmp_path):
    tokens = [np.arange(k * 1000, k * 1000 + n, dtype=np.uint16) for k, n in enumerate([300, 50, 700])]
    for k, t in enumerate(tokens):
        t.tofile(tmp_path / f"train-{k}.bin")
    manifest = {"splits": {"train": [{"bin": f"train-{k}.bin", "tokens": len(t)} for k, t in enumerate(tokens)],
                           "val": []}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, np.concatenate(tokens)


def test_token_shards_read_across_file_ends_without_loading_them_all(three_shards):
    folder, whole = three_shards
    shards = TokenShards(folder, "train")
    assert len(shards) == len(whole)
    for a, b in [(0, 10), (290, 360), (280, 1050), (349, 351), (1040, 1050)]:
        assert np.array_equal(shards[a:b], whole[a:b])
    assert set(shards.maps) == {0, 1, 2}
    fresh = TokenShards(folder, "train")
    fresh[10:20]
    assert set(fresh.maps) == {0}  # only the file that was read is mapped


def test_random_windows_over_shards_equal_those_over_one_array(three_shards):
    folder, whole = three_shards
    draws = RandomDraws(len(whole), 64, seed=1, batch=4)
    over_shards, over_array = WindowBatches(TokenShards(folder, "train"), draws, 64), WindowBatches(whole, draws, 64)
    for (x1, y1), (x2, y2), _ in zip(over_shards, over_array, range(50)):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_a_damaged_warc_keeps_the_pages_before_the_damage_and_says_so(tmp_path):
    cfg = load_config(["logger=none"])["corpus"]
    write_warc(tmp_path / "a.warc.gz", 6)
    offsets = [page.offset for page in warc_records(tmp_path / "a.warc.gz")]
    data = (tmp_path / "a.warc.gz").read_bytes()
    (tmp_path / "a.warc.gz").write_bytes(data[:offsets[4]] + b"not a WARC record\n" * 50)
    shard = plan_warc_shards([str(tmp_path / "a.warc.gz")], 10**9)[0]
    result = shard_task.fn(shard, str(tmp_path / "out"), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"])
    assert result["stats"]["warc/damaged_file"] == 1 and 2 <= result["stats"]["extract/in"] < 6


def test_a_record_cut_off_mid_way_is_dropped_and_counted_not_kept_half(tmp_path):
    cfg = load_config(["logger=none"])["corpus"]
    write_warc(tmp_path / "a.warc.gz", 6)
    offsets = [page.offset for page in warc_records(tmp_path / "a.warc.gz")]
    data = (tmp_path / "a.warc.gz").read_bytes()
    (tmp_path / "a.warc.gz").write_bytes(data[:(offsets[5] + len(data)) // 2])  # the last record, half of it
    shard = plan_warc_shards([str(tmp_path / "a.warc.gz")], 10**9)[0]
    result = shard_task.fn(shard, str(tmp_path / "out"), cfg["pipeline"], cfg["dedup"], cfg["max_error_share"])
    assert result["stats"]["warc/damaged_file"] == 1 and result["stats"]["extract/in"] == 5


class Broken(Step):
    """A step with a bug: it raises on every document."""

    name, label = "broken", "broken"

    def reject(self, doc: Document) -> str | None:
        raise KeyError("a bug")


def run_broken_shard(tmp_path, pages: int) -> None:
    """Run a shard of `pages` pages through extraction and the `Broken` step."""
    cfg = load_config(["logger=none"])["corpus"]
    write_warc(tmp_path / "a.warc.gz", pages)
    shard = plan_warc_shards([str(tmp_path / "a.warc.gz")], 10**9)[0]
    pipeline = {"extract": cfg["pipeline"]["extract"], "broken": {"_target_": "tests.test_shards.Broken"}}
    shard_task.fn(shard, str(tmp_path / "out"), pipeline, cfg["dedup"], cfg["max_error_share"])


def test_a_step_that_raises_on_every_document_of_a_small_shard_fails_it_and_one_bad_page_does_not(tmp_path):
    with pytest.raises(StepFailed, match=r"step broken raised on 5 of 5 documents"):
        run_broken_shard(tmp_path, 5)
    cfg = load_config(["logger=none"])["corpus"]
    stats = Counter({"broken/in": 5, "broken/error_KeyError": 1, "broken/kept": 4})
    check_errors(stats, build_steps({"broken": {"_target_": "tests.test_shards.Broken"}}), cfg["max_error_share"],
                 "shard 00000")  # a bad page: counted


def test_a_step_that_raises_on_most_documents_fails_the_shard_and_leaves_no_marker(tmp_path):
    with pytest.raises(StepFailed, match=r"step broken raised on 30 of 30 documents \(error_KeyError 30\)"):
        run_broken_shard(tmp_path, 30)
    assert not (tmp_path / "out" / "done.json").exists()  # not done: a rerun does it again

import bz2
import gzip
import json
import lzma
import random
import string
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from flows.common import load_config
from tasks.corpus.document import Document, read_documents
from tasks.corpus.dumpfile import BadDump
from tasks.corpus.urls import SeenUrls, normalise_url, read_submissions, rejection, select_urls, shard_documents
from tests.conftest import shared_path

CFG = load_config()["corpus"]["urls"]
TRACKING = CFG["tracking_params"]


@pytest.mark.parametrize("raw, expected", [
    ("HTTP://WWW.Example.com:80/a/b/", "http://example.com/a/b"),
    ("https://example.com:443/x?utm_source=reddit&amp;id=7#top", "https://example.com/x?id=7"),
    ("https://example.com:8443/x?fbclid=abc", "https://example.com:8443/x"),
    ("https://news.example.com/story?b=2&a=1", "https://news.example.com/story?b=2&a=1"),
])
def test_normalise_url_folds_spellings_of_one_page(raw, expected):
    assert normalise_url(raw, TRACKING) == expected


def record(**fields):
    base = dict(url="https://news.example.com/story", score=10, over_18=False, is_self=False,
                subreddit="news", created_utc=1546300800, title="A story")
    return {**base, **fields}


@pytest.mark.parametrize("fields, reason", [
    ({}, None),
    ({"score": 2}, "low_score"),
    ({"over_18": True}, "nsfw"),
    ({"is_self": True}, "self_post"),
    ({"url": None}, "no_url"),
    ({"url": "https://en.wikipedia.org/wiki/GPT-2"}, "blocked_domain"),
    ({"url": "https://fr.m.wikipedia.org/wiki/Paris"}, "blocked_domain"),
    ({"url": "https://i.imgur.com/x.png"}, "blocked_domain"),
    ({"url": "https://www.youtube.com/watch?v=1"}, "blocked_domain"),
    ({"url": "https://example.com/report.PDF"}, "blocked_extension"),
    ({"url": "https://example.com/clip.mp4"}, "blocked_extension"),
    ({"url": "https://example.com/site.css"}, "blocked_extension"),
])
def test_rejection(fields, reason):
    assert rejection(record(**fields), CFG) == reason


def test_select_urls_keeps_first_of_duplicate_urls():
    stats = Counter()
    records = [record(), record(url="https://www.news.example.com/story/?utm_campaign=x"), record(score=1)]
    docs = list(select_urls([("RS_1", r) for r in records], CFG, stats))
    assert [d.url for d in docs] == ["https://news.example.com/story"]
    assert stats["urls/dropped_duplicate"] == 1 and stats["urls/dropped_low_score"] == 1


def write_dump(path, lines):
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    elif path.suffix == ".xz":
        path.write_bytes(lzma.compress(data))
    elif path.suffix == ".bz2":
        path.write_bytes(bz2.compress(data))
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("suffix", [".zst", ".xz", ".bz2", ".ndjson"])
def test_every_dump_format_streams_and_skips_corrupt_lines(tmp_path, suffix):
    path = tmp_path / f"RS_test{suffix}"
    write_dump(path, [json.dumps(record(title="one")), '{"url": "https://cut', json.dumps(record(title="two"))])
    stats = Counter()
    assert [(d, r["title"]) for d, r in read_submissions([path], stats)] == [(path.name, "one"), (path.name, "two")]
    assert stats["urls/corrupt_line"] == stats[f"urls/{path.name}/corrupt_line"] == 1
    assert stats["urls/records_read"] == 3


def test_truncated_dump_keeps_what_came_before(tmp_path):
    good, cut = tmp_path / "RS_a.zst", tmp_path / "RS_b.zst"
    write_dump(good, [json.dumps(record(title=f"t{i}")) for i in range(3)])
    write_dump(cut, [json.dumps(record(title=f"c{i}")) for i in range(2000)])
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 2])
    stats = Counter()
    titles = [r["title"] for _, r in read_submissions([cut, good], stats)]
    assert stats["urls/truncated_file"] == stats["urls/RS_b.zst/truncated_file"] == 1 and "urls/RS_a.zst/truncated_file" not in stats
    assert titles[-3:] == ["t0", "t1", "t2"] and titles[0] == "c0"


def test_multi_frame_zst_is_read_whole(tmp_path):
    path = tmp_path / "RS_frames.zst"
    frames = [zstandard.ZstdCompressor().compress(f"{json.dumps(record(title=t))}\n".encode()) for t in "abc"]
    path.write_bytes(b"".join(frames))
    assert [r["title"] for _, r in read_submissions([path], Counter())] == ["a", "b", "c"]


def test_real_pushshift_dumps():
    paths = [shared_path("data", "pushshift", f"RS_v2_2005-0{m}.xz") for m in (6, 7)]
    stats = Counter()
    records = list(read_submissions(paths, stats))
    docs = list(select_urls(iter(records), CFG, stats))
    assert stats["urls/corrupt_line"] == 0 and len(records) > 1000
    kept = {r["url"] for _, r in records if rejection(r, CFG) is None}
    assert 0 < len(docs) <= len(kept)
    assert all("wikipedia.org" not in d.url and not d.url.endswith((".jpg", ".pdf")) for d in docs)
    assert len({d.id for d in docs}) == len(docs)


def test_seen_urls_persist_across_runs(tmp_path):
    db = tmp_path / "seen"
    june = [("RS_06", record(url=f"https://example.com/{i}")) for i in range(3)]
    july = [("RS_07", record(url=f"https://example.com/{i}")) for i in range(2, 5)]

    def run(records):
        seen, stats = SeenUrls(db), Counter()
        urls = [d.url for d in select_urls(records, CFG, stats, seen)]
        seen.close()
        return urls, stats

    assert run(june)[0] == [f"https://example.com/{i}" for i in range(3)]
    assert run(june)[0] == [f"https://example.com/{i}" for i in range(3)]  # the same dump again: same URLs
    urls, stats = run(july)
    assert urls == ["https://example.com/3", "https://example.com/4"] and stats["urls/dropped_seen_before"] == 1
    assert sorted(p.name for p in db.iterdir()) == ["RS_06.npy", "RS_07.npy"]  # one hash file per dump
    assert run(july)[0] == urls  # July again: still its own URLs, June's file untouched


def test_shards_hold_the_kept_urls_in_dump_order(tmp_path):
    docs = [Document(id=str(i), url=f"https://example.com/{i}") for i in range(25)]
    paths = shard_documents(docs, tmp_path, 10)
    assert [len(list(read_documents(Path(p)))) for p in paths] == [10, 10, 5]
    assert [d.url for p in paths for d in read_documents(Path(p))] == [d.url for d in docs]


def test_missing_dump_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="check corpus.dumps"):
        list(read_submissions([tmp_path / "RS_missing.zst"], Counter()))


def lines_of(titles) -> bytes:
    return "".join(json.dumps(record(title=t)) + "\n" for t in titles).encode()


def noisy_titles(prefix: str, n: int) -> list[str]:
    """Titles that compress poorly, so a frame spans many zstd blocks."""
    rng = random.Random(prefix)
    return [f"{prefix}{i}-" + "".join(rng.choices(string.ascii_letters, k=200)) for i in range(n)]


def damage(data: bytes, at: int, n: int = 1000) -> bytes:
    """`n` bytes lost from the middle (a bad sector): the block there no longer decodes."""
    return data[:at] + data[at + n:]


def zstd_cli(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(write_checksum=True).compress(data)  # as the zstd command writes frames


def test_a_damaged_zst_frame_loses_only_itself(tmp_path):
    parts = [noisy_titles(p, 1500) for p in "abc"]  # ~4 zstd blocks (128 KB of text each) per frame
    frames = [zstd_cli(lines_of(t)) for t in parts]
    path = tmp_path / "RS_frames.zst"
    path.write_bytes(frames[0] + damage(frames[1], len(frames[1]) // 2) + frames[2])
    stats = Counter()
    titles = [r["title"] for _, r in read_submissions([path], stats)]
    assert titles[:1500] == parts[0] and titles[-1500:] == parts[2]  # the intact frames, whole
    assert titles[1500:1800] == parts[1][:300]  # and the damaged frame's blocks before the damage
    assert stats["urls/damaged_frame"] == 1 and 0 < stats["urls/damaged_bytes"] < len(frames[1])


def test_damage_in_one_long_frame_keeps_everything_before_it(tmp_path):
    titles = noisy_titles("x", 4000)
    data = zstd_cli(lines_of(titles))
    path = tmp_path / "RS_long.zst"
    path.write_bytes(damage(data, int(len(data) * 0.7)))
    stats = Counter()
    kept = [r["title"] for _, r in read_submissions([path], stats)]
    before = int(0.6 * len(titles))  # comfortably before the damaged bytes
    assert kept[:before] == titles[:before]
    assert stats["urls/damaged_frame"] + stats["urls/truncated_file"] == 1


@pytest.mark.parametrize("name, writer", [("RS_plain.zst", lambda b: b), ("RS_zstd.xz", zstandard.ZstdCompressor().compress),
                                          ("RS_gzip.bz2", gzip.compress)])
def test_the_format_comes_from_the_bytes_not_the_name(tmp_path, name, writer):
    path = tmp_path / name
    path.write_bytes(writer(lines_of(["a", "b"])))
    stats = Counter()
    assert [r["title"] for _, r in read_submissions([path], stats)] == ["a", "b"]
    assert stats["urls/misnamed_file"] == 1


@pytest.mark.parametrize("content, reason", [(b"", "is empty"), (b"\x00\x01binary", "is not a dump"),
                                             (b"not json\nat all\n", "is not a dump"), (b"{broken\n{also broken\n", "holds no JSON record")])
def test_an_unreadable_dump_stops_the_stage_unless_skipping_is_asked_for(tmp_path, content, reason):
    bad, good = tmp_path / "RS_bad.zst", tmp_path / "RS_good.ndjson"
    bad.write_bytes(content)
    good.write_bytes(lines_of(["ok"]))
    with pytest.raises(BadDump, match=reason):
        list(read_submissions([bad, good], Counter()))
    stats = Counter()
    assert [r["title"] for _, r in read_submissions([bad, good], stats, skip_bad=True)] == ["ok"]
    assert stats["urls/unreadable_file"] == stats["urls/RS_bad.zst/unreadable_file"] == 1

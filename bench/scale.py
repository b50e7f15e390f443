"""The corpus at scale: a WARC corpus of N distinct article pages, run by the corpus flow with the local
runner and with Dask (1 and 2 workers), beside datatrove's own WARC -> Trafilatura -> MinHash pipeline
on the same files when datatrove is installed (`pip install -e .[bench]`).

    python -m bench.scale N=6000 FILES=8

Pages come from ../shared's real news pages when present, else from the project's sample web. Each
copy has the words inside each paragraph shuffled (its own seed), and the generator checks that its
word 5-gram Jaccard with the source is below 0.5, so copies are distinct documents, not near-dups.
"""
from __future__ import annotations

import gzip
import io
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import lxml.html
import psutil
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from model.manifest import Manifest
from tasks.corpus.neardup import jaccard, shingle_hashes

REPO = Path(__file__).resolve().parent.parent
SHARED_PAGES = REPO.parent / "shared" / "data" / "article-pages" / "html"


def source_pages() -> tuple[str, list[str]]:
    """HTML of the pages that copies are made from, and where they came from."""
    if SHARED_PAGES.is_dir():
        return "../shared article pages", [gzip.decompress(p.read_bytes()).decode("utf-8", "replace")
                                           for p in sorted(SHARED_PAGES.glob("*.html.gz"))]
    return "sample/web", [p.read_text() for p in sorted((REPO / "sample" / "web").rglob("*.html"))]


def shuffle_words(text: str | None, rng: random.Random) -> str | None:
    if not text or not text.strip():
        return text
    words = text.split()
    rng.shuffle(words)
    return " " + " ".join(words) + " "


def visible_text(tree) -> str:
    """The page's text outside scripts and styles, in document order."""
    parts = []
    for element in tree.iter():
        if isinstance(element.tag, str) and element.tag not in ("script", "style") and element.text:
            parts.append(element.text)
        if element.tail:
            parts.append(element.tail)
    return " ".join(parts)


def shuffled_copy(html: str, rng: random.Random) -> str:
    """The page with the words of each text block (a paragraph, a heading, a cell) shuffled in place,
    checked to share under half of its word 5-grams with the source."""
    tree = lxml.html.fromstring(html)
    source = visible_text(tree)
    for element in tree.iter():
        if isinstance(element.tag, str) and element.tag not in ("script", "style"):
            element.text = shuffle_words(element.text, rng)
        element.tail = shuffle_words(element.tail, rng)
    copy = lxml.html.tostring(tree, encoding="unicode")
    similarity = jaccard(shingle_hashes(source), shingle_hashes(visible_text(tree)))
    if similarity >= 0.5:
        raise ValueError(f"a shuffled copy still has 5-gram Jaccard {similarity:.2f} with its source")
    return copy


def shuffles(html: str) -> bool:
    """Whether word shuffling makes a distinct copy of the page (not so for text without spaces)."""
    try:
        shuffled_copy(html, random.Random(0))
        return True
    except ValueError:
        return False


def write_warcs(folder: Path, n: int, files: int, seed: int = 0) -> list[str]:
    """N distinct pages over `files` WARC files, with Common Crawl's payload-type header on each record."""
    _, pages = source_pages()
    pages = [p for p in pages if len(visible_text(lxml.html.fromstring(p)).split()) >= 100 and shuffles(p)]
    rng = random.Random(seed)
    paths = [folder / f"bench-{k:03d}.warc.gz" for k in range(files)]
    handles = [open(p, "wb") for p in paths]
    writers = [WARCWriter(fh, gzip=True) for fh in handles]
    headers = [("Content-Type", "text/html; charset=utf-8")]
    for i in range(n):
        writer, body = writers[i % files], shuffled_copy(pages[i % len(pages)], rng).encode()
        writer.write_record(writer.create_warc_record(
            f"https://site{i % 97}.example/article/{i}", "response", payload=io.BytesIO(body),
            http_headers=StatusAndHeaders("200 OK", headers, protocol="HTTP/1.1"),
            warc_headers_dict={"WARC-Identified-Payload-Type": "text/html"}))
    for fh in handles:
        fh.close()
    return [str(p) for p in paths]


class TreeMemory:
    """Samples the PSS of a process and all its descendants (shared pages counted once) every 0.25 s:
    the peak of the whole tree, and each process's own peak."""

    def __init__(self, root: psutil.Process):
        self.root, self.peak_tree, self.peak_each = root, 0, {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    pss, name = proc.memory_full_info().pss, " ".join(proc.cmdline()[1:4])[:60]
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                total += pss
                key = (proc.pid, name)
                self.peak_each[key] = max(self.peak_each.get(key, 0), pss)
            self.peak_tree = max(self.peak_tree, total)
            time.sleep(0.25)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


def run_measured(cmd: list[str], log: Path) -> dict:
    """Wall time, the exit code and peak memory of a command's process tree."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(psutil.Process(proc.pid))
        code = proc.wait()
        memory.close()
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed ({code}); see {log}")
    return {"wall_s": wall, "peak_tree_mib": memory.peak_tree / 2**20,
            "peak_process_mib": max(memory.peak_each.values()) / 2**20,
            "temporary_servers": len(re.findall(r"Starting temporary server|Prefect API: a temporary server", log.read_text()))}


def ours(warcs: list[str], work: Path, runner: list[str], shard_bytes: int, chunk_docs: int) -> dict:
    """The corpus flow on the WARC files; its dedup files' size per document from the run's folder."""
    data = work / "_".join(runner).replace("=", "-").replace(".", "-")
    shutil.rmtree(data, ignore_errors=True)  # a repeat starts afresh: no done markers, no cached tasks
    cmd = [sys.executable, "-m", "flows.corpus", f"paths.data={data}", "logger=none", "corpus.source=warc",
           f"corpus.warc_files=[{','.join(warcs)}]", f"corpus.shard_bytes={shard_bytes}",
           f"corpus.dedup.chunk_docs={chunk_docs}", *runner]
    result = run_measured(cmd, data.with_suffix(".log"))
    corpus = data / "corpus" / "demo"
    stats = Manifest.read(str(corpus / "tokens")).stats
    band_files = [*corpus.glob("shards/*/bands.npy"), *corpus.glob("tokens/bands-*.npy"), *corpus.glob("dedup/*.npy")]
    docs = stats.get("extract/kept", 0)
    return {**result, "docs": docs, "kept": stats.get("dedup/kept", 0),
            "dedup_bytes_per_doc": sum(f.stat().st_size for f in band_files) / max(docs, 1)}


def dedup_band_ram(work: Path, chunk_docs: int) -> float:
    """Peak traced RAM (MiB) of one candidates task over every shard of the 2-worker run, reading key
    ranges of `chunk_docs` documents: what a band task holds (after one task has run, so that the
    modules it imports on first use are not counted)."""
    from tasks.corpus.neardup import Source, write_band_pairs
    import tracemalloc

    [corpus] = [p for p in work.glob("runner-dask*n_workers-2/corpus/demo")]
    sources = [Source(str(d / "docs.jsonl.zst"), str(d / "bands.npy"), json.loads((d / "done.json").read_text())
                      ["result"]["source"]["n"]) for d in sorted((corpus / "shards").iterdir())]
    write_band_pairs(sources, 1, 64, chunk_docs, str(work / "band-ram-pairs.npy"))  # first-use imports: not held
    tracemalloc.start()
    write_band_pairs(sources, 0, 64, chunk_docs, str(work / "band-ram-pairs.npy"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


DATATROVE = """
import sys
import xxhash
# datatrove 0.10.1 hashes str shingles, which xxhash 4 refuses: encode them (its speed is kept, unlike
# sha1), in workers forked from this process
for name in ("xxh32_intdigest", "xxh64_intdigest"):
    setattr(xxhash, name, (lambda f: lambda data, *a: f(data.encode() if isinstance(data, str) else data, *a))(
        getattr(xxhash, name)))
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.readers import WarcReader
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.dedup import MinhashDedupSignature, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.writers import JsonlWriter

folder, out, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = MinhashConfig(num_buckets=20, hashes_per_bucket=2, n_grams=5)
tasks = len([f for f in __import__("os").listdir(folder) if f.endswith(".warc.gz")])
stage1 = LocalPipelineExecutor(pipeline=[WarcReader(folder, glob_pattern="*.warc.gz"), Trafilatura(favour_precision=True),
                                         JsonlWriter(f"{out}/text"),
                                         MinhashDedupSignature(output_folder=f"{out}/sigs", config=config)],
                               tasks=tasks, workers=workers, logging_dir=f"{out}/logs1", start_method="fork")
stage2 = LocalPipelineExecutor(pipeline=[MinhashDedupBuckets(input_folder=f"{out}/sigs", output_folder=f"{out}/buckets",
                                                             config=config)],
                               tasks=config.num_buckets, workers=workers, logging_dir=f"{out}/logs2", depends=stage1,
                               start_method="fork")
stage3 = LocalPipelineExecutor(pipeline=[MinhashDedupCluster(input_folder=f"{out}/buckets", output_folder=f"{out}/remove",
                                                             config=config)],
                               tasks=1, logging_dir=f"{out}/logs3", depends=stage2)
stage4 = LocalPipelineExecutor(pipeline=[__import__("datatrove.pipeline.readers", fromlist=["JsonlReader"]).JsonlReader(f"{out}/text"),
                                         MinhashDedupFilter(input_folder=f"{out}/remove"), JsonlWriter(f"{out}/final")],
                               tasks=tasks, workers=workers, logging_dir=f"{out}/logs4", depends=stage3,
                               start_method="fork")
stage4.run()
"""


def datatrove(warcs: list[str], work: Path, workers: int) -> dict | None:
    """datatrove 0.10's WARC -> Trafilatura -> MinHash (4 stages) on the same files, or None when absent."""
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return None
    out = work / f"datatrove-{workers}"
    shutil.rmtree(out, ignore_errors=True)  # datatrove skips the tasks its logs say are done
    return run_measured([sys.executable, "-c", DATATROVE, str(Path(warcs[0]).parent), str(out), str(workers)],
                        out.with_suffix(".log"))


def best(runs: list[dict]) -> dict:
    """The fastest of repeated runs, with the highest memory peaks seen in any of them: this machine's
    speed drifts by ±10% from minute to minute, its memory does not."""
    fastest = min(runs, key=lambda r: r["wall_s"])
    return {**fastest, "peak_tree_mib": max(r["peak_tree_mib"] for r in runs),
            "peak_process_mib": max(r["peak_process_mib"] for r in runs), "walls_s": [r["wall_s"] for r in runs]}


def main(n: int = 6000, files: int = 8, shards_per_file: int = 1, chunk_docs: int = 65536, repeats: int = 1) -> None:
    origin, _ = source_pages()
    work = Path(tempfile.mkdtemp(prefix="opengpt2-scale-"))
    (work / "warc").mkdir()
    warcs = write_warcs(work / "warc", n, files)
    shard_bytes = max(Path(w).stat().st_size for w in warcs) // shards_per_file + 1
    print(f"{n:,} distinct pages from {origin} in {files} WARC files ({shard_bytes / 1e6:.1f} MB shards), under {work}; "
          f"{repeats} round(s) of every run, the fastest of each kept")
    configs = {"local": ["runner=local"], "dask 1 worker": ["runner=dask", "runner.n_workers=1"],
               "dask 2 workers": ["runner=dask", "runner.n_workers=2"]}
    rounds = [({name: ours(warcs, work, runner, shard_bytes, chunk_docs) for name, runner in configs.items()},
               datatrove(warcs, work, 2)) for _ in range(repeats)]
    runs = {name: best([r[name] for r, _ in rounds]) for name in configs}
    anchor = best([a for _, a in rounds]) if rounds[0][1] else None
    one = n / runs["dask 1 worker"]["wall_s"]
    print(f"\n| run | wall s | pages/s | speedup vs 1 worker | peak MiB, largest process | peak MiB, tree (PSS) "
          f"| temporary Prefect servers | dedup bytes/doc on disk |\n|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        rate = n / r["wall_s"]
        print(f"| {name} | {r['wall_s']:.1f} | {rate:.1f} | ×{rate / one:.2f} | {r['peak_process_mib']:.0f} "
              f"| {r['peak_tree_mib']:.0f} | {r['temporary_servers']} | {r['dedup_bytes_per_doc']:.0f} |")
    if anchor:
        rate = n / anchor["wall_s"]
        print(f"| datatrove 2 workers | {anchor['wall_s']:.1f} | {rate:.1f} | | {anchor['peak_process_mib']:.0f} "
              f"| {anchor['peak_tree_mib']:.0f} | | |")
        print(f"\nours, 2 workers: ×{n / runs['dask 2 workers']['wall_s'] / rate:.2f} datatrove's pages/s, same files and workers")
    else:
        print("\ndatatrove is not installed (pip install -e .[bench]): no anchor row")
    two = runs["dask 2 workers"]
    print(f"dedup RAM of one band task over all {two['docs']:,} documents, key ranges of {chunk_docs:,} documents: "
          f"{dedup_band_ram(work, chunk_docs):.2f} MiB "
          f"(the in-RAM index it replaced held ~6.2 KB/doc: {6.2 * two['docs'] / 1024:.0f} MiB)")
    per_core = n / two["wall_s"] / 2
    for cores in (8, 64):
        print(f"projection, 8M documents on {cores} cores at {per_core:.1f} pages/s/core: "
              f"{8e6 / (per_core * cores) / 3600:.1f} h")
    print(json.dumps({"n": n, "files": files, "runs": runs, "datatrove": anchor}))


if __name__ == "__main__":
    main(**{k.lower(): int(v) for k, v in (arg.split("=", 1) for arg in sys.argv[1:])})

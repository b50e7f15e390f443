"""The chaos run: the corpus flow (`corpus.source=warc`, `runner=dask`) on WARC files in an S3 store
(moto's server) behind the fault proxy, with a Dask scheduler and two workers started as separate
processes and joined through `runner.address`, the way separate machines join one.

    python -m tests.chaos seed=1 rate=0.2 pages=1200 files=6     (or: make chaos ARGS="seed=1 rate=0.2")

One clean run (no faults) builds the reference corpus. Then, on a second prefix of the same store,
with faults on `rate` of the WARC and dedup GETs and of the output and marker PUTs:

1. the faulted run, in which one worker is killed (SIGKILL) mid-shard and a new one joins, and one
   WARC file becomes unreachable for good once its first shard starts reading it: the run must
   exit non-zero naming that file and leave no done marker for its shards;
2. the rerun, killed (SIGKILL) at its first read of a dedup file;
3. the rerun that completes.

It prints the faults injected (kind x operation), the store retries and the Prefect task runs that
failed or ran again, the documents lost, whether the token files are byte-identical to the clean
run's and the manifests equal apart from paths, the WARC bytes fetched against the input's size, and
the wall times. It exits 1 when any check fails.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
from moto.server import ThreadedMotoServer

from tests.faultproxy import GET_KINDS, PUT_KINDS, FaultProxy

REPO = Path(__file__).resolve().parent.parent
BUCKET = "chaos"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
# Short waits, so that the run takes minutes: the same code paths as the defaults in conf/store/;
# 1 MiB reads, so that a shard's range takes several GETs and faults land inside shards.
STORE = ["store.read_ahead=1048576", "store.backoff_s=0.1", "store.max_backoff_s=1", "store.task_retry_delay_s=0.5", "store.s3.attempts=3", "store.s3.botocore_attempts=1",
         "store.s3.connect_timeout=1", "store.s3.read_timeout=1"]
FAULTED = ("get_warc", "get_dedup", "put_output", "put_marker")  # the operations faults are injected on
RETRY_LINE = re.compile(r"; retry \d+ of \d+ in ")


@dataclass
class Run:
    """One corpus command: how it ended, its wall time, and what the store and Prefect saw of it."""
    name: str
    code: int
    wall_s: float
    last_line: str
    retries: int
    faults: Counter
    requests: Counter
    warc_bytes: int
    task_runs: dict[str, int] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A `dask scheduler` and `dask worker` processes on loopback, each logging to its own file."""

    def __init__(self, env: dict[str, str], logs: Path, workers: int = 2):
        self.env, self.logs = env, logs
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.procs = [self._start("scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
                                  "--no-dashboard")]
        self.workers = 0
        for _ in range(workers):
            self.add_worker()

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        return subprocess.Popen([str(Path(sys.executable).parent / "dask"), name.split("-")[0], *args], cwd=REPO,
                                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def client(self) -> Any:
        from distributed import Client

        return Client(self.address, timeout=30)

    def add_worker(self) -> None:
        self.workers += 1
        self.procs.append(self._start(f"worker-{self.workers}", self.address, "--nthreads", "1", "--no-nanny",
                                      "--no-dashboard", "--name", f"worker-{self.workers}",
                                      "--local-directory", str(self.logs / f"worker-{self.workers}")))

    def wait_for_workers(self, n: int) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=60)

    def kill_busy_worker(self) -> list[str] | None:
        """SIGKILL a worker that is running a shard (None while none is); the calls it held."""
        with self.client() as client:
            busy = {w: keys for w, keys in client.processing().items() if any(k.startswith("process_shard") for k in keys)}
            if not busy:
                return None
            address, keys = next(iter(busy.items()))
            pid = client.run(os.getpid, workers=[address])[address]
        os.kill(pid, signal.SIGKILL)
        return [str(k) for k in keys]

    def close(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


class Chaos:
    """The store, the proxy, the Prefect API and the cluster of one chaos run, and its corpus commands."""

    def __init__(self, work: Path, seed: int, stall_s: float, store: list[str]):
        self.work, self.store = work, store
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
        self.moto.start()
        host, port = self.moto.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.proxy = FaultProxy(self.endpoint, rate=0.0, seed=seed, stall_s=stall_s)
        os.environ.update(CREDENTIALS, AWS_ENDPOINT_URL=self.endpoint)  # this process checks the store directly
        fsspec.filesystem("s3").clear_instance_cache()
        self.fs = fsspec.filesystem("s3", skip_instance_cache=True)
        self.fs.mkdir(BUCKET)
        from prefect.settings import PREFECT_API_URL

        self.env = {**os.environ, **CREDENTIALS, "AWS_ENDPOINT_URL": self.proxy.url, "PREFECT_API_URL": PREFECT_API_URL.value(),
                    "PYTHONPATH": str(REPO), "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        self.cluster = Cluster(self.env, work)
        self.cluster.wait_for_workers(2)
        self.flow_runs_seen: set[str] = set()

    def close(self) -> None:
        self.cluster.close()
        self.proxy.close()
        self.moto.stop()

    def upload(self, files: list[str]) -> list[str]:
        urls = []
        for path in files:
            url = f"s3://{BUCKET}/warc/{Path(path).name}"
            self.fs.put_file(path, url)
            urls.append(url)
        return urls

    def corpus(self, name: str, out_dir: str, warcs: list[str], shard_bytes: int, rate: float,
               during: Callable[[subprocess.Popen], None] | None = None) -> Run:
        """Run the corpus command until it exits, calling `during(process)` every 0.1 s meanwhile."""
        self.proxy.rate = rate
        self.proxy.reset_counts()
        cmd = [sys.executable, "-m", "flows.corpus", "corpus.source=warc", f"corpus.warc_files=[{','.join(warcs)}]",
               f"corpus.out_dir={out_dir}", f"corpus.shard_bytes={shard_bytes}", "runner=dask",
               f"runner.address={self.cluster.address}", f"paths.data={self.work / name.split('-')[0]}",
               "logger=none", *self.store]
        log_path = self.work / f"{name}.log"
        start = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                if during:
                    during(proc)
                time.sleep(0.1)
        wall = time.perf_counter() - start
        text = log_path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        return Run(name, proc.returncode, wall, lines[-1] if lines else "", len(RETRY_LINE.findall(text)),
                   Counter(self.proxy.faults), Counter(self.proxy.requests), self.proxy.warc_bytes, self.task_runs())

    def task_runs(self) -> dict[str, int]:
        """The newest flow run's task runs: in all, ran more than once, and ended failed."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.sorting import FlowRunSort

        with get_client(sync_client=True) as client:
            runs = [r for r in client.read_flow_runs(sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=20)
                    if str(r.id) not in self.flow_runs_seen]
            if not runs:
                return {}
            self.flow_runs_seen.add(str(runs[0].id))
            tasks, this_run = [], FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id]))
            while page := client.read_task_runs(flow_run_filter=this_run, limit=200, offset=len(tasks)):
                tasks += page
        return {"tasks": len(tasks), "ran again": sum(t.run_count > 1 for t in tasks),
                "failed": sum(t.state is not None and t.state.is_failed() for t in tasks),
                "flow": runs[0].state.type.value if runs[0].state else "?"}


def token_files(fs: Any, tokens: str) -> dict[str, bytes]:
    """Every token-folder file but the manifest, by name."""
    return {path[len(tokens):]: fs.cat_file(path) for path in fs.find(tokens) if not path.endswith("manifest.json")}


def differences(a: Any, b: Any, key: str = "") -> list[str]:
    """The dotted keys at which two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(a.keys() | b.keys()) for d in differences(a.get(k), b.get(k), f"{key}.{k}".lstrip("."))]
    return [] if a == b else [key or "(top)"]


def manifest(fs: Any, prefix: str, data: Path) -> Any:
    """A corpus's manifest with its own paths (its store prefix, its data folder) made neutral."""
    text = fs.cat_file(f"{prefix}/tokens/manifest.json").decode()
    return json.loads(text.replace(f"s3://{prefix}", "OUT").replace(str(data), "DATA"))


def compare(fs: Any, clean: str, chaos: str, work: Path) -> dict[str, Any]:
    """What the chaos corpus lost or changed against the clean one on the same store."""
    from tasks.corpus.document import corpus_documents

    clean_ids = {d.id for d in corpus_documents(f"s3://{clean}/tokens")}
    chaos_ids = {d.id for d in corpus_documents(f"s3://{chaos}/tokens")}
    a, b = token_files(fs, f"{clean}/tokens"), token_files(fs, f"{chaos}/tokens")
    manifests = [manifest(fs, prefix, work / prefix.rsplit("/", 1)[1]) for prefix in (clean, chaos)]
    return {"documents": len(clean_ids), "lost": len(clean_ids - chaos_ids), "added": len(chaos_ids - clean_ids),
            "token files": len(a), "identical": a == b, "manifest differences": differences(*manifests)}


def chaos_run(work: Path, seed: int = 1, rate: float = 0.2, pages: int = 1200, files: int = 6, shards_per_file: int = 2,
              stall_s: float = 1.5, retries: int = 4, task_retries: int = 1) -> dict[str, Any]:
    """The clean run and the three chaos runs; returns every figure the report prints."""
    from bench.scale import write_warcs
    from flows.api import temporary_api, wait_for_api
    from tasks.corpus.shards import plan_warc_shards

    (work / "input").mkdir()
    local = write_warcs(work / "input", pages, files, seed=0)
    shutil.copy(local[0], work / "input" / "copy-of-000.warc.gz")  # exact duplicates for the near-dup phase
    local.append(str(work / "input" / "copy-of-000.warc.gz"))
    input_bytes = sum(Path(p).stat().st_size for p in local)
    shard_bytes = max(Path(p).stat().st_size for p in local) // shards_per_file + 1
    with temporary_api():
        wait_for_api()
        chaos = Chaos(work, seed, stall_s, [*STORE, f"store.retries={retries}", f"store.task_retries={task_retries}"])
        try:
            warcs = chaos.upload(local)
            runs, result = [chaos.corpus("clean", f"s3://{BUCKET}/clean", warcs, shard_bytes, 0.0)], {}
            target = warcs[-2]  # a WARC whose shards start late, so that the kill lands first
            target_key = target.split(f"s3://{BUCKET}", 1)[1]
            killed: list[list[str] | None] = []

            def kill_a_worker(proc: subprocess.Popen) -> None:
                if not killed and chaos.proxy.requests["get_warc"] >= 1:
                    keys = chaos.cluster.kill_busy_worker()
                    if keys:
                        killed.append(keys)
                        chaos.cluster.add_worker()

            out = f"s3://{BUCKET}/chaos"
            chaos.proxy.outage(target_key, at_first_get=True)  # once the first of its shards starts reading it
            runs.append(chaos.corpus("chaos-1-outage", out, warcs, shard_bytes, rate, kill_a_worker))
            chaos.proxy.outage(None)
            hit = [s.id for s in plan_warc_shards(warcs, shard_bytes) if s.warc == target]
            result["outage"] = {"object": target, "exit": runs[-1].code, "named": target in runs[-1].last_line,
                                "markers left": [i for i in hit if chaos.fs.exists(f"{BUCKET}/chaos/shards/{i}/done.json")]}
            result["worker killed holding"] = killed[0] if killed else []

            def kill_in_dedup(proc: subprocess.Popen) -> None:
                if chaos.proxy.requests["get_dedup"] > 0 and proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)

            runs.append(chaos.corpus("chaos-2-killed", out, warcs, shard_bytes, rate, kill_in_dedup))
            runs.append(chaos.corpus("chaos-3", out, warcs, shard_bytes, rate))
            result["compare"] = compare(chaos.fs, f"{BUCKET}/clean", f"{BUCKET}/chaos", work)
        finally:
            chaos.close()
    result.update(runs=runs, input_bytes=input_bytes, shards=len(plan_warc_shards(local, shard_bytes)))
    return result


def checks(result: dict[str, Any]) -> dict[str, bool]:
    """Each promise of the chaos run, kept or not."""
    clean, *chaos = result["runs"]
    faults = sum((r.faults for r in chaos), Counter())
    kinds = {(k, op) for op in ("get_warc", "get_dedup") for k in GET_KINDS} | \
            {(k, op) for op in ("put_output", "put_marker") for k in PUT_KINDS}
    c, outage = result["compare"], result["outage"]
    return {"0 documents lost": c["lost"] == 0 and c["added"] == 0,
            "token files byte-identical": c["identical"] and c["token files"] > 0,
            "manifests equal apart from paths": not c["manifest differences"],
            "every fault kind hit every operation": kinds <= {key for key, n in faults.items() if n},
            "faults on >= 15% of the store operations": share(faults, sum((r.requests for r in chaos), Counter()),
                                                              *FAULTED) >= 0.15,
            "WARC bytes fetched <= 1.1x the input (clean run)": clean.warc_bytes <= 1.1 * result["input_bytes"],
            "outage run exited non-zero naming the object": outage["exit"] not in (0, None) and outage["named"],
            "no done marker for the shards the outage hit": not outage["markers left"],
            "a worker was killed mid-shard": bool(result["worker killed holding"]),
            "the flow was killed during dedup": chaos[1].code == -signal.SIGKILL,
            "the last rerun completed": chaos[2].code == 0}


def share(faults: Counter, requests: Counter, *ops: str) -> float:
    """The share of the operations' requests that met a scattered fault (the outage's left out)."""
    scattered = sum(n for (kind, op), n in faults.items() if op in ops and kind != "outage")
    return scattered / max(sum(requests[op] - faults["outage", op] for op in ops), 1)


def report(result: dict[str, Any], seed: int, rate: float) -> bool:
    """Print the figures; True when every check holds."""
    clean, *chaos = result["runs"]
    faults = sum((r.faults for r in chaos), Counter())
    ops = sorted({op for _, op in faults})
    kinds = [*GET_KINDS, "outage"]
    print(f"\nchaos run: seed {seed}, fault rate {rate:.0%}, {result['shards']} shards, "
          f"{result['compare']['documents']} documents kept by the clean run")
    print("\nfaults injected          " + "".join(f"{op:>12}" for op in ops))
    for kind in kinds:
        if any(faults[kind, op] for op in ops):
            print(f"  {kind:<23}" + "".join(f"{faults[kind, op]:>12}" for op in ops))
    requests = sum((r.requests for r in chaos), Counter())
    print(f"  {'share of requests':<23}" + "".join(f"{share(faults, requests, op):>12.0%}" for op in ops) +
          f"   all four: {share(faults, requests, *FAULTED):.0%} (scattered faults; the outage's requests left out)")
    print(f"\n{'run':<16}{'exit':>6}{'wall s':>9}{'retries':>9}{'tasks':>7}{'ran again':>11}{'failed':>8}  last line")
    for r in result["runs"]:
        t = r.task_runs
        print(f"{r.name:<16}{r.code:>6}{r.wall_s:>9.1f}{r.retries:>9}{t.get('tasks', 0):>7}{t.get('ran again', 0):>11}"
              f"{t.get('failed', 0):>8}  {r.last_line[:90]}")
    c, o = result["compare"], result["outage"]
    print(f"\nworker killed mid-shard while it held: {', '.join(result['worker killed holding']) or 'nothing'}")
    print(f"outage of {o['object']}: exit {o['exit']}, named in the last line: {o['named']}, "
          f"done markers left for its shards: {o['markers left'] or 'none'}")
    print(f"documents lost: {c['lost']} (added: {c['added']}); token files byte-identical: {c['identical']} "
          f"({c['token files']} files); manifests equal apart from paths: "
          f"{'yes' if not c['manifest differences'] else 'no, at ' + ', '.join(c['manifest differences'][:8])}")
    print(f"WARC bytes fetched: clean run {clean.warc_bytes / 1e6:.1f} MB = {clean.warc_bytes / result['input_bytes']:.2f}x "
          f"the input's {result['input_bytes'] / 1e6:.1f} MB; chaos runs {sum(r.warc_bytes for r in chaos) / 1e6:.1f} MB "
          "(killed and failed work read again)")
    print(f"wall time: clean {clean.wall_s:.1f} s; chaos runs {sum(r.wall_s for r in chaos):.1f} s in all")
    verdicts = checks(result)
    print()
    for name, ok in verdicts.items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return all(verdicts.values())


def parse(args: list[str]) -> dict[str, Any]:
    """`key=value` arguments, typed like chaos_run's defaults."""
    defaults = {"seed": 1, "rate": 0.2, "pages": 1200, "files": 6, "shards_per_file": 2, "stall_s": 1.5, "retries": 4,
                "task_retries": 1}
    options = {}
    for arg in args:
        key, _, value = arg.partition("=")
        if key not in defaults or not value:
            raise SystemExit(f"error: unknown argument {arg!r}: use {' '.join(f'{k}={v}' for k, v in defaults.items())}")
        options[key] = type(defaults[key])(value)
    return {**defaults, **options}


def main() -> None:
    options = parse(sys.argv[1:])
    work = Path(tempfile.mkdtemp(prefix="opengpt2-chaos-"))
    print(f"chaos run in {work} (logs of every process there)")
    ok = report(chaos_run(work, **options), options["seed"], options["rate"])
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()

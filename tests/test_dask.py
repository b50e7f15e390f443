"""runner=dask: the tasks hand their work to the workers of a Dask cluster, which run it without Prefect."""
import importlib.util
import logging
import os
import sys
import threading

import pytest
from distributed import Client, LocalCluster, get_task_stream

from flows.common import load_config, task_runner
from tests.conftest import run_flow
from flows.corpus import corpus_flow
from tasks import storage
from tasks.cluster import attached, forwarding, on_cluster
from tasks.corpus.document import corpus_documents
from tasks.corpus.report import funnel
from tasks.corpus.shards import Progress
from tests.probes import dies_the_first_time, is_loaded, profiles_kept_after


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local, Client(local) as client:
        yield local, client


def test_the_work_runs_on_both_workers_and_keeps_the_documents_of_a_local_run(cluster, tmp_path):
    local, client = cluster
    base = [f"paths.data={tmp_path / 'local'}", "logger=none"]
    local_run = run_flow(corpus_flow, load_config(base))
    cfg = load_config([f"paths.data={tmp_path / 'dask'}", "logger=none", "runner=dask", "corpus.shard_docs=10",
                       f"runner.address={local.scheduler_address}"])
    with get_task_stream(client) as stream:
        result = run_flow(corpus_flow, cfg)
    assert dict(funnel(result["stats"], cfg["corpus"]["pipeline"]))["after dedup"] == 53
    # 63 URLs in shards of 10, then a shard of archived pages for each
    assert sum(t["key"].startswith("process_shard-") for t in stream.data) == 14
    # all calls, not the shards alone: six short shard calls can all land on one worker while the other fetches
    assert len({t["worker"] for t in stream.data}) == 2
    ids = [sorted(d.id for d in corpus_documents(tmp_path / run / "corpus" / "demo" / "tokens")) for run in ("local", "dask")]
    assert ids[0] == ids[1] and len(ids[0]) == local_run["stats"]["tokenize/kept"] == 50


def a_shard_reporting_progress() -> int:
    Progress("00042").finish()
    return os.getpid()


def test_what_the_work_logs_on_a_worker_is_logged_by_the_caller(cluster, caplog):
    caplog.set_level(logging.INFO, logger="tasks")
    with attached(cluster[1], storage.settings()):
        pid = on_cluster(a_shard_reporting_progress)
    assert pid != os.getpid()
    assert any(r.message.startswith("shard 00042: 0 pages in") and r.levelno == logging.INFO for r in caplog.records)


def test_workers_started_for_a_flow_run_import_no_prefect_and_keep_no_cpu_profiles(monkeypatch):
    # a flow started as `python -m flows.corpus`: spawned processes would import that module, and Prefect with it
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", importlib.util.find_spec("flows.corpus"))
    with task_runner(load_config(["runner=dask", "runner.n_workers=1"])):
        assert on_cluster(is_loaded, "prefect") is False
        assert on_cluster(profiles_kept_after, 2.5) == 0  # Dask's default profiler would hold two or more


def test_work_whose_worker_dies_is_run_again_on_another(cluster, tmp_path):
    with attached(cluster[1], storage.settings()):
        pid = on_cluster(dies_the_first_time, str(tmp_path / "died-once"))
        alive = set(cluster[1].run(os.getpid).values())
    assert (tmp_path / "died-once").exists() and pid in alive  # it died once, then ran on a live worker


def test_calls_on_many_threads_forward_their_own_records_and_the_others_pass_through(caplog):
    caplog.set_level(logging.WARNING)
    log = logging.getLogger("tasks.corpus.example")
    got: dict[int, list[str]] = {0: [], 1: []}
    started, done = threading.Barrier(3), threading.Barrier(3)

    def call(n: int) -> None:
        with forwarding(lambda record: got[n].append(record.getMessage())):
            started.wait()
            for i in range(50):
                log.info("call %d line %d", n, i)
            done.wait()

    threads = [threading.Thread(target=call, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    started.wait()
    log.warning("from the flow's thread")  # no call in flight here: on to the root logger's handlers
    log.info("below the root's level")  # dropped, as before forwarding existed
    done.wait()
    for t in threads:
        t.join()
    assert got == {n: [f"call {n} line {i}" for i in range(50)] for n in (0, 1)}
    assert [r.getMessage() for r in caplog.records if r.name == log.name] == ["from the flow's thread"]

"""runner=dask: the shards run on the workers of a Dask cluster, which report to the flow's Prefect API."""
import pytest
from distributed import Client, LocalCluster, get_task_stream

from flows.common import load_config
from flows.corpus import corpus_flow
from tasks.corpus.document import corpus_documents
from tasks.corpus.report import funnel


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local, Client(local) as client:
        yield local, client


def test_shards_run_on_both_workers_and_keep_the_documents_of_a_local_run(cluster, tmp_path):
    local, client = cluster
    base = [f"paths.data={tmp_path / 'local'}", "logger=none"]
    local_run = corpus_flow(load_config(base))
    cfg = load_config([f"paths.data={tmp_path / 'dask'}", "logger=none", "runner=dask", "corpus.shard_docs=10",
                       f"runner.address={local.scheduler_address}"])
    with get_task_stream(client) as stream:
        result = corpus_flow(cfg)
    assert dict(funnel(result["stats"], cfg["corpus"]["pipeline"]))["after dedup"] == 47
    shard_tasks = [t for t in stream.data if "shard" in t["key"]]
    assert len(shard_tasks) == 6  # 57 URLs in shards of 10
    assert len({t["worker"] for t in shard_tasks}) == 2
    ids = [sorted(d.id for d in corpus_documents(tmp_path / run / "corpus" / "demo" / "tokens")) for run in ("local", "dask")]
    assert ids[0] == ids[1] and len(ids[0]) == local_run["stats"]["tokenize/kept"] == 44

"""runner=dask: the corpus stages run on a Dask cluster (a LocalCluster of 2 worker processes here)."""
import pytest
from distributed import Client, LocalCluster, get_task_stream

from flows.common import load_config
from flows.corpus import corpus_flow
from tasks.corpus.report import funnel


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as local, Client(local) as client:
        yield local, client


def test_corpus_flow_runs_its_stages_on_dask_workers(cluster, tmp_path):
    local, client = cluster
    cfg = load_config([f"paths.data={tmp_path}", "logger=none", "runner=dask", f"runner.address={local.scheduler_address}"])
    with get_task_stream(client) as stream:
        result = corpus_flow(cfg)
    assert dict(funnel(result["stats"]))["after dedup"] == 47
    assert len(stream.data) >= 6  # urls, fetch, extract, language, dedup, tokenize
    assert len({t["worker"] for t in stream.data}) >= 1

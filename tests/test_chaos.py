"""The chaos run, small: the corpus on S3 (moto's server) behind the fault proxy, on a Dask scheduler
and workers started as processes of their own; a worker killed mid-shard, one WARC unreachable for
good, the flow killed during dedup. Nothing may be lost or changed. `make chaos` is the full size."""
from __future__ import annotations

import signal

from tests.chaos import chaos_run, checks


def test_faults_kills_and_an_outage_lose_nothing_and_change_no_token(tmp_path):
    result = chaos_run(tmp_path, seed=7, rate=0.05, pages=16, files=2, shards_per_file=1, retries=1,
                       task_retries=0)
    verdicts = checks(result)
    clean, outage, killed, rerun = result["runs"]

    assert result["compare"]["lost"] == 0 and result["compare"]["documents"] > 8
    assert verdicts["token files byte-identical"] and verdicts["manifests equal apart from paths"]
    assert outage.code == 1 and result["outage"]["object"] in outage.last_line
    assert outage.last_line.startswith("error: ") and not result["outage"]["markers left"]
    assert verdicts["a worker was killed mid-shard"]
    assert killed.code == -signal.SIGKILL and rerun.code == 0
    assert sum(outage.faults.values()) and sum(rerun.faults.values()) and rerun.retries > 0
    assert clean.retries == 0 and not clean.faults

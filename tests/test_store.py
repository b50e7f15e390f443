"""The corpus on an object store: WARC inputs and `corpus.out_dir` as s3:// URLs, served on loopback
by a real S3 API (moto's server, as s3fs's own tests use), give the corpus a local run gives."""
import os

import fsspec
import pytest

from flows.common import load_config
from tests.conftest import run_flow
from flows.corpus import corpus_flow
from tasks.corpus.document import corpus_documents
from tests.test_shards import write_warc

moto_server = pytest.importorskip("moto.server", reason="moto comes with `make test` (the dev extra)")
BUCKET = "opengpt2-test"


@pytest.fixture(scope="module")
def s3():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        fsspec.filesystem("s3").clear_instance_cache()
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
        fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


def build(tmp_path, name: str, warcs: list[str], out_dir: str) -> dict:
    return run_flow(corpus_flow, load_config([f"paths.data={tmp_path / name}", "logger=none", "corpus.source=warc",
                                    f"corpus.warc_files=[{','.join(warcs)}]", f"corpus.out_dir={out_dir}",
                                    "corpus.shard_bytes=15000"]))


def test_a_corpus_built_on_s3_equals_the_local_one(s3, tmp_path):
    write_warc(tmp_path / "a.warc.gz", 30)
    write_warc(tmp_path / "b.warc.gz", 20, host="mirror.example.org")  # copies of a's first 20 pages
    local_warcs = [str(tmp_path / "a.warc.gz"), str(tmp_path / "b.warc.gz")]
    for warc in local_warcs:
        s3.put_file(warc, f"{BUCKET}/warc/{os.path.basename(warc)}")
    local = build(tmp_path, "local", local_warcs, str(tmp_path / "local-corpus"))
    remote = build(tmp_path, "s3", [f"s3://{BUCKET}/warc/a.warc.gz", f"s3://{BUCKET}/warc/b.warc.gz"],
                   f"s3://{BUCKET}/corpus")
    assert remote["stats"] == local["stats"]
    assert remote["stats"]["dedup/dropped"] >= 20  # b's copies, found across files and shards
    ids = [sorted(d.id for d in corpus_documents(tokens)) for tokens in (local["data_dir"], remote["data_dir"])]
    assert ids[0] == ids[1] and len(ids[0]) == remote["stats"]["tokenize/kept"] > 0
    shard_markers = s3.glob(f"{BUCKET}/corpus/shards/*/done.json")
    assert len(shard_markers) >= 4  # several byte-range shards per WARC, each finished on the store
    local_bins = sorted((tmp_path / "local-corpus" / "tokens").glob("*.bin"))
    assert [s3.cat_file(f"{BUCKET}/corpus/tokens/{p.name}") for p in local_bins] == [p.read_bytes() for p in local_bins]
    assert s3.exists(f"{BUCKET}/corpus/funnel.png")

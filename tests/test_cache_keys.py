"""Cache keys and done markers cover all the code that runs: a step named by `corpus.pipeline` edited
in a copy of the project reruns every shard it touches; an unchanged rerun reuses every shard."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.scale import write_warcs
from flows.api import temporary_api, wait_for_api

REPO = Path(__file__).resolve().parent.parent
# An edit of the extraction step: the same pages, every extracted text in capitals.
EDIT = """

_extract = Extract.reject


def _shouting(self, doc):
    reason = _extract(self, doc)
    doc.text = doc.text.upper() if doc.text else doc.text
    return reason


Extract.reject = _shouting
"""


def corpus(tree: Path, data: Path, warcs: list[str]) -> str:
    """The corpus command run from `tree` (its own copy of the code), reporting to this test's Prefect
    API; its log."""
    from prefect.settings import PREFECT_API_URL

    result = subprocess.run([sys.executable, "-m", "flows.corpus", "corpus.source=warc", f"paths.data={data}",
                             f"corpus.warc_files=[{','.join(warcs)}]", "logger=none"],
                            cwd=tree, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tree), "PREFECT_LOGGING_LEVEL": "INFO",
                                 "PREFECT_API_URL": PREFECT_API_URL.value()})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def shard_states(log: str) -> list[str]:
    return re.findall(r"Task run 'shard-\w+' - Finished in state (\w+)", log)


def outputs(data: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    """Each shard's done-marker fingerprint, and every token file's bytes."""
    corpus = data / "corpus" / "demo"
    markers = {p.parent.name: json.loads(p.read_text())["fingerprint"] for p in corpus.glob("shards/*/done.json")}
    return markers, {p.name: p.read_bytes() for p in corpus.glob("tokens/*.bin")}


def test_an_edited_step_module_reruns_its_shards_and_an_unchanged_rerun_reuses_them(tmp_path):
    tree = tmp_path / "tree"
    for part in ("flows", "tasks", "model", "conf", "sample", "bench"):
        shutil.copytree(REPO / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "warc").mkdir()
    warcs = write_warcs(tmp_path / "warc", 8, 2)
    data = tmp_path / "data"
    with temporary_api():  # one Prefect API for the three runs
        wait_for_api()
        first = corpus(tree, data, warcs)
        markers, tokens = outputs(data)
        assert shard_states(first) == ["Completed", "Completed"] and len(markers) == 2 and tokens

        unchanged = corpus(tree, data, warcs)
        assert shard_states(unchanged) == ["Cached", "Cached"] and outputs(data) == (markers, tokens)

        with open(tree / "tasks" / "corpus" / "extract.py", "a") as module:
            module.write(EDIT)
        edited = corpus(tree, data, warcs)
    new_markers, new_tokens = outputs(data)
    assert shard_states(edited) == ["Completed", "Completed"]
    assert new_markers.keys() == markers.keys() and all(new_markers[k] != markers[k] for k in markers)
    assert new_tokens.keys() == tokens.keys() and new_tokens != tokens

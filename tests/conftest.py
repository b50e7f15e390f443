"""Shared fixtures. Settings here are applied before Prefect is imported anywhere."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_prefect_home = tempfile.mkdtemp(prefix="opengpt2-prefect-")
os.environ.update(
    PREFECT_HOME=_prefect_home,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90",
    PREFECT_SERVER_ANALYTICS_ENABLED="false",
    PREFECT_LOGGING_LEVEL="WARNING",
    TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS="",
    WANDB_SILENT="true",
    HF_HUB_OFFLINE="1",
)

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser():
    """Chromium driven by Playwright (Debian's Chromium: Playwright downloads nothing), closed afterwards."""
    if not CHROMIUM:
        pytest.skip("no Chromium: `make test` installs Debian's chromium package when it runs as root with apt-get; "
                    "elsewhere install it to run this test")
    from playwright.sync_api import sync_playwright

    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


def shared_path(*parts: str) -> Path:
    """A path in ../shared, skipping the test with the reason when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared data sits beside the checkout in CI and on dev machines only")
    return path


@pytest.fixture
def config(tmp_path):
    """Compose the Hydra config with every generated file under a temporary folder."""
    from flows.common import load_config

    def compose(*overrides: str) -> dict:
        return load_config([f"paths.data={tmp_path}", *overrides])

    return compose


def run_flow(flow, cfg: dict, **kwargs):
    """Run a Prefect flow on a composed config, as a parent flow runs its subflows."""
    from flows.common import given

    with given(cfg):
        return flow(**kwargs)


def write_token_corpus(out: Path) -> Path:
    """A small token corpus in `out`, in the corpus flow's format: text with structure a model can learn."""
    import json

    import numpy as np

    from tasks.corpus.tokenize import ShardWriter

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    writers = {s: ShardWriter(out, s, 10**9) for s in ("train", "val")}
    for i in range(200):
        start = int(rng.integers(0, 1000))
        writers["val" if i % 10 == 0 else "train"].add([(start + 7 * j) % 1000 for j in range(100)])
    (out / "manifest.json").write_text(json.dumps({"splits": {s: w.flush() for s, w in writers.items()}}))
    return out

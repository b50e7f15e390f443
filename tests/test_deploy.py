"""prefect.yaml against a real Prefect server started here on 127.0.0.1, with a real process worker."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

REPO = Path(__file__).resolve().parents[1]
PREFECT = str(Path(sys.executable).parent / "prefect")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A Prefect server (SQLite) and a process worker for the opengpt2 pool, both stopped afterwards."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_LOGGING_LEVEL": "INFO"}
    port = url.split(":")[2].split("/")[0]
    procs = [subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", port],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        yield from serve_and_deploy(url, env, procs)
    finally:
        for proc in procs[::-1]:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


def serve_and_deploy(url: str, env: dict, procs: list):
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        pytest.fail("the Prefect server did not start within 90 s")
    for pool in ("opengpt2", "opengpt2-gpu"):
        subprocess.run([PREFECT, "work-pool", "create", pool, "--type", "process"], env=env, check=True,
                       capture_output=True)
    deploy_env = {k: v for k, v in env.items() if k != "OPENGPT2_HOME"}  # as on a host deploying for an image
    deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], env=deploy_env, cwd=REPO,
                            capture_output=True, text=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
    # the worker starts elsewhere: runs find the project through OPENGPT2_HOME, as in the images
    procs.append(subprocess.Popen([PREFECT, "worker", "start", "--pool", "opengpt2"],
                                  env={**env, "OPENGPT2_HOME": str(REPO)}, cwd=env["PREFECT_HOME"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


def test_deployments_are_registered(server):
    with get_client(sync_client=True) as client:
        names = {d.name for d in client.read_deployments()}
    assert {"corpus-refresh", "corpus", "train", "evaluate", "pipeline", "generate", "export"} <= names


def test_deployments_resolve_their_folder_when_a_run_starts_and_train_goes_to_the_gpu_pool(server):
    with get_client(sync_client=True) as client:
        corpus, train = (client.read_deployment_by_name(name) for name in ("corpus/corpus", "train/train"))
    directory = corpus.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert directory == "{{ $OPENGPT2_HOME }}"  # not the host folder it was registered from
    assert corpus.work_pool_name == "opengpt2" and train.work_pool_name == "opengpt2-gpu"


def test_each_deployment_form_is_typed_and_described(server):
    with get_client(sync_client=True) as client:
        schemas = {name: client.read_deployment_by_name(f"{name}/{name}").parameter_openapi_schema
                   for name in ("train", "corpus", "generate", "export", "evaluate", "pipeline", "corpus-refresh")}
    assert all(s["properties"]["settings"]["description"] and s["properties"]["overrides"]["description"].startswith("advanced")
               for s in schemas.values())
    train = schemas["train"]["definitions"]["TrainForm"]["properties"]
    assert train["max_steps"]["anyOf"][0] == {"exclusiveMinimum": 0, "type": "integer"} and train["max_steps"]["description"]
    assert {"gpt2-tiny", "gpt2", "gpt2-xl"} <= set(train["model"]["anyOf"][0]["enum"])  # a choice, from conf/model
    generate = schemas["generate"]["definitions"]["GenerateForm"]["properties"]
    assert generate["top_p"]["anyOf"][0] == {"exclusiveMinimum": 0.0, "maximum": 1.0, "type": "number"}
    assert generate["temperature"]["anyOf"][0]["minimum"] == 0


def test_refresh_schedule_is_registered_with_its_cron(server):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("corpus-refresh/corpus-refresh")
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 1 * *" and schedule.active


def test_deployed_corpus_run_completes_and_publishes_its_funnel(server, tmp_path):
    run = run_deployment("corpus/corpus", parameters={"settings": {"corpus": "demo", "runner": "local"},
                                                      "overrides": [f"paths.data={tmp_path}", "logger=none"]},
                         timeout=600)
    assert run.state.is_completed(), run.state.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["corpus-funnel"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert artifacts and "| after dedup | 47 |" in artifacts[0].data
    assert (tmp_path / "corpus" / "demo" / "tokens" / "manifest.json").exists()


def test_deployed_run_that_fails_says_why(server, tmp_path):
    run = run_deployment("corpus/corpus", parameters={"overrides": [f"paths.data={tmp_path}", "corpus=pushshift",
                                                                    "corpus.dumps=[/nonexistent/RS_x.zst]"]},
                         timeout=300)
    assert run.state.is_failed()
    assert "RS_x.zst" in (run.state.message or "")  # in the Failed state's message, as the UI shows it

"""prefect.yaml against a real Prefect server started here on 127.0.0.1, with a real process worker."""
import importlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.common import load_config
from flows.forms import form_overrides

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


FLOWS = {d["name"]: d["entrypoint"] for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}


def flow_function(name: str):
    """The function of a deployment's flow, from its entrypoint (`flows/train.py:train_flow`)."""
    path, function = FLOWS[name].split(":")
    return getattr(importlib.import_module(path.removesuffix(".py").replace("/", ".")), function).fn


def test_each_deployment_form_is_flat_typed_and_described(server):
    with get_client(sync_client=True) as client:
        schemas = {name: client.read_deployment_by_name(f"{name}/{name}").parameter_openapi_schema for name in FLOWS}
    for name, schema in schemas.items():
        fields = schema["properties"]
        assert list(fields)[-1] == "overrides" and fields["overrides"]["description"].startswith("advanced"), name
        assert not schema.get("definitions") and not schema.get("required"), name  # no nested form, nothing required
        for field, spec in fields.items():
            assert "type" in spec and "anyOf" not in spec and spec.get("description"), (name, field)  # no None toggle
            assert spec.get("default", "unset") is not None, (name, field)  # unset, or a value: never a null default
    train = schemas["train"]["properties"]
    assert train["model"]["default"] == "gpt2-tiny" and {"gpt2", "gpt2-xl"} <= set(train["model"]["enum"])
    assert train["trainer"]["default"] == "cpu" and "gpu" in train["trainer"]["enum"]
    assert train["max_steps"]["type"] == "integer" and "default" not in train["max_steps"]
    assert "300 for cpu" in train["max_steps"]["description"] and "5000 for" in train["max_steps"]["description"]
    generate = schemas["generate"]["properties"]
    assert (generate["top_p"]["exclusiveMinimum"], generate["top_p"]["maximum"]) == (0, 1)
    assert generate["temperature"]["default"] == load_config()["temperature"] and generate["temperature"]["minimum"] == 0


def form_field(page, name: str):
    """One field of a Prefect run form, found by its label."""
    label = page.locator(".schema-form-property__label", has_text=re.compile(f"^{name} "))
    return page.locator(".schema-form-property").filter(has=label)


def submitted_run(client, deployment_id, before: set, submit) -> dict:
    """The parameters of the flow run the form created (polled: the page posts it in the background).
    On a busy machine a click can land before the form is ready and post nothing: after 20 s with no
    run, `submit` is called again (it clicks only while the form is still there), three times at most."""
    for _ in range(3):
        submit()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs() if r.deployment_id == deployment_id and r.id not in before]
            if runs:
                assert len(runs) == 1, runs  # one submission, one run
                client.delete_flow_run(runs[0].id)  # no worker is to run it
                return runs[0].parameters
            time.sleep(0.3)
    pytest.fail("submitting the form created no flow run")


def test_the_train_form_in_a_browser_presets_conf_and_submits_only_what_was_changed(server, browser):
    from playwright.sync_api import expect

    ui = server.removesuffix("/api")
    page = browser.new_page(viewport={"width": 1300, "height": 1800})
    page.set_default_timeout(60_000)  # the UI's first load, on a busy machine
    with get_client(sync_client=True) as client:
        client.update_work_pool("opengpt2", WorkPoolUpdate(is_paused=True))  # the worker must not run these
        try:
            for name in FLOWS:
                deployment = client.read_deployment_by_name(f"{name}/{name}")
                before = {r.id for r in client.read_flow_runs()}
                page.goto(f"{ui}/deployments/deployment/{deployment.id}/run")
                expect(form_field(page, "overrides")).to_be_visible()  # the form has rendered
                if name == "train":
                    expect(form_field(page, "model").locator(".p-select-button__value")).to_have_text("gpt2-tiny")
                    expect(form_field(page, "trainer").locator(".p-select-button__value")).to_have_text("cpu")
                    expect(form_field(page, "max_steps").locator("input")).to_have_value("")
                    form_field(page, "model").locator(".p-select-button__control").click()
                    page.keyboard.press("ArrowDown")
                    page.get_by_role("option", name="gpt2", exact=True).click()
                    form_field(page, "max_steps").locator("input").fill("5")
                submit = page.get_by_role("button", name="Submit")  # gone once the page moved to the new run
                parameters = submitted_run(client, deployment.id, before,
                                           lambda: submit.click() if submit.is_visible() else None)
                overrides = form_overrides(flow_function(name), parameters) + parameters["overrides"]
                if name == "train":
                    assert (parameters["model"], parameters["max_steps"]) == ("gpt2", 5)
                    assert overrides == ["model=gpt2", "trainer.max_steps=5"]
                else:  # untouched: no override, so exactly conf/'s defaults
                    assert overrides == [], name
        finally:
            client.update_work_pool("opengpt2", WorkPoolUpdate(is_paused=False))


def test_refresh_schedule_is_registered_with_its_cron(server):
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("corpus-refresh/corpus-refresh")
    [schedule] = deployment.schedules
    assert schedule.schedule.cron == "0 3 1 * *" and schedule.active


def test_deployed_corpus_run_completes_and_publishes_its_funnel(server, tmp_path):
    run = run_deployment("corpus/corpus", parameters={"corpus": "demo", "runner": "local",
                                                      "overrides": [f"paths.data={tmp_path}", "logger=none"]},
                         timeout=600)
    assert run.state.is_completed(), run.state.message
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["corpus-funnel"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert artifacts and "| after dedup | 53 |" in artifacts[0].data
    assert (tmp_path / "corpus" / "demo" / "tokens" / "manifest.json").exists()


def test_deployed_run_that_fails_says_why(server, tmp_path):
    run = run_deployment("corpus/corpus", parameters={"overrides": [f"paths.data={tmp_path}", "corpus=pushshift",
                                                                    "corpus.dumps=[/nonexistent/RS_x.zst]"]},
                         timeout=300)
    assert run.state.is_failed()
    assert "RS_x.zst" in (run.state.message or "")  # in the Failed state's message, as the UI shows it

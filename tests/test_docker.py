"""What can be checked here without a Docker engine: hadolint, the compose file, the COPY sources."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))


def test_there_is_a_cpu_and_a_cuda_image():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.cuda"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_hadolint_clean(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_in_the_build_context(dockerfile):
    context = DOCKER.parent  # compose builds with context ..
    sources = [src for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")
               for src in line.split()[1:-1]]
    assert sources and all((context / src).exists() for src in sources), sources


def test_compose_file_runs_server_worker_and_trainer():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    assert set(compose["services"]) == {"prefect", "worker", "trainer"}
    for name in ("worker", "trainer"):
        build = compose["services"][name]["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).exists()
        assert compose["services"][name]["environment"]["PREFECT_API_URL"] == "http://prefect:4200/api"
    assert re.search(r"worker start --pool opengpt2\b", compose["services"]["worker"]["command"])


def test_every_deployment_pool_is_served_by_a_compose_worker_and_train_by_the_gpu_one():
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    deployments = yaml.safe_load((DOCKER.parent / "prefect.yaml").read_text())["deployments"]
    served = {pool: name for name, service in compose["services"].items()
              for pool in re.findall(r"worker start --pool (\S+)", str(service.get("command", "")))}
    assert {d["work_pool"]["name"] for d in deployments} <= set(served)
    [train] = [d for d in deployments if d["name"] == "train"]
    trainer = compose["services"][served[train["work_pool"]["name"]]]
    assert trainer["build"]["dockerfile"].endswith("Dockerfile.cuda") and "deploy" in trainer  # the GPU reservation


def test_services_have_healthchecks_and_workers_wait_for_a_healthy_server():
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    assert all("healthcheck" in s for s in services.values())
    for name in ("worker", "trainer"):
        assert services[name]["depends_on"]["prefect"]["condition"] == "service_healthy"
        assert "data:/opt/opengpt2/data" in services[name]["volumes"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_start_in_the_image_project_folder_with_its_data_folder(dockerfile):
    text = dockerfile.read_text()
    [workdir] = re.findall(r"^WORKDIR (\S+)", text, re.M)
    assert f"OPENGPT2_HOME={workdir}" in text and "mkdir -p data" in text
    pull = yaml.safe_load((DOCKER.parent / "prefect.yaml").read_text())["pull"]
    assert pull[0]["prefect.deployments.steps.set_working_directory"]["directory"] == "{{ $OPENGPT2_HOME }}"

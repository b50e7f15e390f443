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

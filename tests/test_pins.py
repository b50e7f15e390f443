"""constraints.txt is the one source of version pins: the package names its dependencies without
versions, and the images, compose file and install steps take every version from it."""
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PINS = {canonicalize_name(name): version for name, version in
        re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (REPO / "constraints.txt").read_text(), re.M)}
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))


def requirements() -> list[Requirement]:
    extras = [r for group in PROJECT["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in PROJECT["dependencies"] + extras]


def test_the_package_names_dependencies_and_constraints_pin_each_one():
    assert all(not r.specifier for r in requirements()), "versions belong in constraints.txt only"
    unpinned = [r.name for r in requirements() if canonicalize_name(r.name) not in PINS]
    assert not unpinned, f"add to constraints.txt: {unpinned}"


def pip_installs(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    return [cmd.strip() for line in text.splitlines() if line.startswith("RUN ")
            for cmd in line[4:].split("&&") if "pip install" in cmd]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_take_every_version_from_the_constraints(dockerfile):
    installs = pip_installs(dockerfile)
    assert installs and all("-c constraints.txt" in cmd for cmd in installs), installs
    for name, version in re.findall(r"([A-Za-z0-9_.\-]+)==([0-9][^\s\"']*)", dockerfile.read_text()):
        assert PINS.get(canonicalize_name(name)) == version, f"{dockerfile.name}: {name}=={version}"
    assert "torch" in " ".join(installs)  # torch is installed, from the constraints' pin, in every image


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_use_a_python_the_package_supports(dockerfile):
    [base] = re.findall(r"^FROM python:(\d+\.\d+)", dockerfile.read_text(), re.M)
    assert SpecifierSet(PROJECT["requires-python"]).contains(f"{base}.0")


def test_compose_prefect_server_matches_the_pinned_prefect():
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    tag = compose["services"]["prefect"]["image"].split(":")[1]
    assert tag.split("-")[0] == PINS["prefect"]


def test_readme_gpu_steps_install_the_pinned_torch():
    readme = (REPO / "README.md").read_text()
    pins = re.findall(r"torch==(\S+?)[`\s]", readme)
    assert pins and all(pin == PINS["torch"] for pin in pins)


def test_a_disagreeing_pin_is_caught(tmp_path):
    """The check itself: a Dockerfile asking for another torch than constraints.txt fails it."""
    bad = tmp_path / "Dockerfile.bad"
    bad.write_text("FROM python:3.11-slim\nRUN pip install -c constraints.txt torch==1.0.0\n")
    with pytest.raises(AssertionError, match="torch==1.0.0"):
        test_images_take_every_version_from_the_constraints(bad)

"""What can be checked about the images without a Docker engine."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from ecgssl.config import load_params

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile", "Dockerfile.gpu")


def _lock_torch() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in deps if d.startswith("torch=="))


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_installs_from_the_lock_as_non_root(name):
    text = (ROOT / "docker" / name).read_text()
    assert "COPY requirements.lock" in text
    # runtime dependencies (pyproject.toml) at the lock's versions
    assert re.search(r"pip install -c requirements\.lock -r requirements\.txt", text)
    assert _lock_torch() in text                     # the torch the lock was made with
    assert "--no-deps ." in text                     # the package itself adds no new resolution
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert not re.search(r"(?i)^\s*(ENV|ARG)\s+\S*(SECRET|TOKEN|PASSWORD|ACCESS_KEY)", text, re.M)
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"{name} copies {path}, which does not exist"
    assert 'ENTRYPOINT ["ecgssl"]' in text


def test_gpu_image_has_cuda_and_pynvml():
    """No CUDA base image: PyPI's torch wheel brings the CUDA runtime as pip packages, so the
    GPU image stands on the CPU image's slim base and checks at build time that torch has CUDA."""
    gpu = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    cpu = (ROOT / "docker" / "Dockerfile").read_text()
    assert "nvidia-ml-py==" in gpu
    assert re.findall(r"^ARG BASE_IMAGE=(\S+)", gpu, re.M) == \
        re.findall(r"^ARG BASE_IMAGE=(\S+)", cpu, re.M) == ["python:3.11-slim-bookworm"]
    assert "nvidia/cuda" not in gpu
    assert re.search(r"^ARG TORCH_INDEX=$", gpu, re.M)                   # PyPI: the CUDA build
    assert re.search(r"^ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu$", cpu, re.M)
    assert "torch.version.cuda is None" in gpu and "torch.version.cuda is not None" in cpu


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_is_small_and_labelled(name):
    text = (ROOT / "docker" / name).read_text()
    froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?$", text, re.M)
    assert [f[1] for f in froms] == ["deps", ""]
    final = text[text.rindex("\nFROM "):]
    # the torch wheel is bind-mounted for the install, never copied into a layer
    assert "RUN --mount=type=bind,source=docker/wheels,target=/tmp/wheels" in final
    assert not re.search(r"^(COPY|ADD) .*wheels", text, re.M)
    assert "apt-get clean" in final and "rm -rf /var/lib/apt/lists/*" in final
    for key in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{key}=" in final
    # The labels come last, so a new commit reruns no build step.
    assert final.rindex("LABEL ") > final.rindex("RUN ")


def test_build_script_builds_without_docker():
    text = (ROOT / "docker" / "build.sh").read_text()
    assert "docker info" in text                 # docker only when its daemon answers
    assert "buildah bud" in text and "podman build" in text
    assert "TORCH_INDEX=" in text and "--torch-wheels" in text
    assert (ROOT / "docker" / "wheels").is_dir()  # the bind mount needs it in every clone


def test_build_script_tags_match_the_pipeline_images():
    cpu = subprocess.run(["bash", "docker/build.sh", "--print-tags"], cwd=ROOT, text=True,
                         capture_output=True, check=True).stdout.split()
    gpu = subprocess.run(["bash", "docker/build.sh", "--gpu", "--print-tags"], cwd=ROOT,
                         text=True, capture_output=True, check=True).stdout.split()
    k = load_params(ROOT / "params.yaml").kfp
    assert cpu[0] == k.image and gpu[0] == k.gpu_image
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cpu[0].endswith(f":{version}") and re.search(rf":{version}-\w+$", cpu[1])


def test_entry_point_and_dockerignore():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["ecgssl"] == "ecgssl.cli:app"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "outputs", "mlflow.db", "data", "tests", "**/.env"} <= set(ignored)
    assert not any(p in ("docker", "docker/", "docker/wheels") for p in ignored)
    out = subprocess.run([str(Path(sys.executable).parent / "ecgssl"), "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["version"]

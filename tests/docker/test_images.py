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
    assert re.search(r"pip install (--\S+ )*-r requirements\.lock", text)
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
    text = (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"nvidia/cuda:\S+-runtime", text)
    assert "nvidia-ml-py==" in text
    assert "whl/cu" in text


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
    assert {".venv", ".git", "outputs", "mlflow.db"} <= set(ignored)
    out = subprocess.run([str(Path(sys.executable).parent / "ecgssl"), "--version"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["version"]

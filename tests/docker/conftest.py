"""The CPU image, built for real once per session for the tests that run it
(test_image_build.py, test_components_in_image.py).

Where no Docker engine runs (our CI machines), `image` installs buildah/podman/runc/debootstrap
from Debian's packages (docker/install-engine.sh), makes a local stand-in for the base image
(docker/local-base.sh: no container registry is reachable) and builds with buildah through
docker/build.sh. Each step is skipped when already done, and the layer cache stays in the
machine's container storage (/var/lib/containers), so a rerun rebuilds only what changed.
Skipped, with the reason, only where there is no Docker daemon and the tools cannot be used or
installed (not root, no apt-get).
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# This sandbox's limits: the engine's default rlimits are above what it allows, and crun fails
# on its hybrid cgroups (runc works). Harmless elsewhere.
PODMAN_RUN = ["--runtime", "runc", "--ulimit", "nofile=20000:20000",
              "--ulimit", "nproc=4096:4096"]


@pytest.fixture(scope="session")
def say(request):
    """say(line): print past pytest's capture, so that CI logs show the timings."""
    capman = request.config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capman.global_and_fixture_disabled():
            print(f"\n[image] {line}", flush=True)
    return say


def _sh(cmd: list[str], log: Path, env: dict | None = None, timeout: int = 1500) -> float:
    """Run cmd in the repository with its output appended to `log`; returns the seconds taken,
    fails with the log's tail."""
    t0 = time.perf_counter()
    with open(log, "ab") as fh:
        fh.write(f"$ {' '.join(cmd)}\n".encode())
        fh.flush()
        r = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, timeout=timeout,
                           env={**os.environ, **(env or {})})
    if r.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        pytest.fail(f"{' '.join(cmd)} exited {r.returncode} (log {log}):\n{tail}")
    return time.perf_counter() - t0


def _docker_daemon() -> bool:
    return bool(shutil.which("docker")) and subprocess.run(
        ["docker", "info"], capture_output=True, stdin=subprocess.DEVNULL).returncode == 0


def _torch_wheels() -> str | None:
    """A folder holding the CPU torch wheel (machines of our kind have one on disk, and the
    PyTorch CPU index is not reachable from them), else None: the image's default index."""
    for d in (os.environ.get("ECGSSL_TORCH_WHEELS"), "/opt/wheels"):
        if d and list(Path(d).glob("torch-2.13.0+cpu-*.whl")):
            return d
    return None


@pytest.fixture(scope="session")
def image(say, tmp_path_factory) -> dict:
    """Builds the CPU image (all the slow work). Returns {"cli": docker or podman, "run": extra
    `run` options, "image": the first tag (params.yaml kfp.image), "tags", "log"}."""
    log = tmp_path_factory.mktemp("image") / "build.log"
    times: dict[str, float] = {}
    if _docker_daemon():
        cli, run_args, env = "docker", [], {"ECGSSL_BUILD_ENGINE": "docker"}
    elif os.geteuid() != 0:
        pytest.skip("no Docker daemon, and not root: the buildah build and the debootstrap "
                    "base image need root here")
    else:
        t0 = time.perf_counter()
        r = subprocess.run(["bash", "docker/install-engine.sh"], cwd=ROOT, text=True,
                           capture_output=True, stdin=subprocess.DEVNULL)
        if r.returncode == 3:
            pytest.skip(f"no container engine and none can be installed: {r.stderr.strip()}")
        assert r.returncode == 0, r.stdout + r.stderr
        times["tools"] = time.perf_counter() - t0
        times["base image"] = _sh(["bash", "docker/local-base.sh"], log)
        cli, run_args, env = "podman", PODMAN_RUN, {"ECGSSL_BUILD_ENGINE": "buildah"}
    wheels = _torch_wheels()
    times["build"] = _sh(["bash", "docker/build.sh"]
                         + (["--torch-wheels", wheels] if wheels else []), log, env)
    tags = subprocess.run(["bash", "docker/build.sh", "--print-tags"], cwd=ROOT, text=True,
                          capture_output=True, check=True).stdout.split()
    size = subprocess.run([cli, "image", "inspect", "--format", "{{.Size}}", tags[0]],
                          capture_output=True, text=True, check=True).stdout.strip()
    say(", ".join(f"{k} {v:.1f} s" for k, v in times.items())
        + f"; {tags[0]} {int(size) / 1e9:.2f} GB ({cli}; torch from "
        + (f"{wheels})" if wheels else "the image's default index)"))
    return {"cli": cli, "run": run_args, "image": tags[0], "tags": tags, "log": log}

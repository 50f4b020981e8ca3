"""The pipeline's components inside the image: ingest (mitdb, cinc2017) -> reports -> embed-text
-> pretrain through kfp.local.DockerRunner (docker/components_in_image.py), each task a
container of the CPU image, talking to podman's Docker-compatible API where no Docker daemon
runs. About 1.5 minutes once the image is built. Deselect with `-m "not docker"`.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


@pytest.fixture
def docker_host(image):
    """The DOCKER_HOST for the docker SDK: the daemon's, or a podman API service started here
    (and stopped after the test) on a socket with a short path (unix sockets allow ~100)."""
    if image["cli"] == "docker":
        yield os.environ.get("DOCKER_HOST", "")
        return
    folder = Path(tempfile.mkdtemp(prefix="ecgssl-podman-", dir="/tmp"))
    sock = folder / "podman.sock"
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        assert sock.exists(), "podman system service did not open its socket in 10 s"
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


def test_ingest_reports_embed_pretrain_as_containers(image, docker_host, say, tmp_path):
    env = {**os.environ, "DOCKER_HOST": docker_host}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "docker/components_in_image.py", "--image",
                        image["image"], "--pipeline-root", str(tmp_path / "kfp")],
                       cwd=ROOT, env=env, capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=1200)
    took = time.perf_counter() - t0
    assert r.returncode == 0, (r.stdout + r.stderr)[-6000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    say(f"components in the image (kfp.local.DockerRunner): {took:.1f} s")
    assert len(out["tables"]) == 2
    for t in out["tables"]:
        assert json.loads((Path(t) / "_manifest.json").read_text())["rows"] > 0
    assert json.loads((Path(out["reports"]) / "_manifest.json").read_text())["rows"] > 0
    assert Path(out["embeddings"]).stat().st_size > 0
    assert Path(out["encoder"]).stat().st_size > 0
    # Everything in the run's folder was written by the image's user (uid 10001), none by root.
    assert out["not_uid_10001"] == []

"""The CPU image built for real (docker/build.sh, see conftest.py) and the CLI run inside it as
its non-root user: --version, ingest and one pretraining step on the bundled sample.

Cold (fresh machine: tools, base image, build) about 7 minutes on 2 cores; warm well under one.
Deselect with `-m "not docker"`.
"""

import json
import os
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UID = 10001

pytestmark = [pytest.mark.docker, pytest.mark.timeout(1800)]


def _inspect(image, fmt: str) -> str:
    return subprocess.run([image["cli"], "image", "inspect", "--format", fmt, image["image"]],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_image_metadata(image):
    assert _inspect(image, "{{.Config.User}}") == "ecgssl"
    assert json.loads(_inspect(image, "{{json .Config.Entrypoint}}")) == ["ecgssl"]
    labels = json.loads(_inspect(image, "{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] == VERSION
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, text=True,
                         capture_output=True).stdout.strip() or "unknown"
    assert labels["org.opencontainers.image.revision"] == sha
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert image["tags"][1].endswith(f":{VERSION}-{sha}")
    env = "\n".join(json.loads(_inspect(image, "{{json .Config.Env}}"))).upper()
    for word in ("SECRET", "TOKEN", "PASSWORD", "ACCESS_KEY"):
        assert word not in env


def test_cli_runs_as_non_root_on_the_sample(image, say, tmp_path):
    """--version, ingest and one pretraining step inside the image, as the image's own user,
    with the sample read-only, no network, and the outputs in a host folder in which root owns
    nothing."""
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        os.chown(out, UID, UID)
    else:
        out.chmod(0o777)
    base = [image["cli"], "run", "--rm", *image["run"], "--network", "none",
            "-v", f"{ROOT / 'data' / 'sample'}:/data:ro", "-v", f"{out}:/out", image["image"]]

    def run(*args: str) -> tuple[str, float]:
        t0 = time.perf_counter()
        r = subprocess.run([*base, *args], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
        assert r.returncode == 0, f"{args} exited {r.returncode}:\n{r.stdout}\n{r.stderr}"
        return r.stdout, time.perf_counter() - t0

    version, t_version = run("--version")
    assert version.strip() == VERSION
    _, t_ingest = run("ingest", "mitdb", "--input", "/data/mitdb",
                      "--output", "/out/tables/mitdb", "--workers", "2")
    _, t_pretrain = run("pretrain", "--data", "/out/tables/mitdb", "--output", "/out/pretrain",
                        "--method", "st", "--max-steps", "1", "--batch-size", "8",
                        "--no-mlflow", "--no-progress")
    say(f"in the image: --version {t_version:.1f} s, ingest mitdb {t_ingest:.1f} s, "
        f"pretrain st 1 step {t_pretrain:.1f} s")

    manifest = json.loads((out / "tables" / "mitdb" / "_manifest.json").read_text())
    assert manifest["rows"] > 0 and list((out / "tables" / "mitdb").rglob("*.parquet"))
    for name in ("encoder.safetensors", "config.json", "metrics.json"):
        assert (out / "pretrain" / name).is_file(), name
    assert json.loads((out / "pretrain" / "metrics.json").read_text())
    owners = {p.relative_to(out).as_posix(): p.lstat().st_uid for p in out.rglob("*")}
    assert owners and all(uid == UID for uid in owners.values()), owners

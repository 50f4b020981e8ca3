"""`ecgssl pipeline submit|schedule`: the requests the real kfp.Client sends, received by a
small recording HTTP server that answers like the KFP v2beta1 API (no cluster needed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ecgssl.errors import EcgsslError
from ecgssl.pipeline.remote import cron6

ROOT = Path(__file__).resolve().parents[2]
ECGSSL = str(Path(sys.executable).parent / "ecgssl")


class FakeKfp(BaseHTTPRequestHandler):
    requests: list = []

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        req = {"method": self.command, "path": self.path, "auth": self.headers.get(
            "Authorization"), "body": body}
        self.requests.append(req)
        return req

    def do_GET(self):  # noqa: N802
        req = self._record()
        if req["path"].startswith("/apis/v2beta1/healthz"):
            self._answer({"multi_user": False})
        elif req["path"].startswith("/apis/v2beta1/experiments"):
            self._answer({"experiments": [{"experiment_id": "exp-1",
                                           "display_name": "ecgssl-nightly"}]})
        else:
            self.send_error(404)

    def do_POST(self):  # noqa: N802
        req = self._record()
        if req["path"] == "/apis/v2beta1/runs":
            self._answer({"run_id": "run-42", "display_name": req["body"]["display_name"]})
        elif req["path"] == "/apis/v2beta1/recurringruns":
            self._answer({"recurring_run_id": "rr-7"})
        else:
            self.send_error(404)

    def log_message(self, *args):
        pass


@pytest.fixture()
def kfp_server():
    FakeKfp.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", FakeKfp.requests
    server.shutdown()


def _cli(*args, token="s3cr3t-token", **extra):
    env = {**os.environ, "KFP_TOKEN": token, "HOME": os.environ.get("HOME", "/tmp"), **extra}
    return subprocess.run([ECGSSL, "pipeline", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


# What a release submits: the pipeline compiled for the immutable tags docker/build.sh pushed.
PINNED = {"ECGSSL_IMAGE": "ghcr.io/ecgssl/ecgssl:0.1.0-0123456789ab",
          "ECGSSL_GPU_IMAGE": "ghcr.io/ecgssl/ecgssl:0.1.0-0123456789ab-gpu"}


@pytest.fixture(scope="module")
def pinned_package(tmp_path_factory):
    out = tmp_path_factory.mktemp("pinned") / "ecgssl_pipeline.yaml"
    r = _cli("compile", "-o", str(out), ECGSSL_PARAMS=str(ROOT / "params.yaml"), **PINNED)
    assert r.returncode == 0, r.stderr
    return out


def test_submit_sends_the_compiled_spec_arguments_and_token(kfp_server, pinned_package):
    host, reqs = kfp_server
    r = _cli("submit", "--host", host, "--experiment", "ecgssl-nightly", "--run-name", "nightly",
             "--arg", "sources=[mitdb, cinc2017]", "--set", "pretrain.max_steps=500",
             "--package", str(pinned_package))
    assert r.returncode == 0, r.stderr
    assert "run-42" in r.stderr
    assert all(q["auth"] == "Bearer s3cr3t-token" for q in reqs)
    run = next(q for q in reqs if q["method"] == "POST")
    body = run["body"]
    assert run["path"] == "/apis/v2beta1/runs"
    assert body["experiment_id"] == "exp-1" and body["display_name"] == "nightly"
    compiled = yaml.safe_load_all(pinned_package.read_text())
    assert body["pipeline_spec"]["pipeline_spec"]["root"] == next(compiled)["root"]
    args = body["runtime_config"]["parameters"]
    assert args["sources"] == ["mitdb", "cinc2017"]
    assert json.loads(args["params"])["pretrain"]["max_steps"] == 500
    assert "s3cr3t-token" not in r.stdout + r.stderr


def test_schedule_creates_a_cron_recurring_run(kfp_server, pinned_package):
    host, reqs = kfp_server
    r = _cli("schedule", "--host", host, "--cron", "0 3 * * 1", "--experiment",
             "ecgssl-nightly", "--name", "weekly-retrain", "--package", str(pinned_package))
    assert r.returncode == 0, r.stderr
    assert "rr-7" in r.stderr
    rec = next(q for q in reqs if q["path"] == "/apis/v2beta1/recurringruns")["body"]
    assert rec["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
    assert rec["display_name"] == "weekly-retrain" and rec["experiment_id"] == "exp-1"
    assert rec["mode"] == "ENABLE" and rec["no_catchup"] is True
    assert int(rec["max_concurrency"]) == 1
    assert rec["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "ecgssl"


@pytest.mark.parametrize("command", [["submit"], ["schedule", "--cron", "0 3 * * 1"]])
def test_cached_tasks_on_a_moving_image_tag_are_refused(kfp_server, command):
    """KFP keys its cache by the image reference (kubeflow/pipelines#13862); build.sh moves
    ghcr.io/ecgssl/ecgssl:<version> on every build, and the stages' code is in the image: the
    checked-in YAML would serve a fixed stage's old results from cache, run after run."""
    host, reqs = kfp_server
    r = _cli(*command, "--host", host)
    assert r.returncode == 2, r.stderr
    assert "ghcr.io/ecgssl/ecgssl:0.1.0" in r.stderr and "print-tags" in r.stderr
    assert not [q for q in reqs if q["method"] == "POST"]


def test_unreachable_host_is_a_clear_error_at_once(pinned_package):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = _cli("submit", "--host", f"http://127.0.0.1:{port}", "--package", str(pinned_package))
    assert r.returncode == 2
    assert f"127.0.0.1:{port} is not reachable" in r.stderr


def test_cron_forms():
    assert cron6("0 3 * * 1") == "0 0 3 * * 1"
    assert cron6("30 0 3 * * 1") == "30 0 3 * * 1"
    with pytest.raises(EcgsslError, match="expected 5 fields"):
        cron6("every monday")

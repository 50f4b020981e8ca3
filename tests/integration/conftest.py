"""Real servers for integration tests, on loopback ports, stopped at the end."""

from __future__ import annotations

import subprocess

import pytest
from servers import BIN, free_port, stop, wait_http


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite store and proxied artifacts; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", proc)
        yield uri
    finally:
        stop(proc)


S3_ENV = {"AWS_ACCESS_KEY_ID": "ecgssl-test-key", "AWS_SECRET_ACCESS_KEY": "s3cr3t-ecgssl-key",
          "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/moto-api/", proc)
    return proc


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-speaking server (moto_server) on a loopback port; yields its endpoint URL."""
    root = tmp_path_factory.mktemp("s3")
    port = free_port()
    proc = start_moto(port, open(root / "moto.log", "w"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture()
def s3_env(s3_server, monkeypatch, tmp_path) -> dict:
    """AWS environment for the server (as a user would set it), a fresh bucket, a fresh cache."""
    import uuid

    import boto3
    env = {**S3_ENV, "AWS_ENDPOINT_URL": s3_server,
           "ECGSSL_CACHE_DIR": str(tmp_path / "ecgssl-cache")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    bucket = f"ecg-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return {**env, "BUCKET": bucket}

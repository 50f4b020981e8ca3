"""Real servers for integration tests, on loopback ports, stopped at the end."""

from __future__ import annotations

import pytest
from servers import S3_ENV, free_port, start_mlflow, start_moto, stop


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite store and proxied artifacts; yields its URI."""
    root = tmp_path_factory.mktemp("mlflow")
    proc, uri = start_mlflow(root, str(root / "artifacts"))
    try:
        yield uri
    finally:
        stop(proc)


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

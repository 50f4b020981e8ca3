"""Starting and stopping real server processes on loopback ports for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started with start_new_session=True, and everything it started."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()




def start_mlflow(root: Path, artifacts: str, env: dict | None = None) -> tuple[subprocess.Popen,
                                                                             str]:
    """`mlflow server` with a SQLite store in root and proxied artifacts at `artifacts` (a
    folder or s3:// URI); returns the process and its URI once healthy."""
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'db.sqlite'}",
         "--artifacts-destination", artifacts, "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})}, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_http(uri + "/health", proc)
    except Exception:
        stop(proc)
        raise
    return proc, uri


S3_ENV = {"AWS_ACCESS_KEY_ID": "ecgssl-test-key", "AWS_SECRET_ACCESS_KEY": "s3cr3t-ecgssl-key",
          "AWS_DEFAULT_REGION": "us-east-1"}


def start_moto(port: int, log) -> subprocess.Popen:
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/moto-api/", proc)
    return proc

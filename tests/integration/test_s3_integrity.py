"""Issue 14 against a real S3-speaking server (moto_server on loopback): object keys that
climb out of the local mirror, credentials inside s3:// URIs, and a mirror that must follow
overwrites and deletions exactly."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from ecgssl.errors import EcgsslError
from ecgssl.storage import Paths, pull

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def cli(*args, env: dict, params: Path):
    return subprocess.run([sys.executable, "-m", "ecgssl.cli", *map(str, args), "--params",
                           str(params)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, cwd=ROOT)


@pytest.fixture
def params(tmp_path) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text("ingest:\n  workers: 1\n")
    return p


def upload(bucket: str, records: list[str], prefix: str) -> None:
    s3 = boto3.client("s3")
    for r in records:
        for f in (ROOT / "data/sample/cinc2017").glob(f"{r}.*"):
            s3.upload_file(str(f), bucket, f"{prefix}/{f.name}")


def test_an_object_key_with_dotdot_never_writes_outside_the_mirror(s3_env, tmp_path, params):
    b = s3_env["BUCKET"]
    upload(b, ["A00001", "A00002"], "raw/cinc2017")
    boto3.client("s3").put_object(Bucket=b, Key="raw/cinc2017/../../../../x.txt",
                                  Body=b"planted")
    cache = Path(s3_env["ECGSSL_CACHE_DIR"])
    p = cli("ingest", "cinc2017", "--input", f"s3://{b}/raw/cinc2017", "--output",
            tmp_path / "out", "--no-progress", env=s3_env, params=params)
    assert p.returncode == 2, p.stderr
    assert "refusing object key" in p.stderr and "Traceback" not in p.stderr
    planted = [f for f in [*tmp_path.rglob("x.txt"), *cache.parent.rglob("x.txt")]]
    assert not planted, planted


def test_credentials_in_an_s3_uri_are_never_printed(s3_env, tmp_path, params):
    p = cli("ingest", "cinc2017", "--input", f"s3://AKIAEXAMPLE:s3cr3t-in-uri@{s3_env['BUCKET']}"
            "/raw", "--output", tmp_path / "out", "--no-progress", env=s3_env, params=params)
    assert p.returncode == 2
    assert "s3cr3t-in-uri" not in p.stdout + p.stderr
    assert "carries credentials" in p.stderr and "Traceback" not in p.stderr


def test_the_mirror_follows_overwrites_and_deletions(s3_env, tmp_path):
    b = s3_env["BUCKET"]
    s3 = boto3.client("s3")
    for k in ("a.txt", "b.txt", "c.txt"):
        s3.put_object(Bucket=b, Key=f"p/{k}", Body=f"old {k}".encode())
    local = Paths().input(f"s3://{b}/p")          # how a stage mirrors its input
    assert (local / "b.txt").read_bytes() == b"old b.txt"
    s3.put_object(Bucket=b, Key="p/b.txt", Body=b"new b.txt")          # same size
    s3.delete_object(Bucket=b, Key="p/c.txt")
    # Overwritten within the same second (S3 times have one-second resolution): give the
    # local copy the new object's time, so only the ETag can tell the difference.
    t = s3.head_object(Bucket=b, Key="p/b.txt")["LastModified"].timestamp()
    os.utime(local / "b.txt", ns=(int(t * 1e9), int(t * 1e9)))
    assert Paths().input(f"s3://{b}/p") == local
    assert (local / "b.txt").read_bytes() == b"new b.txt"
    assert not (local / "c.txt").exists()
    assert (local / "a.txt").read_bytes() == b"old a.txt"


def test_a_single_object_overwritten_with_the_same_size_is_fetched_again(s3_env, tmp_path):
    b = s3_env["BUCKET"]
    s3 = boto3.client("s3")
    s3.put_object(Bucket=b, Key="one.json", Body=b'{"v": 1}')
    local = tmp_path / "one.json"
    pull(f"s3://{b}/one.json", local)
    time.sleep(1.1)                                        # a new LastModified second
    s3.put_object(Bucket=b, Key="one.json", Body=b'{"v": 2}')
    pull(f"s3://{b}/one.json", local)
    assert local.read_bytes() == b'{"v": 2}'


def test_an_absolute_key_is_refused(s3_env, tmp_path):
    b = s3_env["BUCKET"]
    boto3.client("s3").put_object(Bucket=b, Key="q//etc/passwd-copy", Body=b"x")
    with pytest.raises(EcgsslError, match="refusing object key"):
        pull(f"s3://{b}/q", tmp_path / "m")


def test_a_reader_never_sees_a_half_pushed_run_folder(s3_env, tmp_path):
    """A rerun pushes new weights over an old run: while the weights upload, a reader (an
    evaluate on another pod, a TrainJob launcher) must see the old run or no run (no
    config.json), never the new config.json beside the old weights."""
    import json
    import threading

    from ecgssl.storage import push
    b, s3 = s3_env["BUCKET"], boto3.client("s3")
    run, uri = tmp_path / "run", f"s3://{s3_env['BUCKET']}/runs/pretrain"
    run.mkdir()
    (run / "encoder.safetensors").write_bytes(b"\0" * 1000)
    (run / "config.json").write_text(json.dumps({"weights_bytes": 1000}))
    (run / "metrics.json").write_text(json.dumps({"weights_bytes": 1000}))
    push(run, uri)
    new = 48 << 20
    (run / "encoder.safetensors").write_bytes(os.urandom(new))
    (run / "config.json").write_text(json.dumps({"weights_bytes": new}))
    (run / "metrics.json").write_text(json.dumps({"weights_bytes": new}))
    seen, done = [], threading.Event()

    def weights() -> int:
        return s3.head_object(Bucket=b, Key="runs/pretrain/encoder.safetensors")[
            "ContentLength"]

    def reader():
        while not done.is_set():
            before = weights()
            try:
                cfg = json.loads(s3.get_object(Bucket=b, Key="runs/pretrain/config.json")[
                    "Body"].read())["weights_bytes"]
            except s3.exceptions.NoSuchKey:
                cfg = None                       # no run right now: a reader says so
            if before == weights():
                seen.append((cfg, before))
    t = threading.Thread(target=reader)
    t.start()
    try:
        push(run, uri)
    finally:
        done.set()
        t.join()
    mixed = [(c, w) for c, w in seen if c is not None and c != w]
    assert len(seen) > 3 and not mixed, (len(seen), mixed[:3])
    assert weights() == new

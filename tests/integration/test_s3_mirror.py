"""The s3:// staging of inputs and outputs against a real S3-speaking server (moto_server on
loopback): a rerun moves no bytes it need not move, and a mirror never keeps a stale copy."""

from __future__ import annotations

import time
from pathlib import Path

import boto3
import pytest

from ecgssl.storage import Paths, push, tree_fingerprint

pytestmark = pytest.mark.integration


def _objects(bucket: str, prefix: str) -> dict[str, tuple]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for p in pages for o in p.get("Contents", [])}


def test_an_up_to_date_rerun_of_an_s3_output_moves_no_bytes(s3_env):
    """Run 1 writes an s3:// output and pushes it; run 2 on the same machine finds its work
    done (as `writing` says "up to date"): it must neither download the output again nor
    upload it again, nor take the manifest off the bucket meanwhile."""
    b = s3_env["BUCKET"]
    uri = f"s3://{b}/outputs/table"
    io = Paths()
    out = io.output(uri)                     # nothing there yet
    out.mkdir(parents=True)
    (out / "part-00000-abc.parquet").write_bytes(b"rows" * 1000)
    (out / "_manifest.json").write_text('{"shards": ["part-00000-abc.parquet"]}')
    io.commit()
    before = _objects(b, "outputs/table/")
    assert set(before) == {"outputs/table/part-00000-abc.parquet", "outputs/table/_manifest.json"}
    shard_mtime = (out / "part-00000-abc.parquet").stat().st_mtime_ns
    time.sleep(1.1)                  # a re-upload would get a new LastModified second

    io2 = Paths()
    out2 = io2.output(uri)           # a rerun: what is there is pulled first
    assert out2 == out
    assert (out / "part-00000-abc.parquet").stat().st_mtime_ns == shard_mtime, \
        "the rerun downloaded the output it had just pushed"
    assert push(out2, uri) == 0, "the rerun uploaded files it had not changed"
    assert _objects(b, "outputs/table/") == before


def test_a_single_object_overwritten_within_the_same_second_is_fetched_again(s3_env):
    """An s3:// metadata CSV (or text embeddings) replaced by one of the same size within
    the second of the first upload: S3 times have one-second resolution, so only the ETag
    tells; the stage must read the new content (its key hashes the CSV's content)."""
    b = s3_env["BUCKET"]
    s3 = boto3.client("s3")
    uri = f"s3://{b}/meta/labels.csv"
    for _ in range(5):               # all three steps within one second of the server's clock
        time.sleep(1 - time.time() % 1 + 0.01)
        s3.put_object(Bucket=b, Key="meta/labels.csv", Body=b"record,labels\nr1,AF\n")
        first = s3.head_object(Bucket=b, Key="meta/labels.csv")["LastModified"]
        local = Paths().input(uri)
        assert local.read_bytes() == b"record,labels\nr1,AF\n"
        s3.put_object(Bucket=b, Key="meta/labels.csv", Body=b"record,labels\nr1,NO\n")
        if s3.head_object(Bucket=b, Key="meta/labels.csv")["LastModified"] == first:
            break
    else:
        pytest.skip("could not overwrite within one second of the server's clock")
    assert Paths().input(uri).read_bytes() == b"record,labels\nr1,NO\n"


def test_a_download_killed_midway_changes_no_fingerprint(s3_env):
    """A pod killed (SIGTERM/SIGKILL: no `finally` runs) while it mirrors an input leaves
    the download's temp file; the next run's mirror must fingerprint as a clean one does
    (else the whole ingest is redone and differs from the `--part` slices' key)."""
    b = s3_env["BUCKET"]
    s3 = boto3.client("s3")
    for k in ("A00001.hea", "A00001.mat"):
        s3.put_object(Bucket=b, Key=f"raw/{k}", Body=k.encode() * 10)
    uri = f"s3://{b}/raw"
    local = Paths().input(uri)
    clean = tree_fingerprint(local)
    # what atomic_path had made when the process died: `.<name>.<random>.tmp`, half written
    (local / ".A00001.mat.k2j4_x9.tmp").write_bytes(b"A00001")
    again = Paths().input(uri)
    assert tree_fingerprint(again) == clean
    assert not list(Path(again).glob("*.tmp")), "the killed download's temp file is left"


def test_source_version_follows_the_content_of_an_s3_prefix(s3_env):
    """The Kubeflow ingest's cache key (storage.source_version): a record overwritten with one
    of the same size changes it; the same bytes uploaded again do not (ETags, not times)."""
    from ecgssl.storage import source_version
    b, s3 = s3_env["BUCKET"], boto3.client("s3")
    s3.put_object(Bucket=b, Key="raw/mitdb/100.hea", Body=b"100 2 360 650000\n")
    s3.put_object(Bucket=b, Key="raw/mitdb/100.dat", Body=b"\x00" * 64)
    v1 = source_version(f"s3://{b}/raw/mitdb")
    time.sleep(1.1)                              # a new LastModified second
    s3.put_object(Bucket=b, Key="raw/mitdb/100.dat", Body=b"\x00" * 64)
    assert source_version(f"s3://{b}/raw/mitdb/") == v1
    s3.put_object(Bucket=b, Key="raw/mitdb/100.dat", Body=b"\x01" * 64)
    assert source_version(f"s3://{b}/raw/mitdb") != v1
    s3.put_object(Bucket=b, Key="raw/mitdb/101.hea", Body=b"101 2 360 650000\n")
    assert len({v1, source_version(f"s3://{b}/raw/mitdb")}) == 2


def test_source_version_follows_the_metadata_csv_on_s3(s3_env):
    """A source's label table (ingest.source_options.<source>.metadata) is an ingest input
    too: rewriting it under the same URI changes the fingerprint ingest is cached by."""
    import json

    from ecgssl.config import load_params
    from ecgssl.pipeline.steps import data_version
    b, s3 = s3_env["BUCKET"], boto3.client("s3")
    s3.put_object(Bucket=b, Key="raw/wfdb/100.hea", Body=b"100 2 360 650000\n")
    s3.put_object(Bucket=b, Key="meta/labels.csv", Body=b"record,label\n100,AF\n")
    raw = load_params().model_dump(mode="json")
    raw["ingest"]["source_options"] = {"wfdb": {"metadata": f"s3://{b}/meta/labels.csv"}}
    params = json.dumps(raw)
    v1 = data_version("wfdb", f"s3://{b}/raw", params)
    assert data_version("wfdb", f"s3://{b}/raw", params) == v1
    s3.put_object(Bucket=b, Key="meta/labels.csv", Body=b"record,label\n100,NO\n")
    assert data_version("wfdb", f"s3://{b}/raw", params) != v1

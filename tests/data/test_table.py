"""The table's storage: few-lead rows store only their leads; older schemas still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ecgssl.data.table import (
    SCHEMA_VERSION,
    ShardWriter,
    arrays,
    conform,
    read_manifest,
    read_shard,
    read_table,
    write_shard,
)
from ecgssl.storage import file_sha256


def _signal_bytes(table: Path) -> tuple[int, int, int]:
    """(uncompressed, compressed) bytes of the signal column over all shards, and rows."""
    raw = disk = rows = 0
    for shard in read_manifest(table)["shards"]:
        md = pq.ParquetFile(table / shard).metadata
        rows += md.num_rows
        for g in range(md.num_row_groups):
            for c in range(md.num_columns):
                col = md.row_group(g).column(c)
                if col.path_in_schema == "signal":
                    raw += col.total_uncompressed_size
                    disk += col.total_compressed_size
    return raw, disk, rows


def test_single_lead_rows_store_one_lead(tables):
    m = read_manifest(tables["cinc2017"])
    assert m["schema_version"] == SCHEMA_VERSION == 3
    raw, disk, rows = _signal_bytes(tables["cinc2017"])
    one_lead = m["n_samples"] * 4                    # float32 samples of one lead
    # 12 leads were 12 * one_lead per row before (zeros for 11); now about one lead
    assert raw / rows < 1.05 * one_lead and disk / rows < 1.05 * one_lead
    t = read_table(tables["cinc2017"])
    assert t.signal.shape == (rows, 12, m["n_samples"]) and t.signal.flags.c_contiguous
    assert t.lead_mask[:, 0].all() and not t.lead_mask[:, 1:].any()
    assert not t.signal[:, 1:].any()


def _as_old_schema(src: Path, dst: Path, version: int) -> Path:
    """A copy of a table as schema `version` (1 or 2) wrote it: 12 leads per row, zeros where
    absent; version 1 also has no report_codes column."""
    dst.mkdir()
    m = read_manifest(src)
    for shard in m["shards"]:
        t = pq.read_table(src / shard)
        signal, mask = arrays([t], m["n_samples"])
        dense = pa.FixedSizeListArray.from_arrays(pa.array(signal.reshape(-1)),
                                                  12 * m["n_samples"])
        t = t.set_column(t.schema.get_field_index("signal"), "signal", dense)
        if version < 2:
            t = t.drop_columns(["report_codes"])
        pq.write_table(t.replace_schema_metadata(None), dst / shard, compression="lz4")
    for s in m.get("sidecars", []):
        shutil.copyfile(src / s, dst / s)
    (dst / "_manifest.json").write_text(json.dumps({**m, "schema_version": version}))
    return dst


def test_old_schema_tables_read_the_same(tables, tmp_path):
    for source in ("cinc2017", "mitdb", "cinc2020"):
        new = read_table(tables[source])
        for version in (1, 2):
            old = _as_old_schema(tables[source], tmp_path / f"{source}-v{version}", version)
            for split in (None, "train"):
                a, b = read_table(old, split=split), read_table(tables[source], split=split)
                np.testing.assert_array_equal(a.signal, b.signal)
                np.testing.assert_array_equal(a.lead_mask, b.lead_mask)
                assert a.meta.equals(b.meta)
            assert len(read_table(old, columns=["ecg_id"])) == len(new)


def test_conform_packs_an_old_shard(tables, tmp_path):
    old = _as_old_schema(tables["mitdb"], tmp_path / "v1", 1)
    m = read_manifest(old)
    shard = conform(read_shard(old / m["shards"][0], None, None), m["n_samples"])
    assert shard.schema.field("signal").type == pa.large_binary()
    assert shard.column("report_codes").null_count == shard.num_rows
    ref = pq.read_table(tables["mitdb"] / read_manifest(tables["mitdb"])["shards"][0])
    for got, want in zip(arrays([shard], m["n_samples"]), arrays([ref], m["n_samples"])):
        np.testing.assert_array_equal(got, want)


def test_shard_writer_writes_the_bytes_write_shard_writes(tables, tmp_path):
    # Ingest writes a shard row group by row group while it reads; the file, and so the
    # manifest's sha256, must be the one written from all the rows at once, however they came.
    for source in ("cinc2017", "cinc2020"):
        m = read_manifest(tables[source])
        t = pq.read_table(tables[source] / m["shards"][0])
        t = pa.concat_tables([t] * 3).combine_chunks()        # > 1 row group of 256 rows
        want = write_shard(t, tmp_path / "all.parquet")
        for step in (1, 7, 100, 256, 300):
            w = ShardWriter(tmp_path / f"{step}.parquet")
            for lo in range(0, t.num_rows, step):
                w.add(t.slice(lo, step))
            assert w.close() == want
            assert file_sha256(tmp_path / f"{step}.parquet") == want["sha256"]
        w = ShardWriter(tmp_path / "dropped.parquet")
        w.add(t)
        w.abort()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            ["all.parquet", *(f"{s}.parquet" for s in (1, 7, 100, 256, 300))])
        for p in tmp_path.iterdir():
            p.unlink()


def test_a_manifest_naming_files_outside_its_folder_is_refused(sample, tmp_path):
    """A manifest is data (an s3:// table's is pulled from the bucket): its shard and
    sidecar names must stay inside the table's folder. `reports` copies each input's
    sidecars into its output: a sidecar `../notes.csv` was written beside the output."""
    import pytest

    from ecgssl.config import IngestConfig, ReportsConfig
    from ecgssl.data.ingest import ingest
    from ecgssl.errors import EcgsslError
    from ecgssl.reports.stage import run_reports

    table = tmp_path / "in" / "ptbxl"
    ingest("ptbxl", sample / "ptbxl", table, IngestConfig(workers=1), progress=False)
    (tmp_path / "in" / "notes.csv").write_text("planted\n")
    m = json.loads((table / "_manifest.json").read_text())
    m["sidecars"] = [*m["sidecars"], "../notes.csv"]
    (table / "_manifest.json").write_text(json.dumps(m))
    out = tmp_path / "out" / "reports"
    with pytest.raises(EcgsslError, match=r"_manifest.json: refusing sidecar name '../notes"):
        run_reports([table], out, ReportsConfig(mode="device", workers=1), progress=False)
    assert not (tmp_path / "out" / "notes.csv").exists()
    m["sidecars"], m["shards"] = m["sidecars"][:-1], ["/etc/hostname"]
    (table / "_manifest.json").write_text(json.dumps(m))
    with pytest.raises(EcgsslError, match="refusing shard name '/etc/hostname'"):
        read_table(table)


def test_a_truncated_run_file_is_a_clear_error_naming_it(tables, tmp_path):
    """`_run.json` (the run's times beside the manifest) cut short was a JSONDecodeError
    traceback from every reader of the table."""
    import pytest

    from ecgssl.errors import EcgsslError
    table = tmp_path / "ptbxl"
    shutil.copytree(tables["ptbxl"], table)
    (table / "_run.json").write_text('{"created_at": "2026-')
    with pytest.raises(EcgsslError, match=r"_run\.json: not valid JSON \(truncated\?\)"):
        read_manifest(table)


@pytest.mark.parametrize("manifest", ["[]", '"done"', '{"shards": "part-00000.parquet"}'])
def test_a_manifest_that_is_json_but_no_manifest_is_a_clear_error(tables, tmp_path,
                                                                  manifest):
    """Valid JSON of the wrong shape (a list, a string, shards not a list) was an
    AttributeError or a walk over a string's letters, not an error naming the file."""
    from ecgssl.errors import EcgsslError
    table = tmp_path / "ptbxl"
    shutil.copytree(tables["ptbxl"], table)
    (table / "_manifest.json").write_text(manifest)
    with pytest.raises(EcgsslError, match=r"_manifest\.json: not a table manifest"):
        read_manifest(table)


def test_a_shard_shorter_than_its_manifest_says_is_refused(tables, tmp_path):
    """A shard replaced by a shorter one (a partial restore, a stale copy) was read silently
    from a local table, where the S3 path checks each footer's row count; the local readers
    must check it as cheaply (footer only) and name the shard."""
    import pytest

    from ecgssl.data.table import read_meta, row_groups
    from ecgssl.errors import EcgsslError
    table = tmp_path / "ptbxl"
    shutil.copytree(tables["ptbxl"], table)
    shard = read_manifest(table)["shards"][0]
    t = pq.read_table(table / shard)
    pq.write_table(t.slice(0, t.num_rows - 1), table / shard)
    want = rf"{shard}: {t.num_rows - 1} rows where the manifest says {t.num_rows}"
    for read in (read_table, row_groups, lambda p: read_meta(p, ["ecg_id"], split="test")):
        with pytest.raises(EcgsslError, match=want):
            read(table)


def test_a_mistyped_table_path_says_it_does_not_exist(tmp_path):
    """`ecgssl reports --input outputs/tables/nope` said the table was "not complete ... let an
    interrupted one finish": a folder that is not there is a typo, not an interrupted ingest."""
    from ecgssl.errors import EcgsslError
    with pytest.raises(EcgsslError, match="no ECG table at .*nope: the folder does not exist"):
        read_manifest(tmp_path / "nope")
    with pytest.raises(EcgsslError, match="not a complete ECG table"):
        read_manifest(tmp_path)         # a folder without a manifest: still that message

"""The ECG table: Arrow schema, shard writing, and the fast reader into numpy.

A table is a folder of Parquet shards plus `_manifest.json`. The manifest is written last and
lists the shards, so a reader never sees a half-written table: no manifest, no table.

    from ecgssl.data.table import read_table
    t = read_table("outputs/tables/cinc2017", split="train")
    t.signal      # float32 [N, 12, T], contiguous
    t.lead_mask   # bool [N, 12]
    t.meta        # pyarrow.Table with the other columns
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ecgssl.data.signal import N_LEADS
from ecgssl.errors import CorruptFileError, EcgsslError
from ecgssl.storage import (
    RUN_FILE,
    atomic_path,
    exclusive,
    expand_folder,
    file_sha256,
    is_s3,
    parse_json,
    read_json,
    read_object,
    redact,
    s3_retry,
    s3_source,
    write_json,
)

# 2: report_codes; 3: `signal` holds only the leads `lead_mask` marks present (a single-lead
# row stores 1/12 of the floats); versions 1-2 stored all 12 leads, zeros for absent ones.
SCHEMA_VERSION = 3
COLUMNS_SINCE = {"report_codes": 2}   # tables written before a column existed read it as null
PACKED_SINCE = 3
MANIFEST = "_manifest.json"
PARTS = "_parts"          # per-part records of a stage that writes its shards in parts
ARRAY_COLUMNS = ("signal", "lead_mask")


@functools.lru_cache(maxsize=8)
def schema(n_samples: int) -> pa.Schema:
    return pa.schema([
        ("ecg_id", pa.string()),
        ("dataset", pa.string()),
        ("record", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("strat_fold", pa.int8()),
        ("fs", pa.int32()),
        ("window", pa.int32()),
        # the present leads' samples only, little-endian float32, lead-major in canonical
        # order (n_present * T * 4 bytes). Bytes rather than list<float32>: Parquet decodes a
        # byte run per row instead of a repetition level per sample (2-3x faster reads).
        ("signal", pa.large_binary()),
        ("lead_mask", pa.list_(pa.bool_(), N_LEADS)),
        ("labels", pa.list_(pa.string())),
        ("report_device", pa.string()),
        ("report", pa.string()),
        ("report_codes", pa.list_(pa.string())),
        ("age", pa.float32()),
        ("sex", pa.string()),
    ], metadata={"ecgssl_schema_version": str(SCHEMA_VERSION)})


def pack(signal: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[N, 12, T] + [N, 12] -> the present leads only, [P, T] (row by row, leads in order)."""
    mask = np.asarray(mask, dtype=bool)
    return signal.reshape(-1, signal.shape[-1])[mask.reshape(-1)]


SAMPLE = np.dtype("<f4")


def signal_array(packed: np.ndarray, mask: np.ndarray, n_samples: int) -> pa.Array:
    """The `signal` column from packed leads [P, T] and the mask [N, 12]: the samples'
    buffer wrapped (not copied) plus byte offsets, no per-row work."""
    counts = np.asarray(mask, dtype=bool).sum(axis=1, dtype=np.int64) * (n_samples * 4)
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    data = np.ascontiguousarray(packed, dtype=SAMPLE)
    if data.size * 4 != offsets[-1]:
        raise EcgsslError(f"{data.size} samples for {len(counts)} rows whose lead_mask says "
                          f"{offsets[-1] // 4}")
    return pa.Array.from_buffers(pa.large_binary(), len(counts),
                                 [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def _samples(chunk: pa.Array) -> np.ndarray:
    """The float32 samples of a `signal` chunk, whichever schema: a view where it can be."""
    if pa.types.is_fixed_size_list(chunk.type) or pa.types.is_list(chunk.type):
        return chunk.flatten().to_numpy()
    k = len(chunk)
    if k == 0:
        return np.empty(0, dtype=np.float32)
    _, offs_buf, data_buf = chunk.buffers()
    width = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
    offs = np.frombuffer(offs_buf, dtype=width, count=chunk.offset + k + 1)
    lo, hi = int(offs[chunk.offset]), int(offs[chunk.offset + k])
    return np.frombuffer(data_buf, dtype=SAMPLE, count=(hi - lo) // 4, offset=lo)


def to_arrow(cols: dict[str, list | np.ndarray | pa.Array], n_samples: int) -> pa.RecordBatch:
    """Columns -> a record batch. `lead_mask` is [N, 12] bool; `signal` is either [N, 12, T]
    float32 (absent leads are dropped here) or already packed, [P, T] (see `pack`)."""
    sch = schema(n_samples)
    mask = np.ascontiguousarray(cols["lead_mask"], dtype=bool)
    sig = np.asarray(cols["signal"])
    packed = pack(sig, mask) if sig.ndim == 3 else sig
    arrays = []
    for f in sch:
        if f.name == "signal":
            arrays.append(signal_array(packed, mask, n_samples))
        elif f.name == "lead_mask":
            arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(mask.reshape(-1)),
                                                            N_LEADS))
        elif isinstance(cols[f.name], pa.Array) and cols[f.name].type == f.type:
            arrays.append(cols[f.name])
        else:
            arrays.append(pa.array(cols[f.name], type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=sch)


# Dictionary-encode the repetitive strings only: dictionary-encoded floats read 3x slower.
DICT_COLUMNS = ["dataset", "record", "patient_id", "split", "sex", "report_device"]


def shard_name(index: int, key: str) -> str:
    """Shard file names carry the writing run's options key: a reader still holding the
    manifest of an earlier run finds its shards gone (a clear "rerun" error) instead of
    reading the new run's rows under the old manifest."""
    return f"part-{index:05d}-{key[:12]}.parquet"


# lz4 for every column, the signal too, although its float32 samples do not compress (the
# pages come out 0.4 % larger): a 12-lead table with an uncompressed signal read 1.5x slower
# (320 rows: 7.5-8.0 vs 4.5-5.3 ms with pyarrow's reader; the single-lead sample no faster).
COMPRESSION = "lz4"
ROW_GROUP = 256        # rows per Parquet row group of a shard
WRITE_OPTIONS = {"compression": COMPRESSION, "use_dictionary": DICT_COLUMNS,
                 "write_page_checksum": True}


def write_shard(table: pa.Table, path: Path) -> dict:
    """Write one shard atomically, with a CRC per data page that every read verifies: a
    flipped bit on disk is an error, never a silently different sample (~0.5 KB per shard).
    Returns {"rows", "sha256"} for the manifest."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, row_group_size=ROW_GROUP, **WRITE_OPTIONS)
        digest = file_sha256(tmp)
    return {"rows": table.num_rows, "sha256": digest}


class ShardWriter:
    """A shard written row group by row group as its rows come (`add`, in order), so that a
    stage can write while it still reads: the file is byte for byte the one `write_shard`
    writes from all the rows at once (each row group is one contiguous chunk there too).
    The bytes written are hashed as they land (read back from the page cache in a reused
    buffer), not in one read at the end. `close()` renames the shard into place and returns
    {"rows", "sha256"}; `abort()` drops it."""

    def __init__(self, path: Path):
        self._atomic = atomic_path(path)
        self._tmp = self._atomic.__enter__()
        try:
            self._read = open(self._tmp, "rb")
        except BaseException as exc:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._sha, self._buf = hashlib.sha256(), memoryview(bytearray(1 << 18))
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._n_pending = self.rows = 0

    def add(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._n_pending += table.num_rows
        self.rows += table.num_rows
        try:
            while self._n_pending >= ROW_GROUP:
                self._flush(ROW_GROUP)
        except BaseException as exc:
            self._fail(exc)
            raise

    def _flush(self, n: int) -> None:
        rows = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self._tmp), rows.schema, **WRITE_OPTIONS)
        self._writer.write_table(rows.slice(0, n).combine_chunks(), row_group_size=ROW_GROUP)
        self._n_pending -= n
        self._pending = [rows.slice(n)] if self._n_pending else []
        self._hash_new()

    def _hash_new(self) -> None:
        """Hash what the writer has put in the file since the last call (it only appends)."""
        while k := self._read.readinto(self._buf):
            self._sha.update(self._buf[:k])

    def close(self) -> dict:
        try:
            if self._n_pending:
                self._flush(self._n_pending)
            if self._writer is not None:
                self._writer.close()
            self._hash_new()
            self._read.close()
        except BaseException as exc:
            self._fail(exc)
            raise
        atomic, self._atomic = self._atomic, None
        atomic.__exit__(None, None, None)            # the rename into place
        return {"rows": self.rows, "sha256": self._sha.hexdigest()}

    def abort(self) -> None:
        """Drop the temp file (after an error elsewhere)."""
        self._fail(RuntimeError("shard not finished"))

    def _fail(self, exc: BaseException) -> None:
        """Drop the temp file; a full disk raises the error naming the folder."""
        if self._atomic is None:
            return
        atomic, self._atomic = self._atomic, None
        self._read.close()
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:
                pass
        atomic.__exit__(type(exc), exc, exc.__traceback__)


def read_manifest(path: str | Path) -> dict:
    """The table's manifest (with the run times of `_run.json`); `path` is a folder or, for
    the streaming readers (row_groups, read_row_group), an s3:// prefix."""
    if is_s3(path):
        return _s3_manifest(str(path))
    p = Path(path) / MANIFEST
    if not Path(path).exists():     # a typo, not an interrupted ingest
        raise EcgsslError(f"no ECG table at {path}: the folder does not exist")
    if not p.is_file():
        raise EcgsslError(f"{path} is not a complete ECG table: {MANIFEST} is missing "
                          "(run `ecgssl ingest`, or let an interrupted one finish)")
    m = read_json(p)
    _check_names(p, m)
    run = Path(path) / RUN_FILE          # the run's times, kept out of the manifest
    volatile = read_json(run) if run.is_file() else {}
    return _with_run(m, volatile)


def _check_names(where, m: dict) -> None:
    """The manifest's shards and sidecars are files in the table's own folder: a name with
    a path in it ('../x', '/etc/x') is refused, so that no manifest (one pulled from a bucket
    included) makes a reader read, or a stage that copies sidecars write, outside it."""
    if not isinstance(m, dict) or not isinstance(m.get("shards", []), list):
        raise CorruptFileError(f"{redact(where)}: not a table manifest (a JSON object with a "
                               "list of shards); rerun the stage that wrote it")
    for what in ("shards", "sidecars"):
        for name in m.get(what) or []:
            if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or \
                    "\\" in name:
                raise EcgsslError(f"{redact(where)}: refusing {what[:-1]} name {name!r}: "
                                  "not a file name in the table's folder")


def _with_run(m: dict, volatile: dict) -> dict:
    m.update({k: v for k, v in volatile.items() if k != "reports"})
    if isinstance(m.get("reports"), dict):
        m["reports"].setdefault("elapsed_s", volatile.get("reports", {}).get("elapsed_s", 0.0))
    return m


def _s3_manifest(uri: str) -> dict:
    text = read_object(uri.rstrip("/") + "/" + MANIFEST)
    if text is None:
        raise EcgsslError(f"{redact(uri)} is not a complete ECG table: {MANIFEST} is missing "
                          "(run `ecgssl ingest`, or let an interrupted one finish)")
    m = parse_json(text, f"{uri.rstrip('/')}/{MANIFEST}")
    _check_names(f"{uri.rstrip('/')}/{MANIFEST}", m)
    run = read_object(uri.rstrip("/") + "/" + RUN_FILE)
    return _with_run(m, parse_json(run, f"{uri.rstrip('/')}/{RUN_FILE}") if run else {})


VOLATILE = ("created_at", "elapsed_s")   # manifest keys that differ on every run


def split_volatile(manifest: dict) -> tuple[dict, dict]:
    """(the manifest without run times, the run times) so that the manifest, and the DVC
    hash of the table, depend only on the input and options."""
    m = {k: v for k, v in manifest.items() if k not in VOLATILE}
    run = {k: manifest[k] for k in VOLATILE if k in manifest}
    if isinstance(m.get("reports"), dict) and "elapsed_s" in m["reports"]:
        m["reports"] = {k: v for k, v in m["reports"].items() if k != "elapsed_s"}
        run["reports"] = {"elapsed_s": manifest["reports"]["elapsed_s"]}
    return m, run


@dataclass(frozen=True)
class ReportsSummary:
    mode: str
    counts: dict[str, int]                    # device / generated / empty
    translation_coverage: float | None
    untranslated_top: list                    # [(token, count)]
    elapsed_s: float


@dataclass(frozen=True)
class TableManifest:
    """What a table-writing stage (ingest, reports) returns: the manifest's headline fields,
    typed, and the whole manifest as written (`raw`)."""
    path: str
    source: str
    rows: int
    fs: int
    window_s: float
    rows_per_split: dict[str, int]
    elapsed_s: float
    records_total: int = 0
    records_ok: int = 0
    records_quarantined: list[dict] = field(default_factory=list)
    quarantined_by_kind: dict[str, int] = field(default_factory=dict)
    records_excluded: list[dict] = field(default_factory=list)
    reports: ReportsSummary | None = None
    up_to_date: bool = False
    complete: bool = True      # False: one slice's counts (`ingest --part`), no manifest yet
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, path: str | Path, m: dict, up_to_date: bool = False,
           complete: bool = True) -> TableManifest:
        r = m.get("reports")
        return cls(
            path=str(path), source=m["source"], rows=m["rows"], fs=m["fs"],
            window_s=m["window_s"], rows_per_split=m.get("rows_per_split", {}),
            elapsed_s=m.get("elapsed_s", r["elapsed_s"] if r else 0.0),
            records_total=m.get("records_total", 0), records_ok=m.get("records_ok", 0),
            records_quarantined=m.get("records_quarantined", []),
            quarantined_by_kind=m.get("quarantined_by_kind", {}),
            records_excluded=m.get("records_excluded", []),
            reports=ReportsSummary(r["mode"], r["counts"], r["translation_coverage"],
                                   [tuple(x) for x in r["untranslated_top"]], r["elapsed_s"])
            if r else None,
            up_to_date=up_to_date, complete=complete, raw=m)


class TableJob:
    """A stage's write of one table folder, held under the folder's lock (see `writing`)."""

    def __init__(self, out: Path, key: str):
        self.out, self.key = out, key
        self.current: TableManifest | None = None   # set when the table is already up to date

    def clear_stale(self, keep: set[str] = frozenset()) -> None:
        """Remove shards (and their part records) not in `keep`, and temp files a killed run
        left; only ever called under the lock."""
        out = self.out
        for p in [*out.glob(".*.tmp"), *out.glob(f"{PARTS}/.*.tmp")]:
            p.unlink()
        for p in out.glob("part-*.parquet"):
            if p.name not in keep:
                p.unlink()
        parts = {name.split(".")[0].rsplit("-", 1)[0] if name.count("-") > 1 else
                 name.split(".")[0] for name in keep}        # part-00003-<key> -> part-00003
        for p in (out / PARTS).glob("part-*.json") if (out / PARTS).is_dir() else []:
            if p.stem not in parts:
                p.unlink()

    def commit(self, manifest: dict) -> TableManifest:
        """Write the manifest, last: from now on readers see the new table."""
        stable, run = split_volatile(manifest)
        write_json(self.out / RUN_FILE, run)
        write_json(self.out / MANIFEST, stable)
        return TableManifest.of(self.out, manifest)


@contextmanager
def writing(out: str | Path, stage: str, key: str) -> Iterator[TableJob]:
    """The skeleton every table-writing stage shares: lock the folder; when its manifest has
    the same options key and all its shards, hand back `job.current` (up to date, nothing to
    do); otherwise hide the old manifest so no reader sees a table being replaced. The stage
    then clears stale shards, writes its own and calls `job.commit(manifest)`."""
    out = Path(out)
    with exclusive(out, stage):
        job = TableJob(out, key)
        if (out / MANIFEST).is_file():
            old = read_manifest(out)
            # A table of 0 rows is a failed run (nothing could be read), never "up to date":
            # the rerun redoes it and fails again, instead of passing on an empty table.
            if old.get("options_key") == key and old.get("rows", 0) > 0 and \
                    all((out / s).is_file() for s in old["shards"]):
                job.current = TableManifest.of(out, old, up_to_date=True)
            else:
                (out / MANIFEST).unlink()
        yield job


def expand_tables(path: str | Path, names: list[str] = ()) -> list[Path]:
    """A table folder as itself; a folder of tables (e.g. outputs/tables) as its tables: those
    named in `names`, in that order, when any exist, else all of them by name."""
    return expand_folder(path, MANIFEST, names, "ECG table")


@dataclass
class ECGArrays:
    signal: np.ndarray     # float32 [N, 12, T]
    lead_mask: np.ndarray  # bool [N, 12]
    meta: pa.Table         # the other columns, same row order

    def __len__(self) -> int:
        return self.signal.shape[0]

    def column(self, name: str) -> np.ndarray:
        return self.meta.column(name).to_numpy(zero_copy_only=False)


def arrays(tables: list[pa.Table], n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The signal [N, 12, T] and lead_mask [N, 12] columns of tables as contiguous numpy,
    whichever schema wrote them: a packed `signal` (v3, present leads only) is scattered into
    a zeroed array in one vectorised step; a 12-lead one (v1-2) is copied as is."""
    n = sum(t.num_rows for t in tables)
    # np.zeros maps fresh zero pages: absent leads cost nothing until touched
    signal = np.zeros((n, N_LEADS, n_samples), dtype=np.float32)
    mask = np.empty((n, N_LEADS), dtype=bool)
    row = 0
    for t in tables:
        # the two columns may be chunked differently: align them once
        sig_col, mask_col = t.column("signal"), t.column("lead_mask")
        if sig_col.num_chunks != mask_col.num_chunks or any(
                len(a) != len(b) for a, b in zip(sig_col.chunks, mask_col.chunks)):
            sig_col, mask_col = sig_col.combine_chunks(), mask_col.combine_chunks()
            sig_chunks, mask_chunks = [sig_col], [mask_col]
        else:
            sig_chunks, mask_chunks = sig_col.chunks, mask_col.chunks
        for sig_chunk, mask_chunk in zip(sig_chunks, mask_chunks):
            k = len(sig_chunk)
            m = mask_chunk.flatten().to_numpy(zero_copy_only=False).reshape(k, N_LEADS)
            mask[row:row + k] = m
            values = _samples(sig_chunk)
            dst = signal[row:row + k].reshape(k * N_LEADS, n_samples)
            if pa.types.is_fixed_size_list(sig_chunk.type) or values.size == dst.size:
                dst[:] = values.reshape(dst.shape)          # every lead stored (or all present)
            else:
                flat = m.reshape(-1)
                if values.size != int(flat.sum()) * n_samples:
                    raise EcgsslError(f"signal column holds {values.size} samples where "
                                      f"lead_mask says {int(flat.sum())} leads x {n_samples}")
                dst[flat] = values.reshape(-1, n_samples)
            row += k
    return signal, mask


def require_rows(path: str | Path, manifest: dict) -> None:
    """Stages refuse an empty table: it is what a failed ingest leaves (with its reasons)."""
    if not manifest.get("rows"):
        raise EcgsslError(f"{path} is an empty table (0 rows): the stage that wrote it could "
                          "not read any record; see records_quarantined in its "
                          f"{MANIFEST}, fix the input and rerun it")


@contextmanager
def shard_errors(path: Path):
    """A missing or unreadable shard as a clear error naming it."""
    try:
        yield
    except FileNotFoundError:
        raise EcgsslError(f"{path}: shard listed in the manifest is missing; rerun the stage "
                          "that wrote this table") from None
    except (pa.ArrowException, OSError) as exc:
        raise EcgsslError(f"{path}: unreadable Parquet shard ({exc}); rerun the stage that "
                          "wrote this table") from None


def shard_rows(manifest: dict, shard: str) -> int | None:
    """The row count the manifest records for a shard (None: a table written before it did)."""
    return ((manifest.get("shard_info") or {}).get(shard) or {}).get("rows")


def check_rows(name: str, have: int, want: int | None) -> None:
    """No sha256 of a whole shard on every read: its footer's row count must match the
    manifest's (a shard replaced by a shorter one, a partial restore), and every page read is
    checked against its CRC."""
    if want is not None and want != have:
        raise EcgsslError(f"{name}: {have} rows where the manifest says {want}; rerun the "
                          "stage that wrote this table")


def read_shard(path: Path, columns: list[str], filters, rows: int | None = None) -> pa.Table:
    """A shard's `columns` (rows passing `filters`); `rows`: the count its manifest records,
    checked against the footer before any data is read."""
    with shard_errors(path):
        if filters is None:   # one file, no row filter: without the dataset layer (~2x faster)
            with pq.ParquetFile(path, page_checksum_verification=True) as f:
                check_rows(str(path), f.metadata.num_rows, rows)
                return f.read(columns=columns)
        if rows is not None:
            check_rows(str(path), pq.read_metadata(path).num_rows, rows)
        return pq.read_table(path, columns=columns, filters=filters,
                             page_checksum_verification=True)


def _row_filter(split: str | None, dataset: str | None = None):
    conds = [pc.field(c) == v for c, v in (("split", split), ("dataset", dataset)) if v]
    return functools.reduce(operator.and_, conds) if conds else None


def _read_shards(path: Path, manifest: dict, columns: list[str], filters) -> list[pa.Table]:
    """The shards' `columns`; a column the table's schema version predates comes back null."""
    version = int(manifest.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise EcgsslError(f"{path} was written with table schema {version}, newer than this "
                          f"ecgssl's {SCHEMA_VERSION}: upgrade ecgssl")
    missing = [c for c in columns if COLUMNS_SINCE.get(c, 0) > version]
    types = schema(int(manifest["n_samples"]))
    out = []
    for shard in manifest["shards"]:
        t = read_shard(path / shard, [c for c in columns if c not in missing], filters,
                       shard_rows(manifest, shard))
        for c in missing:
            t = t.append_column(types.field(c), pa.nulls(t.num_rows, types.field(c).type))
        out.append(t.select(columns))
    return out


def conform(t: pa.Table, n_samples: int) -> pa.Table:
    """A shard of an older schema as the current one: missing columns null, a 12-lead signal
    packed to the present leads, schema order."""
    sch = schema(n_samples)
    if "signal" in t.column_names and pa.types.is_fixed_size_list(t.schema.field("signal").type):
        signal, mask = arrays([t], n_samples)
        t = t.set_column(t.schema.get_field_index("signal"), sch.field("signal"),
                         pa.chunked_array([signal_array(pack(signal, mask), mask, n_samples)]))
    for f in sch:
        if f.name not in t.column_names:
            t = t.append_column(f, pa.nulls(t.num_rows, f.type))
    return t.select(sch.names)


def read_meta(path: str | Path, columns: list[str], split: str | None = None) -> pa.Table:
    """Metadata columns only: no signal is read or decoded."""
    path = Path(path)
    manifest = read_manifest(path)
    require_rows(path, manifest)
    tables = _read_shards(path, manifest, columns, _row_filter(split))
    return pa.concat_tables(tables) if tables else \
        schema(int(manifest["n_samples"])).empty_table().select(columns)


def read_table(path: str | Path, split: str | None = None,
               columns: list[str] | None = None, dataset: str | None = None) -> ECGArrays:
    """Read a table (optionally one split and/or dataset, chosen metadata columns) into numpy
    arrays."""
    path = Path(path)
    manifest = read_manifest(path)
    require_rows(path, manifest)
    n_samples = int(manifest["n_samples"])
    meta_cols = [c for c in (columns or schema(n_samples).names) if c not in ARRAY_COLUMNS]
    unknown = set(meta_cols) - set(schema(n_samples).names)
    if unknown:
        raise EcgsslError(f"{path}: no such columns: {', '.join(sorted(unknown))}")
    filters = _row_filter(split, dataset)
    tables = _read_shards(path, manifest, [*meta_cols, *ARRAY_COLUMNS], filters)
    signal, mask = arrays(tables, n_samples)
    meta = pa.concat_tables([t.select(meta_cols) for t in tables]) if tables else \
        schema(n_samples).empty_table().select(meta_cols)
    return ECGArrays(signal=signal, lead_mask=mask, meta=meta)


# --- row-group access, for readers that stream (pretraining) ----------------------------------

@dataclass(frozen=True)
class RowGroup:
    shard: str      # file name in the table folder
    index: int      # row group within the shard
    rows: int


def row_groups(path: str | Path) -> list[RowGroup]:
    """The table's row groups in manifest order, from the Parquet footers (no data read).
    `path` may be an s3:// prefix: only the footers are fetched (byte ranges)."""
    if is_s3(path):
        return _s3_row_groups(str(path))
    path = Path(path)
    manifest = read_manifest(path)
    require_rows(path, manifest)
    out = []
    for shard in manifest["shards"]:
        with shard_errors(path / shard):
            md = pq.ParquetFile(path / shard).metadata
        check_rows(str(path / shard), md.num_rows, shard_rows(manifest, shard))
        out += [RowGroup(shard, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    return out


def read_row_group(path: str | Path, group: RowGroup, columns: list[str],
                   rows: np.ndarray | None = None, n_samples: int | None = None) -> ECGArrays:
    """One row group's `columns` (optionally only the rows at positions `rows` within it) as
    ECGArrays; signal/lead_mask, when asked for, converted as `read_table` converts them.
    From an s3:// prefix, only the row group's column chunks are fetched, page checksums
    verified as locally."""
    if is_s3(path):
        n_samples = n_samples or int(read_manifest(path)["n_samples"])
        t = _s3_row_group(str(path), group, columns)
        return _row_group_arrays(t, columns, rows, n_samples)
    path = Path(path)
    manifest = read_manifest(path) if n_samples is None else None
    n_samples = n_samples or int(manifest["n_samples"])
    file = path / group.shard
    with shard_errors(file):
        f = pq.ParquetFile(file, page_checksum_verification=True)
        have = set(f.schema_arrow.names)
        t = f.read_row_group(group.index, columns=[c for c in columns if c in have])
    return _row_group_arrays(t, columns, rows, n_samples)


def read_row_groups(path: str | Path, groups: list[RowGroup], columns: list[str],
                    n_samples: int) -> Iterator[ECGArrays]:
    """`read_row_group` of each of `groups`, in order. From s3:// the shards are read by 8
    threads at once (a shard's groups in one thread: its open file is not shared), so that
    indexing a large table costs round trips in parallel, not one after another."""
    if not is_s3(path):
        for g in groups:
            yield read_row_group(path, g, columns, n_samples=n_samples)
        return
    from concurrent.futures import ThreadPoolExecutor
    by_shard: dict[str, list[RowGroup]] = {}
    for g in groups:
        by_shard.setdefault(g.shard, []).append(g)

    def shard(gs: list[RowGroup]) -> dict[RowGroup, ECGArrays]:
        return {g: read_row_group(path, g, columns, n_samples=n_samples) for g in gs}
    with ThreadPoolExecutor(8) as pool:
        done: dict[RowGroup, ECGArrays] = {}
        for part in pool.map(shard, by_shard.values()):
            done.update(part)
    for g in groups:
        yield done.pop(g)


def _row_group_arrays(t: pa.Table, columns: list[str], rows: np.ndarray | None,
                      n_samples: int) -> ECGArrays:
    types = schema(n_samples)
    for c in columns:          # a column the table's schema version predates comes back null
        if c not in t.column_names:
            t = t.append_column(types.field(c), pa.nulls(t.num_rows, types.field(c).type))
    if rows is not None:
        t = t.take(pa.array(rows))
    meta = t.select([c for c in columns if c not in ARRAY_COLUMNS])
    if all(c in columns for c in ARRAY_COLUMNS):
        signal, mask = arrays([t], n_samples)
    else:
        signal = np.empty((t.num_rows, N_LEADS, 0), np.float32)
        mask = np.empty((t.num_rows, N_LEADS), bool)
        if "lead_mask" in columns:      # the mask alone (small): no signal decoded
            col = t.column("lead_mask").combine_chunks()
            mask[:] = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, N_LEADS)
    return ECGArrays(signal=signal, lead_mask=mask, meta=meta)


# --- the same, from an s3:// prefix: byte ranges, no local copy -------------------------------
# One open Parquet file per shard and process (its footer is read once); keyed by the process
# id too, so that a forked child never uses its parent's S3 client (the AWS SDK is not
# fork-safe: the loader starts its workers with `spawn` for s3:// tables, and this is the
# second guard).
_S3_FILES: dict[tuple[int, str], pq.ParquetFile] = {}


def _s3_file(uri: str, shard: str) -> pq.ParquetFile:
    key = (os.getpid(), f"{uri.rstrip('/')}/{shard}")
    f = _S3_FILES.get(key)
    if f is None:
        name = redact(key[1])
        with shard_errors(name):
            # pre_buffer: a row group's column chunks in few coalesced GETs, not one per page
            f = s3_retry(f"read of {name}", lambda: pq.ParquetFile(
                s3_source(key[1]), page_checksum_verification=True, pre_buffer=True))
        _S3_FILES[key] = f
    return f


def _s3_row_groups(uri: str) -> list[RowGroup]:
    manifest = read_manifest(uri)
    require_rows(redact(uri), manifest)
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(8) as pool:      # the footers' round trips in parallel
        files = list(pool.map(lambda shard: _s3_file(uri, shard), manifest["shards"]))
    out = []
    for shard, f in zip(manifest["shards"], files):
        md = f.metadata
        check_rows(f"{redact(uri)}/{shard}", md.num_rows, shard_rows(manifest, shard))
        out += [RowGroup(shard, i, md.row_group(i).num_rows) for i in range(md.num_row_groups)]
    return out


def _s3_row_group(uri: str, group: RowGroup, columns: list[str]) -> pa.Table:
    f = _s3_file(uri, group.shard)
    have = set(f.schema_arrow.names)
    name = redact(f"{uri.rstrip('/')}/{group.shard}")

    def read():
        try:
            return f.read_row_group(group.index, [c for c in columns if c in have])
        except OSError as exc:
            # a page whose CRC fails is the stored object's fault: no retry brings it back
            if "checksum" in str(exc).lower():
                raise EcgsslError(f"{name}: unreadable Parquet shard ({exc}); rerun the stage "
                                  "that wrote this table") from None
            raise
    with shard_errors(name):
        return s3_retry(f"read of {name} (row group {group.index})", read)

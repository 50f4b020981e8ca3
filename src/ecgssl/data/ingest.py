"""WFDB -> Parquet: read every record of a source in parallel into the ECG table.

    ecgssl ingest cinc2017 --input data/sample/cinc2017 --output outputs/tables/cinc2017

Records are cut into fixed parts (`shard_records` each). A part becomes one shard, written
atomically together with a small sidecar in `_parts/`; the manifest is written last. A rerun
with the same input and options is a no-op, and a rerun after a crash only redoes the parts
that have no shard yet. A record that cannot be used is quarantined with a reason; it never
stops the job.

Fanned out (`--part K/N`, K = 0..N-1, e.g. one machine or pod each): slice K writes the parts
whose index is K modulo N into the same folder (shard names carry the part index, so slices
never collide), then records itself in `_parts/slice-K-of-N.json`. Whichever slice finds every
part written (under the folder's lock) writes the manifest; the table is the same one a single
`ecgssl ingest` writes. A rerun of a slice is a no-op.

    ecgssl ingest mimic --input ... --output t --part 0/4   # ... --part 3/4, anywhere, any order
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from multiprocessing import get_context
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np
import pyarrow as pa
from filelock import FileLock, Timeout

from ecgssl import __version__
from ecgssl.config import IngestConfig
from ecgssl.data.signal import (
    LEADS,
    N_LEADS,
    cut_windows,
    flat_leads,
    lead_index,
    resample,
    window_starts,
)
from ecgssl.data.sources import SOURCES, Source, Task, get_source
from ecgssl.data.sources.base import check_record_path
from ecgssl.data.table import (
    MANIFEST,
    PARTS,
    ROW_GROUP,
    SCHEMA_VERSION,
    ShardWriter,
    TableJob,
    TableManifest,
    read_manifest,
    schema,
    shard_name,
    to_arrow,
    writing,
)
from ecgssl.errors import EcgsslError, RecordError
from ecgssl.progress import bar as progress_bar
from ecgssl.storage import (
    exclusive,
    file_sha256,
    read_json,
    stable_hash,
    tree_fingerprint,
    write_json,
)
from ecgssl.tracking import OFF, RunContext, log_stage

IN_FLIGHT_PARTS = 2  # bounds memory: results of at most this many parts wait in the parent


@functools.cache
def _code_key() -> str:
    """The source of the code that turns records into rows (readers, resampling, windows,
    this module): part of the table's key, as the reports stage's code is part of its key,
    since the version string is not bumped per change; a fixed reader rebuilds the table."""
    here = Path(__file__).parent
    files = [here / f for f in ("ingest.py", "signal.py", "wfdb_fast.py")]
    files += sorted((here / "sources").glob("*.py"))
    return stable_hash({f.relative_to(here).as_posix(): f.read_text() for f in files})


def n_samples(cfg: IngestConfig) -> int:
    t = cfg.fs * cfg.window_s
    if abs(t - round(t)) > 1e-6:
        raise EcgsslError(f"fs * window_s must be a whole number of samples, got "
                          f"{cfg.fs} Hz * {cfg.window_s} s = {t}")
    return int(round(t))


def record_rows(source: Source, root: Path, cfg: IngestConfig, task: Task) -> dict:
    """Read one record and cut it into table rows, one per window: the table's columns, with
    `signal` packed to the present leads ([P, T], see table.pack). Small to send between
    processes: a single-lead record is not padded to 12 leads here or on disk."""
    check_record_path(root, task)      # never read outside the input folder
    rec = source.read(root, task)
    if source.n_leads is not None and len(rec.leads) != source.n_leads:
        raise RecordError(f"{task.record}: expected {source.n_leads} leads, found "
                          f"{len(rec.leads)} ({', '.join(rec.leads)})", "lead_count")
    try:
        idx = [lead_index(name) for name in rec.leads]
    except RecordError as exc:
        raise RecordError(f"{task.record}: {exc}", exc.kind) from None
    if len(set(idx)) != len(idx):
        raise RecordError(f"{task.record}: duplicate leads {rec.leads}", "unknown_lead")
    size = n_samples(cfg)
    x = resample(rec.signal, rec.fs, cfg.fs)
    starts = window_starts(x.shape[1], size, cfg.min_window_fraction)
    if not starts:
        raise RecordError(f"{task.record}: record is {rec.signal.shape[1] / rec.fs:.1f} s, "
                          f"shorter than {cfg.min_window_fraction:g} of a {cfg.window_s:g} s "
                          "window",
                          "short")
    windows = cut_windows(x, starts, size)
    present = ~flat_leads(windows, cfg.flat_mv)               # a flat lead counts as absent
    keep = present.any(axis=1)
    if not keep.any():
        raise RecordError(f"{task.record}: every lead is flat (peak-to-peak < {cfg.flat_mv} mV)",
                          "flat")
    order = np.argsort(idx)                       # the record's leads in canonical order
    windows, present = windows[keep][:, order], present[keep][:, order]
    kept = [w for w, k in enumerate(keep) if k]
    mask = np.zeros((len(kept), N_LEADS), dtype=bool)
    mask[:, np.asarray(idx)[order]] = present
    signal = windows[present]                     # [P, T]: flat leads dropped, as mask says
    if rec.events is not None:
        times, codes = rec.events
        labels = []
        for w in kept:
            t0 = starts[w] / cfg.fs
            inside = (times >= t0) & (times < t0 + cfg.window_s)
            labels.append(sorted(set(codes[inside].tolist())))
    else:
        labels = [list(rec.labels)] * len(kept)
    dataset = source.name
    # the record's own fields once (rows_table repeats them per window), the windows' as lists
    return {
        "ecg_id": [f"{dataset}/{task.record}#{w}" for w in kept], "window": kept,
        "signal": signal, "lead_mask": mask, "labels": labels,
        "dataset": dataset, "record": task.record, "patient_id": rec.patient_id,
        "split": rec.split, "strat_fold": rec.strat_fold, "fs": cfg.fs,
        "report_device": rec.report_device, "report": None, "report_codes": None,
        "age": rec.age, "sex": rec.sex,
    }


PER_WINDOW = ("ecg_id", "window", "labels", "signal", "lead_mask")


def rows_table(results: list[dict], size: int) -> pa.Table:
    """Many records' rows as one Arrow table, built column by column (no per-record batch):
    a record's own fields become one Arrow value each, repeated over its windows by `take`."""
    sch = schema(size)
    counts = [len(r["window"]) for r in results]
    repeat = pa.array(np.repeat(np.arange(len(results)), counts))
    cols = {k: [v for r in results for v in r[k]] for k in PER_WINDOW
            if k not in ("signal", "lead_mask")}
    for k in results[0]:
        if k not in PER_WINDOW:
            cols[k] = pa.array([r[k] for r in results], type=sch.field(k).type).take(repeat)
    cols["signal"] = np.concatenate([r["signal"] for r in results])
    cols["lead_mask"] = np.concatenate([r["lead_mask"] for r in results])
    return pa.Table.from_batches([to_arrow(cols, size)])


# Worker state, set once per process so that tasks travel as small pickles.
_WORKER: tuple[Source, Path, IngestConfig] | None = None


# Which batches of a pool run are taken (a byte each) and its lock: shared with the forked
# workers, so that the parent can take batches no worker has started (see `_pool`).
_CLAIMS = None


def _init_worker(source_name: str, root: str, cfg: dict, parent: int | None = None,
                 claims=None, options: dict | None = None) -> None:
    global _WORKER, _CLAIMS
    c = IngestConfig(**cfg)
    source = get_source(source_name, c.fs, options)
    source.max_record_mb = c.max_record_mb
    _WORKER = (source, Path(root), c)
    if claims is not None:
        _CLAIMS = claims
    if parent is not None:
        die_with_parent(parent)


def _claim(batch: int, timeout: float = -1) -> bool | None:
    """Take batch `batch` of the pool run: True if this process got it, False if another
    had; None when the lock is not had within `timeout` (a worker killed holding it)."""
    flags, lock = _CLAIMS
    if not lock.acquire(timeout=timeout):
        return None
    try:
        if flags[batch]:
            return False
        flags[batch] = 1
        return True
    finally:
        lock.release()


def die_with_parent(parent: int) -> None:
    """A pool worker must not outlive a killed parent (each holds a few hundred MB): on Linux
    the kernel sends it SIGKILL when the parent dies (PR_SET_PDEATHSIG); the parent-pid check
    after it covers a parent that died before the call."""
    import signal
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)          # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):                    # not Linux: best effort only
        return
    if os.getppid() != parent:
        os._exit(1)


def _work(task: Task) -> tuple[str, dict | None, dict | None]:
    """(record, rows, None) or (record, None, quarantine entry)."""
    source, root, cfg = _WORKER
    try:
        return task.record, record_rows(source, root, cfg, task), None
    except RecordError as exc:
        return task.record, None, {"record": task.record, "reason": str(exc), "kind": exc.kind}
    except Exception as exc:  # one bad record never kills the batch: quarantine, go on
        return task.record, None, {"record": task.record, "kind": "error",
                                   "reason": f"{task.record}: {type(exc).__name__}: {exc}"}


class _PartWriter:
    """One part's shard and part record, fed the part's records in order (`add`) as they are
    read: full row groups are written on the way, so that little is left to write once the
    last record is in (the parent writes while the workers still read)."""

    def __init__(self, out: Path, part: int, key: str, size: int):
        self.out, self.part, self.key, self.size = out, part, key, size
        self.name = shard_name(part, key)
        self.shard: ShardWriter | None = None
        self.pending, self.n_pending, self.n_ok = [], 0, 0
        self.quarantined = []
        self.splits, self.labels = collections.Counter(), collections.Counter()

    def add(self, results: list) -> None:
        for _, rows, q in results:
            if rows is None:
                self.quarantined.append(q)
                continue
            self.n_ok += 1
            n = len(rows["window"])
            self.splits[rows["split"]] += n
            self.labels.update(lab for labs in rows["labels"] for lab in labs)
            self.pending.append(rows)
            self.n_pending += n
        if self.n_pending >= ROW_GROUP:        # an Arrow table per row group, not per record
            self._flush()

    def _flush(self) -> None:
        if self.shard is None:
            self.shard = ShardWriter(self.out / self.name)
        self.shard.add(rows_table(self.pending, self.size))
        self.pending, self.n_pending = [], 0

    def close(self) -> dict:
        if self.pending:
            self._flush()
        shard = self.shard.close() if self.shard is not None else None
        info = {"key": self.key, "part": self.part, "shard": self.name if shard else None,
                "rows": shard["rows"] if shard else 0,
                "sha256": shard["sha256"] if shard else None,
                "records_ok": self.n_ok, "records_quarantined": self.quarantined,
                "rows_per_split": dict(self.splits), "label_counts": dict(self.labels)}
        write_json(self.out / PARTS / f"part-{self.part:05d}.json", info)
        return info

    def __enter__(self) -> _PartWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """On an error amid the part, its temp shard is dropped (a rerun redoes the part)."""
        if exc_type is not None and self.shard is not None:
            self.shard.abort()


def _done_part(out: Path, part: int, key: str) -> dict | None:
    p = out / PARTS / f"part-{part:05d}.json"
    try:
        info = read_json(p)
    except (OSError, ValueError):
        return None
    if info.get("key") != key or (info["shard"] and not (out / info["shard"]).is_file()):
        return None
    return info


def parse_part(text: str | None) -> tuple[int, int]:
    """`K/N` (slice K of N, 0 <= K < N) as (K, N); None or "" is the whole source, (0, 1)."""
    if not text:
        return 0, 1
    k, sep, n = str(text).partition("/")
    try:
        k, n = int(k), int(n)
    except ValueError:
        k = n = -1
    if not sep or n < 1 or not 0 <= k < n:
        raise EcgsslError(f"--part takes K/N with 0 <= K < N (e.g. 0/4 ... 3/4), got {text!r}")
    return k, n


def staged_options(io, options: dict) -> dict:
    """Source options (IngestConfig.options_for) with the metadata CSV as a local file: an
    s3:// one is pulled (`io`: storage.staged()); the table's key hashes its content."""
    meta = io.input(options.get("metadata"))
    return {**options, "metadata": str(meta.resolve()) if meta else None}


def ingest(source_name: str, input_dir: str | Path, output_dir: str | Path,
           cfg: IngestConfig, progress: bool = True, ctx: RunContext = OFF,
           part: tuple[int, int] = (0, 1), source_options: dict | None = None,
           fingerprint: str | None = None,
           fetch: Callable[[list[str]], None] | None = None) -> TableManifest:
    """Ingest one source, or slice `part` = (K, N) of it; returns the manifest (for a slice
    that leaves the table incomplete, its own counts with `complete=False`). Raises
    EcgsslError when nothing is usable. `source_options` go to the source (the wfdb source's
    metadata CSV, split, dataset). An input folder that holds the records' payloads only once
    asked for (storage.Paths.input_records) comes with the fingerprint of the whole source
    and `fetch(record names)`, called with the records this run reads before it reads them."""
    root, out = Path(input_dir), Path(output_dir)
    if not root.is_dir():
        raise EcgsslError(f"input path does not exist or is not a folder: {root}")
    size = n_samples(cfg)
    source = get_source(source_name, cfg.fs, source_options)
    src_options = source.options()
    tasks, excluded = source.plan(root)
    if not tasks and excluded:     # records there, none of this source's (a wrong SOURCE)
        e = excluded[0]
        raise EcgsslError(f"none of the {len(excluded)} records in {root} can be ingested as "
                          f"{source_name}: all are excluded by its rules (e.g. "
                          f"{e['record']}: {e['reason']}); is SOURCE right for this folder?")
    if not tasks:
        raise EcgsslError(f"no records found in {root} for source {source_name} "
                          "(no RECORDS file listing them and no .hea headers)")
    warnings = source.warnings()
    if warnings:
        from ecgssl.render import warn
        for w in warnings:
            warn(w)
    fingerprint = fingerprint or tree_fingerprint(root)
    options = {"min_window_fraction": cfg.min_window_fraction, "flat_mv": cfg.flat_mv,
               "shard_records": cfg.shard_records, "max_record_mb": cfg.max_record_mb}
    # The part slicing is not in the key: N slices make the very table one run makes.
    # The metadata CSV may live outside the input folder: its content is part of the key.
    src_key = {**src_options, "metadata": file_sha256(src_options["metadata"])} \
        if src_options.get("metadata") else src_options
    key = stable_hash({"source": source_name, "fs": cfg.fs, "window_s": cfg.window_s,
                       "options": options, "fingerprint": fingerprint,
                       "schema_version": SCHEMA_VERSION, "version": __version__,
                       "code": _code_key(),
                       **({"source_options": src_key} if src_options else {})})
    chunks = [tasks[i:i + cfg.shard_records] for i in range(0, len(tasks), cfg.shard_records)]
    base = _manifest_base(source_name, root, cfg, size, key, fingerprint, options, tasks,
                          excluded, len(chunks))
    if src_options:
        base |= {"source_options": src_options, "dataset": source.name}
    if getattr(source, "report", None):
        base |= {"metadata": {**source.report, "warnings": warnings},
                 # the wfdb source's two counts also at the top, beside records_quarantined
                 **{k: source.report[k] for k in ("records_without_labels",
                                                  "rows_without_record") if k in source.report}}
    k, n = part
    if n == 1:
        with writing(out, "ingest", key) as job:
            _clear_sidecar_staging(out)
            if job.current:
                return job.current
            t0 = time.perf_counter()
            infos = {i: _done_part(out, i, key) for i in range(len(chunks))}
            job.clear_stale({v["shard"] or shard_name(i, key) for i, v in infos.items() if v})
            _fetch(fetch, chunks, infos)
            infos.update(_write_parts(source_name, root, out, cfg, key, chunks, infos, progress,
                                      f"ingest {source_name}", src_options))
            result = job.commit(_manifest(base, [infos[i] for i in range(len(chunks))],
                                          source.sidecars(root, out),
                                          time.perf_counter() - t0))
    else:
        result = _ingest_slice(source_name, source, root, out, cfg, key, chunks, base, part,
                               progress, src_options, fetch)
        if result.up_to_date or not result.complete:
            return result              # the slice that completes the table logs the stage
    _log(ctx, out, result, cfg.model_dump())
    if result.records_ok == 0:
        reasons = "; ".join(q["reason"] for q in result.records_quarantined[:3])
        raise EcgsslError(f"no record of {root} could be read ({len(tasks)} quarantined), "
                          f"e.g.: {reasons}")
    return result


def _log(ctx: RunContext, out: Path, result: TableManifest, params: dict) -> None:
    log_stage(ctx, "ingest", {"source": result.source, **params},
              {"rows": result.rows, "records_ok": result.records_ok,
               "records_total": result.records_total, "elapsed_s": result.elapsed_s,
               "records_quarantined": len(result.records_quarantined),
               **{k: result.raw[k] for k in ("records_without_labels", "rows_without_record")
                  if k in result.raw}},
              run_name=f"ingest-{result.source}",
              tables=_tracked_tables(out, result) if ctx.enabled and ctx.in_pipeline else None,
              datasets=[(str(out), "ingest", result.raw.get("input_fingerprint"))])


def _tracked_tables(out: Path, m: TableManifest) -> dict[str, list[dict]]:
    """The ingest run's MLflow tables: label counts per split (rows), and the quarantine
    (one row per record, its kind and reason)."""
    import pyarrow.parquet as pq
    counts = collections.Counter()
    for shard in m.raw.get("shards", []):
        t = pq.read_table(out / shard, columns=["split", "labels"])
        for split, labs in zip(t.column("split").to_pylist(), t.column("labels").to_pylist()):
            counts.update((split, lab) for lab in labs or ["(none)"])
    return {"label_counts.json": [{"split": s, "label": lab, "rows": n}
                                  for (s, lab), n in sorted(counts.items())],
            "quarantine.json": [{"record": q.get("record"), "kind": q.get("kind"),
                                 "reason": q.get("reason")} for q in m.records_quarantined]}


# How long a slice waits for the folder's lock, which other slices hold for a moment only
# (a whole-source ingest holds it throughout: then the slice gives up with a clear error).
SLICE_LOCK_WAIT_S = 120


@contextmanager
def _lock(path: Path, what: str, wait: float = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=wait)
    try:
        lock.acquire()
    except Timeout:
        raise EcgsslError(f"another `ecgssl ingest` {what} is writing to {path.parent}; "
                          "refusing to write at the same time") from None
    try:
        yield
    finally:
        lock.release()


def _folder_lock(out: Path):
    """The lock `writing` takes, waited for (slices take it only to start and to finish)."""
    return _lock(out / ".ecgssl.lock", "", SLICE_LOCK_WAIT_S)


def _slice_file(k: int, n: int) -> str:
    return f"slice-{k}-of-{n}.json"


def _fetch(fetch, chunks: list[list[Task]], infos: dict) -> None:
    """Have the records of the parts still to write fetched, if the input asks for that."""
    if fetch is not None:
        fetch([t.record for i, v in infos.items() if v is None for t in chunks[i]])


def _ingest_slice(source_name, source, root, out, cfg, key, chunks, base, part, progress,
                  src_options, fetch=None) -> TableManifest:
    k, n = part
    mine = list(range(k, len(chunks), n))
    with _lock(out / f".ecgssl-slice-{k}-of-{n}.lock", f"--part {k}/{n}"):
        with _folder_lock(out):
            _clear_sidecar_staging(out)
            if (out / MANIFEST).is_file():
                old = read_manifest(out)
                if old.get("options_key") == key and old.get("rows", 0) > 0 and \
                        all((out / s).is_file() for s in old["shards"]):
                    return TableManifest.of(out, old, up_to_date=True)
                (out / MANIFEST).unlink()      # no reader sees a table being replaced
        t0 = time.perf_counter()
        infos = {i: _done_part(out, i, key) for i in mine}
        _clear_stale_slice(out, mine, key)
        _fetch(fetch, chunks, infos)
        infos.update(_write_parts(source_name, root, out, cfg, key, chunks, infos, progress,
                                  f"ingest {source_name} {k}/{n}", src_options))
        own = [infos[i] for i in mine]
        record = {"key": key, "part": [k, n], "chunks": mine, "base": base,
                  "elapsed_s": round(time.perf_counter() - t0, 3)}
        with _folder_lock(out):
            record["sidecars"] = _copy_sidecars(source, root, out)
            write_json(out / PARTS / _slice_file(k, n), record)
            done = finish_table(out, key)
        if done is not None:
            return done
        m = _manifest(base, own, record["sidecars"], record["elapsed_s"])
        m.update(records_total=sum(len(chunks[i]) for i in mine), parts_missing=True)
        return TableManifest.of(out, m, complete=False)


def _copy_sidecars(source, root: Path, out: Path) -> list[str]:
    """The source's sidecar files, copied atomically (several slices may copy them)."""
    import tempfile
    _clear_sidecar_staging(out)
    with tempfile.TemporaryDirectory(dir=out, prefix=SIDECAR_STAGING) as tmp:
        names = source.sidecars(root, Path(tmp))
        for name in names:
            os.replace(Path(tmp) / name, out / name)
    return names


SIDECAR_STAGING = ".sidecars-"


def _clear_sidecar_staging(out: Path) -> None:
    """Remove the sidecar staging folders that killed slices left. Only a holder of the
    folder's lock (`.ecgssl.lock`, which the OS frees when its holder dies) makes one, and
    every caller holds it: none seen here is another live run's."""
    for p in out.glob(SIDECAR_STAGING + "*"):
        shutil.rmtree(p, ignore_errors=True)


def _clear_stale_slice(out: Path, mine: list[int], key: str) -> None:
    """Shards of this slice's parts from another run (other options or input), and temp files
    a killed run of this slice left; never another slice's files (it may be writing)."""
    for i in mine:
        for p in out.glob(f"part-{i:05d}-*.parquet"):
            if p.name != shard_name(i, key):
                p.unlink(missing_ok=True)
        for p in [*out.glob(f".part-{i:05d}-*.tmp"), *out.glob(f"{PARTS}/.part-{i:05d}.*.tmp")]:
            p.unlink(missing_ok=True)


def finish_table(out: str | Path, key: str | None = None) -> TableManifest | None:
    """Write the manifest of a table whose parts were written by slices (`--part`), once every
    part of run `key` (None: the one run the slice records name) is there; None while some
    are missing. The caller holds the folder's lock: two slices finishing together write it
    once (the second finds it written)."""
    out = Path(out)
    records = []
    for p in sorted((out / PARTS).glob("slice-*-of-*.json")):
        try:
            records.append(read_json(p))
        except (OSError, ValueError):
            continue
    keys = {r.get("key") for r in records}
    if key is None:
        if len(keys) > 1:
            raise EcgsslError(f"{out}: slices of different ingest runs ({len(keys)} options "
                              "keys) in one folder; rerun them with one input and options")
        key = next(iter(keys), None)
    records = [r for r in records if r.get("key") == key]
    if not records:
        return None
    if (out / MANIFEST).is_file():
        old = read_manifest(out)
        if old.get("options_key") == key and all((out / s).is_file() for s in old["shards"]):
            return TableManifest.of(out, old, up_to_date=True)     # another slice wrote it
    base = records[0]["base"]
    infos = [_done_part(out, i, key) for i in range(base["n_chunks"])]
    if any(i is None for i in infos):
        return None
    sidecars = sorted({s for r in records for s in r.get("sidecars", [])})
    manifest = _manifest(base, infos, sidecars, max(r["elapsed_s"] for r in records))
    manifest["parts"] = sorted({r["part"][1] for r in records})
    job = TableJob(out, key)
    job.clear_stale(set(manifest["shards"]) | {shard_name(i, key) for i, v in enumerate(infos)
                                                if not v["shard"]})
    for p in (out / PARTS).glob("slice-*-of-*.json"):
        if p.stem + ".json" not in {_slice_file(*r["part"]) for r in records}:
            p.unlink(missing_ok=True)
    return job.commit(manifest)


def merge_slices(folders: list[str | Path], out: str | Path, ctx: RunContext = OFF
                 ) -> TableManifest:
    """One table from slices written into separate folders (a Kubeflow `ParallelFor` gives
    every task its own output): their shards, part records and sidecars are linked (or copied)
    into `out`, then the manifest is written as `finish_table` does."""
    import shutil
    out = Path(out)
    with exclusive(out, "ingest"):
        for folder in map(Path, folders):
            names = [p.relative_to(folder) for p in (
                *folder.glob("part-*.parquet"), *folder.glob(f"{PARTS}/*.json"))]
            for rec in folder.glob(f"{PARTS}/slice-*.json"):
                names += [Path(s) for s in read_json(rec).get("sidecars", [])]
            for rel in names:
                dst = out / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.merge.tmp")     # then one atomic rename
                tmp.unlink(missing_ok=True)
                try:
                    os.link(folder / rel, tmp)
                except OSError:            # another file system: copy
                    shutil.copyfile(folder / rel, tmp)
                os.replace(tmp, dst)
        result = finish_table(out)
    if result is None:
        raise EcgsslError(f"{out}: the slices in {', '.join(map(str, folders))} do not hold "
                          "every part of the table; run the missing `--part K/N`")
    if not result.up_to_date:
        _log(ctx, out, result, {"parts": result.raw.get("parts")})
    return result


def _write_parts(source_name, root, out, cfg, key, chunks, infos, progress, desc,
                 src_options=None) -> dict:
    """Write the parts of `infos` that are not done (None); returns their part records."""
    todo = [i for i, v in infos.items() if v is None]
    n_todo = sum(len(chunks[i]) for i in todo)
    total = sum(len(chunks[i]) for i in infos)
    workers = cfg.workers or os.cpu_count() or 1
    size = n_samples(cfg)
    written = {}
    with progress_bar(total=total, initial=total - n_todo, unit="rec", desc=desc,
                      enabled=progress, dynamic_ncols=True) as bar:
        if workers == 1 or n_todo < 2:
            _init_worker(source_name, str(root), cfg.model_dump(),
                         options=src_options)                         # this process
            for i in todo:
                results = []
                for t in chunks[i]:
                    results.append(_work(t))
                    bar.update(1)
                with _PartWriter(out, i, key, size) as part:   # at once: one Arrow table
                    part.add(results)
                    written[i] = part.close()
        else:
            written.update(_run_pool(source_name, root, out, cfg, key, chunks, todo, workers,
                                     bar, src_options))
    return written


def _read_batches(w: int, batches: list[list[Task]], spool: str, conn, holding,
                  allowed: int, parent: int) -> None:
    """A forked worker: read every batch it can claim, in order, each into a spool file
    `<spool>/<batch>.pkl`, and send the batch number to the parent. Rows travel through a file,
    not the pipe: a worker killed (OOM) amid a large send would leave the parent reading half
    a message; a batch number is one small write. Batches from `allowed` on wait for the
    parent's go (it bounds how many parts' rows wait in the spool)."""
    die_with_parent(parent)
    for b, tasks in enumerate(batches):
        while b >= allowed:
            try:
                allowed = conn.recv()
            except EOFError:             # the parent is gone or gave up
                return
        if not _claim(b):
            continue
        holding[w] = b
        results = [_work(t) for t in tasks]      # a bad record is quarantined in there
        path = os.path.join(spool, f"{b}.pkl")
        try:
            with open(path + ".tmp", "wb") as fh:
                pickle.dump(results, fh, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(path + ".tmp", path)
        except OSError as exc:           # the spool's disk is full: the parent says so
            conn.send(f"cannot write {path}: {exc}")
            return
        holding[w] = -1
        conn.send(b)


def _unspool(path: str) -> list:
    with open(path, "rb") as fh:
        results = pickle.load(fh)
    os.unlink(path)
    return results


class _WorkerDied(Exception):
    def __init__(self, records: list[str]):
        self.records = records


def _run_pool(source_name, root, out, cfg, key, parts, todo, workers, bar,
              src_options=None) -> dict:
    chunk = max(1, min(16, cfg.shard_records // (4 * workers)))
    try:
        return _pool(source_name, root, out, cfg, key, parts, todo, workers, bar, chunk,
                     src_options)
    except _WorkerDied as exc:
        # A worker died without a Python error: killed, most often by the kernel's OOM killer.
        # Say where it was; the parts written so far stay, a rerun redoes the rest.
        recs = exc.records
        raise EcgsslError(
            f"an ingest worker process died (killed, or out of memory?) while reading record "
            f"{recs[0] if recs else '?'}" + (f" or one of the {len(recs) - 1} after it in its "
                                               f"batch ({recs[-1]})" if len(recs) > 1 else "")
            + f" of {root}; if it is huge, lower ingest.max_record_mb or use fewer workers; "
            "rerun to finish (parts already written are kept)") from None


class _Workers:
    """The forked readers of one pool run, seen from the parent: which batches they have
    spooled, and a clear error when one dies amid a batch."""

    def __init__(self, ctx, n: int, batches: list[list[Task]], spool: str, allowed: int):
        self.batches, self.spool, self.ready = batches, spool, set()
        self.holding = ctx.RawArray("i", [-1] * n)
        self.conns, self.procs = [], []
        for w in range(n):
            mine, theirs = ctx.Pipe()
            p = ctx.Process(target=_read_batches, daemon=True, args=(
                w, batches, spool, theirs, self.holding, allowed, os.getpid()))
            p.start()
            theirs.close()
            self.conns.append(mine)
            self.procs.append(p)

    def allow(self, limit: int) -> None:
        for c in self.conns:
            try:
                c.send(limit)
            except OSError:              # it has finished (or died: seen in `take`)
                pass

    def _receive(self, obj, w: int) -> bool:
        """Handle what worker w's pipe says; False when it is closed (the worker is done)."""
        try:
            got = obj.recv()
        except EOFError:
            return False
        if isinstance(got, str):
            raise EcgsslError(f"an ingest worker stopped: {got}")
        self.ready.add(got)
        return True

    def poll(self) -> None:
        """Note the batches spooled so far, without waiting."""
        for obj in mp_wait(self.conns, timeout=0):
            self._receive(obj, self.conns.index(obj))

    def take(self, b: int) -> list:
        """Batch b's results, once the worker that claimed it has spooled them."""
        live = {c: w for w, c in enumerate(self.conns)} | \
            {p.sentinel: w for w, p in enumerate(self.procs)}
        while b not in self.ready:
            if not live:                 # every worker is gone and b never came
                raise _WorkerDied([t.record for t in self.batches[b]])
            for obj in mp_wait(list(live)):
                w = live.pop(obj)
                if obj is not self.conns[w]:             # worker w has exited
                    held = self.holding[w]
                    if self.procs[w].exitcode and held >= 0:    # killed amid a batch
                        raise _WorkerDied([t.record for t in self.batches[held]])
                    continue
                if self._receive(obj, w):
                    live[obj] = w
        self.ready.discard(b)
        return _unspool(os.path.join(self.spool, f"{b}.pkl"))

    def close(self) -> None:
        """After a run: the workers are past their last batch and exit on their own (waiting
        for them costs tens of ms on a busy machine)."""
        for c in self.conns:
            c.close()

    def kill(self) -> None:
        self.close()
        for p in self.procs:
            p.kill()
            p.join()


def _pool(source_name, root, out, cfg, key, parts, todo, workers, bar, chunk,
          src_options=None) -> dict:
    """Parts read by `workers` processes: the parent and `workers - 1` forked ones, in batches
    of `chunk` records (fewer at a part's end, see `_batches`). Every process claims batches
    from the front; the parent, between its own, writes the part's row groups as the batches
    come in (`_read_part`), so that the workers read while it writes and no part waits for a
    whole shard's write at its end (on 2 CPUs a third busy process would only add switching
    and copy-on-write faults). Workers return packed rows (present leads only: a few KB per
    single-lead record, not 12 leads of float32). Parts are written in order, each while the
    workers already read the next. Plain forked processes and pipes, not a
    ProcessPoolExecutor: the batches are inherited, not pickled, and no manager thread
    competes with the parent for the GIL (on a 200-record source the executor's start-up
    alone was a fifth of the run). A worker that dies amid a batch fails
    the job naming the batch's records (a rerun finishes it); batches it had not started are
    read by the parent."""
    ctx = get_context("fork")
    batches, first, ends = [], {}, {}
    for i in todo:
        first[i] = len(batches)
        batches += _batches(parts[i], chunk, workers)
        ends[i] = len(batches)
    claims = (ctx.RawArray("b", len(batches)), ctx.Lock())
    _init_worker(source_name, str(root), cfg.model_dump(), claims=claims,
                 options=src_options)      # the parent reads too; forked workers inherit it

    def limit(pos: int) -> int:          # first batch the workers may not start yet
        return first[todo[pos]] if pos < len(todo) else len(batches)

    infos = {}
    spool = tempfile.mkdtemp(prefix="ecgssl-ingest-")
    try:
        pool = _Workers(ctx, workers - 1, batches, spool, limit(IN_FLIGHT_PARTS))
        try:
            for pos, i in enumerate(todo):
                with _PartWriter(out, i, key, n_samples(cfg)) as part:
                    _read_part(pool, part, batches, first[i], ends[i], bar)
                    pool.allow(limit(pos + 1 + IN_FLIGHT_PARTS))
                    infos[i] = part.close()
        except BaseException:
            pool.kill()
            raise
        pool.close()
    finally:
        try:
            os.rmdir(spool)              # emptied by `take` (rmtree costs ~1 ms more here)
        except OSError:
            shutil.rmtree(spool, ignore_errors=True)
    return infos


def _batches(tasks: list[Task], chunk: int, workers: int) -> list[list[Task]]:
    """A part's records in batches of `chunk`, then of fewer towards its end (about a
    2*workers-th of what is left, at least 2): the processes finish the part at about the
    same time instead of one idling through the other's last batch."""
    out, lo, n = [], 0, len(tasks)
    while lo < n:
        k = min(chunk, max(2, -(-(n - lo) // (2 * workers))))
        out.append(tasks[lo:lo + k])
        lo += k
    return out


def _read_part(pool: _Workers, part: _PartWriter, batches: list[list[Task]], lo: int, hi: int,
               bar) -> None:
    """Batches lo..hi-1 (one part) into `part`, in order. The parent claims batches from the
    front like the workers and, between its own, adds the next batch in order as soon as it
    is read (by anyone): the part's row groups are written while the workers still read, and
    little is left to write after the last batch. The first batch is left to a worker (just
    forked, it takes it while the parent reads the second). A batch no worker started (one
    died idle) is read here; one a worker claimed comes from the spool."""
    mine = {}
    order = iter([lo + 1, lo, *range(lo + 2, hi)] if hi - lo > 1 else [lo])
    for b in range(lo, hi):
        while b not in mine:
            pool.poll()
            if b in pool.ready:
                mine[b] = pool.take(b)
                break
            for c in order:
                if _claim(c, timeout=5):          # else a worker has it
                    mine[c] = [_work(t) for t in batches[c]]
                    break
            else:                                 # nothing left to claim: wait for b
                mine[b] = pool.take(b)
        results = mine.pop(b)
        part.add(results)
        bar.update(len(results))


def _manifest_base(source_name, root, cfg, size, key, fingerprint, options, tasks, excluded,
                   n_chunks) -> dict:
    """The manifest's fields that do not depend on what the parts held (a slice records them,
    so that whichever slice finishes can write the manifest)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "ecgssl_version": __version__,
        "source": source_name,
        "input": str(root),
        "input_fingerprint": fingerprint,
        "options_key": key,
        "fs": cfg.fs,
        "window_s": cfg.window_s,
        "n_samples": size,
        "leads": list(LEADS),
        "options": options,
        "records_total": len(tasks),
        "records_excluded": excluded,
        "split_rule": SOURCES[source_name].split_rule,
        "n_chunks": n_chunks,
        "rules": {
            "short_record": f"records shorter than one window but at least "
                            f"{cfg.min_window_fraction:g} of it are zero-padded at the end; "
                            "shorter ones are quarantined; a trailing partial window is dropped",
            "flat_lead": f"a lead with peak-to-peak < {cfg.flat_mv} mV in a window is zeroed "
                         "and marked absent in lead_mask; a window with no lead left is dropped",
        },
    }


def _manifest(base: dict, infos: list[dict], sidecars: list[str], elapsed: float) -> dict:
    """The manifest: `base` plus the sums over the parts' records."""
    splits, labels = collections.Counter(), collections.Counter()
    for info in infos:
        splits.update(info["rows_per_split"])
        labels.update(info["label_counts"])
    return {
        **base,
        "rows": sum(i["rows"] for i in infos),
        "records_ok": sum(i["records_ok"] for i in infos),
        "records_quarantined": [q for i in infos for q in i["records_quarantined"]],
        "quarantined_by_kind": dict(collections.Counter(
            q["kind"] for i in infos for q in i["records_quarantined"]).most_common()),
        "rows_per_split": dict(sorted(splits.items())),
        "label_counts": dict(sorted(labels.items())),
        "shards": [i["shard"] for i in infos if i["shard"]],
        # each shard's row count and sha256, to check a copy or a restore against
        "shard_info": {i["shard"]: {"rows": i["rows"], "sha256": i.get("sha256")}
                       for i in infos if i["shard"]},
        "sidecars": sidecars,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
    }

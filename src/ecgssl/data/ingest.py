"""WFDB -> Parquet: read every record of a source in parallel into the ECG table.

    ecgssl ingest cinc2017 --input data/sample/cinc2017 --output outputs/tables/cinc2017

Records are cut into fixed parts (`shard_records` each). A part becomes one shard, written
atomically together with a small sidecar in `_parts/`; the manifest is written last. A rerun
with the same input and options is a no-op, and a rerun after a crash only redoes the parts
that have no shard yet. A record that cannot be used is quarantined with a reason; it never
stops the job.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

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
    PARTS,
    SCHEMA_VERSION,
    TableManifest,
    shard_name,
    to_arrow,
    write_shard,
    writing,
)
from ecgssl.errors import EcgsslError, RecordError
from ecgssl.storage import file_sha256, read_json, stable_hash, tree_fingerprint, write_json
from ecgssl.tracking import OFF, RunContext, log_stage

IN_FLIGHT_PARTS = 2  # bounds memory: results of at most this many parts wait in the parent


def n_samples(cfg: IngestConfig) -> int:
    t = cfg.fs * cfg.window_s
    if abs(t - round(t)) > 1e-6:
        raise EcgsslError(f"fs * window_s must be a whole number of samples, got "
                          f"{cfg.fs} Hz * {cfg.window_s} s = {t}")
    return int(round(t))


def record_rows(source: Source, root: Path, cfg: IngestConfig, task: Task) -> pa.RecordBatch:
    """Read one record and cut it into table rows, one per window."""
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
    windows, present = windows[keep], present[keep]
    kept = [w for w, k in enumerate(keep) if k]
    signal = np.zeros((len(kept), N_LEADS, size), dtype=np.float32)
    signal[:, idx] = windows * present[..., None]
    mask = np.zeros((len(kept), N_LEADS), dtype=bool)
    mask[:, idx] = present
    if rec.events is not None:
        times, codes = rec.events
        labels = []
        for w in kept:
            t0 = starts[w] / cfg.fs
            inside = (times >= t0) & (times < t0 + cfg.window_s)
            labels.append(sorted(set(codes[inside].tolist())))
    else:
        labels = [list(rec.labels)] * len(kept)
    n = len(kept)
    dataset = source.name
    return to_arrow({
        "ecg_id": [f"{dataset}/{task.record}#{w}" for w in kept],
        "dataset": [dataset] * n, "record": [task.record] * n,
        "patient_id": [rec.patient_id] * n, "split": [rec.split] * n,
        "strat_fold": [rec.strat_fold] * n, "fs": [cfg.fs] * n, "window": kept,
        "signal": signal, "lead_mask": mask, "labels": labels,
        "report_device": [rec.report_device] * n, "report": [None] * n,
        "report_codes": [None] * n,
        "age": [rec.age] * n, "sex": [rec.sex] * n,
    }, size)


# Worker state, set once per process so that tasks travel as small pickles.
_WORKER: tuple[Source, Path, IngestConfig] | None = None


def _init_worker(source_name: str, root: str, cfg: dict, parent: int | None = None,
                 options: dict | None = None) -> None:
    global _WORKER
    c = IngestConfig(**cfg)
    source = get_source(source_name, c.fs, options)
    source.max_record_mb = c.max_record_mb
    _WORKER = (source, Path(root), c)
    if parent is not None:
        die_with_parent(parent)


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


def _work(task: Task) -> tuple[str, pa.RecordBatch | None, dict | None]:
    """(record, rows, None) or (record, None, quarantine entry)."""
    source, root, cfg = _WORKER
    try:
        return task.record, record_rows(source, root, cfg, task), None
    except RecordError as exc:
        return task.record, None, {"record": task.record, "reason": str(exc), "kind": exc.kind}
    except Exception as exc:  # one bad record never kills the batch: quarantine, go on
        return task.record, None, {"record": task.record, "kind": "error",
                                   "reason": f"{task.record}: {type(exc).__name__}: {exc}"}


def _write_part(out: Path, part: int, key: str, results: list) -> dict:
    ok = [rows for _, rows, _ in results if rows is not None]
    quarantined = [q for _, rows, q in results if rows is None]
    name = shard_name(part, key)
    splits, labels = collections.Counter(), collections.Counter()
    n_rows = 0
    if ok:
        table = pa.Table.from_batches(ok)
        n_rows = table.num_rows
        splits.update(table.column("split").to_pylist())
        for labs in table.column("labels").to_pylist():
            labels.update(labs)
        shard = write_shard(table, out / name)
    info = {"key": key, "part": part, "shard": name if ok else None, "rows": n_rows,
            "sha256": shard["sha256"] if ok else None,
            "records_ok": len(ok), "records_quarantined": quarantined,
            "rows_per_split": dict(splits), "label_counts": dict(labels)}
    write_json(out / PARTS / f"part-{part:05d}.json", info)
    return info


def _done_part(out: Path, part: int, key: str) -> dict | None:
    p = out / PARTS / f"part-{part:05d}.json"
    try:
        info = read_json(p)
    except (OSError, ValueError):
        return None
    if info.get("key") != key or (info["shard"] and not (out / info["shard"]).is_file()):
        return None
    return info


def ingest(source_name: str, input_dir: str | Path, output_dir: str | Path,
           cfg: IngestConfig, progress: bool = True, ctx: RunContext = OFF,
           source_options: dict | None = None) -> TableManifest:
    """Ingest one source; returns the manifest. Raises EcgsslError when nothing is usable.
    `source_options` go to the source (the wfdb source's metadata CSV, split, dataset)."""
    root, out = Path(input_dir), Path(output_dir)
    if not root.is_dir():
        raise EcgsslError(f"input path does not exist or is not a folder: {root}")
    size = n_samples(cfg)
    workers = cfg.workers or os.cpu_count() or 1
    source = get_source(source_name, cfg.fs, source_options)
    src_options = source.options()
    tasks, excluded = source.plan(root)
    if not tasks:
        raise EcgsslError(f"no records found in {root} for source {source_name} "
                          "(no RECORDS file listing them and no .hea headers)")
    warnings = source.warnings()
    for w in warnings:
        from ecgssl.render import warn
        warn(w)
    fingerprint = tree_fingerprint(root)
    options = {"min_window_fraction": cfg.min_window_fraction, "flat_mv": cfg.flat_mv,
               "shard_records": cfg.shard_records, "max_record_mb": cfg.max_record_mb}
    # The metadata CSV may live outside the input folder: its content is part of the key.
    src_key = {**src_options, "metadata": file_sha256(src_options["metadata"])} \
        if src_options.get("metadata") else src_options
    key = stable_hash({"source": source_name, "fs": cfg.fs, "window_s": cfg.window_s,
                       "options": options, "fingerprint": fingerprint,
                       "schema_version": SCHEMA_VERSION, "version": __version__,
                       **({"source_options": src_key} if src_options else {})})
    with writing(out, "ingest", key) as job:
        if job.current:
            return job.current
        t0 = time.perf_counter()
        parts = [tasks[i:i + cfg.shard_records] for i in range(0, len(tasks), cfg.shard_records)]
        infos = {i: _done_part(out, i, key) for i in range(len(parts))}
        job.clear_stale({v["shard"] or shard_name(i, key) for i, v in infos.items() if v})
        todo = [i for i, v in infos.items() if v is None]
        n_todo = sum(len(parts[i]) for i in todo)
        bar = tqdm(total=len(tasks), initial=len(tasks) - n_todo, unit="rec",
                   desc=f"ingest {source_name}", disable=not progress, dynamic_ncols=True)
        with bar:
            if workers == 1 or n_todo < 2:
                _init_worker(source_name, str(root), cfg.model_dump(),
                             options=src_options)                         # this process
                for i in todo:
                    results = []
                    for t in parts[i]:
                        results.append(_work(t))
                        bar.update(1)
                    infos[i] = _write_part(out, i, key, results)
            else:
                infos.update(_run_pool(source_name, root, out, cfg, key, parts, todo, workers,
                                       bar, src_options))
        manifest = _manifest(source_name, root, out, cfg, size, key, fingerprint, options,
                             tasks, excluded, [infos[i] for i in range(len(parts))],
                             source.sidecars(root, out), time.perf_counter() - t0)
        manifest["split_rule"] = source.split_rule
        if src_options:
            manifest["source_options"] = src_options
            manifest["dataset"] = source.name
        if getattr(source, "report", None):
            manifest["metadata"] = {**source.report, "warnings": warnings}
            # the two counts also at the top, beside records_quarantined
            manifest["records_without_labels"] = source.report["records_without_labels"]
            manifest["rows_without_record"] = source.report["rows_without_record"]
        result = job.commit(manifest)
    log_stage(ctx, "ingest", {"source": source_name, **cfg.model_dump()},
              {"rows": result.rows, "records_ok": result.records_ok,
               "records_total": result.records_total, "elapsed_s": result.elapsed_s,
               "records_quarantined": len(result.records_quarantined),
               **{k: v for k, v in result.raw.get("metadata", {}).items()
                  if k in ("records_without_labels", "rows_without_record")}},
              run_name=f"ingest-{source_name}")
    if result.records_ok == 0:
        reasons = "; ".join(q["reason"] for q in result.records_quarantined[:3])
        raise EcgsslError(f"no record of {root} could be read ({len(tasks)} quarantined), "
                          f"e.g.: {reasons}")
    return result


def _run_pool(source_name, root, out, cfg, key, parts, todo, workers, bar,
              src_options=None) -> dict:
    infos = {}
    chunk = max(1, min(16, cfg.shard_records // (4 * workers)))
    try:
        return _pool(source_name, root, out, cfg, key, parts, todo, workers, bar, chunk, infos,
                     src_options)
    except BrokenProcessPool:
        # A worker died without a Python error: killed, most often by the kernel's OOM killer.
        # Say where it was; the parts written so far stay, a rerun redoes the rest.
        i = next(i for i in todo if i not in infos)
        done = _IN_PROGRESS.get(i, 0)
        recs = [t.record for t in parts[i][done:done + chunk]]
        raise EcgsslError(
            f"an ingest worker process died (killed, or out of memory?) while reading record "
            f"{recs[0] if recs else '?'}" + (f" or one of the {len(recs) - 1} after it in its "
                                               f"batch ({recs[-1]})" if len(recs) > 1 else "")
            + f" of {root}; if it is huge, lower ingest.max_record_mb or use fewer workers; "
            "rerun to finish (parts already written are kept)") from None


_IN_PROGRESS: dict[int, int] = {}     # part -> results received, for the message above


def _pool(source_name, root, out, cfg, key, parts, todo, workers, bar, chunk, infos,
          src_options=None) -> dict:
    _IN_PROGRESS.clear()
    with ProcessPoolExecutor(workers, mp_context=get_context("fork"), initializer=_init_worker,
                             initargs=(source_name, str(root), cfg.model_dump(),
                                       os.getpid(), src_options)) as ex:
        queue = collections.deque()
        pending = iter(todo)

        def submit_next() -> None:
            i = next(pending, None)
            if i is not None:
                queue.append((i, ex.map(_work, parts[i], chunksize=chunk)))

        for _ in range(IN_FLIGHT_PARTS):
            submit_next()
        while queue:
            i, results_iter = queue.popleft()
            results = []
            for r in results_iter:
                results.append(r)
                _IN_PROGRESS[i] = len(results)
                bar.update(1)
            submit_next()
            infos[i] = _write_part(out, i, key, results)
    return infos


def _manifest(source_name, root, out, cfg, size, key, fingerprint, options, tasks, excluded,
              infos, sidecars, elapsed) -> dict:
    splits, labels = collections.Counter(), collections.Counter()
    for info in infos:
        splits.update(info["rows_per_split"])
        labels.update(info["label_counts"])
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
        "rows": sum(i["rows"] for i in infos),
        "records_total": len(tasks),
        "records_ok": sum(i["records_ok"] for i in infos),
        "records_quarantined": [q for i in infos for q in i["records_quarantined"]],
        "quarantined_by_kind": dict(collections.Counter(
            q["kind"] for i in infos for q in i["records_quarantined"]).most_common()),
        "records_excluded": excluded,
        "rows_per_split": dict(sorted(splits.items())),
        "split_rule": SOURCES[source_name].split_rule,
        "label_counts": dict(sorted(labels.items())),
        "shards": [i["shard"] for i in infos if i["shard"]],
        # each shard's row count and sha256, to check a copy or a restore against
        "shard_info": {i["shard"]: {"rows": i["rows"], "sha256": i.get("sha256")}
                       for i in infos if i["shard"]},
        "sidecars": sidecars,
        "rules": {
            "short_record": f"records shorter than one window but at least "
                            f"{cfg.min_window_fraction:g} of it are zero-padded at the end; "
                            "shorter ones are quarantined; a trailing partial window is dropped",
            "flat_lead": f"a lead with peak-to-peak < {cfg.flat_mv} mV in a window is zeroed "
                         "and marked absent in lead_mask; a window with no lead left is dropped",
        },
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 3),
    }

"""The `reports` stage: a copy of ECG tables with the English `report` column filled.

    ecgssl reports --input outputs/tables/ptbxl --input outputs/tables/cinc2017 \\
        --output outputs/reports --mode both

Several input tables (same fs and window) are concatenated into one output table, the corpus
that pretraining reads. Generated reports see the signal only, never the labels.
"""

from __future__ import annotations

import collections
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow as pa

from ecgssl import __version__
from ecgssl.config import ReportsConfig
from ecgssl.data.ingest import die_with_parent
from ecgssl.data.table import (
    SCHEMA_VERSION,
    TableManifest,
    arrays,
    conform,
    read_manifest,
    read_shard,
    require_rows,
    shard_name,
    shard_rows,
    write_shard,
    writing,
)
from ecgssl.errors import EcgsslError
from ecgssl.progress import bar as progress_bar
from ecgssl.reports.generate import Report, generate
from ecgssl.reports.translate import Coverage
from ecgssl.storage import stable_hash
from ecgssl.tracking import OFF, RunContext, log_stage

CHUNK_ROWS = 32


def _generate_rows(args: tuple[np.ndarray, np.ndarray, float]) -> list[Report]:
    signal, mask, fs = args
    return [generate(s, m, fs) for s, m in zip(signal, mask)]


class _Generator:
    """Generated reports for many rows, in worker processes when there are several CPUs."""

    def __init__(self, workers: int):
        # workers die with a killed parent instead of lingering (see ingest.die_with_parent)
        self.pool = ProcessPoolExecutor(workers, mp_context=get_context("fork"),
                                        initializer=die_with_parent, initargs=(os.getpid(),)) \
            if workers > 1 else None

    def __call__(self, signal: np.ndarray, mask: np.ndarray, fs: float, where: str = ""
                 ) -> list[Report]:
        chunks = [(signal[i:i + CHUNK_ROWS], mask[i:i + CHUNK_ROWS], fs)
                  for i in range(0, len(signal), CHUNK_ROWS)]
        mapper = self.pool.map if self.pool else map
        try:
            return [r for rows in mapper(_generate_rows, chunks) for r in rows]
        except BrokenProcessPool:
            raise EcgsslError(f"a reports worker process died (killed, or out of memory?) "
                              f"while measuring the rows of {where or 'a shard'}; use fewer "
                              "workers (reports.workers) and rerun") from None

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown()


def _reports_key(inputs: list[Path], manifests: list[dict], cfg: ReportsConfig) -> str:
    from importlib import resources
    lexicon = resources.files("ecgssl.reports").joinpath("lexicon.tsv").read_bytes()
    # The generator's own code is part of the key: changed statements make new reports.
    # So are the translation's code and its word list (English passes through untranslated).
    generator = [resources.files("ecgssl.reports").joinpath(f).read_bytes().decode()
                 for f in ("measure.py", "codes.py", "generate.py", "translate.py",
                           "english_words.txt")]
    return stable_hash({"inputs": [m.get("options_key") for m in manifests],
                        "paths": [str(p) for p in inputs], "mode": cfg.mode,
                        "version": __version__, "lexicon": stable_hash(lexicon.decode()),
                        "generator": stable_hash(generator), "schema": SCHEMA_VERSION})


def run_reports(inputs: list[str | Path], output: str | Path, cfg: ReportsConfig,
                progress: bool = True, ctx: RunContext = OFF) -> TableManifest:
    inputs, out = [Path(p) for p in inputs], Path(output)
    if not inputs:
        raise EcgsslError("reports needs at least one --input table")
    if out in inputs:
        raise EcgsslError(f"--output {out} is also an --input; write the copy somewhere else")
    manifests = [read_manifest(p) for p in inputs]
    for p, m in zip(inputs, manifests):
        require_rows(p, m)
    shapes = {(m["fs"], m["n_samples"]) for m in manifests}
    if len(shapes) > 1:
        raise EcgsslError("input tables differ in fs/window and cannot be joined: " + ", ".join(
            f"{p} ({m['fs']} Hz, {m['n_samples']} samples)" for p, m in zip(inputs, manifests)))
    key = _reports_key(inputs, manifests, cfg)
    workers = cfg.workers or os.cpu_count() or 1
    with writing(out, "reports", key) as job:
        if job.current:
            return job.current
        job.clear_stale()
        t0 = time.perf_counter()
        total = sum(m["rows"] for m in manifests)
        counts, coverage = collections.Counter(), Coverage()
        shards, sidecars, shard_info = [], [], {}
        gen = _Generator(workers) if cfg.mode != "device" else None
        try:
            with progress_bar(total=total, unit="row", desc=f"reports ({cfg.mode})",
                              enabled=progress, dynamic_ncols=True) as bar:
                for path, m in zip(inputs, manifests):
                    for shard in m["shards"]:
                        table = conform(read_shard(path / shard, None, None,
                                                   shard_rows(m, shard)), m["n_samples"])
                        device = [coverage.add(t).text or None for t in
                                  table.column("report_device").to_pylist()] \
                            if cfg.mode != "generated" else [None] * table.num_rows
                        generated = [None] * table.num_rows
                        if gen is not None:
                            signal, mask = arrays([table], m["n_samples"])
                            generated = gen(signal, mask, m["fs"], str(path / shard))
                        reports = [_combine(d, g and g.text, cfg.mode)
                                   for d, g in zip(device, generated)]
                        codes = [list(g.codes) if g else None for g in generated]
                        counts["device"] += sum(1 for d in device if d)
                        counts["generated"] += sum(1 for g in generated if g)
                        counts["empty"] += sum(1 for r in reports if not r)
                        for col, values in (("report", reports), ("report_codes", codes)):
                            i = table.schema.get_field_index(col)
                            table = table.set_column(i, col, pa.array(values,
                                                                      table.schema.field(i).type))
                        name = shard_name(len(shards), key)
                        shard_info[name] = write_shard(table, out / name)
                        shards.append(name)
                        bar.update(table.num_rows)
                for path, m in zip(inputs, manifests):
                    for s in m.get("sidecars", []):
                        if s not in sidecars:
                            shutil.copyfile(path / s, out / s)
                            sidecars.append(s)
        finally:
            if gen is not None:
                gen.close()
        manifest = {
            **{k: manifests[0][k] for k in ("fs", "window_s", "n_samples", "leads")},
            "schema_version": SCHEMA_VERSION,
            "ecgssl_version": __version__,
            "source": "+".join(m["source"] for m in manifests),
            "sources": [{"table": str(p), "source": m["source"], "rows": m["rows"],
                         "input_fingerprint": m.get("input_fingerprint")}
                        for p, m in zip(inputs, manifests)],
            "input_fingerprint": stable_hash([m.get("input_fingerprint") for m in manifests]),
            "options_key": key,
            "rows": total,
            "rows_per_split": dict(sum((collections.Counter(m["rows_per_split"])
                                        for m in manifests), collections.Counter())),
            "shards": shards,
            "shard_info": shard_info,
            "sidecars": sidecars,
            "reports": {
                "key": key,
                "mode": cfg.mode,
                "counts": {k: counts[k] for k in ("device", "generated", "empty")},
                "translation_coverage": coverage.ratio(),
                "untranslated_top": coverage.untranslated.most_common(20),
                "elapsed_s": round(time.perf_counter() - t0, 2),
            },
        }
        result = job.commit(manifest)
    r = result.reports
    log_stage(ctx, "reports", cfg.model_dump(), {"rows": total, **r.counts,
                                                 "translation_coverage": r.translation_coverage,
                                                 "elapsed_s": r.elapsed_s})
    return result


def _combine(device: str | None, generated: str | None, mode: str) -> str | None:
    if mode == "device":
        return device
    if mode == "generated":
        return generated
    return " ".join(x for x in (device, generated) if x) or None

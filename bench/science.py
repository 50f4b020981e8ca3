"""Does pretraining help? End to end on real data with the `ecgssl` CLI only, one table.

    python bench/science.py --data ../shared/data                 # <= 45 min on 2 CPU cores
    python bench/science.py --data ../shared/data --schedule long # a GPU machine
    python bench/science.py --data data/sample --steps 20         # a smoke run of the wiring
    python bench/science.py --data ../shared/data --finetune      # + fine-tuning (slow on CPU)
    python bench/science.py --data ../shared/data --seed 1 --out outputs/science-seed1

ingest (Challenge 2017, MIT-BIH, Challenge 2020) -> reports (generated) -> embed-text ->
pretrain (METS+ST) -> evaluate cinc2017-af and mitdb-aami: zero-shot, linear probe at 1/10/100 %
labels, fine-tuning at 100 % (cinc2017-af), each supervised arm beside its randomly initialised
twin; and, beside them, the one-line RR-irregularity rule (median |dRR| / median RR of the
window's R peaks, averaged over a record's windows) as the AF baseline. Every number is on the
test split, with a 95 % bootstrap CI over test records (patients); choices use val only.
Results also go to OUT/science.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

BIN = Path(sys.executable).parent
SOURCES = {"cinc2017": ("cinc2017",), "mitdb": ("mitdb",),
           "cinc2020": ("cinc2020", "cinc2020-2021")}
SCHEDULES = {   # pretraining on 2 CPU cores vs a GPU
    "cpu": {"width": 32, "batch_size": 128, "max_steps": 300, "lr": 2e-3, "warmup_steps": 30},
    "long": {"width": 64, "batch_size": 256, "max_steps": 6000, "lr": 1e-3,
             "warmup_steps": 300},
}


def ecgssl(*args, env=None) -> float:
    t0 = time.perf_counter()
    cmd = [str(BIN / "ecgssl"), *map(str, args), "--no-progress"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}):\n{p.stdout[-4000:]}")
    return time.perf_counter() - t0


def rr_rule(table: Path) -> dict:
    """AUROC of A vs rest on cinc2017-af test records, from RR irregularity alone."""
    from sklearn.metrics import roc_auc_score

    from ecgssl.data.table import read_table
    from ecgssl.reports.measure import r_peaks
    t = read_table(table, split="test", columns=["record", "labels"], dataset="cinc2017")
    scores: dict[str, list[float]] = {}
    label = {}
    for rec, labs, x, m in zip(t.column("record"), t.column("labels"), t.signal, t.lead_mask):
        lead = int(np.flatnonzero(m)[0]) if m.any() else 0
        peaks = r_peaks(x[lead], 100)   # the report generator's detector (XQRS misses at 100 Hz)
        rr = np.diff(peaks) / 100
        v = float(np.median(np.abs(np.diff(rr))) / np.median(rr)) if len(rr) > 2 else 0.0
        scores.setdefault(rec, []).append(v)
        label[rec] = bool(len(labs) and labs[0] == "A")
    recs = sorted(scores)
    y = np.array([label[r] for r in recs])
    s = np.array([np.mean(scores[r]) for r in recs])
    rng = np.random.default_rng(0)
    boots = [roc_auc_score(y[i], s[i]) for i in (rng.integers(0, len(y), len(y))
                                                  for _ in range(200)) if 0 < y[i].sum() < len(i)]
    return {"auroc/A": float(roc_auc_score(y, s)),
            "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}


def run(data: Path, out: Path, schedule: dict, finetune: bool) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load(Path("params.yaml").read_text())
    params["pretrain"].update(schedule, method="mets+st", checkpoint_every=200,
                              log_every=50)
    params["evaluate"].update(cache=str(out / "cache.parquet"), finetune_epochs=2)
    params["embed_text"]["cache"] = str(out / "cache.parquet")
    params["tracking"]["enabled"] = False
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "ECGSSL_PARAMS": str(out / "params.yaml"), "HF_HUB_OFFLINE": "1"}
    times, tables = {}, []
    for source, names in SOURCES.items():
        folder = next((data / n for n in names if (data / n).is_dir()), None)
        if folder is None:
            print(f"skip {source}: no {' or '.join(names)} in {data}")
            continue
        times[f"ingest {source}"] = ecgssl("ingest", source, "--input", folder, "--output",
                                           out / "tables" / source, env=env)
        tables.append(out / "tables" / source)
    times["reports"] = ecgssl("reports", *[a for t in tables for a in ("--input", t)],
                              "--output", out / "reports", "--mode", "generated", env=env)
    times["embed-text"] = ecgssl("embed-text", "--input", out / "reports", "--output",
                                 out / "text_emb.parquet", env=env)
    times["pretrain"] = ecgssl("pretrain", "--data", out / "reports", "--text-emb",
                               out / "text_emb.parquet", "--output", out / "pretrain", env=env)
    results = {}
    for task in ("cinc2017-af", "mitdb-aami"):
        times[f"evaluate {task}"] = ecgssl(
            "evaluate", "--encoder", out / "pretrain", "--data", out / "reports", "--task", task,
            "--mode", "zeroshot", "--mode", "probe", "--output", out / "eval" / task, env=env)
        results[task] = json.loads((out / "eval" / task / "metrics.json").read_text())
    if finetune:   # at 100 % labels only: each arm tries every learning rate of the grid
        task = "cinc2017-af"
        times[f"finetune {task}"] = ecgssl(
            "evaluate", "--encoder", out / "pretrain", "--data", out / "reports", "--task", task,
            "--mode", "finetune", "--label-fraction", 100, "--output",
            out / "eval" / f"{task}-finetune", env=env)
        results[task].update(json.loads(
            (out / "eval" / f"{task}-finetune" / "metrics.json").read_text()))
    t0 = time.perf_counter()
    results["rule"] = rr_rule(out / "reports")
    times["rr rule"] = time.perf_counter() - t0
    return {"results": results, "times_s": {k: round(v, 1) for k, v in times.items()},
            "schedule": schedule}


def fmt(m: dict, key: str) -> str:
    v = m.get(key)
    if v is None or not np.isfinite(v):
        return "-"
    lo, hi = m.get(key + "_ci_low"), m.get(key + "_ci_high")
    return f"{v:.3f} [{lo:.2f}, {hi:.2f}]" if lo is not None and np.isfinite(lo) else f"{v:.3f}"


def table(r: dict) -> str:
    lines = [f"{'task':<12} {'model':<24} {'macro AUROC [95% CI]':<24} {'A-vs-rest / V':<9} "
             f"{'F1_NAO / macro F1':<24}"]
    for task, m in r["results"].items():
        if task == "rule":
            continue
        key2, f1 = ("auroc/A", "f1_nao") if task == "cinc2017-af" else ("auroc/V", "macro_f1")
        rows = [("zeroshot", f"zeroshot/{task}")]
        for mode in ("probe", "finetune"):
            for f in ("1", "10", "100"):
                for twin in ("", "-random"):
                    if f"{mode}{twin}/{task}/f{f}/macro_auroc" in m:
                        rows.append((f"{mode}{twin} {f}%", f"{mode}{twin}/{task}/f{f}"))
        for name, p in rows:
            sub = {k[len(p) + 1:]: v for k, v in m.items() if k.startswith(p + "/")}
            lines.append(f"{task:<12} {name:<24} {fmt(sub, 'macro_auroc'):<24} "
                         f"{fmt(sub, key2):<9} {fmt(sub, f1):<24}")
    rule = r["results"].get("rule")
    if rule:
        lines.append(f"{'cinc2017-af':<12} {'RR-irregularity rule':<24} {'-':<24} "
                     f"{rule['auroc/A']:.3f} [{rule['ci'][0]:.2f}, {rule['ci'][1]:.2f}]")
    lines.append("time (s): " + ", ".join(f"{k} {v}" for k, v in r["times_s"].items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/sample"))
    ap.add_argument("--out", type=Path, default=Path("outputs/science"))
    ap.add_argument("--schedule", choices=sorted(SCHEDULES), default="cpu")
    ap.add_argument("--steps", type=int, help="override the schedule's pretraining steps")
    ap.add_argument("--seed", type=int, default=0, help="pretraining seed: rerun with others "
                    "to see how far a number moves with the training trajectory alone")
    ap.add_argument("--finetune", action=argparse.BooleanOptionalAction, default=None,
                    help="fine-tune at 100 %% labels [default: only with --schedule long: on 2 "
                    "CPU cores it alone takes longer than the 45-minute budget]")
    args = ap.parse_args()
    schedule = dict(SCHEDULES[args.schedule])
    if args.steps:
        schedule["max_steps"] = args.steps
    schedule["seed"] = args.seed
    t0 = time.perf_counter()
    finetune = args.finetune if args.finetune is not None else args.schedule == "long"
    r = run(args.data.resolve(), args.out.resolve(), schedule, finetune)
    r["total_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "science.json").write_text(json.dumps(r, indent=2))
    print(table(r))
    print(f"total {r['total_s'] / 60:.1f} min; details in {args.out / 'science.json'}")


if __name__ == "__main__":
    main()

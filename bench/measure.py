"""Validate generated reports against real annotations: one table of targets, PASS/FAIL.

    python bench/measure.py                          # the bundled sample (data/sample)
    python bench/measure.py --data ../shared/data    # a PhysioNet layout: mitdb/, cinc2017/
    python bench/measure.py --tables /tmp/t          # keep the ingested tables there for reruns
    python bench/measure.py --plots /tmp/p           # + each MIT-BIH record's median beat and
                                                     #   QRS bounds, to judge the QRS rows by eye

Windows are the 100 Hz, 10 s rows that `ingest` writes. Rows:
- Challenge 2017, per record (AFIB when at least half its windows state it): sensitivity on A,
  false AFIB on N.
- MIT-BIH per window against the .atr beats (AAMI classes) and rhythms (aux_note): PVC <=> a
  V beat in the window, PAC <=> an S beat; AFIB on windows lying wholly in '(AFIB' vs wholly
  in '(N'.
- QRS duration: < 60 ms anywhere; bundle-branch-block records (109, 118) >= 120 ms; normal
  conduction 60-110 ms. Conduction is read from the .atr beats of each window (see
  `_window_conduction`), so any MIT-BIH record is placed, not only the ones named here, and a
  record that switches between normal and bundle-branch-block conduction (212) is scored on
  each stretch for what it is; a second table gives each record's QRS, so a failing row names
  the records behind it. Challenge 2017 N windows: QT and ST statements.
- Text: distinct reports with digits removed per 1,000 windows; mean MiniLM cosine of a report
  to its 5 nearest in-batch neighbours (batch 256), also over each batch's distinct reports.
  Cost: windows/s of generation over all cores, in chunks of 32 rows as the stage does.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import wfdb

from ecgssl.config import IngestConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import MANIFEST, read_table

BBB = {"109", "118"}                  # the bundle-branch-block records (L / R beats)
# Beat symbols of the .atr files: bundle-branch-block beats, and paced or paced-fusion beats.
BBB_BEATS, PACED_BEATS = {"L", "R", "B"}, {"/", "f"}
# "Before" values of the text and cost rows: the generator at commit 882a053 on the shared
# data (same windows, same code path), measured once with this bench.
BEFORE = {"text_distinct": 37.6, "text_cosine": 0.975, "text_cosine_distinct": 0.975,
          "windows_s": 341}


def _tables(data: Path, keep: Path | None, sources: tuple[str, ...]) -> dict:
    # Without --tables, the tables live in a folder removed once read (read_table holds them
    # in memory): the shared data's leave ~100 MB in /tmp per run otherwise.
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        root = keep or Path(tmp)
        out = {}
        for s in sources:
            if not (data / s).is_dir():
                continue
            if not (root / s / MANIFEST).is_file():     # else ingest is a no-op anyway
                ingest(s, data / s, root / s, IngestConfig(workers=1), progress=False)
            out[s] = read_table(root / s)
    return out


def _generate_all(t, pool) -> list:
    from ecgssl.reports.stage import CHUNK_ROWS
    chunks = [(t.signal[i:i + CHUNK_ROWS], t.lead_mask[i:i + CHUNK_ROWS], 100)
              for i in range(0, len(t), CHUNK_ROWS)]
    return [r for rows in pool.map(_rows, chunks) for r in rows]


def _rows(args):
    # generate() spelled out, to keep the QRS duration that the text only bins.
    from ecgssl.reports.codes import decide, render
    from ecgssl.reports.measure import measure
    s, m, fs = args
    out = []
    for a, b in zip(s, m):
        me = measure(a, b, fs)
        codes = decide(me)
        out.append((render(codes, me), codes, me.qrs_ms))
    return out


@functools.cache
def _atr(path: Path):
    """A record's .atr annotations, read once: the rhythm and both conduction readings use
    them."""
    return wfdb.rdann(str(path), "atr")


@functools.cache
def _rhythms(path: Path) -> tuple[np.ndarray, list[str]]:
    ann = _atr(path)
    idx = [k for k, a in enumerate(ann.aux_note) if a.startswith("(")]
    return np.array([ann.sample[k] for k in idx]), [ann.aux_note[k].strip("\x00") for k in idx]


def _conduction(path: Path) -> str:
    """'paced', 'bbb' or 'normal' from the record's annotated beats: paced when over a fifth
    of them are paced or paced-fusion beats (102, 104, 107, 217), 'bbb' when over 5 % are
    bundle-branch-block beats (e.g. 109, 111, 118, 124, 207, 212, 214, 231), else normal."""
    sym = [a for a in _atr(path).symbol if a.isalpha() or a == "/"]
    n = max(1, len(sym))
    if sum(a in PACED_BEATS for a in sym) > 0.2 * n:
        return "paced"
    return "bbb" if sum(a in BBB_BEATS for a in sym) > 0.05 * n else "normal"


def _window_conduction(path: Path, windows: np.ndarray, samples: int = 3600) -> np.ndarray:
    """Each window's conduction from its annotated beats: 'bbb' when at least 80 % of its
    normally conducted beats (N, L, R, B) are bundle-branch-block beats, 'normal' when none
    is and no beat is paced, else '' (mixed or paced: in neither QRS row)."""
    ann = _atr(path)
    sym, at = np.array(ann.symbol), np.asarray(ann.sample) // samples
    out = []
    for w in windows:
        b = sym[at == w]
        conducted = np.isin(b, ["N", *BBB_BEATS]).sum()
        share = np.isin(b, list(BBB_BEATS)).sum() / max(1, conducted)
        paced = np.isin(b, list(PACED_BEATS)).any()
        out.append("" if paced or conducted < 3 else
                   "bbb" if share >= 0.8 else "normal" if share == 0 else "")
    return np.array(out)


def _window_rhythm(starts: np.ndarray, names: list[str], a: int, b: int) -> str | None:
    """The rhythm in force over all of [a, b) samples, or None where it changes inside."""
    k = np.searchsorted(starts, a, side="right") - 1
    if k < 0 or (k + 1 < len(starts) and starts[k + 1] < b):
        return None
    return names[k]


class Rows:
    def __init__(self):
        self.rows = []

    def add(self, name: str, value: float, target: str, ok: bool | None, n: str = ""):
        self.rows.append((name, value, target, ok, n))

    def print(self):
        w = max(len(r[0]) for r in self.rows)
        print(f"{'row':<{w}}  {'value':>9}  {'target':<12} {'result':<6} n")
        for name, v, target, ok, n in self.rows:
            res = "" if ok is None else ("PASS" if ok else "FAIL")
            val = f"{v:9.3f}" if isinstance(v, float) else f"{v:>9}"
            print(f"{name:<{w}}  {val}  {target:<12} {res:<6} {n}")


def _ratio(a, b):
    return float(a) / b if b else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data/sample"))
    ap.add_argument("--tables", type=Path, default=None,
                    help="keep ingested tables in this folder (reused when present)")
    ap.add_argument("--no-text", action="store_true", help="skip the MiniLM rows")
    ap.add_argument("--plots", type=Path, default=None,
                    help="write qrs_bounds_mitdb.png here: each MIT-BIH record's median beat "
                         "with the QRS bounds found")
    args = ap.parse_args()
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    tabs = _tables(args.data, args.tables, ("mitdb", "cinc2017"))
    out = Rows()
    texts_all, qrs_all, per_record = [], [], {}
    workers = os.cpu_count() or 1
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        gen = {}
        n_win, t_gen = 0, 0.0
        for s, t in tabs.items():
            t0 = time.perf_counter()
            gen[s] = _generate_all(t, pool)
            t_gen += time.perf_counter() - t0
            n_win += len(t)
    qrs = {s: np.array([q for *_, q in g], dtype=float) for s, g in gen.items()}

    if "cinc2017" in tabs:
        t, g = tabs["cinc2017"], gen["cinc2017"]
        labels = np.array([x[0] if len(x) else "" for x in t.column("labels")])
        recs = np.array(t.column("record"))
        af = np.array(["AFIB" in c for _, c, _ in g])
        per = {}
        for r, lab, a in zip(recs, labels, af):
            per.setdefault(r, [lab, []])[1].append(a)
        rec_af = {r: (lab, np.mean(v) >= 0.5) for r, (lab, v) in per.items()}
        a_ = [v for lab, v in rec_af.values() if lab == "A"]
        n_ = [v for lab, v in rec_af.values() if lab == "N"]
        out.add("cinc2017 AFIB sensitivity (A records)", float(np.mean(a_)), ">= 0.85",
                np.mean(a_) >= 0.85, f"{len(a_)} records")
        out.add("cinc2017 AFIB on N records", float(np.mean(n_)), "<= 0.05",
                np.mean(n_) <= 0.05, f"{len(n_)} records")
        normal = labels == "N"
        qt = np.array(["LNGQT" in c for _, c, _ in g])[normal]
        st = np.array([bool({"STE_", "STD_"} & set(c)) for _, c, _ in g])[normal]
        out.add("cinc2017 N windows: QT statement", float(qt.mean()), "<= 0.03",
                qt.mean() <= 0.03, f"{normal.sum()} windows")
        out.add("cinc2017 N windows: ST statement", float(st.mean()), "<= 0.05",
                st.mean() <= 0.05, f"{normal.sum()} windows")
        wide = np.array([bool({"IVCD", "CLBBB", "CRBBB"} & set(c)) for _, c, _ in g])[normal]
        out.add("cinc2017 N windows: wide-QRS statement", float(wide.mean()), "(no target)",
                None, f"{normal.sum()} windows")
        texts_all += [x for x, *_ in g]
        qrs_all.append(qrs["cinc2017"])

    if "mitdb" in tabs:
        t, g = tabs["mitdb"], gen["mitdb"]
        recs = np.array(t.column("record"))
        labels = t.column("labels")
        codes = [set(c) for _, c, _ in g]
        q = qrs["mitdb"]
        conduction = {r: _conduction(args.data / "mitdb" / r) for r in set(recs.tolist())}
        kind = np.array([conduction[r] for r in recs])
        keep = kind != "paced"
        has_v = np.array(["V" in x for x in labels])
        has_s = np.array(["S" in x for x in labels])
        said_v = np.array(["PVC" in c for c in codes])
        said_s = np.array(["PAC" in c for c in codes])
        for name, truth, said, tgt in (("PVC", has_v, said_v, 0.90), ("PAC", has_s, said_s, 0.60)):
            tp = (truth & said & keep).sum()
            se, ppv = _ratio(tp, (truth & keep).sum()), _ratio(tp, (said & keep).sum())
            out.add(f"mitdb {name} sensitivity (window)", se, f">= {tgt:.2f}", se >= tgt,
                    f"{(truth & keep).sum()} windows")
            out.add(f"mitdb {name} PPV (window)", ppv, f">= {tgt:.2f}", ppv >= tgt,
                    f"{(said & keep).sum()} stated")
        rhythm = []
        for rec, w in zip(recs, t.column("window")):
            starts, names = _rhythms(args.data / "mitdb" / rec)
            rhythm.append(_window_rhythm(starts, names, int(w) * 3600, (int(w) + 1) * 3600))
        rhythm = np.array(rhythm, dtype=object)
        said_af = np.array(["AFIB" in c for c in codes])
        is_af, is_n = rhythm == "(AFIB", rhythm == "(N"
        if is_af.any():
            se = float(said_af[is_af].mean())
            out.add("mitdb AFIB sensitivity ('(AFIB' windows)", se, ">= 0.85", se >= 0.85,
                    f"{is_af.sum()} windows")
        if is_n.any():
            fp = float(said_af[is_n].mean())
            out.add("mitdb AFIB on '(N' windows", fp, "<= 0.05", fp <= 0.05,
                    f"{is_n.sum()} windows")
        # The issue names 109 and 118; other MIT-BIH records (a hold-out set: 111, 207, 212,
        # 214, 231, ...) are bundle-branch-block records where their .atr beats say so.
        win = np.array(t.column("window"), dtype=np.int64)
        wkind = np.empty(len(recs), dtype=object)
        for rec in set(recs.tolist()):
            wkind[recs == rec] = _window_conduction(args.data / "mitdb" / rec, win[recs == rec])
        wkind[np.isin(recs, list(BBB))] = "bbb"
        wkind[kind == "paced"] = ""
        bbb = (wkind == "bbb") & np.isfinite(q)
        if bbb.any():
            v = float((q[bbb] >= 120).mean())
            out.add(f"mitdb {'/'.join(sorted(set(recs[bbb])))} (BBB): QRS >= 120 ms", v,
                    ">= 0.80", v >= 0.80, f"{bbb.sum()} windows")
        normal = (wkind == "normal") & np.isfinite(q)
        if normal.any():
            v = float(((q[normal] >= 60) & (q[normal] <= 110)).mean())
            out.add("mitdb normal conduction: QRS 60-110 ms", v, ">= 0.90", v >= 0.90,
                    f"{normal.sum()} windows")
        texts_all += [x for x, *_ in g]
        qrs_all.append(q)
        per_record = _qrs_by_record(recs, kind, wkind, q)
        if args.plots and per_record:
            print(f"QRS review plot: {_plot_qrs(t, recs, q, per_record, args.plots)}")

    q = np.concatenate(qrs_all)
    q = q[np.isfinite(q)]
    v = float((q < 60).mean())
    out.add("all windows: QRS < 60 ms", v, "<= 0.01", v <= 0.01, f"{len(q)} measured")
    digits = {re.sub(r"\d+", "#", x) for x in texts_all}
    out.add("text: distinct reports (digits removed) / 1000",
            1000.0 * len(digits) / len(texts_all), _before("text_distinct"), None,
            f"{len(digits)} of {len(texts_all)}")
    if not args.no_text:
        cos, cos_distinct = _neighbour_cosine(texts_all)
        out.add("text: mean cosine to 5 nearest in batch", cos, _before("text_cosine"), None,
                "batch 256")
        out.add("text: same, distinct reports of the batch", cos_distinct,
                _before("text_cosine_distinct"), None, "identical texts counted once")
    rate = n_win / t_gen
    out.add(f"cost: windows/s ({workers} workers)", rate, ">= 95", rate >= 95,
            f"{n_win} windows; {_before('windows_s')}")
    out.print()
    if per_record:
        print("\nQRS by MIT-BIH record (ms; 'in range': of the windows the QRS rows score, "
              "60-110 normal, >= 120 bbb)")
        print(f"{'record':<7} {'conduction':<10} {'windows':>7} {'p10':>5} {'median':>6} "
              f"{'p90':>5} {'in range':>8}")
        for rec, (kind, n, p10, med, p90, ok) in per_record.items():
            frac = "" if ok is None else f"{ok:8.3f}"
            print(f"{rec:<7} {kind:<10} {n:>7} {p10:5.0f} {med:6.0f} {p90:5.0f} {frac:>8}")


QRS_RANGE = {"normal": (60, 110), "bbb": (120, np.inf)}


def _qrs_by_record(recs: np.ndarray, kind: np.ndarray, wkind: np.ndarray,
                   q: np.ndarray) -> dict:
    """record -> (its conduction, windows measured, p10, median, p90 QRS, share of the
    windows the QRS rows score that are in their conduction's range, or None)."""
    out = {}
    for rec in sorted(set(recs.tolist())):
        sel = (recs == rec) & np.isfinite(q)
        if not sel.any():
            continue
        x, wk = q[sel], wkind[sel]
        scored = [(v, QRS_RANGE[k]) for v, k in zip(x, wk) if k in QRS_RANGE]
        ok = float(np.mean([lo <= v <= hi for v, (lo, hi) in scored])) if scored else None
        out[rec] = (str(kind[recs == rec][0]), int(sel.sum()),
                    *np.percentile(x, [10, 50, 90]).tolist(), ok)
    return out


def _plot_qrs(t, recs: np.ndarray, q: np.ndarray, per_record: dict, folder: Path) -> Path:
    """One panel per record: the median beat of its window of median QRS duration, every lead,
    with the QRS bounds the delineator found shaded."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ecgssl.reports.measure import median_beat
    cols = 4
    rows = -(-len(per_record) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (rec, (kind, _, _, med, _, ok)) in zip(axes.flat, per_record.items()):
        idx = np.flatnonzero((recs == rec) & np.isfinite(q))
        i = int(idx[np.argmin(np.abs(q[idx] - med))])
        mb = median_beat(t.signal[i], t.lead_mask[i], 100)
        if mb is None:
            continue
        ax.axis("on")
        ms = 1000.0 * np.arange(mb.beat.shape[1]) / mb.fs
        for lead, y in zip(mb.leads, mb.beat):
            ax.plot(ms, y, lw=1, label=lead)
        on, off = (1000.0 * s / mb.fs for s in mb.qrs)
        ax.axvspan(on, off, color="0.85", zorder=0)
        rng = "" if ok is None else f", {ok:.0%} in range"
        ax.set_title(f"{rec} ({kind}): QRS {off - on:.0f} ms here, median {med:.0f}{rng}",
                     fontsize=8)
        ax.set_xlabel("ms", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "qrs_bounds_mitdb.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _before(k):
    v = BEFORE[k]
    return "" if v is None else f"shared: was {v}"


def _neighbour_cosine(texts: list[str], batch: int = 256, k: int = 5) -> tuple[float, float]:
    """Mean cosine of each report to its k nearest others in random batches: over all rows
    (duplicates count, as in a training batch) and over the distinct reports of each batch
    (how far apart different statements are)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from ecgssl.text.encoder import TextEncoder
    rng = np.random.default_rng(0)
    order = rng.permutation(len(texts))
    uniq = sorted(set(texts))
    vec = dict(zip(uniq, TextEncoder().encode(uniq)))
    sims, distinct = [], []
    for i in range(0, len(order) - batch + 1, batch):
        chosen = [texts[j] for j in order[i:i + batch]]
        for group, out in ((chosen, sims), (sorted(set(chosen)), distinct)):
            if len(group) <= k:
                continue
            e = np.stack([vec[x] for x in group])
            c = e @ e.T
            np.fill_diagonal(c, -np.inf)
            out.append(np.sort(c, axis=1)[:, -k:].mean())
    return float(np.mean(sims)), float(np.mean(distinct))


if __name__ == "__main__":
    main()

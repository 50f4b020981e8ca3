"""What the CLI prints: rich tables and one-line summaries of stage results (no logic)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ecgssl.data.table import TableManifest
from ecgssl.storage import redact

console = Console(stderr=True)


def say(text: str) -> None:
    console.print(text, highlight=False, soft_wrap=True)


def warn(text: str) -> None:
    console.print(f"[bold yellow]warning:[/] {text}", highlight=False, soft_wrap=True)


def error(text: str) -> None:
    console.print(f"[bold red]error:[/] {text}", highlight=False, soft_wrap=True)


def ingest_summary(m: TableManifest, output: str) -> None:
    if m.up_to_date:
        say(f"[green]up to date:[/] {output} ({m.rows} rows from {m.records_ok} records; same "
            "input and options)")
        return
    if not m.complete:
        say(f"[green]slice written:[/] {m.rows} rows from {m.records_ok} of its "
            f"{m.records_total} records in {output}; the manifest follows once every slice "
            "is written")
        return
    t = Table(title=f"ingest {m.source} -> {output}", show_header=False)
    t.add_row("rows (windows)", str(m.rows))
    t.add_row("records ok", f"{m.records_ok} / {m.records_total}")
    kinds = ", ".join(f"{k} {v}" for k, v in m.quarantined_by_kind.items())
    t.add_row("quarantined", f"{len(m.records_quarantined)}" + (f" ({kinds})" if kinds else ""))
    t.add_row("excluded by rule", str(len(m.records_excluded)))
    meta = m.raw.get("metadata")
    if meta and "records_without_labels" in meta:          # the wfdb source's labels CSV
        t.add_row("metadata", f"{meta['rows']} rows; {meta['records_without_labels']} records "
                  f"without labels; {meta['rows_without_record']} rows without a record")
    elif meta and "ptbxl_records_by_fold" in meta:          # cinc2020's PTB-XL database
        t.add_row("PTB-XL's ECGs (HR)", f"{meta['ptbxl_records_by_fold']} split by PTB-XL's "
                  f"folds; {meta['ptbxl_records_hash_split']} by a record hash")
    t.add_row("rows per split", ", ".join(f"{k} {v}" for k, v in m.rows_per_split.items()))
    t.add_row("fs / window", f"{m.fs} Hz / {m.window_s:g} s")
    rate = m.records_total / m.elapsed_s if m.elapsed_s else float("nan")
    t.add_row("time", f"{m.elapsed_s:.1f} s ({rate:.0f} records/s)")
    console.print(t)
    for q in m.records_quarantined[:3]:
        say(f"  [yellow]quarantined[/] {q['reason']}")
    if len(m.records_quarantined) > 3:
        say(f"  ... all {len(m.records_quarantined)} reasons are in "
            f"{output.rstrip('/')}/_manifest.json")


def reports_summary(m: TableManifest, output: str) -> None:
    r = m.reports
    if m.up_to_date:
        say(f"[green]up to date:[/] {output} ({m.rows} rows, mode {r.mode})")
        return
    cov = r.translation_coverage
    say(f"reports ({r.mode}) -> {output}: {m.rows} rows; with device text "
        f"{r.counts['device']}, generated {r.counts['generated']}, empty {r.counts['empty']}; "
        f"translation coverage {'n/a' if cov is None else f'{cov:.1%}'} ({r.elapsed_s:.1f} s)")
    if r.untranslated_top:
        say("most frequent untranslated tokens: " + ", ".join(
            f"{t} ({n})" for t, n in r.untranslated_top[:10]))


def coverage_lines(coverage) -> None:
    top = coverage.untranslated.most_common(20)
    if top:
        say("untranslated: " + ", ".join(f"{t} ({n})" for t, n in top))


def embed_text_summary(s, output: str) -> None:
    say(f"embed-text -> {output}: {s.texts} distinct reports of {s.rows} rows, {s.computed} "
        f"computed, {s.cached} from cache; model {s.model} (dim {s.dim}), {s.elapsed_s:.1f} s")


def pretrain_summary(r, method: str, output: str) -> None:
    speed = (f"{r.samples_per_s:.0f} samples/s" if r.samples_per_s is not None
             else f"nothing left to run (resumed at step {r.resumed_at})")
    say(f"pretrain {method} -> {output}: loss {r.loss_first:.4f} -> {r.loss_final:.4f} over "
        f"{r.steps} steps, {speed}")


def evaluate_table(r, output: str) -> None:
    t = Table(title=f"evaluate {r.task} -> {output}/metrics.json")
    for col in ("key", "macro AUROC [95% CI]", "macro F1"):
        t.add_column(col)
    for key, h in r.headline().items():
        t.add_row(key, f"{h['macro_auroc']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}]",
                  f"{h['macro_f1']:.3f}")
    console.print(t)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def promote_decision(d, name: str, metric: str) -> None:
    t = Table(title=f"promote {name} on {metric}")
    for col in ("", "version", metric):
        t.add_column(col)
    t.add_row("challenger", str(d.challenger), _fmt(d.challenger_value))
    t.add_row("champion", str(d.champion or "-"), _fmt(d.champion_value))
    console.print(t)
    verdict = "[green]promoted[/]" if d.promoted else "[yellow]not promoted[/]"
    say(f"{verdict}: {escape(d.reason)}")


def key_metrics(rows: list[tuple[str, str, float]], outputs, tracking_uri: str,
                facts: dict | None = None) -> None:
    from ecgssl.pipeline.summary import ui_url
    facts = facts or {}
    t = Table(title=f"ecgssl: key metrics in {outputs}")
    for col in ("file", "metric", "value"):
        t.add_column(col)
    for f, k, v in rows:
        t.add_row(f, k, f"{v:.4f}")
    console.print(t)
    reg, promo, run = facts.get("registration"), facts.get("promotion"), facts.get("run")
    if reg:
        aliases = ", ".join(f"@{a}" for a in facts.get("aliases", [])) or "no alias"
        say(f"registered: {reg['model_uri']} ({aliases})")
    if promo:
        verdict = "promoted to @champion" if promo["promoted"] else "not promoted"
        say(f"promotion: v{promo['challenger']} {verdict}: {escape(promo['reason'])}")
    if run:
        say(f"MLflow run: {run['run_name']} ({run['status']}) "
            f"{redact(ui_url(run, tracking_uri))}")
    say(f"plots: {outputs}/eval/<task>/*.png; ROC curves per revision in metrics/roc/ "
        "(`dvc plots show`, `dvc plots diff`)")
    say(f"next: `make ui` (MLflow UI on {redact(tracking_uri)}, http://127.0.0.1:5000; "
        "`make ui PORT=5001` for another port), `dvc exp show --only-changed --drop "
        "'outputs/.*|data/.*|src/.*'`, `dvc metrics diff`, `dvc plots diff`")

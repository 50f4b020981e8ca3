"""Model cards: the descriptions a registered model and each of its versions carry in MLflow.

A version's card says what it was trained on, how, how well (headline metrics with their 95 %
CIs, per task), what it is for and what it is not; `promote` appends its decision.
"""

from __future__ import annotations

MODEL_DESCRIPTION = {
    "encoder": (
        "ECG foundation encoder pretrained without labels by ecgssl (METS report-ECG contrastive "
        "and/or ST self-supervision) on 12-lead windows. Input: float32 [batch, 12, T] in mV at "
        "the pretraining rate; output: embeddings, or zero-shot class scores given free-text "
        "labels (predict params). Each version's description is its model card; @champion is the "
        "version that passed the promotion gate (paired bootstrap on the same test records)."),
    "classifier": (
        "ECG classifier from ecgssl: a pretrained encoder with a linear probe or fine-tuned head "
        "for one downstream task. Input: float32 [batch, 12, T] in mV; output: class "
        "probabilities. Each version's description is its model card; @champion passed the "
        "promotion gate."),
}


def headline_rows(metrics: dict) -> list[str]:
    """`mode/task: AUROC x [lo, hi], F1 y` lines from flat evaluation metrics."""
    rows = []
    for k in sorted(metrics):
        if k.count("/") == 2 and k.endswith("/macro_auroc"):
            base = k[:-len("/macro_auroc")]
            lo, hi = metrics.get(k + "_ci_low"), metrics.get(k + "_ci_high")
            f1 = metrics.get(base + "/macro_f1")
            rows.append(f"| {base} | {metrics[k]:.3f} [{lo:.3f}, {hi:.3f}] | "
                        + (f"{f1:.3f} |" if f1 is not None else "- |"))
    return rows


def version_card(kind: str, config: dict, metrics: dict, test_data: dict,
                 lineage: dict) -> str:
    method = config.get("method", "?")
    rows = headline_rows(metrics)
    records = {k.split("/")[1]: int(v) for k, v in metrics.items()
               if k.startswith("data/") and k.endswith("/test_records")}
    lines = [
        f"**ecgssl {kind}**: {config.get('encoder', '?')} encoder, pretrained with {method}"
        + (f" ({config.get('mode')} head)" if kind == "classifier" and config.get("mode")
           else "") + ".",
        "",
        f"**Data**: pretraining table fingerprint {config.get('data_fingerprint')}, "
        f"{config.get('train_rows', '?')} train windows of {config.get('n_samples', '?')} samples "
        f"at {config.get('fs', '?')} Hz; text model {config.get('text_model_name') or '-'}. "
        "Test sets (fingerprints): " + (", ".join(
            f"{t} {fp} ({records.get(t, '?')} records)" for t, fp in sorted(test_data.items()))
            or "none") + ".",
        "",
        f"**Method**: {method}, {config.get('max_steps') or config.get('epochs')} "
        f"{'steps' if config.get('max_steps') else 'epochs'}, batch {config.get('batch_size')}, "
        f"lr {config.get('lr')}, seed {config.get('seed')}. Pretrain run: "
        f"{lineage.get('pretrain.run_id', 'not tracked')}.",
        "",
        "**Key metrics** (test split, 95 % bootstrap CI over patients):",
        "",
        "| mode/task | macro AUROC [95 % CI] | macro F1 |",
        "|---|---|---|",
        *(rows or ["| - | no evaluation registered | - |"]),
        "",
        "**Intended use**: research on ECG representation learning; zero-shot screening and "
        "label-efficient classifiers on 12-lead ECG windows like the pretraining data.",
        "",
        "**Limits**: not a medical device; not validated for clinical decisions. Trained and "
        "tested on small public research samples; CIs are wide and performance on other "
        "devices, sampling rates, lead sets or populations is unknown. Compare versions only "
        "on the same test data (the gate does).",
    ]
    return "\n".join(lines)


def decision_note(d) -> str:
    """The promotion decision, appended to a version's card."""
    verdict = "promoted to @champion" if d.promoted else "not promoted"
    return (f"\n\n**Promotion** ({d.metric}): {verdict} against "
            f"{'v' + d.champion if d.champion else 'no champion'}: {d.reason}.")

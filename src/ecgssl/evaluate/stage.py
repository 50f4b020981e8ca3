"""The `evaluate` stage: zero-shot, linear probe and fine-tuning of a pretrained encoder.

    ecgssl evaluate --encoder outputs/pretrain --data outputs/tables/cinc2017 \\
        --task cinc2017-af --mode zeroshot --mode probe --output outputs/eval/cinc2017-af

Writes DIR/metrics.json with flat keys `<mode>/<task>/<metric>` (and
`<mode>/<task>/f<percent>/<metric>` per label fraction; the randomly initialised twin under
`<mode>-random/...`), and PNG plots. Thresholds and early stopping use the val split only; the
test split is scored once per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ecgssl.config import EVAL_MODES, EvaluateConfig
from ecgssl.errors import EcgsslError
from ecgssl.evaluate import plots
from ecgssl.evaluate.metrics import choose_thresholds, evaluate_scores, predictions
from ecgssl.evaluate.supervised import features, fit, label_subsets, save_classifier
from ecgssl.evaluate.tasks import TaskData, load_task
from ecgssl.evaluate.zeroshot import (
    class_embeddings,
    load_prompts,
    text_encoder_for,
    zero_shot_scores,
)
from ecgssl.models.pretrain import load_pretrained
from ecgssl.storage import read_json, stable_hash, write_json
from ecgssl.text.cache import EmbeddingCache
from ecgssl.tracking import OFF, RunContext, start_run

MODES = EVAL_MODES
HEADLINE = ("macro_auroc", "macro_f1")


@dataclass(frozen=True)
class EvalResult:
    task: str
    output: str
    test_fingerprint: str
    metrics: dict[str, float] = field(repr=False)   # everything in metrics.json

    def headline(self) -> dict[str, dict[str, float]]:
        """{`<mode>/<task>`: {macro_auroc, its CI, macro_f1}} at the largest label fraction."""
        return {k[:-len("/macro_auroc")]: {
                    "macro_auroc": self.metrics[k],
                    "ci_low": self.metrics[k + "_ci_low"], "ci_high": self.metrics[k + "_ci_high"],
                    "macro_f1": self.metrics[k[:-len("macro_auroc")] + "macro_f1"]}
                for k in sorted(self.metrics) if is_headline(k) and k.endswith("/macro_auroc")}


def is_headline(key: str) -> bool:
    """`<mode>/<task>/macro_auroc|macro_f1`: the numbers people compare runs by."""
    return key.endswith(tuple(f"/{h}" for h in HEADLINE)) and key.count("/") == 2


def _score_split(task: TaskData, scores_of, cfg) -> tuple[dict, np.ndarray, np.ndarray]:
    val, test = task.part("val"), task.part("test")
    s_val = scores_of(val) if len(val) else None
    thresholds = None
    if task.multilabel:
        thresholds = choose_thresholds(task.y[val], s_val) if s_val is not None and len(val) \
            else np.full(len(task.classes), 0.5)
    s_test = scores_of(test)                       # the one look at the test split
    m = evaluate_scores(task.y[test], s_test, task.multilabel, thresholds, task.group[test],
                        task.classes, n_boot=cfg.bootstrap, seed=cfg.seed)
    return m, s_test, thresholds


def run_evaluate(encoder_dir: str | Path, table: str | Path, task_name: str, modes: list[str],
                 output: str | Path, cfg: EvaluateConfig, fractions: list[float] | None = None,
                 prompt_overrides: dict[str, str] | None = None, progress: bool = True,
                 ctx: RunContext = OFF) -> EvalResult:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise EcgsslError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    task = load_task(task_name, table)
    model, pcfg = load_pretrained(encoder_dir)
    if task.x.shape[-1] != pcfg["n_samples"]:
        raise EcgsslError(f"{table} has windows of {task.x.shape[-1]} samples, the encoder was "
                          f"pretrained on {pcfg['n_samples']}; ingest at the same fs/window")
    fractions = sorted(fractions or cfg.label_fractions)
    metrics, pngs = {}, []
    test = task.part("test")
    fingerprint = test_fingerprint(task)
    with start_run(ctx, f"evaluate-{task_name}",
                   {"stage": "evaluate", "task": task_name, "encoder": str(encoder_dir)}) as run:
        if "zeroshot" in modes:
            prompts = load_prompts(task_name, table)
            for cls, text in (prompt_overrides or {}).items():
                prompts[cls] = [text]
            enc = text_encoder_for(pcfg)
            emb = class_embeddings(model, prompts, task.classes, enc, EmbeddingCache(cfg.cache))
            m, s_test, thr = _score_split(
                task, lambda idx: zero_shot_scores(model, task.x[idx], task.mask[idx], emb,
                                                   task.multilabel), cfg)
            metrics.update({f"zeroshot/{task_name}/{k}": v for k, v in m.items()})
            pngs += _plots(out, "zeroshot", task, s_test, thr)
        for mode in [m for m in modes if m != "zeroshot"]:
            subsets = label_subsets(task.group[task.part("train")], fractions, cfg.seed)
            curves = {"pretrained": [], "random init": []}
            nets = {False: model, True: load_pretrained(encoder_dir, random_init=True)[0]}
            feats = {t: features(n, task) for t, n in nets.items()} if mode == "probe" else {}
            jobs = [(f, twin) for f in fractions for twin in (False, True)]
            for f, twin in tqdm(jobs, desc=f"{mode} {task_name}", disable=not progress):
                train = task.part("train")[subsets[f]]
                predict = fit(nets[twin], task, train, task.part("val"), mode, cfg,
                              feats.get(twin))
                m, s_test, thr = _score_split(task, predict, cfg)
                prefix = f"{mode}{'-random' if twin else ''}/{task_name}"
                metrics.update({f"{prefix}/f{f:g}/{k}": v for k, v in m.items()})
                metrics[f"{prefix}/f{f:g}/train_rows"] = int(len(train))
                if f == fractions[-1]:
                    metrics.update({f"{prefix}/{k}": v for k, v in m.items()})
                    if not twin:
                        pngs += _plots(out, mode, task, s_test, thr)
                        save_classifier(out / f"classifier-{mode}", encoder_dir, predict, task,
                                        {"mode": mode, "label_fraction": f,
                                         "test_fingerprint": fingerprint})
                curves["random init" if twin else "pretrained"].append(
                    (f, m["macro_auroc"], m["macro_auroc_ci_low"], m["macro_auroc_ci_high"]))
            pngs.append(plots.label_efficiency_plot(
                out / f"label_efficiency_{mode}_{task_name}.png", curves, "macro AUROC",
                f"{mode}: {task_name}"))
        metrics[f"data/{task_name}/test_rows"] = int(len(test))
        old = read_json(out / "metrics.json") if (out / "metrics.json").is_file() else {}
        write_json(out / "metrics.json", {**old, **metrics})
        # Which test data these numbers are for: promotion only compares equal fingerprints.
        write_json(out / "test_data.json", {task_name: fingerprint})
        run.set_tags({f"test_data.{task_name}": fingerprint})
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        for p in pngs:
            run.log_artifact(p, "plots")
    return EvalResult(task_name, str(out), fingerprint, metrics)


def test_fingerprint(task: TaskData) -> str:
    """Identity of the test rows: the same ids and labels give the same fingerprint."""
    test = task.part("test")
    return stable_hash({"task": task.name, "ids": sorted(task.ids[test].tolist()),
                        "classes": task.classes, "y": task.y[test].tolist()})[:16]


def _plots(out: Path, mode: str, task: TaskData, s_test, thresholds) -> list[Path]:
    y = task.y[task.part("test")]
    made = [plots.roc_plot(out / f"roc_{mode}_{task.name}.png", y, s_test, task.classes,
                           task.multilabel, f"{mode}: {task.name}")]
    if not task.multilabel:
        made.append(plots.confusion_plot(out / f"confusion_{mode}_{task.name}.png", y,
                                         predictions(s_test, False, thresholds), task.classes,
                                         f"{mode}: {task.name}"))
    return made

"""The `evaluate` stage: zero-shot, linear probe and fine-tuning of a pretrained encoder.

    ecgssl evaluate --encoder outputs/pretrain --data outputs/tables/cinc2017 \\
        --task cinc2017-af --mode zeroshot --mode probe --output outputs/eval/cinc2017-af

Writes DIR/metrics.json with flat keys `<mode>/<task>/<metric>` (and
`<mode>/<task>/f<percent>/<metric>` per label fraction; the randomly initialised twin under
`<mode>-random/...`), and PNG plots. Scoring follows the labels: where they belong to a record
(Challenge 2017/2020, PTB-XL) a record's score is the mean of its windows' and the keys are
record-level, with window-level copies under `<mode>/<task>/window/...`; MIT-BIH beat labels are
scored per window. Decisions (thresholds, class offsets) and every hyperparameter are chosen on
validation rows only; the test split is scored once per model.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ecgssl.config import EVAL_MODES, EvaluateConfig
from ecgssl.data.preprocess import for_model
from ecgssl.data.table import read_manifest
from ecgssl.errors import EcgsslError
from ecgssl.evaluate import plots
from ecgssl.evaluate.metrics import (
    Scoring,
    choose_thresholds,
    eligible_classes,
    evaluate_scores,
    mean_by,
    predictions,
)
from ecgssl.evaluate.scores import FILE as SCORES_FILE
from ecgssl.evaluate.scores import ModeScores, write_scores
from ecgssl.evaluate.supervised import features_of, fit, label_subsets, save_classifier
from ecgssl.evaluate.tasks import TaskData, add_user_tasks, get_task, load_task
from ecgssl.evaluate.zeroshot import (
    class_embeddings,
    load_prompts,
    text_encoder_for,
    zero_shot_scores,
)
from ecgssl.models.pretrain import load_pretrained
from ecgssl.progress import bar as progress_bar
from ecgssl.storage import (
    ENCODER_HASH,
    encoder_hash,
    read_json,
    stable_hash,
    staged_folder,
    write_json,
)
from ecgssl.text.cache import EmbeddingCache
from ecgssl.tracking import OFF, RunContext, flatten, lineage, start_run

MODES = EVAL_MODES
TABLES = "tables"          # test_data.json: {"data": fp, "test_data": fp} of the tables read
# what evaluate writes
OWNED = ("metrics.json", "test_data.json", "scores.parquet", "classifier-*", "*.png")
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


class Levels:
    """Window rows -> the items a task is scored on: records (mean of their windows' scores)
    for record-level labels, the windows themselves for window-level labels."""

    def __init__(self, task: TaskData, record_level: bool):
        self.task, self.record_level = task, record_level

    def __call__(self, idx: np.ndarray, scores: np.ndarray):
        """(y, scores, bootstrap groups) of the items behind rows `idx`."""
        t = self.task
        if not self.record_level:
            return t.y[idx], scores, t.group[idx]
        first, means, _ = mean_by(t.record[idx], scores)
        return t.y[idx][first], means, t.group[idx][first]

    def items(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(item ids, groups) behind rows `idx`, in the order `__call__` gives them: record
        names for record-level labels, ecg_ids of windows otherwise."""
        t = self.task
        if not self.record_level:
            return t.ids[idx], t.group[idx]
        _, first = np.unique(t.record[idx], return_index=True)
        return t.record[idx][first], t.group[idx][first]


def score_model(task: TaskData, scores_of, cfg: EvaluateConfig, decide_on: np.ndarray,
                s_val: np.ndarray | None = None) -> tuple[dict, tuple]:
    """Metrics of one model: decisions from its scores on held-out rows `decide_on` (given as
    `s_val`, or `scores_of(decide_on)`), then `scores_of(test)`, scored once.

    Returns ({key suffix: value}, (y, scores, decisions) of the headline level for plots)."""
    spec = get_task(task.name)
    test = task.part("test")
    s_val = scores_of(decide_on) if s_val is None else s_val
    s_test = scores_of(test)                       # the one look at the test split
    levels = [("", Levels(task, spec.level == "record"))]
    if spec.level == "record":
        levels.append(("window/", Levels(task, False)))
    f1_over = [task.classes.index(c) for c in spec.f1_over or () if c in task.classes] or None
    out, plot = {}, None
    for prefix, level in levels:
        yv, sv, _ = level(decide_on, s_val)
        yt, st, groups = level(test, s_test)
        decisions = choose_thresholds(yv, sv, task.multilabel, f1_over)
        scoring = Scoring(task.classes, task.multilabel,
                          eligible_classes(yt, len(task.classes), task.multilabel,
                                           cfg.min_class_count),
                          f1_over, spec.f1_key if f1_over else None)
        m = evaluate_scores(yt, st, scoring, decisions, groups, n_boot=cfg.bootstrap,
                            seed=cfg.seed)
        out.update({prefix + k: v for k, v in m.items()})
        plot = plot or (yt, st, decisions)
    return out, plot


def run_evaluate(encoder_dir: str | Path, table: str | Path, task_name: str, modes: list[str],
                 output: str | Path, cfg: EvaluateConfig, fractions: list[float] | None = None,
                 prompt_overrides: dict[str, str] | None = None, progress: bool = True,
                 ctx: RunContext = OFF, test_table: str | Path | None = None) -> EvalResult:
    """The whole output folder is staged and swapped in at the end: a killed evaluate leaves
    the previous one intact, and earlier results carry over only from the same encoder (by
    hash), so one folder never pairs metrics or classifiers of two encoders.

    `test_table`: test rows from this table (all of its rows of the task's dataset), train
    and val from `table`; test_data.json records both tables' fingerprints."""
    add_user_tasks(cfg.tasks)
    encoder_sha = encoder_hash(encoder_dir)
    tables = table_fingerprints(table, test_table)

    def same(old: Path) -> bool:
        # the same encoder on the same tables: other modes' results of another --data or
        # --test-data would sit beside a test_data.json naming this run's test rows
        td = read_json(old / "test_data.json") if (old / "test_data.json").is_file() else {}
        return encoder_sha is not None and td.get(ENCODER_HASH) == encoder_sha and \
            td.get(TABLES) == tables
    with staged_folder(output, OWNED, ("metrics.json", "test_data.json", "scores.parquet"),
                       keep=same) as stage:
        r = _evaluate(encoder_dir, table, task_name, modes, stage, cfg, fractions,
                      prompt_overrides, progress, ctx, encoder_sha, test_table)
    return replace(r, output=str(output))


def _evaluate(encoder_dir, table, task_name, modes, output, cfg, fractions, prompt_overrides,
              progress, ctx, encoder_sha, test_table=None) -> EvalResult:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise EcgsslError(f"unknown mode(s) {bad}; choose from {', '.join(MODES)}")
    task = load_task(task_name, table, test_table=test_table,
                     cache_bytes=int(cfg.row_cache_mb * 2**20))
    unknown = [c for c in prompt_overrides or {} if c not in task.classes]
    if unknown:         # a mistyped class was silently not prompted
        raise EcgsslError(f"--prompt names no class of task {task_name}: "
                          f"{', '.join(map(repr, unknown))}; its classes are "
                          f"{', '.join(task.classes)}")
    model, pcfg = load_pretrained(encoder_dir)
    if "zeroshot" in modes and model.mets is None:
        raise EcgsslError(f"zero-shot needs a METS-pretrained encoder (method mets or mets+st); "
                          f"{encoder_dir} was pretrained with method {pcfg.get('method')!r}")
    if task.x.shape[-1] != pcfg["n_samples"]:
        raise EcgsslError(f"{table} has windows of {task.x.shape[-1]} samples, the encoder was "
                          f"pretrained on {pcfg['n_samples']}; ingest at the same fs/window")
    # preprocessed per row group as the rows are read, never the whole table at once
    task.x = task.x.with_transform(for_model(pcfg))
    fractions = sorted(fractions or cfg.label_fractions)
    metrics, pngs = {}, []
    test, train = task.part("test"), task.part("train")
    # Zero-shot trains nothing: its decisions come from val, or from train rows where a table
    # keeps no val split (train rows are never test rows).
    decide_on = task.part("val") if len(task.part("val")) else train
    fingerprint = test_fingerprint(task)
    tables = table_fingerprints(table, test_table)
    items = Levels(task, get_task(task_name).level == "record").items(test)
    scored: dict[str, ModeScores] = {}      # per-item test scores of the headline models
    lineage_tags, pretrain_params = lineage(ctx, encoder_sha, pcfg)
    with start_run(ctx, f"evaluate-{task_name}",
                   {"stage": "evaluate", "task": task_name, "encoder": str(encoder_dir),
                    **lineage_tags}) as run:
        run.log_params({**flatten({"evaluate": cfg.model_dump()}), "task": task_name,
                        "modes": ",".join(modes), "label_fractions": fractions,
                        "encoder": str(encoder_dir), **pretrain_params})
        data_fp = read_manifest(table).get("input_fingerprint")
        run.set_tags({"data.fingerprint": str(data_fp)})
        run.log_dataset(table, "evaluation", digest=data_fp)
        if test_table:
            run.log_dataset(test_table, "testing", digest=tables["test_data"])
        if "zeroshot" in modes:
            prompts = load_prompts(task_name, table, task.classes)
            for cls, text in (prompt_overrides or {}).items():
                prompts[cls] = [text]
            emb = class_embeddings(model, prompts, task.classes, text_encoder_for(pcfg),
                                   EmbeddingCache(cfg.cache))
            m, plot = score_model(task, lambda idx: zero_shot_scores(
                model, task.x.view(idx), task.mask[idx], emb, task.multilabel), cfg, decide_on)
            metrics.update({f"zeroshot/{task_name}/{k}": v for k, v in m.items()})
            scored["zeroshot"] = ModeScores(*items, *plot)
            pngs += _plots(out, "zeroshot", task, *plot)
        for mode in [m for m in modes if m != "zeroshot"]:
            subsets = label_subsets(task.group[train], fractions, cfg.seed)
            curves = {"pretrained": [], "random init": []}
            nets = {False: model, True: load_pretrained(encoder_dir, random_init=True)[0]}
            # both arms' frozen features in one pass over the rows (each batch read once)
            feats = dict(zip(nets, features_of(list(nets.values()), task))) \
                if mode == "probe" else {}
            jobs = [(f, twin) for f in fractions for twin in (False, True)]
            for f, twin in progress_bar(jobs, desc=f"{mode} {task_name}", enabled=progress):
                rows = train[subsets[f]]
                fitted = fit(nets[twin], task, rows, mode, cfg, feats.get(twin))
                m, plot = score_model(task, fitted, cfg, fitted.val_idx, fitted.val_scores)
                prefix = f"{mode}{'-random' if twin else ''}/{task_name}"
                metrics.update({f"{prefix}/f{f:g}/{k}": v for k, v in m.items()})
                metrics[f"{prefix}/f{f:g}/train_rows"] = int(len(rows))
                if f == fractions[-1]:
                    metrics.update({f"{prefix}/{k}": v for k, v in m.items()})
                    if not twin:
                        scored[mode] = ModeScores(*items, *plot)
                        pngs += _plots(out, mode, task, *plot)
                        save_classifier(out / f"classifier-{mode}", encoder_dir, fitted, task,
                                        {"mode": mode, "label_fraction": f,
                                         "test_fingerprint": fingerprint,
                                         ENCODER_HASH: encoder_sha})
                curves["random init" if twin else "pretrained"].append(
                    (f, m["macro_auroc"], m["macro_auroc_ci_low"], m["macro_auroc_ci_high"]))
            pngs.append(plots.label_efficiency_plot(
                out / f"label_efficiency_{mode}_{task_name}.png", curves, "macro AUROC",
                f"{mode}: {task_name}"))
        metrics[f"data/{task_name}/test_rows"] = int(len(test))
        metrics[f"data/{task_name}/test_records"] = int(len(set(task.record[test])))
        old = read_json(out / "metrics.json") if (out / "metrics.json").is_file() else {}
        old_td = read_json(out / "test_data.json") if (out / "test_data.json").is_file() else {}
        if old_td.get(task_name, fingerprint) != fingerprint:
            # this task's test rows changed (e.g. a user task's classes): its earlier
            # results measured other rows
            old = {k: v for k, v in old.items() if k.split("/")[1:2] != [task_name]}
            for d in out.glob("classifier-*"):
                if d.name.removeprefix("classifier-") not in modes and \
                        (d / "classifier.json").is_file() and \
                        read_json(d / "classifier.json").get("task") == task_name:
                    shutil.rmtree(d)
        write_json(out / "metrics.json", {**old, **metrics})
        # Which test data these numbers are for: promotion only compares equal fingerprints.
        # Other tasks' entries stay with their metrics (kept only for the same encoder/tables).
        write_json(out / "test_data.json", {**old_td, task_name: fingerprint,
                                            ENCODER_HASH: encoder_sha, TABLES: tables})
        if scored:       # what `promote` pairs challenger and champion on
            y_test = next(iter(scored.values())).y
            write_scores(out / SCORES_FILE, task_name, task.classes, task.multilabel,
                         eligible_classes(np.asarray(y_test), len(task.classes),
                                          task.multilabel, cfg.min_class_count),
                         fingerprint, scored)
        run.set_tags({f"test_data.{task_name}": fingerprint,
                      **{f"table.{k}": v for k, v in tables.items()}})
        run.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        # Whether the rows fit evaluate.row_cache_mb or were re-read per pass (a big table):
        # in the run, not in metrics.json, which holds what the model scored.
        run.log_metrics({f"io/{k}": v for k, v in asdict(task.x.stats).items()})
        for p in pngs:
            run.log_artifact(p, "plots")
    return EvalResult(task_name, str(out), fingerprint, metrics)


def table_fingerprints(table: str | Path, test_table: str | Path | None = None) -> dict:
    """test_data.json's `tables`: the fingerprints of the tables an evaluation read."""
    return {"data": table_fingerprint(table),
            **({"test_data": table_fingerprint(test_table)} if test_table else {})}


def table_fingerprint(table: str | Path) -> str:
    """A table's identity: its shards' hashes (so a relabelled copy differs), else its input's."""
    m = read_manifest(table)
    info = m.get("shard_info")
    return stable_hash(info)[:16] if info else str(m.get("input_fingerprint"))


def test_fingerprint(task: TaskData) -> str:
    """Identity of the test rows: the same ids and labels give the same fingerprint."""
    test = task.part("test")
    return stable_hash({"task": task.name, "ids": sorted(task.ids[test].tolist()),
                        "classes": task.classes, "y": task.y[test].tolist()})[:16]


def _plots(out: Path, mode: str, task: TaskData, y, scores, decisions) -> list[Path]:
    made = [plots.roc_plot(out / f"roc_{mode}_{task.name}.png", y, scores, task.classes,
                           task.multilabel, f"{mode}: {task.name}")]
    if not task.multilabel:
        made.append(plots.confusion_plot(out / f"confusion_{mode}_{task.name}.png", y,
                                         predictions(scores, False, decisions), task.classes,
                                         f"{mode}: {task.name}"))
    return made

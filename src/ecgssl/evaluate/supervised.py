"""Linear probe (frozen encoder) and fine-tuning (whole network) at label fractions.

Label fractions are drawn by patient (or record), seeded, and nested: the 1 % patients are
inside the 10 %, which are inside the 100 %. Every choice (the probe's C and class weights, the
fine-tuning learning rate, early stopping) is made on validation rows only: the table's val
split, or, where a table has none (MIT-BIH keeps all of DS1 for training), patient-level folds
of the training rows.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgssl.data.signal import LEADS
from ecgssl.evaluate.metrics import per_class_auroc
from ecgssl.evaluate.tasks import TaskData
from ecgssl.models.encoders import pooled

N_FOLDS = 4


def label_subsets(groups: np.ndarray, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """{fraction: row positions} for the given rows' groups; nested and patient-disjoint."""
    uniq = np.array(sorted(set(groups.astype(str))))
    order = uniq[np.random.default_rng(seed).permutation(len(uniq))]
    out = {}
    for f in sorted(fractions):
        chosen = set(order[:max(1, math.ceil(len(uniq) * f / 100))])
        out[f] = np.flatnonzero([g in chosen for g in groups.astype(str)])
    return out


def validation_folds(task: TaskData, train: np.ndarray, seed: int = 0
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, val rows) pairs: the table's val split when it has one; else up to N_FOLDS
    patient-level folds of `train` (each patient in one fold's val); with one patient, itself."""
    val = task.part("val")
    if len(val):
        return [(train, val)]
    groups = task.group[train].astype(str)
    uniq = np.array(sorted(set(groups)))
    if len(uniq) < 2:
        return [(train, train)]
    order = uniq[np.random.default_rng(seed).permutation(len(uniq))]
    k = min(N_FOLDS, len(uniq))
    fold_of = {g: i % k for i, g in enumerate(order)}
    f = np.array([fold_of[g] for g in groups])
    return [(train[f != i], train[f == i]) for i in range(k)]


@torch.no_grad()
def features(model, task: TaskData, batch: int = 256) -> torch.Tensor:
    """Frozen-encoder features (mean and max over time) of every row, once per model: the max
    keeps a single ectopic beat that the mean over ~30 positions dilutes."""
    return features_of([model], task, batch)[0]


@torch.no_grad()
def features_of(models: list, task: TaskData, batch: int = 256) -> list[torch.Tensor]:
    """`features` of several models in one pass over the rows, in order, batch by batch: each
    batch is read (and preprocessed) once, and only the features grow with the table."""
    encs = [m.encoder.eval() for m in models]
    out: list[list[torch.Tensor]] = [[] for _ in encs]
    for i in range(0, len(task.x), batch):
        x, mask = torch.from_numpy(task.x[i:i + batch]), torch.from_numpy(task.mask[i:i + batch])
        for o, enc in zip(out, encs):
            o.append(pooled(enc, x, mask))
    return [torch.cat(o) for o in out]


def _val_auroc(task: TaskData, idx: np.ndarray, scores: np.ndarray) -> float:
    a = per_class_auroc(task.y[idx], scores, task.multilabel)
    return float(np.nanmean(a)) if np.isfinite(a).any() else -float("inf")


@dataclass
class Fitted:
    """A trained classifier: rows -> scores, and what `save_classifier` writes."""
    encoder: nn.Module
    head: nn.Linear                     # over pooled (mean + max) features
    choice: dict                        # the hyperparameters val chose
    feats: torch.Tensor | None = None   # frozen features (probe), else computed per batch
    task: TaskData | None = None
    val_idx: np.ndarray | None = None    # held-out rows and their scores, for decisions:
    val_scores: np.ndarray | None = None  # never rows this classifier was fitted on

    @torch.no_grad()
    def logits(self, idx: np.ndarray) -> torch.Tensor:
        out = []
        for i in range(0, len(idx), 256):
            b = idx[i:i + 256]
            f = self.feats[b] if self.feats is not None else pooled(
                self.encoder.eval(), torch.from_numpy(self.task.x[b]),
                torch.from_numpy(self.task.mask[b]))
            out.append(self.head(f))
        return torch.cat(out)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        return _scores(self.logits(idx), self.task.multilabel).numpy()


def _scores(logits, multilabel):
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


# --- linear probe: standardised features, L2 logistic regression (L-BFGS) ------------------

def _logreg(x, y, multilabel: bool, c: float, balanced: bool, n_classes: int, seed: int):
    """(W [C, D], b [C]) of L2 logistic regression on standardised features; one-vs-rest for
    multi-label (a class with one label value in `y` gets its prior as a constant)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    # C is picked on val among several: one C that stops at max_iter is not worth a screen of
    # warnings (its val score already says how well it fits)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    weight = "balanced" if balanced else None
    d = x.shape[1]
    if not multilabel:
        present = np.unique(y)
        w, b = np.zeros((n_classes, d)), np.full(n_classes, -30.0)
        if len(present) == 1:
            b[present[0]] = 0.0
            return w, b
        lr = LogisticRegression(C=c, class_weight=weight, max_iter=300, random_state=seed)
        lr.fit(x, y)
        coef, icpt = lr.coef_, lr.intercept_
        if len(present) == 2:      # binary: one logit, split into two softmax logits
            coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0] / 2,
                                                                          icpt[0] / 2])
        w[present], b[present] = coef, icpt
        return w, b
    w, b = np.zeros((n_classes, d)), np.zeros(n_classes)
    for k in range(n_classes):
        p = y[:, k].mean() if len(y) else 0.0
        if 0 < p < 1:
            lr = LogisticRegression(C=c, class_weight=weight, max_iter=300, random_state=seed)
            lr.fit(x, y[:, k])
            w[k], b[k] = lr.coef_[0], lr.intercept_[0]
        else:
            b[k] = 30.0 if p >= 1 else -30.0
    return w, b


def fit_probe(model, task: TaskData, train: np.ndarray, cfg, feats: torch.Tensor) -> Fitted:
    """C and class weighting chosen by val macro AUROC (mean over folds), then refit on all of
    `train`; the standardisation is folded into one linear layer."""
    x_all = feats.numpy().astype(np.float64)
    folds = validation_folds(task, train, cfg.seed)
    n_classes = len(task.classes)

    def fit(rows, c, balanced):
        mu, sd = x_all[rows].mean(0), x_all[rows].std(0) + 1e-6
        w, b = _logreg((x_all[rows] - mu) / sd, task.y[rows], task.multilabel, c, balanced,
                       n_classes, cfg.seed)
        return w / sd, b - (w / sd) @ mu          # the same logits on raw features

    def scores(wb, rows):
        logits = torch.from_numpy(x_all[rows] @ wb[0].T + wb[1])
        return _scores(logits, task.multilabel).numpy()

    best, choice = -float("inf"), {"C": cfg.probe_c[0], "class_weight": None}
    for c in cfg.probe_c:
        for balanced in (False, True):
            v = np.mean([_val_auroc(task, va, scores(fit(tr, c, balanced), va))
                         for tr, va in folds])
            if v > best + 1e-9:
                best, choice = v, {"C": c, "class_weight": "balanced" if balanced else None}
    balanced = choice["class_weight"] is not None
    w, b = fit(train, choice["C"], balanced)
    head = nn.Linear(feats.shape[1], n_classes)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float())
        head.bias.copy_(torch.from_numpy(b).float())
    # Held-out scores for the decision thresholds: out-of-fold when val comes from folds.
    val_idx = np.concatenate([va for _, va in folds])
    # (with the table's own val split, the final model already never saw those rows)
    val_scores = np.concatenate([scores((w, b) if tr is train else fit(tr, choice["C"], balanced),
                                        va) for tr, va in folds])
    return Fitted(model.encoder, head, {**choice, "val_auroc": best}, feats, task, val_idx,
                  val_scores)


# --- fine-tuning: the whole network, learning rate chosen on val ---------------------------

def _loss(logits, y, multilabel):
    return F.binary_cross_entropy_with_logits(logits, y) if multilabel else \
        F.cross_entropy(logits, y)


def _finetune_once(model, task: TaskData, train, val, lr: float, cfg,
                   resident: tuple[np.ndarray, np.ndarray]) -> tuple[Fitted, float]:
    """`resident`: (x of the `train` rows, each task row's place in it)."""
    x_train, place = resident
    torch.manual_seed(cfg.seed)
    encoder = copy.deepcopy(model.encoder)
    head = nn.Linear(2 * encoder.dim, len(task.classes))
    fitted = Fitted(encoder, head, {"lr": lr}, None, task)
    y = torch.from_numpy(task.y)
    opt = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=lr,
                            weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, stale = float("inf"), None, 0
    for _ in range(cfg.finetune_epochs):
        order = rng.permutation(train)
        encoder.train()
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            logits = head(pooled(encoder, torch.from_numpy(x_train[place[idx]]),
                                 torch.from_numpy(task.mask[idx])))
            loss = _loss(logits, y[idx], task.multilabel)
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = float(_loss(fitted.logits(val), y[val], task.multilabel))
        if v < best - 1e-4:
            best, stale = v, 0
            best_state = (copy.deepcopy(head.state_dict()), copy.deepcopy(encoder.state_dict()))
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        head.load_state_dict(best_state[0])
        encoder.load_state_dict(best_state[1])
    return fitted, _val_auroc(task, val, fitted(val))


def fit_finetune(model, task: TaskData, train: np.ndarray, cfg) -> Fitted:
    """Each arm (pretrained or random) tries every learning rate of `finetune_lrs` with the
    same budget and keeps the one with the best val macro AUROC (first fold's val)."""
    fit_rows, val = validation_folds(task, train, cfg.seed)[0]
    # Random minibatches of the training rows would read a row group per row from the table:
    # these rows (a label fraction of the train split: 1, 10 or 100 %) are held in memory
    # instead, read once in table order. Val and test rows stream (`Fitted.logits`).
    place = np.full(len(task.y), -1, dtype=np.int64)
    place[fit_rows] = np.arange(len(fit_rows))
    resident = (task.x[fit_rows], place)
    best, best_auc = None, -float("inf")
    for lr in cfg.finetune_lrs:
        fitted, auc = _finetune_once(model, task, fit_rows, val, lr, cfg, resident)
        if best is None or auc > best_auc:
            best, best_auc = fitted, auc
    best.choice["val_auroc"] = best_auc
    best.val_idx, best.val_scores = val, best(val)
    return best


def fit(model, task: TaskData, train: np.ndarray, mode: str, cfg,
        feats: torch.Tensor | None = None) -> Fitted:
    return fit_probe(model, task, train, cfg, feats if feats is not None else
                     features(model, task)) if mode == "probe" else \
        fit_finetune(model, task, train, cfg)


def trained_leads(mask: np.ndarray) -> list[str]:
    """The leads present in at least 90 % of the training rows: a lead only some rows carry
    (MIT-BIH's V1 or V5 beside MLII) was not relied on, and counting it would make `predict`
    warn on the very table the classifier was trained on."""
    return [LEADS[i] for i in np.flatnonzero(mask.mean(0) >= 0.9)] if len(mask) else []


def save_classifier(folder, pretrained_dir, fitted: Fitted, task: TaskData, info: dict) -> None:
    """A self-contained classifier folder: encoder (fine-tuned or frozen), heads, config,
    and the linear head over pooled features with its class list; what
    `ecgssl register --classifier` takes."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file
    folder, pretrained_dir = Path(folder), Path(pretrained_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "heads.safetensors"):
        if (pretrained_dir / name).is_file():
            shutil.copyfile(pretrained_dir / name, folder / name)
    sd = {k: v.detach().contiguous() for k, v in fitted.encoder.state_dict().items()}
    save_file(sd, folder / "encoder.safetensors")
    save_file({k: v.detach().contiguous() for k, v in fitted.head.state_dict().items()},
              folder / "classifier.safetensors")
    # Calibrated probabilities for the served model: a temperature fitted on the held-out
    # rows the thresholds were chosen on (never rows this classifier was fitted on).
    from ecgssl.evaluate.calibration import fit_temperature
    temperature = fit_temperature(fitted.val_scores, task.y[fitted.val_idx], task.multilabel) \
        if fitted.val_idx is not None and len(fitted.val_idx) else 1.0
    (folder / "classifier.json").write_text(json.dumps(
        {"task": task.name, "classes": task.classes, "multilabel": task.multilabel,
         "pooling": "mean+max", "choice": fitted.choice, "temperature": temperature,
         "calibration": "temperature scaling, NLL on validation rows",
         # what it relied on: `predict` warns when a table's rows lack these (a lead-I AF
         # classifier scoring Holter leads II/V1 is out of distribution, not an error)
         "leads": trained_leads(task.mask[task.part("train")]), **info}, indent=2))

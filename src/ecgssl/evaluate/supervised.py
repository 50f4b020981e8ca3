"""Linear probe (frozen encoder) and fine-tuning (whole network) at label fractions.

Label fractions are drawn by patient (or record), seeded, and nested: the 1 % patients are
inside the 10 %, which are inside the 100 %. Early stopping watches the validation loss only.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ecgssl.evaluate.tasks import TaskData


def label_subsets(groups: np.ndarray, fractions: list[float], seed: int) -> dict[float, np.ndarray]:
    """{fraction: row positions} for the given rows' groups; nested and patient-disjoint."""
    uniq = np.array(sorted(set(groups.astype(str))))
    order = uniq[np.random.default_rng(seed).permutation(len(uniq))]
    out = {}
    for f in sorted(fractions):
        chosen = set(order[:max(1, math.ceil(len(uniq) * f / 100))])
        out[f] = np.flatnonzero([g in chosen for g in groups.astype(str)])
    return out


def _loss(logits, y, multilabel):
    return F.binary_cross_entropy_with_logits(logits, y) if multilabel else \
        F.cross_entropy(logits, y)


def _scores(logits, multilabel):
    return torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1)


@torch.no_grad()
def _features(encoder, x, mask, batch=256) -> torch.Tensor:
    encoder.eval()
    return torch.cat([encoder(torch.from_numpy(x[i:i + batch]), torch.from_numpy(mask[i:i + batch]))
                      for i in range(0, len(x), batch)])


def features(model, task: TaskData) -> torch.Tensor:
    """Frozen-encoder features of every row of the task, computed once per model."""
    return _features(model.encoder, task.x, task.mask)


def fit(model, task: TaskData, train: np.ndarray, val: np.ndarray, mode: str, cfg,
        feats: torch.Tensor | None = None) -> callable:
    """Train a linear head (probe, on `feats`) or the whole network (finetune); returns
    rows -> scores."""
    torch.manual_seed(cfg.seed)
    encoder = copy.deepcopy(model.encoder)
    n_out = len(task.classes)
    head = nn.Linear(encoder.dim, n_out)
    y = torch.from_numpy(task.y)
    if mode == "probe":
        feats = feats if feats is not None else _features(encoder, task.x, task.mask)
        params = list(head.parameters())
        epochs, lr, batch = cfg.probe_epochs, cfg.probe_lr, len(train)

        def logits_of(idx, training=False):
            return head(feats[idx])
    else:
        params = list(encoder.parameters()) + list(head.parameters())
        epochs, lr, batch = cfg.finetune_epochs, cfg.finetune_lr, cfg.batch_size

        def logits_of(idx, training=False):
            encoder.train(training)
            return head(encoder(torch.from_numpy(task.x[idx]), torch.from_numpy(task.mask[idx])))
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, stale = float("inf"), None, 0
    for _ in range(epochs):
        order = rng.permutation(train)
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = _loss(logits_of(idx, True), y[idx], task.multilabel)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            v = float(_loss(_predict_logits(logits_of, val), y[val], task.multilabel)) \
                if len(val) else float(loss)
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

    def predict(idx: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return _scores(_predict_logits(logits_of, idx), task.multilabel).numpy()
    predict.encoder, predict.head = encoder, head   # what save_classifier writes
    return predict


def _predict_logits(logits_of, idx, batch=256):
    return torch.cat([logits_of(idx[i:i + batch]) for i in range(0, len(idx), batch)])


def save_classifier(folder, pretrained_dir, predict, task: TaskData, info: dict) -> None:
    """A self-contained classifier folder: encoder (fine-tuned or frozen), heads, config,
    and the linear head with its class list; what `ecgssl register --classifier` takes."""
    import json
    import shutil
    from pathlib import Path

    from safetensors.torch import save_file
    folder, pretrained_dir = Path(folder), Path(pretrained_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "heads.safetensors"):
        if (pretrained_dir / name).is_file():
            shutil.copyfile(pretrained_dir / name, folder / name)
    sd = {k: v.detach().contiguous() for k, v in predict.encoder.state_dict().items()}
    save_file(sd, folder / "encoder.safetensors")
    save_file({k: v.detach().contiguous() for k, v in predict.head.state_dict().items()},
              folder / "classifier.safetensors")
    (folder / "classifier.json").write_text(json.dumps(
        {"task": task.name, "classes": task.classes, "multilabel": task.multilabel, **info},
        indent=2))

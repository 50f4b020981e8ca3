"""The bad-input catalogue beyond WFDB files (those are in test_badinput_wfdb.py): metadata,
report text, tables, embeddings, model inputs, params and checkpoints. Each case gets a clear
error naming the file/key/record, or a quarantine/replacement, and nothing already written is
lost."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ecgssl.config import EmbedTextConfig, IngestConfig, PretrainConfig
from ecgssl.data.ingest import ingest
from ecgssl.data.table import read_manifest, read_table
from ecgssl.errors import EcgsslError
from ecgssl.registry.pyfunc import validate_input
from ecgssl.text.stage import read_embeddings, run_embed_text

ECGSSL = str(Path(sys.executable).parent / "ecgssl")
ROOT = Path(__file__).resolve().parents[2]


def cli(*args, stdin: bytes | None = None, cwd=ROOT):
    return subprocess.run([ECGSSL, *args], input=stdin, capture_output=True, cwd=cwd,
                          timeout=300)


# --- metadata and report text -----------------------------------------------------------------

def test_ptbxl_csv_with_a_non_utf8_byte_keeps_the_row(sample, tmp_path):
    root = tmp_path / "ptbxl"
    shutil.copytree(sample / "ptbxl", root)
    db = root / "ptbxl_database.csv"
    lines = db.read_bytes().split(b"\n")
    rec = read_manifest_rows(sample)
    i = next(i for i, ln in enumerate(lines) if rec.encode() in ln)
    lines[i] = lines[i].replace(b"sinusrhythmus", b"sinusrhythmus \xe4\xfc", 1)
    db.write_bytes(b"\n".join(lines))
    m = ingest("ptbxl", root, tmp_path / "out", IngestConfig(workers=1), progress=False)
    assert m.records_ok == 1
    report = read_table(tmp_path / "out", columns=["report_device"]).column("report_device")[0]
    assert "\ufffd" in report


def read_manifest_rows(sample: Path) -> str:
    """The one PTB-XL record whose waveform is bundled."""
    return next((sample / "ptbxl").rglob("*.hea")).stem


def test_translate_survives_odd_bytes_and_empty_lines():
    text = "sinusrhythmus\n\n\xff\xfe kein \x00 befund\n\xc3\x28\n".encode("latin-1")
    p = cli("reports", "translate", stdin=text)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().count("\n") == 4
    assert p.stdout.decode().startswith("sinus rhythm")


def test_empty_reports_are_a_clear_error_for_embed_text(tables, tmp_path, table_copy):
    t = table_copy(tables["mitdb"], "report", lambda t: pa.array(
        [["", "   ", None][i % 3] for i in range(t.num_rows)], pa.string()))
    with pytest.raises(EcgsslError, match="no rows have a report"):
        run_embed_text(t, tmp_path / "e.parquet", EmbedTextConfig(cache=None), progress=False)
    assert not (tmp_path / "e.parquet").exists()


def test_odd_report_text_embeds(tables, tmp_path, table_copy):
    odd = ["\u2764\ufe0f sinus rhythm \U0001f600", "a\x00b\x07c\tline\r\nbreak",
           "word " * 3000, "\u0647\u0630\u0627 ECG", "\ufffd\ufffd"]
    t = table_copy(tables["mitdb"], "report", lambda t: pa.array(
        [odd[i % len(odd)] for i in range(t.num_rows)], pa.string()))
    s = run_embed_text(t, tmp_path / "e.parquet", EmbedTextConfig(cache=None), progress=False)
    assert s.texts == len(odd)
    _, vecs, _ = read_embeddings(tmp_path / "e.parquet")
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-4)   # long text truncated


# --- tables and embeddings files --------------------------------------------------------------

def test_corrupt_parquet_shard_names_the_shard(tables, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(tables["mitdb"], t)
    shard = t / read_manifest(t)["shards"][0]
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(EcgsslError, match=r"part-00000-\w+\.parquet: unreadable Parquet shard"):
        read_table(t)


def test_missing_shard_and_missing_manifest(tables, tmp_path):
    t = tmp_path / "t"
    shutil.copytree(tables["mitdb"], t)
    (t / read_manifest(t)["shards"][0]).unlink()
    with pytest.raises(EcgsslError, match="shard listed in the manifest is missing"):
        read_table(t)
    (t / "_manifest.json").unlink()
    with pytest.raises(EcgsslError, match=str(t)):
        read_table(t)


def test_damaged_embeddings_file_and_cache(tables, tmp_path, table_copy):
    bad = tmp_path / "e.parquet"
    bad.write_bytes(b"PAR1 not really")
    with pytest.raises(EcgsslError, match="not an embeddings file"):
        read_embeddings(bad)
    cache = tmp_path / "cache.parquet"
    cache.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        t = table_copy(tables["mitdb"], "report", lambda t: pa.array(
            ["sinus rhythm", "atrial fibrillation"] * (t.num_rows // 2), pa.string()))
        run_embed_text(t, tmp_path / "ok.parquet",
                       EmbedTextConfig(cache=str(cache)), progress=False)
    assert (tmp_path / "cache.parquet.corrupt").is_file()
    assert read_embeddings(tmp_path / "ok.parquet")[1].shape[1] == 384


# --- model inputs ------------------------------------------------------------------------------

@pytest.mark.parametrize("x,message", [
    (np.zeros((2, 12, 999), np.float32), "999 samples per lead"),
    (np.zeros((2, 8, 1000), np.float32), "8 leads"),
    (np.zeros((12, 1000, 1, 1), np.float32), "must be \\[N, 12, 1000\\]"),
    (np.array([["a"] * 1000] * 12), "numeric"),
    (np.full((1, 12, 1000), np.nan, np.float32), "NaN/inf values \\(first at row 0, lead 0\\)"),
])
def test_model_input_errors(x, message):
    with pytest.raises(EcgsslError, match=message):
        validate_input(x, 1000)


def test_lead_mask_of_the_wrong_size():
    with pytest.raises(EcgsslError, match="lead_mask must be 12 booleans"):
        validate_input(np.zeros((1, 12, 1000), np.float32), 1000, lead_mask=[True] * 8)


# --- params.yaml --------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("ingest:\n  fs: 100\n  windw_s: 10\n", "unknown key 'ingest.windw_s'"),
    ("ingest:\n  fs: fast\n", "'ingest.fs'"),
    ("pretrain: [1, 2]\n", "'pretrain'"),
    ("ingest: {fs: 100\n", "not valid YAML"),
])
def test_bad_params_yaml_is_refused_by_the_cli_with_the_key_named(text, message, tmp_path,
                                                                  sample):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    out = tmp_path / "out"
    p = cli("ingest", "mitdb", "--input", str(sample / "mitdb"), "--output", str(out),
            "--params", str(params), "--no-progress")
    assert p.returncode == 2
    assert message.replace("\\", "") in p.stderr.decode().replace("\n", " ")
    assert not out.exists()


# --- checkpoints and encoders --------------------------------------------------------------------

def test_encoder_folder_of_another_width_or_none(corpus, tmp_path):
    from ecgssl.models.pretrain import load_pretrained
    from ecgssl.train.loop import pretrain
    enc = tmp_path / "enc"
    pretrain(corpus["table"], corpus["text_emb"], enc,
             PretrainConfig(max_steps=1, batch_size=4, width=8, method="st"),
             progress=False)
    cfg = json.loads((enc / "config.json").read_text())
    (enc / "config.json").write_text(json.dumps({**cfg, "width": 16}))
    with pytest.raises(EcgsslError, match="width|shape|does not fit"):
        load_pretrained(enc)
    (enc / "config.json").unlink()
    with pytest.raises(EcgsslError, match="not a pretrained encoder"):
        load_pretrained(enc)
    p = cli("evaluate", "--encoder", str(enc), "--data", str(corpus["table"]), "--task",
            "cinc2017-af", "--mode", "zeroshot", "--output", str(tmp_path / "ev"))
    assert p.returncode == 2 and b"not a pretrained encoder" in p.stderr

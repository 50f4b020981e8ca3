"""`ecgssl evaluate` on a small encoder pretrained on the bundled sample."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ecgssl.config import EvaluateConfig, PretrainConfig
from ecgssl.errors import EcgsslError
from ecgssl.evaluate import stage
from ecgssl.evaluate.tasks import load_task
from ecgssl.train.loop import pretrain

FAST = EvaluateConfig(probe_c=[0.1], finetune_epochs=1, finetune_lrs=[1e-3], bootstrap=20,
                      cache=None)


@pytest.fixture(scope="session")
def encoder(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("encoder")
    pretrain(corpus["table"], corpus["text_emb"], out, PretrainConfig(
        method="mets+st", width=16, batch_size=16, max_steps=4, warmup_steps=1),
        progress=False)
    return out


def test_zeroshot_and_probe_write_metrics_and_plots(encoder, tables, tmp_path):
    r = stage.run_evaluate(encoder, tables["cinc2017"], "cinc2017-af", ["zeroshot", "probe"],
                           tmp_path, FAST, fractions=[10, 100], progress=False)
    m = r.metrics
    assert set(r.headline()) == {"zeroshot/cinc2017-af", "probe/cinc2017-af",
                                 "probe-random/cinc2017-af"}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == pytest.approx(m, nan_ok=True)
    for key in ("zeroshot/cinc2017-af/macro_auroc", "probe/cinc2017-af/f10/macro_f1",
                "probe/cinc2017-af/f100/macro_auroc_ci_low", "probe-random/cinc2017-af/f100/"
                "accuracy", "probe/cinc2017-af/macro_auroc", "zeroshot/cinc2017-af/auroc/A"):
        assert key in m and 0 <= m[key] <= 1, key
    assert m["probe/cinc2017-af/f10/train_rows"] < m["probe/cinc2017-af/f100/train_rows"]
    for png in ("roc_zeroshot_cinc2017-af.png", "confusion_probe_cinc2017-af.png",
                "label_efficiency_probe_cinc2017-af.png"):
        assert (tmp_path / png).stat().st_size > 5000
    info = json.loads((tmp_path / "classifier-probe/classifier.json").read_text())
    assert info["classes"] == ["N", "A", "O", "~"] and info["label_fraction"] == 100
    assert json.loads((tmp_path / "test_data.json").read_text())["cinc2017-af"]
    # per-record test scores of each headline model: what the promotion gate pairs
    from ecgssl.evaluate.scores import read_scores
    df, meta = read_scores(tmp_path / "scores.parquet")
    assert sorted(df["mode"].unique()) == ["probe", "zeroshot"]
    assert meta["classes"] == ["N", "A", "O", "~"] and meta["task"] == "cinc2017-af"
    zs = df[df["mode"] == "zeroshot"]
    assert len(zs) == m["data/cinc2017-af/test_records"] and zs["item"].is_unique
    assert set(zs["label"]) <= {"N", "A", "O", "~"}
    assert (zs[[f"y.{c}" for c in meta["classes"]]].sum(1) == 1).all()


def cli(*args):
    exe = shutil.which("ecgssl") or f"{sys.executable} -m ecgssl.cli"
    return subprocess.run(exe.split() + [str(a) for a in args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "COLUMNS": "200"})


def test_multilabel_finetune_on_mitdb(encoder, tables, tmp_path):
    m = stage.run_evaluate(encoder, tables["mitdb"], "mitdb-aami", ["finetune"], tmp_path, FAST,
                           fractions=[100], progress=False).metrics
    assert 0 <= m["finetune/mitdb-aami/macro_auroc"] <= 1
    assert "finetune-random/mitdb-aami/f100/macro_f1" in m
    # MIT-BIH rows carry MLII and V1, or MLII and V5 (one DS1 record): the classifier records
    # the leads of (nearly) all its training rows, not the rare V5, so scoring its own table
    # warns at most of V1 rows, never of II or V5.
    clf = tmp_path / "classifier-finetune"
    leads = json.loads((clf / "classifier.json").read_text())["leads"]
    assert "II" in leads and "V5" not in leads and set(leads) <= {"II", "V1"}, leads
    p = cli("predict", "--model", clf, "--data", tables["mitdb"], "--output",
            tmp_path / "p.parquet", "--no-progress")
    assert p.returncode == 0 and "II absent" not in p.stderr and "V5" not in p.stderr, p.stderr


def test_decisions_never_see_test_data(tables):
    task = load_task("mitdb-aami", tables["mitdb"])
    rng = np.random.default_rng(0)
    scores = rng.random((len(task.y), len(task.classes)))
    decide = task.part("train")                    # MIT-BIH keeps no val split: DS1 decides
    m, (_, _, thr) = stage.score_model(task, lambda idx: scores[idx], FAST, decide)
    flipped = task.y.copy()
    flipped[task.part("test")] = 1 - flipped[task.part("test")]
    task.y = flipped                                            # change every test label
    scores[task.part("test")] = 1 - scores[task.part("test")]  # and every test score
    m2, (_, _, thr2) = stage.score_model(task, lambda idx: scores[idx], FAST, decide)
    np.testing.assert_array_equal(thr, thr2)
    np.testing.assert_array_equal(thr, stage.choose_thresholds(task.y[decide], scores[decide]))
    assert m["macro_auroc"] != m2["macro_auroc"]


def test_record_level_scores_are_the_mean_of_a_records_windows(tables):
    task = load_task("cinc2017-af", tables["cinc2017"])
    rng = np.random.default_rng(1)
    scores = rng.dirichlet(np.ones(4), len(task.y))
    test = task.part("test")
    y, s, groups = stage.Levels(task, record_level=True)(test, scores[test])
    records = sorted(set(task.record[test]))
    assert len(y) == len(s) == len(records) < len(test)       # several windows per record
    first = records[0]
    rows = test[task.record[test] == first]
    np.testing.assert_allclose(s[0], scores[rows].mean(0))
    assert y[0] == task.y[rows[0]]
    m, _ = stage.score_model(task, lambda idx: scores[idx], FAST, task.part("val"))
    assert "window/macro_auroc" in m and "f1_nao" in m and "window/f1_nao" in m
    assert {"se/A", "ppv/A", "auroc/A", "auroc_classes"} <= set(m)


def test_tasks_the_table_cannot_serve_are_clear_errors(encoder, tables, tmp_path):
    with pytest.raises(EcgsslError, match="has no cinc2017 rows"):
        stage.run_evaluate(encoder, tables["mitdb"], "cinc2017-af", ["zeroshot"], tmp_path, FAST)
    with pytest.raises(EcgsslError, match="no test rows"):
        stage.run_evaluate(encoder, tables["ptbxl"], "ptbxl-super", ["zeroshot"], tmp_path, FAST)
    with pytest.raises(EcgsslError, match="unknown task"):
        stage.run_evaluate(encoder, tables["mitdb"], "nope", ["zeroshot"], tmp_path, FAST)


# --- bring your own data: a folder of WFDB records, a user task, an external test set ------------

def test_own_records_user_task_external_test_set_and_predict(encoder, sample, tables, tmp_path):
    import pandas as pd
    ref = [line.split(",") for line in (sample / "cinc2017/REFERENCE.csv").read_text().split()]
    folders = {"train": ref[:120], "test": ref[120:160]}
    for part, rows in folders.items():
        for rec, _ in rows:                     # nested, as an export from elsewhere would be
            for f in (sample / "cinc2017").glob(f"{rec}.*"):
                (tmp_path / part / "ecg").mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, tmp_path / part / "ecg" / f.name)
        (tmp_path / f"{part}.csv").write_text("record,labels,patient_id\n" + "".join(
            f"ecg/{rec},{lab},pt-{rec}\n" for rec, lab in rows))
    for part, extra in (("train", ()), ("test", ("--split", "test"))):
        p = cli("ingest", "wfdb", "--input", tmp_path / part, "--metadata",
                tmp_path / f"{part}.csv", "--dataset", "mydevice", "--output",
                tmp_path / f"table-{part}", "--workers", "2", "--no-progress", *extra)
        assert p.returncode == 0, p.stderr
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  probe_c: [0.1]\n  bootstrap: 10\n  cache: null\n"
                      "  tasks:\n    device-rhythm:\n      dataset: mydevice\n"
                      "      classes: all present\n      multilabel: false\n"
                      "      level: record\ntracking:\n  enabled: false\n")
    out = tmp_path / "eval"
    p = cli("evaluate", "--encoder", encoder, "--data", tmp_path / "table-train", "--test-data",
            tmp_path / "table-test", "--task", "device-rhythm", "--mode", "probe",
            "--label-fraction", "100", "--output", out, "--params", params, "--no-progress")
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["probe/device-rhythm/macro_auroc"] <= 1
    assert m["data/device-rhythm/test_records"] == 40          # every external record
    td = json.loads((out / "test_data.json").read_text())
    assert set(td["tables"]) == {"data", "test_data"}
    assert td["tables"]["data"] != td["tables"]["test_data"] and td["device-rhythm"]
    info = json.loads((out / "classifier-probe/classifier.json").read_text())
    train_labels = {lab for _, lab in folders["train"]}
    assert info["classes"] == sorted(train_labels) and info["temperature"] > 0
    # the user task exists only where params.yaml defines it
    p = cli("evaluate", "--encoder", encoder, "--data", tmp_path / "table-train", "--task",
            "device-rhythm", "--mode", "probe", "--output", tmp_path / "e2", "--no-progress")
    assert p.returncode == 2 and "unknown task 'device-rhythm'" in p.stderr, p.stderr

    # Batch scoring: class names are the columns.
    preds = tmp_path / "preds.parquet"
    p = cli("predict", "--model", out / "classifier-probe", "--data", tmp_path / "table-test",
            "--output", preds, "--no-progress")
    assert p.returncode == 0 and "warning" not in p.stderr, p.stderr
    df = pd.read_parquet(preds)
    assert list(df.columns) == ["ecg_id", "dataset", "record", "window", *info["classes"]]
    assert info["leads"] == ["I"]                    # a single-lead device
    np.testing.assert_allclose(df[info["classes"]].sum(axis=1), 1.0, atol=1e-5)
    p = cli("predict", "--model", out / "classifier-probe", "--data", tmp_path / "table-test",
            "--output", preds, "--level", "record", "--no-progress")
    df = pd.read_parquet(preds)
    assert list(df.columns[:3]) == ["dataset", "record", "windows"] and len(df) == 40
    # Scoring Holter leads (MIT-BIH: II and V1) with a lead-I classifier works, with a warning
    p = cli("predict", "--model", out / "classifier-probe", "--data", tables["mitdb"],
            "--output", preds, "--no-progress")
    rows = len(pd.read_parquet(preds))
    assert p.returncode == 0 and f"I absent in {rows} rows" in " ".join(p.stderr.split()), \
        p.stderr


def test_a_row_cache_below_the_table_streams_to_the_same_metrics(encoder, tables, tmp_path):
    # evaluate.row_cache_mb bounds the decoded rows held at once: a table above it is re-read
    # per pass, row group by row group, and scores exactly as when it all fits.
    import mlflow

    from ecgssl.tracking import RunContext, metric_key
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ctx = RunContext(enabled=True, tracking_uri=uri, experiment="rows")
    row_mb = 12 * 1000 * 4 / 2**20                       # one 12-lead 10 s 100 Hz row
    bounded = FAST.model_copy(update={"row_cache_mb": 300 * row_mb})
    small = stage.run_evaluate(encoder, tables["mitdb"], "mitdb-aami", ["zeroshot", "probe"],
                               tmp_path / "small", bounded, fractions=[100], progress=False,
                               ctx=ctx)
    whole = stage.run_evaluate(encoder, tables["mitdb"], "mitdb-aami", ["zeroshot", "probe"],
                               tmp_path / "whole", FAST, fractions=[100], progress=False,
                               ctx=ctx)
    assert small.metrics == pytest.approx(whole.metrics, nan_ok=True)
    runs = {r.data.params["evaluate.row_cache_mb"]: r.data.metrics for r in
            mlflow.MlflowClient(uri).search_runs(
                [mlflow.MlflowClient(uri).get_experiment_by_name("rows").experiment_id])}
    held = {k: m[metric_key("io/rows_held_peak")] for k, m in runs.items()}
    read = {k: m[metric_key("io/rows_read")] for k, m in runs.items()}
    n = whole.metrics["data/mitdb-aami/test_rows"]
    assert held[str(bounded.row_cache_mb)] <= 300 < held["1024.0"]
    assert read[str(bounded.row_cache_mb)] > read["1024.0"] >= n      # re-read per pass


# --- review findings: results carried over between evaluations ------------------------------

def _cinc2017_subset(sample, tmp_path, n: int):
    """A second cinc2017 table: the first `n` sample records, ingested on their own (other
    test rows, other shards)."""

    from ecgssl.config import IngestConfig
    from ecgssl.data.ingest import ingest
    src = tmp_path / "cinc2017-subset"
    src.mkdir()
    ref = (sample / "cinc2017/REFERENCE.csv").read_text().split()[:n]
    for line in ref:
        rec = line.split(",")[0]
        for f in (sample / "cinc2017").glob(f"{rec}.*"):
            shutil.copyfile(f, src / f.name)
    (src / "REFERENCE.csv").write_text("\n".join(ref) + "\n")
    (src / "RECORDS").write_text("".join(line.split(",")[0] + "\n" for line in ref))
    ingest("cinc2017", src, tmp_path / "table-subset", IngestConfig(workers=1), progress=False)
    return tmp_path / "table-subset"


def test_metrics_of_other_test_data_do_not_carry_over(encoder, tables, sample, tmp_path):
    # Same encoder, same output folder, another test table: the probe metrics measured on the
    # first table's test split must not stay in metrics.json beside a test_data.json that
    # names the second table's test rows (register would tag them with the wrong test data).
    out = tmp_path / "eval"
    first = stage.run_evaluate(encoder, tables["cinc2017"], "cinc2017-af", ["probe"], out,
                               FAST, fractions=[100], progress=False)
    # another mode on the same tables carries over (one folder, every mode of one encoder)
    stage.run_evaluate(encoder, tables["cinc2017"], "cinc2017-af", ["zeroshot"], out, FAST,
                       progress=False)
    saved = json.loads((out / "metrics.json").read_text())
    assert "probe/cinc2017-af/macro_auroc" in saved and "zeroshot/cinc2017-af/macro_auroc" in saved
    other = _cinc2017_subset(sample, tmp_path, 160)
    second = stage.run_evaluate(encoder, tables["cinc2017"], "cinc2017-af", ["zeroshot"], out,
                                FAST, fractions=[100], progress=False, test_table=other)
    assert first.test_fingerprint != second.test_fingerprint
    saved = json.loads((out / "metrics.json").read_text())
    td = json.loads((out / "test_data.json").read_text())
    assert td["cinc2017-af"] == second.test_fingerprint
    assert "probe/cinc2017-af/macro_auroc" not in saved
    assert not (out / "classifier-probe").exists()


def test_zeroshot_of_an_st_encoder_is_a_clear_error(corpus, tables, tmp_path):
    st = tmp_path / "st"
    pretrain(corpus["table"], None, st, PretrainConfig(
        method="st", width=16, batch_size=16, max_steps=1, warmup_steps=1), progress=False)
    with pytest.raises(EcgsslError, match="METS-pretrained"):
        stage.run_evaluate(st, tables["cinc2017"], "cinc2017-af", ["zeroshot"], tmp_path / "e",
                           FAST, progress=False)


def test_metrics_of_a_task_whose_test_rows_changed_do_not_carry_over(encoder, tables, tmp_path,
                                                                      monkeypatch):
    # Same encoder and table, but the user task's classes changed (so did its test rows):
    # the earlier probe of the task measured other rows and must not stay.
    from ecgssl.config import UserTask
    from ecgssl.evaluate import tasks
    monkeypatch.setattr(tasks, "TASKS", dict(tasks.TASKS))

    def cfg(classes):
        return FAST.model_copy(update={"tasks": {"my-af": UserTask(
            dataset="cinc2017", classes=classes, multilabel=False)}})
    out = tmp_path / "eval"
    a = stage.run_evaluate(encoder, tables["cinc2017"], "my-af", ["probe"], out,
                           cfg(["N", "A"]), fractions=[100], progress=False)
    b = stage.run_evaluate(encoder, tables["cinc2017"], "my-af", ["zeroshot"], out,
                           cfg(["N", "A", "O"]), progress=False)
    assert a.test_fingerprint != b.test_fingerprint
    saved = json.loads((out / "metrics.json").read_text())
    assert "zeroshot/my-af/macro_auroc" in saved
    assert "probe/my-af/macro_auroc" not in saved and not (out / "classifier-probe").exists()


def test_without_mode_the_cli_runs_the_pipelines_eval_modes(encoder, tables, tmp_path):
    """The DVC evaluate stage passes no --mode: pipeline.eval_modes (plus finetune when
    pipeline.finetune) decide, as they do for the Kubeflow pipeline."""
    from typer.testing import CliRunner

    from ecgssl.cli import app
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  probe_c: [0.1]\n  bootstrap: 10\n  cache: null\n"
                      "  finetune_epochs: 1\n  finetune_lrs: [0.001]\n"
                      "pipeline:\n  eval_modes: [zeroshot]\n  finetune: true\n"
                      "tracking:\n  enabled: false\n")
    out = tmp_path / "eval"
    r = CliRunner().invoke(app, ["evaluate", "--encoder", str(encoder), "--data",
                                 str(tables["cinc2017"]), "--task", "cinc2017-af",
                                 "--label-fraction", "100", "--output", str(out),
                                 "--params", str(params), "--no-progress"])
    assert r.exit_code == 0, r.output
    modes = {k.split("/")[0] for k in json.loads((out / "metrics.json").read_text())}
    assert {"zeroshot", "finetune"} <= modes and "probe" not in modes, modes


def test_a_prompt_for_a_class_the_task_lacks_is_refused(encoder, tables, tmp_path):
    """`--prompt "X=foo"` (a typo of a class) was silently ignored: zero-shot ran with the
    default prompts, exit 0, and the user believed the prompt was used."""
    with pytest.raises(EcgsslError, match=r"--prompt names no class of task cinc2017-af: 'X'; "
                       r"its classes are N, A, O, ~"):
        stage.run_evaluate(encoder, tables["cinc2017"], "cinc2017-af", ["zeroshot"], tmp_path,
                           FAST, prompt_overrides={"X": "foo", "A": "atrial fibrillation"},
                           progress=False)
    assert not (tmp_path / "metrics.json").exists()

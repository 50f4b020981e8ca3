"""`ecgssl pipeline run-local`: the whole Kubeflow DAG through kfp.local on the real sample,
with one MLflow parent run holding a child run per stage, and a promoted model at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ECGSSL = str(Path(sys.executable).parent / "ecgssl")
pytestmark = pytest.mark.integration


def test_run_local_end_to_end(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    small = ["pretrain.max_steps=2", "pretrain.batch_size=8", "pretrain.width=16",
             "evaluate.label_fractions=[100]", "evaluate.bootstrap=10",
             "evaluate.probe_c=[0.1]", f"embed_text.cache={tmp_path / 'cache.parquet'}"]
    cmd = [ECGSSL, "pipeline", "run-local", "--pipeline-root", str(tmp_path / "root"),
           "--source", "mitdb", "--task", "mitdb-aami", "--tracking-uri", uri, "--cache",
           "--arg", "model_name=kfp-local-test", *[a for s in small for a in ("--set", s)]]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "succeeded" in p.stderr
    assert "from cache: no task" in p.stderr

    run_dir = next((tmp_path / "root").glob("ecgssl-*"))
    manifest = json.loads(next(run_dir.rglob("ingest/table/_manifest.json")).read_text())
    assert manifest["source"] == "mitdb" and manifest["rows"] > 0
    assert (run_dir / "pretrain/model/encoder.safetensors").is_file()
    metrics = json.loads(next(run_dir.rglob("evaluation/metrics.json")).read_text())
    assert 0 <= metrics["zeroshot/mitdb-aami/macro_auroc"] <= 1
    assert "probe-random/mitdb-aami/macro_auroc" in metrics
    assert "<img src=\"data:image/png;base64," in next(run_dir.rglob("report")).read_text()
    assert "translation coverage" in next(run_dir.rglob("reports/summary")).read_text()

    import mlflow
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], max_results=100)
    parents = [r for r in runs if r.data.tags.get("stage") == "pipeline"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    stages = sorted(r.data.tags["stage"] for r in children)
    assert stages == ["embed-text", "evaluate", "ingest", "pretrain", "register", "reports"]
    name = parent.data.tags["ecgssl.pipeline_run"]
    assert name.startswith("local-")
    assert all(r.data.tags["ecgssl.pipeline_run"] == name for r in children)
    assert all(r.info.experiment_id == parent.info.experiment_id for r in children)
    # The gate passed (no champion yet) and promote moved the alias.
    assert str(client.get_model_version_by_alias("kfp-local-test", "champion").version) == "1"

    # Again with a new evaluation setting: KFP's cache (kfp.local's, as a cluster's) serves
    # every stage whose own params did not change; evaluation runs again on the cached
    # encoder. With the whole params in every task's key, this reran ingest and pretrain.
    p = subprocess.run([*cmd, "--set", "evaluate.bootstrap=20"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    assert "from cache: ingest, reports, embed-text, pretrain\n" in p.stderr
    second = max((tmp_path / "root").glob("ecgssl-*"), key=lambda d: d.name)
    assert second != run_dir and not (second / "pretrain" / "model").exists()
    assert json.loads(next(second.rglob("evaluation/metrics.json")).read_text())[
        "zeroshot/mitdb-aami/accuracy_ci_n"] == 20              # evaluate.bootstrap

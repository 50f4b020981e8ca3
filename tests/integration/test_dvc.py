"""A real `dvc repro` of the project's pipeline in a fresh copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


BIN = Path(sys.executable).parent   # dvc and ecgssl live beside the interpreter


def run(cmd, cwd):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, f"{cmd}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvc", ".dvcignore", "data", "src"):
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, repo / name, ignore=shutil.ignore_patterns("__pycache__",
                                                                            "tmp", "cache"))
        elif src.exists():
            shutil.copy(src, repo / name)
    params = repo / "params.yaml"
    p = yaml.safe_load(params.read_text())
    p["pretrain"].update(max_steps=2, width=16, batch_size=16)  # tests the wiring
    p["evaluate"].update(bootstrap=20, probe_c=[0.1], label_fractions=[100])
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    run(["git", "init", "-q"], repo)
    out = run([str(BIN / "ecgssl"), "pipeline", "repro"], repo)   # what `make run` calls
    for s in ("ptbxl", "mitdb", "cinc2017", "cinc2020"):
        assert (repo / "outputs/tables" / s / "_manifest.json").is_file(), out
    assert json.loads((repo / "outputs/pretrain/metrics.json").read_text())["steps"] == 2
    assert "zeroshot/cinc2017-af/macro_auroc" in json.loads(
        (repo / "outputs/eval/cinc2017-af/metrics.json").read_text())
    assert json.loads((repo / "outputs/registry/encoder.json").read_text())["version"] == "1"
    assert "promoted: no champion yet" in out
    # One MLflow parent run for the repro, a child run for each stage that ran.
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    assert parent.data.tags["runner"] == "dvc" and parent.info.status == "FINISHED"
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in kids) == [
        "embed-text", "evaluate-cinc2017-af", "evaluate-mitdb-aami", "ingest-cinc2017",
        "ingest-cinc2020", "ingest-mitdb", "ingest-ptbxl", "pretrain-mets+st",
        "register-ecgssl-mets-st-encoder", "reports"]
    again = run([str(BIN / "dvc"), "repro"], repo)
    assert "didn't change, skipping" in again and "Running stage" not in again
    # A reports parameter reruns reports and what follows, never ingestion.
    p["reports"]["workers"] = 1
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    changed = run([str(BIN / "dvc"), "repro"], repo)
    ran = [line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage")]
    assert ran[0] == "reports" and not any(r.startswith("ingest") for r in ran), changed
    assert (repo / "outputs/text_emb.parquet").is_file()


def test_a_user_task_in_params_becomes_a_dvc_stage(tmp_path):
    """`evaluate.tasks` + `pipeline.tasks` in params.yaml: dvc.yaml's foreach makes it a stage
    and params validation accepts it (issue 15)."""
    from ecgssl.config import load_params
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    p = yaml.safe_load((repo / "params.yaml").read_text())
    p["evaluate"]["tasks"] = {"af-only": {"dataset": "cinc2017", "classes": ["A", "N"],
                                          "multilabel": True}}
    p["pipeline"]["tasks"] = ["cinc2017-af", "af-only"]
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    assert load_params(repo / "params.yaml").pipeline.tasks == ["cinc2017-af", "af-only"]
    run(["git", "init", "-q"], repo)
    stages = run([str(BIN / "dvc"), "stage", "list"], repo)
    assert "evaluate@af-only" in stages and "evaluate@cinc2017-af" in stages, stages

"""A real `dvc repro` / `dvc exp run` of the project's pipeline in a fresh git repository."""

from __future__ import annotations

import csv
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
VOLATILE = ("created_at", "elapsed_s", "run_id", "samples_per_s", "started", "time")


def run(cmd, cwd, check=True):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ECGSSL_", "DVC_EXP", "MLFLOW_"))}
    env |= {"DVC_NO_ANALYTICS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
    if os.environ.get("PYTHONPATH"):   # a checkout's src, as absolute paths for other cwds
        env["PYTHONPATH"] = os.pathsep.join(str(Path(p).resolve())
                                            for p in os.environ["PYTHONPATH"].split(os.pathsep))
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert not check or p.returncode == 0, f"{cmd}:\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


def _runs(repo):
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def _outs(repo) -> dict[str, str]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for s in lock["stages"].values() for o in s.get("outs", [])}


def test_dvc_repro_runs_the_pipeline_and_reruns_only_what_changed(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvc", ".dvcignore", ".gitignore", "data", "src"):
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
    p["promote"].update(bootstrap=100)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "base"], repo)
    out = run([str(BIN / "ecgssl"), "pipeline", "repro"], repo)   # what `make run` calls
    for s in ("ptbxl", "mitdb", "cinc2017", "cinc2020"):
        assert (repo / "outputs/tables" / s / "_manifest.json").is_file(), out
    assert json.loads((repo / "outputs/pretrain/metrics.json").read_text())["steps"] == 2
    assert "zeroshot/cinc2017-af/macro_auroc" in json.loads(
        (repo / "outputs/eval/cinc2017-af/metrics.json").read_text())
    assert json.loads((repo / "outputs/registry/encoder.json").read_text())["version"] == "1"
    assert "promoted: no champion yet" in out
    # The committed metrics folder: headline numbers and ROC curves DVC reads at any revision.
    ev = json.loads((repo / "metrics/eval.json").read_text())
    assert 0 <= ev["cinc2017-af"]["zeroshot"]["macro_auroc"] <= 1
    assert ev["mitdb-aami"]["probe"]["ci_low"] <= ev["mitdb-aami"]["probe"]["macro_auroc"]
    roc = list(csv.DictReader(open(repo / "metrics/roc/cinc2017-af-zeroshot.csv")))
    assert len(roc) == 51 and float(roc[-1]["tpr"]) == 1.0
    # One MLflow parent run for the repro, with params and the headline metrics, a child run
    # (named with a short id) for each stage that ran.
    runs = _runs(repo)
    parent = next(r for r in runs if r.data.tags.get("stage") == "pipeline")
    assert parent.data.tags["runner"] == "dvc" and parent.info.status == "FINISHED"
    assert parent.data.params["pretrain.max_steps"] == "2"
    assert "zeroshot/cinc2017-af/macro_auroc" in parent.data.metrics
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name.split()[0] for r in kids) == [
        "embed-text", "evaluate-cinc2017-af", "evaluate-mitdb-aami", "ingest-cinc2017",
        "ingest-cinc2020", "ingest-mitdb", "ingest-ptbxl", "pretrain-mets+st",
        "register-ecgssl-mets-st-encoder", "reports"]
    assert json.loads((repo / "outputs/pipeline_run.json").read_text())["run_id"] == \
        parent.info.run_id
    summary = run([str(BIN / "ecgssl"), "summary", "outputs"], repo)
    for part in ("models:/ecgssl-mets-st-encoder/1 (@challenger, @champion)",
                 "promotion: v1 promoted", f"runs/{parent.info.run_id}", "make ui",
                 "dvc exp show", "metrics/roc"):
        assert part in summary, summary
    # What DVC hashes holds no times, run ids or absolute paths: a rerun leaves dvc.lock as is.
    for path in _outs(repo):
        target = repo / path
        for f in [target] if target.is_file() else target.rglob("*.json"):
            if f.suffix == ".json" and f.name != "_run.json":     # .dvcignore'd
                text = f.read_text()
                assert str(repo) not in text and str(tmp_path) not in text, f
                assert not set(VOLATILE) & set(json.loads(text)), f
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "run"], repo)
    # Nothing to do: no stage runs and no MLflow run is created.
    again = run([str(BIN / "ecgssl"), "pipeline", "repro"], repo)
    assert "Running stage" not in again and len(_runs(repo)) == len(runs)
    # An experiment: a reports parameter reruns reports, never ingestion; the reports come
    # out the same (workers do not change them), so DVC stops there with the same hashes. The
    # experiment's stage runs sit under one parent run tagged with its name.
    before = _outs(repo)
    changed = run([str(BIN / "dvc"), "exp", "run", "-n", "exp1", "-S", "reports.workers=1"],
                  repo)
    ran = [line.split("'")[1] for line in changed.splitlines() if line.startswith("Running stage")]
    assert ran == ["reports"], changed
    assert _outs(repo) == before
    exp_runs = [r for r in _runs(repo) if r.data.tags.get("dvc.exp_name") == "exp1"]
    exp_parent = next(r for r in exp_runs if r.data.tags.get("stage") == "pipeline")
    assert {r.data.tags.get("mlflow.parentRunId") for r in exp_runs
            if r is not exp_parent} == {exp_parent.info.run_id}
    assert sorted(r.data.tags["stage"] for r in exp_runs) == ["pipeline", "reports"]
    # Comparing: metrics and plots of the workspace against HEAD, and the experiments table.
    diff = run([str(BIN / "dvc"), "metrics", "diff", "HEAD", "exp1", "--all"], repo)
    assert "metrics/eval.json" in diff and "cinc2017-af.zeroshot.ci_low" in diff, diff
    assert "failed to load" not in diff, diff
    run([str(BIN / "dvc"), "plots", "diff", "-o", str(tmp_path / "plots")], repo)
    assert (tmp_path / "plots" / "index.html").is_file()
    table = run([str(BIN / "dvc"), "exp", "show", "--csv", "--drop", ".*", "--keep",
                 "Experiment|.*zeroshot.macro_auroc"], repo)
    rows = list(csv.DictReader(table.splitlines()))
    col = next(c for c in rows[0] if "cinc2017-af.zeroshot.macro_auroc" in c)
    assert [r for r in rows if r["Experiment"] == "exp1"], table
    assert all(r[col] not in ("", "!", "-") for r in rows), table


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

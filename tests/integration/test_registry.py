"""Register, gate and serve models against a real MLflow server (SQLite store, loopback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
from servers import BIN, free_port, stop, wait_http

from ecgssl.config import EvaluateConfig, PretrainConfig
from ecgssl.data.table import read_manifest
from ecgssl.errors import EcgsslError
from ecgssl.evaluate.stage import run_evaluate
from ecgssl.registry.pyfunc import ECGModel
from ecgssl.registry.register import promote, register
from ecgssl.tracking import RunContext
from ecgssl.train.loop import pretrain

pytestmark = pytest.mark.integration
GATE = "zeroshot/cinc2017-af/macro_auroc"


@pytest.fixture(scope="module")
def evaluated(corpus, tables, tmp_path_factory, mlflow_server):
    """A tracked pretrain and evaluation (their runs are the lineage registrations point to)."""
    root = tmp_path_factory.mktemp("reg")
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server, experiment="lineage")
    pretrain(corpus["table"], corpus["text_emb"], root / "enc", PretrainConfig(
        method="mets+st", width=16, batch_size=16, max_steps=4, warmup_steps=1),
        progress=False, ctx=ctx)
    run_evaluate(root / "enc", tables["cinc2017"], "cinc2017-af", ["zeroshot", "probe"],
                 root / "eval", EvaluateConfig(probe_c=[0.1], bootstrap=20,
                                               cache=None),
                 fractions=[100], progress=False, ctx=ctx)
    return root


def _better(evaluated, folder, delta: float, shift: float, drop: int = 0):
    """An evaluation folder of the same encoder and test data whose zero-shot scores moved
    `shift` of the way towards the true labels (and the gate metric by `delta`); `drop`
    leaves that many test records out of its scores (an unpaired evaluation)."""
    import shutil

    from ecgssl.evaluate.scores import read_scores
    folder.mkdir()
    m = json.loads((evaluated / "eval/metrics.json").read_text())
    m[GATE] += delta
    (folder / "metrics.json").write_text(json.dumps(m))
    shutil.copy(evaluated / "eval/test_data.json", folder / "test_data.json")
    df, meta = read_scores(evaluated / "eval/scores.parquet")
    zs = df["mode"] == "zeroshot"
    for c in meta["classes"]:
        df.loc[zs, f"score.{c}"] = (1 - shift) * df.loc[zs, f"score.{c}"] + shift * df.loc[
            zs, f"y.{c}"]
    if drop:
        df = df.drop(df.index[zs][:drop])
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(
        {"ecgssl": json.dumps(meta)}), folder / "scores.parquet")
    return folder / "metrics.json"


def cli(*args, env):
    return subprocess.run([str(BIN / "ecgssl"), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=600)


def test_register_gate_load_and_serve(evaluated, corpus, mlflow_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}   # serve execs uvicorn from PATH
    name = "ecgssl-test-encoder"
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server)
    metrics = evaluated / "eval" / "metrics.json"
    v1 = register(evaluated / "enc", name, ctx, metrics_files=[metrics])
    p = cli("promote", "--name", name, "--metric", GATE, "--record", tmp_path / "d.json",
            env=env)
    assert p.returncode == 0 and "no champion yet" in p.stderr, p.stderr
    assert json.loads((tmp_path / "d.json").read_text())["promoted"] is True

    # Lineage and the model card: the version points at the pretrain run that made it.
    client = mlflow.MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("lineage").experiment_id])
    pre = next(r for r in runs if r.data.tags["stage"] == "pretrain")
    ev = next(r for r in runs if r.data.tags["stage"] == "evaluate")
    assert ev.data.tags["pretrain.run_id"] == pre.info.run_id
    assert ev.data.params["evaluate.bootstrap"] == "20" and "pretrain.method" in ev.data.params
    assert ev.inputs.dataset_inputs and pre.inputs.dataset_inputs     # tables as datasets
    assert ev.info.run_name.startswith("evaluate-cinc2017-af ")       # + a short id
    ver = client.get_model_version(name, v1.version)
    assert ver.tags["pretrain.run_id"] == pre.info.run_id
    assert ver.tags["pretrain.data_fingerprint"] == ver.tags["data.fingerprint"]
    for part in ("**Data**", "**Method**", "**Key metrics**", "zeroshot/cinc2017-af |",
                 "**Intended use**", "**Limits**"):
        assert part in ver.description, ver.description
    assert "@champion" in client.get_registered_model(name).description
    reg_run = client.get_run(v1.run_id)
    assert reg_run.data.params["name"] == name and "pretrain.lr" in reg_run.data.params
    assert "scores/cinc2017-af.parquet" in [
        a.path for a in client.list_artifacts(v1.run_id, "scores")]

    # Same scores again (another pipeline run's registration of the same model): a paired
    # delta of 0 is no win, the champion stays (exit 3).
    v2 = register(evaluated / "enc", name, replace(ctx, pipeline_run="same-again"),
                  metrics_files=[metrics])
    p = cli("promote", "--name", name, "--metric", GATE, env=env)
    assert p.returncode == 3 and "not a confident win" in p.stderr, p.stderr
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    assert client.get_model_version_by_alias(name, "challenger").version == v2.version

    # Scored on other records of the same test data: not paired, said so, refused.
    register(evaluated / "enc", name, ctx,
             metrics_files=[_better(evaluated, tmp_path / "fewer", 0.05, 0.9, drop=2)])
    d = promote(name, GATE, ctx, min_delta=0.01)
    assert not d.promoted and "not paired" in d.reason and "2 only the champion's" in d.reason

    # A challenger confidently better on the same test records wins.
    m = json.loads(metrics.read_text())
    v3 = register(evaluated / "enc", name, ctx,
                  metrics_files=[_better(evaluated, tmp_path / "eval", 0.05, 0.9)])
    d = promote(name, GATE, ctx, min_delta=0.01)
    assert d.promoted and d.challenger_value == pytest.approx(d.champion_value + 0.05)
    assert d.paired.ci_low > 0.01 and d.paired.n_items == m["data/cinc2017-af/test_records"]
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.version == v3.version
    assert champ.tags["promotion.decision"] == "promoted"
    assert float(champ.tags["promotion.ci_low"]) == pytest.approx(d.paired.ci_low, abs=1e-6)
    assert "**Promotion**" in champ.description and "promoted to @champion" in \
        champ.description
    assert champ.tags["git.commit"] and champ.tags["params.hash"]
    assert champ.tags["data.fingerprint"] == read_manifest(corpus["table"])["input_fingerprint"]
    old = client.get_model_version(name, v1.version)
    assert old.tags["promotion.role"] == "champion" and "promotion.champion_value" in old.tags
    assert old.tags["promotion.decision"] == "replaced"

    # Other test data: not comparable, refused.
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.json").write_text(json.dumps({**m, GATE: 0.99}))
    (other / "test_data.json").write_text(json.dumps({"cinc2017-af": "0000"}))
    register(evaluated / "enc", name, ctx, metrics_files=[other / "metrics.json"])
    d = promote(name, GATE, ctx)
    assert not d.promoted and "different cinc2017-af test data" in d.reason

    # Load the champion in a fresh process and predict.
    code = (f"import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/{name}@champion'); "
            "x = np.zeros((3, 12, 1000), np.float32); x[:, 1] = np.sin(np.arange(1000) / 9); "
            "print(m.predict(x).shape, m.predict(x, params={'labels': ['atrial fibrillation', "
            "'sinus rhythm']}).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, check=True).stdout
    assert "(3, 128) (3, 2)" in out, out          # width-16 resnet1d18: 128-d embeddings

    # Serve it over HTTP (no conda: the local environment).
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m",
                             f"models:/{name}@champion", "--env-manager", "local", "-h",
                             "127.0.0.1", "-p", str(port)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        body = json.dumps({"inputs": np.zeros((2, 12, 1000)).tolist(),
                           "params": {"labels": ["normal ecg", "atrial fibrillation",
                                                 "left bundle branch block"]}}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body,
                                     {"Content-Type": "application/json"})
        preds = json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]
        # zero-shot answers are labelled: one column per requested label
        assert [list(p) for p in preds] == [["normal ecg", "atrial fibrillation",
                                             "left bundle branch block"]] * 2
        np.testing.assert_allclose([sum(p.values()) for p in preds], 1.0, atol=1e-4)
    finally:
        stop(proc)


def test_classifier_model_and_input_validation(evaluated, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    r = register(evaluated / "enc", "ecgssl-cinc2017-af-classifier",
                 RunContext(enabled=True, tracking_uri=mlflow_server),
                 classifier=evaluated / "eval/classifier-probe",
                 metrics_files=[evaluated / "eval/metrics.json"])
    model = mlflow.pyfunc.load_model(r.model_uri)
    x = np.zeros((4, 12, 1000), np.float32)
    x[:, 0] = np.sin(np.arange(1000) / 9)
    probs = model.predict(x)
    assert probs.shape == (4, 4)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    raw = ECGModel()
    raw._load(evaluated / "enc")
    for bad, msg in [(np.zeros((2, 8, 1000), np.float32), "has 8 leads"),
                     (np.zeros((2, 12, 500), np.float32), "500 samples per lead"),
                     (np.zeros((12,), np.float32), r"must be \[N, 12, 1000\]"),
                     (np.full((1, 12, 1000), np.nan, np.float32), "NaN/inf"),
                     (np.array([["a"] * 1000] * 12), "numeric")]:
        with pytest.raises(EcgsslError, match=msg):
            raw.predict(None, bad)


# --- issue 14: nothing lost, nothing forged ------------------------------------------------------

def _params(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("promote:\n  metric: " + GATE + "\n")
    return p


def _metrics_with(evaluated, folder, delta: float):
    """An evaluation folder of the same encoder and test data, the gate metric moved by
    delta and the scores as much closer to the truth as makes the gain certain (what a
    better run of the same evaluation would write)."""
    return _better(evaluated, folder, delta, min(0.9, delta * 10))


def test_the_registered_model_is_code_not_a_pickle(evaluated, mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    r = register(evaluated / "enc", "ecgssl-code-model", RunContext(
        enabled=True, tracking_uri=mlflow_server),
        metrics_files=[evaluated / "eval/metrics.json"])
    client = mlflow.MlflowClient(mlflow_server)
    files = {a.path for a in client.list_artifacts(r.run_id, "model")}
    assert "model/python_model.pkl" not in files, files
    flavor = mlflow.models.get_model_info(r.model_uri).flavors["python_function"]
    assert flavor.get("model_code_path"), flavor
    model = mlflow.pyfunc.load_model(r.model_uri)
    x = np.zeros((2, 12, 1000), np.float32)
    x[:, 1] = np.sin(np.arange(1000) / 9)
    assert model.predict(x).shape == (2, 128)
    assert model.predict(x, params={"labels": ["sinus rhythm", "atrial fibrillation"]}).shape \
        == (2, 2)


def test_tracking_credentials_are_never_printed(mlflow_server, tmp_path):
    secret = "tok3n-never-print-me"
    uri = mlflow_server.replace("http://", f"http://alice:{secret}@")
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    p = cli("promote", "--name", "no-such-model", "--params", _params(tmp_path), env=env)
    assert p.returncode == 2
    assert secret not in p.stdout + p.stderr
    assert "has no @challenger" in p.stderr, p.stderr        # reachable, with its credentials
    assert "alice" not in p.stderr and "http://***@127.0.0.1" in p.stderr
    (tmp_path / "out").mkdir()
    p = cli("summary", tmp_path / "out", "--params", _params(tmp_path), env=env)
    assert secret not in p.stdout + p.stderr


def test_a_promote_that_lost_the_race_does_not_move_the_champion(evaluated, mlflow_server,
                                                                 monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("ECGSSL_CACHE_DIR", str(tmp_path / "cache-a"))
    name, ctx = "ecgssl-race", RunContext(enabled=True, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    v1 = register(evaluated / "enc", name, ctx, metrics_files=[evaluated / "eval/metrics.json"])
    assert promote(name, GATE, ctx).promoted
    v2 = register(evaluated / "enc", name, ctx,
                  metrics_files=[_metrics_with(evaluated, tmp_path / "better", 0.02)])
    # While promote A is deciding about v2, promote B (another machine: its own cache and
    # lock) registers v3, which is better still, and makes it the champion.
    original, fired = mlflow.MlflowClient.get_run, []

    def get_run(self, run_id):
        if not fired:
            fired.append(True)
            os.environ["ECGSSL_CACHE_DIR"] = str(tmp_path / "cache-b")
            try:
                v3 = register(evaluated / "enc", name, ctx, metrics_files=[
                    _metrics_with(evaluated, tmp_path / "best", 0.05)])
                assert promote(name, GATE, ctx).promoted
                fired.append(v3.version)
            finally:
                os.environ["ECGSSL_CACHE_DIR"] = str(tmp_path / "cache-a")
        return original(self, run_id)

    monkeypatch.setattr(mlflow.MlflowClient, "get_run", get_run)
    d = promote(name, GATE, ctx)
    monkeypatch.setattr(mlflow.MlflowClient, "get_run", original)
    v3 = fired[1]
    assert client.get_model_version_by_alias(name, "champion").version == v3
    assert not d.promoted and d.challenger == v2.version and "moved" in d.reason
    # Every decision about v1 is kept, not only the last: promoted (no champion yet), replaced
    # by v3 (B), and A's refused decision about v2 against it (which found it replaced).
    tags = client.get_model_version(name, v1.version).tags
    history = sorted(k for k in tags if k.startswith("promotion.history."))
    assert [json.loads(tags[k])["decision"] for k in history] == ["promoted", "replaced",
                                                                  "unchanged"], history


def test_the_served_model_answers_bad_input_with_a_400_and_our_message(evaluated,
                                                                     mlflow_server):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    r = register(evaluated / "enc", "ecgssl-serve-bad", RunContext(
        enabled=True, tracking_uri=mlflow_server),
        metrics_files=[evaluated / "eval/metrics.json"])
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", r.model_uri,
                             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def post(x, params=None):
        body = json.dumps({"inputs": x.tolist(), **({"params": params} if params else {})})
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body.encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    ok = np.zeros((1, 12, 1000))
    nan = ok.copy()
    nan[0, 3, 7] = np.nan
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        assert post(ok)[0] == 200
        for x, params, message in [
                (nan, None, "NaN/inf values (first at row 0, lead 3)"),
                (ok, {"lead_mask": [False] * 12}, "lead_mask is all false"),
                (ok, {"labels": []}, "labels is an empty list"),
                (ok, {"labels": [f"label {i}" for i in range(100)]}, "at most 64"),
                (ok, {"labels": ["x" * 5000]}, "5000 characters")]:
            status, body = post(x, params)
            assert status == 400, (status, body)
            assert message in body["message"], body
            assert "stack_trace" not in body and "Traceback" not in json.dumps(body)
            assert "site-packages" not in json.dumps(body)
    finally:
        stop(proc)


def test_a_killed_or_repeated_evaluate_never_pairs_two_encoders(evaluated, corpus, tables,
                                                                tmp_path, mlflow_server):
    import shutil
    import signal
    import time
    other = tmp_path / "enc-b"
    pretrain(corpus["table"], corpus["text_emb"], other, PretrainConfig(
        method="mets+st", width=16, batch_size=16, max_steps=2, warmup_steps=1, seed=7),
        progress=False)
    ev = tmp_path / "eval"
    shutil.copytree(evaluated / "eval", ev)               # encoder A's evaluation
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  probe_c: [0.01, 0.1, 1.0]\n  bootstrap: 10\n  cache: null\n")
    # Evaluate encoder B into the same folder and kill it once B's classifier is written.
    t0 = time.time()
    proc = subprocess.Popen([str(BIN / "ecgssl"), "evaluate", "--encoder", str(other),
                             "--data", str(tables["cinc2017"]), "--task", "cinc2017-af",
                             "--mode", "probe", "--label-fraction", "100", "--output", str(ev),
                             "--params", str(params), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.stat().st_mtime > t0 for p in tmp_path.rglob("classifier.json")):
            os.kill(proc.pid, signal.SIGKILL)            # B's classifier exists (somewhere)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "evaluate ended before it could be killed"
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server)
    # Whatever the folder holds now, its classifier and metrics are one encoder's: B's
    # classifier cannot be registered with them.
    with pytest.raises(EcgsslError, match="another encoder"):
        register(other, "ecgssl-mixed", ctx, classifier=ev / "classifier-probe",
                 metrics_files=[ev / "metrics.json"])
    # A complete evaluate of B into the folder replaces A's results instead of merging them.
    run_evaluate(other, tables["cinc2017"], "cinc2017-af", ["zeroshot"], ev,
                 EvaluateConfig(bootstrap=10, cache=None), progress=False)
    assert not any(k.startswith("probe") for k in json.loads((ev / "metrics.json").read_text()))
    assert not (ev / "classifier-probe").exists()
    with pytest.raises(EcgsslError, match="another encoder"):
        register(evaluated / "enc", "ecgssl-mixed", ctx, metrics_files=[ev / "metrics.json"])


# --- issue 15: models:/ and runs:/ URIs, batch predict, labelled calibrated serving -------------

REQUEST = Path(__file__).resolve().parents[2] / "data" / "sample" / "request.json"


def test_model_uris_predict_and_the_served_classifier(evaluated, tables, mlflow_server,
                                                      tmp_path):
    import pandas as pd

    from ecgssl.storage import ENCODER_HASH, encoder_hash
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
           "ECGSSL_CACHE_DIR": str(tmp_path / "cache"),
           "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    metrics = evaluated / "eval/metrics.json"
    enc = register(evaluated / "enc", "ecgssl-uri-encoder", ctx, metrics_files=[metrics])
    clf_name = "ecgssl-uri-classifier"
    clf = register(evaluated / "enc", clf_name, ctx, metrics_files=[metrics],
                   classifier=evaluated / "eval/classifier-probe")
    client.set_registered_model_alias(clf_name, "champion", clf.version)
    # The version carries a real input example (the shipped request's signal).
    info = mlflow.models.get_model_info(f"models:/{clf_name}/{clf.version}")
    assert info.saved_input_example_info is not None
    classes = json.loads((evaluated / "eval/classifier-probe/classifier.json").read_text())[
        "classes"]
    assert [c.name for c in info.signature.outputs.inputs] == classes

    # evaluate --encoder models:/NAME/VERSION measures the very encoder that was registered.
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  bootstrap: 10\n  probe_c: [0.1]\n  cache: null\n"
                      "tracking:\n  enabled: false\n")
    p = cli("evaluate", "--encoder", f"models:/ecgssl-uri-encoder/{enc.version}", "--data",
            tables["cinc2017"], "--task", "cinc2017-af", "--mode", "zeroshot", "--output",
            tmp_path / "ev", "--params", params, "--no-progress", env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "ev/test_data.json").read_text())[ENCODER_HASH] == \
        encoder_hash(evaluated / "enc")
    # runs:/ID/model works for register; an unknown alias is one clear error.
    p = cli("register", "--name", "ecgssl-uri-copy", "--encoder", f"runs:/{enc.run_id}/model",
            "--metrics", metrics, env=env)
    assert p.returncode == 0, p.stderr
    p = cli("predict", "--model", f"models:/{clf_name}@nosuchalias", "--data",
            tables["cinc2017"], "--output", tmp_path / "x.parquet", env=env)
    assert p.returncode == 2 and "nosuchalias" in p.stderr and "Traceback" not in p.stderr

    # predict --model models:/NAME@champion: class names are the columns, rows = table rows,
    # the same probabilities as the folder it was registered from.
    out = tmp_path / "preds.parquet"
    p = cli("predict", "--model", f"models:/{clf_name}@champion", "--data", tables["cinc2017"],
            "--output", out, "--no-progress", env=env)
    assert p.returncode == 0, p.stderr
    df = pd.read_parquet(out)
    assert list(df.columns) == ["ecg_id", "dataset", "record", "window", *classes]
    assert len(df) == read_manifest(tables["cinc2017"])["rows"]
    p = cli("predict", "--model", evaluated / "eval/classifier-probe", "--data",
            tables["cinc2017"], "--output", tmp_path / "folder.parquet", "--no-progress",
            env=env)
    assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(df, pd.read_parquet(tmp_path / "folder.parquet"))

    # Serve the champion and send the shipped request file: labelled, calibrated answers.
    port = free_port()
    proc = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m",
                             f"models:/{clf_name}@champion", "--env-manager", "local", "-h",
                             "127.0.0.1", "-p", str(port)], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", proc, timeout=180)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                     REQUEST.read_bytes(), {"Content-Type": "application/json"})
        preds = json.loads(urllib.request.urlopen(req, timeout=120).read())["predictions"]
    finally:
        stop(proc)
    assert len(preds) == 1 and list(preds[0]) == classes
    assert abs(sum(preds[0].values()) - 1) < 1e-4
    local = ECGModel()
    local._load(evaluated / "eval/classifier-probe")
    x = np.asarray(json.loads(REQUEST.read_text())["inputs"], np.float32)
    np.testing.assert_allclose(list(preds[0].values()), local.predict(None, x).iloc[0],
                               atol=1e-5)
    t = local.head_info["temperature"]
    raw = dict(local.head_info, temperature=1.0)
    local.head_info = raw
    if abs(t - 1) > 1e-3:                           # the served numbers are the calibrated ones
        assert not np.allclose(list(preds[0].values()), local.predict(None, x).iloc[0])


# --- review: the registry as a platform engineer meets it ---------------------------------------

def test_challenger_moves_only_to_a_version_that_is_fully_registered(evaluated, mlflow_server,
                                                                      monkeypatch, tmp_path):
    """A server hiccup while tagging a new version (a KFP retry follows) must not leave
    @challenger on a version without its test-data tags and card: the gate would then refuse
    it as 'different test data', or compare it blind."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name, ctx = "ecgssl-half-registered", RunContext(enabled=True, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    v1 = register(evaluated / "enc", name, ctx, metrics_files=[evaluated / "eval/metrics.json"])
    original = mlflow.MlflowClient.set_model_version_tag

    def flaky(self, *args, **kwargs):
        raise mlflow.exceptions.MlflowException("503 Service Unavailable")
    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", flaky)
    with pytest.raises(mlflow.exceptions.MlflowException):      # a new evaluation's metrics
        register(evaluated / "enc", name, ctx,
                 metrics_files=[_metrics_with(evaluated, tmp_path / "better", 0.02)])
    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", original)
    chal = client.get_model_version_by_alias(name, "challenger")
    assert chal.version == v1.version and "test_data.cinc2017-af" in chal.tags
    # The retry (the server back) finishes the version the failed attempt made, with its tags,
    # card and the tags of the attempt that logged it, instead of leaving it bare and logging
    # another beside it; a newer registration made meanwhile keeps @challenger.
    (half,) = [v for v in _versions(client, name) if v != int(v1.version)]
    bare = client.get_model_version(name, str(half))
    assert "ecgssl.registration" not in bare.tags and not bare.description
    newer = register(evaluated / "enc", name, ctx,
                     metrics_files=[_metrics_with(evaluated, tmp_path / "newer", 0.04)])
    retry = register(evaluated / "enc", name, ctx,
                     metrics_files=[tmp_path / "better" / "metrics.json"])
    assert retry.finished_earlier and retry.version == str(half)
    assert _versions(client, name) == [int(v1.version), half, int(newer.version)]
    done = client.get_model_version(name, retry.version)
    assert done.run_id == retry.run_id and "test_data.cinc2017-af" in done.tags
    assert done.tags["git.commit"] == client.get_run(done.run_id).data.tags["git.commit"]
    assert len(done.tags["ecgssl.registration"]) == 64 and "**Key metrics**" in done.description
    assert client.get_model_version_by_alias(name, "challenger").version == newer.version
    again = register(evaluated / "enc", name, ctx,
                     metrics_files=[tmp_path / "better" / "metrics.json"])
    assert again.existing and again == retry                  # and now it is simply found


def test_the_gate_and_promote_decide_about_the_version_this_run_registered(
        evaluated, mlflow_server, monkeypatch, tmp_path):
    """Two pipeline runs of one model (a schedule and a manual submit): run A registers v2,
    run B registers a better v3; A's gate must judge A's v2 (not whatever @challenger is now)
    and never promote B's model in A's name. A retried promote that already moved the
    champion succeeds."""
    from ecgssl.pipeline import steps
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name, ctx = "ecgssl-two-runs", RunContext(enabled=True, tracking_uri=mlflow_server)
    client = mlflow.MlflowClient(mlflow_server)
    register(evaluated / "enc", name, ctx, metrics_files=[evaluated / "eval/metrics.json"])
    assert promote(name, GATE, ctx).promoted                               # v1 champion
    params = json.dumps({"promote": {"metric": GATE, "min_delta": 0.005, "bootstrap": 200}})
    a = register(evaluated / "enc", name,                                  # run A: no better
                 replace(ctx, pipeline_run="two-runs-a"),
                 metrics_files=[evaluated / "eval/metrics.json"])
    b = register(evaluated / "enc", name,                                  # run B: better
                 replace(ctx, pipeline_run="two-runs-b"),
                 metrics_files=[_metrics_with(evaluated, tmp_path / "best", 0.05)])
    assert steps.gate(name, params, mlflow_server, model_uri=a.model_uri) is False
    champ = client.get_model_version_by_alias(name, "champion").version
    assert champ not in (a.version, b.version)
    # no promote task follows a refusal: the gate itself tells the registry why
    tags = client.get_model_version(name, a.version).tags
    assert tags["promotion.decision"] == "refused" and "not v" in tags["promotion.reason"]
    # a retried gate task (its pod died after deciding) adds no second record of it
    assert steps.gate(name, params, mlflow_server, model_uri=a.model_uri) is False
    again = client.get_model_version(name, a.version)
    assert sum(k.startswith("promotion.history.") for k in again.tags) == sum(
        k.startswith("promotion.history.") for k in tags)
    assert again.description.count("**Promotion**") == 1
    # B's own gate and promote; then B's promote task is retried (its pod died after the move)
    assert steps.gate(name, params, mlflow_server, model_uri=b.model_uri) is True
    steps.promote(name, params, mlflow_server, model_uri=b.model_uri)
    d = steps.promote(name, params, mlflow_server, model_uri=b.model_uri)
    assert client.get_model_version_by_alias(name, "champion").version == b.version
    assert "already" in d.reason


def _tracked(mlflow_server: str, monkeypatch):
    """The server as $MLFLOW_TRACKING_URI (the CLI's environment too), a run context and a
    client on it."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    return ({**os.environ}, RunContext(enabled=True, tracking_uri=mlflow_server),
            mlflow.MlflowClient(mlflow_server))


def _first_champion(evaluated, name: str, ctx: RunContext):
    """Register the evaluated model and promote it (no champion yet): v1, the champion."""
    v1 = register(evaluated / "enc", name, ctx, metrics_files=[evaluated / "eval/metrics.json"])
    assert promote(name, GATE, ctx).promoted
    return v1


def test_promote_with_a_registration_judges_that_version_only(evaluated, mlflow_server,
                                                               monkeypatch, tmp_path):
    """`promote --registration` (the DVC register stage's call): run A's record names A's
    version; once run B's better registration took @challenger, A's promote refuses (exit 3)
    instead of promoting B's model in A's name, and B's own promote wins."""
    name = "ecgssl-cli-registration"
    env, ctx, client = _tracked(mlflow_server, monkeypatch)
    v1 = _first_champion(evaluated, name, ctx)
    records = {}
    for run, metrics in (("a", evaluated / "eval/metrics.json"),
                         ("b", _metrics_with(evaluated, tmp_path / "best", 0.05))):
        r = register(evaluated / "enc", name, replace(ctx, pipeline_run=f"cli-{run}"),
                     metrics_files=[metrics])
        records[run] = tmp_path / f"{run}.json"
        records[run].write_text(json.dumps(r.to_dict()))      # what `register --record` writes
    p = cli("promote", "--name", name, "--metric", GATE, "--registration", records["a"],
            env=env)
    assert p.returncode == 3 and "not v" in p.stderr, p.stderr
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    p = cli("promote", "--name", name, "--metric", GATE, "--registration", records["b"],
            env=env)
    assert p.returncode == 0, p.stderr
    assert client.get_model_version_by_alias(name, "champion").version == \
        json.loads(records["b"].read_text())["version"]
    # a record of another model is a clear error (exit 2), not a decision about this one
    p = cli("promote", "--name", "ecgssl-other", "--metric", GATE, "--registration",
            records["b"], env=env)
    assert p.returncode == 2 and "not a version of 'ecgssl-other'" in p.stderr, p.stderr


# --- registering is idempotent: retries and reruns add no version -------------------------------

def _versions(client, name):
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))


def test_registering_the_same_again_returns_the_same_version(evaluated, mlflow_server,
                                                             monkeypatch, tmp_path):
    """A rerun of `ecgssl register` (or `dvc repro -f`) with the same inputs, outside any
    pipeline run, finds the first registration: no second run or version, the same record,
    and @challenger never moves back to it past a newer registration."""
    name = "ecgssl-idempotent"
    env, ctx, client = _tracked(mlflow_server, monkeypatch)
    metrics = evaluated / "eval/metrics.json"
    first = register(evaluated / "enc", name, ctx, metrics_files=[metrics])
    assert not first.existing
    runs = len(client.search_runs([client.get_experiment_by_name("ecgssl").experiment_id]))
    again = register(evaluated / "enc", name, ctx, metrics_files=[metrics])
    assert again == first and again.existing and again.to_dict() == first.to_dict()
    assert _versions(client, name) == [int(first.version)]
    assert len(client.search_runs([client.get_experiment_by_name("ecgssl").experiment_id])) \
        == runs                                                  # no second register run
    tags = client.get_model_version(name, first.version).tags
    assert len(tags["ecgssl.registration"]) == 64 and "test_data.cinc2017-af" in tags
    # The CLI says so, and its record is the first one's byte for byte.
    p = cli("register", "--name", name, "--encoder", evaluated / "enc", "--metrics", metrics,
            "--record", tmp_path / "r.json", env=env)
    assert p.returncode == 0, p.stderr
    assert f"already registered as version {first.version}" in p.stderr, p.stderr
    assert json.loads((tmp_path / "r.json").read_text()) == first.to_dict()
    # Other metrics are another registration; registering the first again after it leaves
    # @challenger on the newer one.
    newer = register(evaluated / "enc", name, ctx,
                     metrics_files=[_metrics_with(evaluated, tmp_path / "better", 0.02)])
    assert int(newer.version) > int(first.version) and not newer.existing
    assert register(evaluated / "enc", name, ctx, metrics_files=[metrics]) == first
    assert client.get_model_version_by_alias(name, "challenger").version == newer.version
    assert _versions(client, name) == [int(first.version), int(newer.version)]
    # A classifier is its own registration too, found again the same way.
    clf = [register(evaluated / "enc", "ecgssl-idempotent-clf", ctx,
                    classifier=evaluated / "eval/classifier-probe", metrics_files=[metrics])
           for _ in range(2)]
    assert clf[0] == clf[1] and clf[1].existing
    assert _versions(client, "ecgssl-idempotent-clf") == [int(clf[0].version)]


def test_two_pipeline_runs_of_the_same_model_each_register_a_version(evaluated, mlflow_server,
                                                                     monkeypatch):
    """The same encoder and metrics from two pipeline runs (the run name a Kubeflow pod or
    `ecgssl pipeline repro` hands over in $ECGSSL_PIPELINE_RUN): two versions, each linked to
    its run; a retry inside either run finds its own."""
    from ecgssl.config import TrackingConfig
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = "ecgssl-idempotent-runs"
    client = mlflow.MlflowClient(mlflow_server)
    metrics = [evaluated / "eval/metrics.json"]
    got = {}
    for run in ("run-a", "run-b", "run-a"):
        monkeypatch.setenv("ECGSSL_PIPELINE_RUN", run)
        ctx = RunContext.at_front_door(TrackingConfig(enabled=True))
        assert ctx.pipeline_run == run
        got.setdefault(run, []).append(register(evaluated / "enc", name, ctx,
                                                metrics_files=metrics))
    a, b = got["run-a"][0], got["run-b"][0]
    assert a.version != b.version and got["run-a"][1] == a and got["run-a"][1].existing
    assert _versions(client, name) == sorted([int(a.version), int(b.version)])
    assert client.get_run(a.run_id).data.tags["ecgssl.pipeline_run"] == "run-a"
    assert client.get_run(b.run_id).data.tags["ecgssl.pipeline_run"] == "run-b"
    # run A's retry did not take @challenger back from run B's newer version
    assert client.get_model_version_by_alias(name, "challenger").version == b.version


def test_a_retry_after_a_failed_alias_move_finishes_the_first_version(evaluated, mlflow_server,
                                                                      monkeypatch, tmp_path):
    """A Kubeflow register task whose pod dies after the version was created and tagged,
    while moving @challenger: its retry (same pipeline run) registers nothing new and moves
    @challenger to the version the first attempt made."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    name = "ecgssl-idempotent-retry"
    ctx = RunContext(enabled=True, tracking_uri=mlflow_server, pipeline_run="retry-run")
    client = mlflow.MlflowClient(mlflow_server)
    v1 = register(evaluated / "enc", name, replace(ctx, pipeline_run="earlier-run"),
                  metrics_files=[evaluated / "eval/metrics.json"])
    metrics = [_metrics_with(evaluated, tmp_path / "better", 0.02)]
    original, calls = mlflow.MlflowClient.set_registered_model_alias, []

    def dies_once(self, *args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise mlflow.exceptions.MlflowException("503 Service Unavailable")
        return original(self, *args, **kwargs)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", dies_once)
    with pytest.raises(mlflow.exceptions.MlflowException):
        register(evaluated / "enc", name, ctx, metrics_files=metrics)
    assert client.get_model_version_by_alias(name, "challenger").version == v1.version
    (made,) = [v for v in _versions(client, name) if v != int(v1.version)]
    retry = register(evaluated / "enc", name, ctx, metrics_files=metrics)
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", original)
    assert retry.existing and retry.version == str(made)
    assert retry.run_id == client.get_model_version(name, retry.version).run_id
    assert _versions(client, name) == [int(v1.version), made]           # exactly one new
    assert client.get_model_version_by_alias(name, "challenger").version == retry.version
    assert len(calls) == 2


def test_promote_version_rolls_the_champion_back_and_records_it(evaluated, mlflow_server,
                                                                 monkeypatch, tmp_path):
    """A bad champion is rolled back with `ecgssl promote --version N`: @champion moves to
    that existing version without the gate, the move is in the promotion history; an unknown
    version is a clear error (exit 2) that moves nothing."""
    name = "ecgssl-rollback"
    env, ctx, client = _tracked(mlflow_server, monkeypatch)
    v1 = _first_champion(evaluated, name, ctx)
    v2 = register(evaluated / "enc", name, ctx,
                  metrics_files=[_metrics_with(evaluated, tmp_path / "best", 0.05)])
    assert promote(name, GATE, ctx, force=True).promoted
    assert client.get_model_version_by_alias(name, "champion").version == v2.version
    p = cli("promote", "--name", name, "--metric", GATE, "--version", v1.version, env=env)
    assert p.returncode == 0, p.stderr
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    # The version rolled back from no longer holds @challenger: a later promote cannot
    # bring it back through the gate.
    assert "challenger" not in client.get_registered_model(name).aliases
    assert "removed" in client.get_model_version(name, v1.version).tags["promotion.reason"]
    with pytest.raises(EcgsslError, match="no @challenger"):
        promote(name, GATE, ctx)
    assert client.get_model_version_by_alias(name, "champion").version == v1.version
    tags = client.get_model_version(name, v1.version).tags
    assert tags["promotion.decision"] == "promoted" and "by hand" in tags["promotion.reason"]
    assert any(k.startswith("promotion.history.") and "by hand" in v for k, v in tags.items())
    p = cli("promote", "--name", name, "--metric", GATE, "--version", "99", env=env)
    assert p.returncode == 2 and "has no version '99'" in p.stderr, p.stderr
    assert client.get_model_version_by_alias(name, "champion").version == v1.version


def test_the_register_step_puts_the_headline_metrics_on_the_parent_run(evaluated,
                                                                      mlflow_server,
                                                                      monkeypatch):
    """Kubeflow's parent run carries the evaluations' headline metrics (as `pipeline repro`'s
    does): two scheduled retrains are compared by them in the runs list."""
    from ecgssl.pipeline import steps
    from ecgssl.tracking import start_pipeline_run
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("ECGSSL_PIPELINE_RUN", "headline-run")
    ctx = start_pipeline_run(RunContext(enabled=True, tracking_uri=mlflow_server),
                             "headline-run")
    steps.register(str(evaluated / "enc"), [str(evaluated / "eval")], "ecgssl-headline",
                   mlflow_server, ctx.parent_run_id)
    got = mlflow.MlflowClient(mlflow_server).get_run(ctx.parent_run_id).data.metrics
    want = json.loads((evaluated / "eval/metrics.json").read_text())[GATE]
    assert got[GATE] == pytest.approx(want)
    assert not any(k.endswith("_ci_low") for k in got)

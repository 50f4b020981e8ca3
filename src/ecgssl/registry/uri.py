"""Model URIs wherever an encoder or classifier folder is taken.

`models:/NAME@ALIAS`, `models:/NAME/VERSION` and `runs:/RUN_ID/PATH` are downloaded with
`mlflow.artifacts.download_artifacts` into the ecgssl cache and stand for the folder inside
them: our registered pyfunc model keeps the encoder (or classifier) folder as its `model_dir`
artifact, so `models:/ecgssl-mets-st-encoder@champion` is that folder. A `runs:/` path may name
the logged model (`runs:/ID/model`), its folder (`runs:/ID/model/artifacts/model_dir`) or any
artifact folder holding a config.json. Anything else (a local folder, s3://) is returned as is.

An alias is resolved to its version first and downloads are cached by version (model
versions and run artifacts do not change), so a moved @champion is never served stale.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ecgssl.errors import EcgsslError
from ecgssl.storage import _cache_root, redact, stable_hash

SCHEMES = ("models:/", "runs:/")
MODEL_DIR = "model_dir"          # the pyfunc artifact holding the folder (register.py)


def is_model_uri(uri) -> bool:
    return isinstance(uri, str) and uri.startswith(SCHEMES)


def resolve_model(uri: str | Path | None, tracking_uri: str | None = None) -> str | Path | None:
    """A local folder for a models:/ or runs:/ URI (downloaded once); other values unchanged."""
    if not is_model_uri(uri):
        return uri
    import mlflow
    from mlflow.exceptions import MlflowException
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    where = f"(tracking URI {redact(mlflow.get_tracking_uri())})"
    try:
        pinned = _pin(uri)
    except MlflowException as exc:
        raise EcgsslError(f"{uri}: no such model version or alias {where}: "
                          f"{exc.message.splitlines()[0]}") from None
    dest = _cache_root() / "models" / stable_hash([mlflow.get_tracking_uri(), pinned])[:20]
    folder = dest / "files"
    if not (dest / "complete").is_file():
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(folder))
        except (MlflowException, OSError) as exc:
            shutil.rmtree(dest, ignore_errors=True)
            raise EcgsslError(f"cannot download {uri} {where}: "
                              f"{str(exc).splitlines()[0]}") from None
        (dest / "complete").write_text(pinned + "\n")
    found = _model_folder(folder)
    if found is None:
        raise EcgsslError(f"{uri} holds no ecgssl model folder (config.json, or an MLflow "
                          f"model with a {MODEL_DIR} artifact)")
    return found


def _pin(uri: str) -> str:
    """models:/NAME@ALIAS -> models:/NAME/VERSION (what the alias points to now)."""
    if uri.startswith("models:/") and "@" in uri:
        from mlflow import MlflowClient
        name, _, alias = uri[len("models:/"):].partition("@")
        alias, _, rest = alias.partition("/")
        v = MlflowClient().get_model_version_by_alias(name, alias)
        return f"models:/{name}/{v.version}" + (f"/{rest}" if rest else "")
    return uri


def _model_folder(root: Path) -> Path | None:
    """The downloaded folder itself, its pyfunc's model_dir, or one such a level down."""
    for base in (root, *sorted(p for p in root.iterdir() if p.is_dir())) if root.is_dir() \
            else ():
        for cand in (base, base / "artifacts" / MODEL_DIR):
            if (cand / "config.json").is_file():
                return cand
    return None

"""KFP component: register the encoder in the MLflow registry as @challenger (see README.md)."""

from kfp.dsl import Dataset, Input, Model

IMAGE = "image"  # the KfpConfig field naming this component's base image


def register(encoder: Input[Model], evaluations: Input[list[Dataset]], model_name: str,
             params: str, tracking_uri: str, parent_run_id: str) -> str:
    """Returns the new version's URI, models:/<name>/<version>."""
    from ecgssl.pipeline import steps
    r = steps.register(encoder.path, [e.path for e in evaluations], model_name, tracking_uri,
                       parent_run_id, params)
    return r.model_uri

"""KFP component: register the encoder in the MLflow registry as @challenger (see README.md)."""


from kfp import dsl
from kfp.dsl import Dataset, Input, Model

from ecgssl.pipeline.build import settings

IMAGE = settings().image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register(encoder: Input[Model], evaluations: Input[list[Dataset]], model_name: str,
             tracking_uri: str, parent_run_id: str) -> str:
    """Returns the new version's URI, models:/<name>/<version>."""
    from ecgssl.pipeline import steps
    r = steps.register(encoder.path, [e.path for e in evaluations], model_name, tracking_uri,
                       parent_run_id)
    return r["model_uri"]

"""KFP component: METS / ST pretraining of the ECG encoder, on a GPU (see README.md)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ecgssl.pipeline.build import settings

IMAGE = settings().gpu_image


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def pretrain(table: Input[Dataset], embeddings: Input[Dataset], params: str, tracking_uri: str,
             model: Output[Model], metrics: Output[Metrics]):
    """Writes the encoder folder (safetensors + config + checkpoints) as a Model artifact."""
    from ecgssl.pipeline import steps
    m = steps.pretrain(table.path, embeddings.path, model.path, params, tracking_uri)
    for k, v in m.items():
        if isinstance(v, (int, float)):
            metrics.log_metric(k.replace("/", "."), float(v))
    model.metadata.update({"framework": "pytorch", "format": "safetensors"})

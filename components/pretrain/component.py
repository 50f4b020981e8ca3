"""KFP component: METS / ST pretraining of the ECG encoder, on a GPU (see README.md)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

IMAGE = "gpu_image"  # the KfpConfig field naming this component's base image


def pretrain(table: Input[Dataset], embeddings: Input[Dataset], params: str, tracking_uri: str,
             model: Output[Model], metrics: Output[Metrics]):
    """Writes the encoder folder (safetensors + config + checkpoints) as a Model artifact."""
    from ecgssl.pipeline import steps
    # model.uri: where the artifact goes, so checkpoints can outlive a killed pod (a retry
    # resumes from them)
    m = steps.pretrain(table.path, embeddings.path, model.path, params, tracking_uri,
                       model.uri)
    steps.publish_metrics(metrics, m.metrics())
    model.metadata.update({"framework": "pytorch", "format": "safetensors"})

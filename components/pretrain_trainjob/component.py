"""KFP component: multi-node pretraining as a Kubeflow Trainer TrainJob (see README.md)."""

from kfp.dsl import Dataset, Input, Metrics, Model, Output

IMAGE = "image"  # the launcher is light; the nodes run `job`'s image (kfp.gpu_image)


def pretrain_trainjob(table: Input[Dataset], embeddings: Input[Dataset], params: str,
                      tracking_uri: str, job: str, model: Output[Model],
                      metrics: Output[Metrics]):
    """Launches the TrainJob, waits for it and writes its run folder as the Model artifact."""
    from ecgssl.pipeline import steps
    m = steps.pretrain_trainjob(table.uri, embeddings.uri, model.uri, model.path, job, params,
                                tracking_uri)
    steps.publish_metrics(metrics, m)
    model.metadata.update({"framework": "pytorch", "format": "safetensors"})

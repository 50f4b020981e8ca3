"""KFP component: fine-tune the encoder on one task at each label fraction, on a GPU."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

IMAGE = "gpu_image"  # the KfpConfig field naming this component's base image


def finetune(encoder: Input[Model], table: Input[Dataset], task: str, params: str,
             tracking_uri: str, evaluation: Output[Dataset], metrics: Output[Metrics],
             report: Output[HTML]):
    """Fine-tuning (against the random twin) as an evaluation: metrics, plots, classifier."""
    from ecgssl.pipeline import steps
    m = steps.evaluate(encoder.path, table.path, task, ["finetune"], evaluation.path, params,
                       tracking_uri)
    steps.publish_evaluation(m.metrics, evaluation.path, f"fine-tune {task}", metrics, report)

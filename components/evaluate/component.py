"""KFP component: zero-shot and linear-probe evaluation of one task (see README.md)."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

IMAGE = "image"  # the KfpConfig field naming this component's base image


def evaluate(encoder: Input[Model], table: Input[Dataset], task: str, modes: list[str],
             params: str, tracking_uri: str, evaluation: Output[Dataset],
             metrics: Output[Metrics], report: Output[HTML]):
    """Writes metrics.json, test_data.json, plots and classifiers into `evaluation`."""
    from ecgssl.pipeline import steps
    m = steps.evaluate(encoder.path, table.path, task, modes, evaluation.path, params,
                       tracking_uri)
    steps.publish_evaluation(m.metrics, evaluation.path, f"evaluate {task}", metrics, report)

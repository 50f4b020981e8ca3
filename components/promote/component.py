"""KFP components: the promotion gate and the promotion it guards (see README.md)."""


IMAGE = "image"  # the KfpConfig field naming this component's base image


def gate(model_name: str, model_uri: str, params: str, tracking_uri: str) -> bool:
    """True when the version this run registered (`model_uri`, register's output) is still
    @challenger and beats @champion on the gate metric (same test data)."""
    from ecgssl.pipeline import steps
    return steps.gate(model_name, params, tracking_uri, model_uri)


def promote(model_name: str, model_uri: str, params: str, tracking_uri: str) -> str:
    """Move @champion to the version this run registered; returns the decision's reason."""
    from ecgssl.pipeline import steps
    return steps.promote(model_name, params, tracking_uri, model_uri).reason

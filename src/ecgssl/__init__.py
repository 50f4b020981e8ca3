"""ecgssl: self-supervised ECG foundation models, from WFDB to a model registry."""

__version__ = "0.1.0"

"""The registered pyfunc model as code (MLflow "models from code").

`register` logs this file instead of a cloudpickle of the model object: loading the model runs
this file with the ecgssl package shipped beside it (code_paths), so whoever can write the
artifact store can no longer plant a pickle that runs code wherever the model is loaded.
Weights travel as safetensors and config as JSON in the `model_dir` artifact.
"""

from mlflow.models import set_model

from ecgssl.registry.pyfunc import ECGModel

set_model(ECGModel())

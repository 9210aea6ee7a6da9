"""Models-from-code entry point of the registered pyfunc: MLflow executes this file to obtain the python
model, so a registered version holds no pickled class (orchestrator/pyfunc.py has the code)."""
from mlflow.models import set_model

from orchestrator.pyfunc import FsadModel

set_model(FsadModel())

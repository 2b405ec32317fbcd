"""The code of a logged policy model, run by MLflow when it loads one ("models from code"): the model object is
built here from slate-rl's class, never unpickled, and reads its weights from the model's `policy` artifact as
tensors and plain values. Not imported by slate-rl itself."""

from mlflow.models import set_model

from slate_rl.tracking.models import SlatePolicyModel

set_model(SlatePolicyModel())

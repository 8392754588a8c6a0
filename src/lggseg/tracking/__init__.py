"""MLflow and DVC bookkeeping: run logging, the model registry and aliases, `lggseg exps`.
Imports lggseg.core only; used by the stages (training, evaluation, prediction), never by data or model."""

"""MLflow and DVC bookkeeping: the store (store), run logging (runs), the model registry and aliases (registry),
`lggseg exps` (experiments). Imports lggseg.core only; used by the stages (training, evaluation, prediction),
never by data or model."""

"""The evaluate and compare stages and cross-validation: held-out metrics with intervals and paired tests,
the champion, and every figure. Imports the layers below it (training, model, metrics, tracking, data, core)."""

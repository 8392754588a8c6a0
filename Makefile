# Two set-up commands: `make demo` (whole pipeline on synthetic data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
# `dvc exp run` commits experiment refs; this identity is used only where git has none configured
export GIT_AUTHOR_NAME ?= lggseg demo
export GIT_AUTHOR_EMAIL ?= demo@lggseg.invalid
export GIT_COMMITTER_NAME ?= lggseg demo
export GIT_COMMITTER_EMAIL ?= demo@lggseg.invalid

# Small settings: the demo runs in a few minutes on 2 CPU cores, offline, with no Kaggle account.
DEMO_SETTINGS := \
	-S data.source=synthetic \
	-S data.synthetic.patients=24 -S data.synthetic.slices_min=20 -S data.synthetic.slices_max=24 \
	-S preprocess.size=64 \
	-S model.encoder=resnet18 -S model.encoder_weights=null \
	-S train.epochs=8 -S train.batch_size=16 -S train.lr=0.002 -S train.loss=bce_dice -S train.num_workers=0 \
	-S mlflow.experiment=lggseg-demo

.PHONY: install demo test repro mlflow-ui

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 dvc exp run $(DEMO_SETTINGS)
	@echo
	@cat reports/comparison.md
	@echo "Demo finished. Next:"
	@echo "  reports/comparison.md           U-Net vs FPN, per-patient Dice first (dvc metrics show: every number)"
	@echo "  reports/<arch>/figures/          overlays, montages, Dice per patient, ROC, training curves"
	@echo "  dvc exp show / dvc plots show    experiments and plots (open dvc_plots/index.html)"
	@echo "  make mlflow-ui                   MLflow UI at http://127.0.0.1:5000 (experiment lggseg-demo)"
	@echo "  git checkout params.yaml         put the full-size defaults back (the demo set small ones)"

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

repro: install
	dvc repro

mlflow-ui: install
	mlflow ui --backend-store-uri sqlite:///$(abspath mlruns)/mlflow.db --host 127.0.0.1 --port 5000

# Two set-up commands: `make demo` (whole pipeline on synthetic data) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin

export PATH := $(BIN):$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
# `dvc exp run` commits the experiment (in refs/exps/, not on your branch) and needs a git identity:
# yours when git has one, else this stand-in
ifeq ($(shell git config user.name),)
export GIT_AUTHOR_NAME ?= lggseg demo
export GIT_COMMITTER_NAME ?= lggseg demo
endif
ifeq ($(shell git config user.email),)
export GIT_AUTHOR_EMAIL ?= demo@lggseg.invalid
export GIT_COMMITTER_EMAIL ?= demo@lggseg.invalid
endif

# Small settings: the demo runs in a few minutes on 2 CPU cores, offline, with no Kaggle account.
DEMO_SETTINGS := \
	-S data.source=synthetic \
	-S data.synthetic.patients=24 -S data.synthetic.slices_min=20 -S data.synthetic.slices_max=24 \
	-S preprocess.size=64 \
	-S model.encoder=resnet18 -S model.encoder_weights=null \
	-S train.epochs=8 -S train.batch_size=16 -S train.lr=0.002 -S train.loss=bce_dice -S train.num_workers=0 \
	-S mlflow.experiment=lggseg-demo

# more -S settings, applied last (the tests shrink the demo further with it)
DEMO_EXTRA ?=
PYTEST_ARGS ?=

.PHONY: install demo predict-demo exps lint docs test test-slow bench cv repro repro-cpu push pull mlflow-ui

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	@touch $@

install: $(VENV)/.installed

# The demo runs as a DVC experiment in a temporary copy (--temp): params.yaml and the workspace stay as
# they are (git status stays clean); results land in the experiment `demo`, DVC's cache and MLflow.
demo: install
	@dvc exp remove demo >/dev/null 2>&1 || true  # a rerun replaces the previous demo experiment
	HF_HUB_OFFLINE=1 dvc exp run --temp --name demo $(DEMO_SETTINGS) $(DEMO_EXTRA)
	@echo
	@lggseg exps
	@echo
	@echo "Demo finished: experiment demo above, trained and tested on synthetic data."
	@echo "params.yaml and the workspace are unchanged. Next:"
	@echo "  make exps                        the demo beside your other experiments (dvc exp show, narrowed)"
	@echo "  make mlflow-ui                   MLflow UI; prints the link to the runs sorted by test per-patient Dice"
	@echo "  dvc plots diff demo              every plot and figure of the demo -> dvc_plots/index.html"
	@echo "  dvc exp apply demo               the demo's outputs and params into the workspace, to browse reports/"
	@echo "  make predict-demo                lggseg predict: the champion on new synthetic tif, NIfTI and DICOM scans"

# After `make demo`: `lggseg predict` with the demo's champion on new (synthetic) scans; predictions/ is
# ignored by git. Models trained on synthetic data are registered as lgg-synthetic-*, apart from real ones
predict-demo: install
	@rm -rf predictions/demo-scans
	@lggseg synth predictions/demo-scans --patients 3 --seed 7 >/dev/null
	lggseg predict predictions/demo-scans/kaggle_3m --model models:/lgg-synthetic-segmentation@champion \
		--out predictions/demo --overwrite
	@lggseg synth predictions/demo-scans --layout nifti --patients 3 --seed 7 >/dev/null
	lggseg predict predictions/demo-scans/synthetic_nifti/imagesTr --model models:/lgg-synthetic-segmentation@champion \
		--out predictions/demo-nifti --overwrite
	@lggseg synth predictions/demo-scans --layout dicom --patients 1 --seed 8 >/dev/null
	lggseg predict predictions/demo-scans/synthetic_dicom/SYNTH_*/ --model models:/lgg-synthetic-segmentation@champion \
		--out predictions/demo-dicom --overwrite
	@echo "Reports: predictions/demo/index.html (tif), predictions/demo-nifti/index.html (NIfTI masks beside),"
	@echo "         predictions/demo-dicom/*/report.html (the mask as NIfTI in the series' geometry)"

exps: install  # `dvc exp show` at terminal width: per-patient Dice (%) per architecture, the params that differ
	@lggseg exps

# `make lint`: the import layers (lint-imports), lint and import order (ruff), types (mypy); each is set
# up in pyproject.toml, and the pre-commit hooks (.pre-commit-config.yaml) run the same three
lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/mypy

# `make docs`: the pages in docs/ (nav in mkdocs.yml) as a static site in site/, offline; --strict fails on
# any broken link between the pages
docs: install
	$(BIN)/mkdocs build --strict

# `make test`: every test but those marked slow (end-to-end DVC, remote, server, browser, kill and CV runs),
# about 11 minutes on 2 cores; `make test-slow` runs those (about 35 minutes); CI runs both. A `-m` in
# PYTEST_ARGS replaces TEST_MARKS.
TEST_MARKS ?= not slow
test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "$(TEST_MARKS)" $(PYTEST_ARGS)

test-slow: install
	@$(MAKE) --no-print-directory test TEST_MARKS=slow

# Speed of every costly step beside a naive baseline (CPU here, the same command on a CUDA machine):
# benchmarks/results/<host-kind>-<device>.{json,md} and docs/benchmarks.md. BENCH_ARGS=--tiny: seconds.
BENCH_ARGS ?=
bench: install
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Cross-validation over every patient: one DVC experiment per fold (queued, run by `dvc queue start`),
# out-of-fold report in reports/cv/ and a parent MLflow run. CV_SETTINGS: `-S key=value` for every fold.
CV_FOLDS ?= 5
CV_JOBS ?= 1
CV_SETTINGS ?=
cv: install
	HF_HUB_OFFLINE=1 lggseg cv --folds $(CV_FOLDS) --jobs $(CV_JOBS) $(CV_SETTINGS)

repro: install
	dvc repro

# The CPU recipe: U-Net and FPN on the full real set on 2 CPU cores in under an hour, no pretrained weights
# (docs/results.md). It runs as the DVC experiment `cpu-recipe` in a temporary copy, like the demo.
# CPU_EXTRA: more -S settings, e.g. -S data.source=local -S data.local_path=/abs/path/lgg-mri-segmentation.zip
CPU_RECIPE := \
	-S preprocess.size=128 \
	-S model.encoder=resnet18 -S model.encoder_weights=null \
	-S train.epochs=18 -S train.batch_size=16 -S train.lr=0.001 -S train.scheduler=cosine \
	-S train.loss=bce_dice -S train.tumor_fraction=0.5 -S train.num_workers=0 \
	-S evaluate.tta=true \
	-S mlflow.experiment=lggseg-cpu
CPU_EXTRA ?=
# the temporary copy has no data/raw/: an archive saved there (see `make repro`) is passed by its absolute path
LOCAL_ARCHIVE := $(wildcard $(abspath data/raw/lgg-mri-segmentation.zip))
repro-cpu: install
	@dvc exp remove cpu-recipe >/dev/null 2>&1 || true  # a rerun replaces the previous one
	@start=$$(date +%s); \
	HF_HUB_OFFLINE=1 dvc exp run --temp --name cpu-recipe $(CPU_RECIPE) \
		$(if $(LOCAL_ARCHIVE),-S data.local_path=$(LOCAL_ARCHIVE)) $(CPU_EXTRA) && \
	echo && lggseg exps && echo && echo "CPU recipe finished in $$(( ($$(date +%s) - start) / 60 )) min"

# Share results through the DVC remote (default: the folder ../lggseg-dvc-store; see docs/mlflow.md,
# "Share and compare", for S3/GCS/Azure/SSH): push after a run, pull instead of retraining
push: install
	dvc push --run-cache

pull: install
	dvc pull --run-cache

# MLflow 3.17's UI opens on its GenAI home; the links printed first open each lggseg experiment's runs in the
# saved view "Test Dice" (sorted by test per-patient Dice, Dice columns shown; an experiment tag lggseg sets).
# UI telemetry is off by the server's environment: MLFLOW_DISABLE_TELEMETRY=true, exported above
mlflow-ui: install
	@mkdir -p mlruns
	@MLFLOW_TRACKING_URI=sqlite:///$(abspath mlruns)/mlflow.db lggseg mlflow-link --ui http://127.0.0.1:5000 || true
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///$(abspath mlruns)/mlflow.db \
		--host 127.0.0.1 --port 5000 --workers 1

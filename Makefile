# SAMRI for MONAI Label. `make run` serves the app; `make test` runs the whole suite.
# Both create .venv and install everything from requirements.txt on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.samri-installed
STUDIES ?= data/studies
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL ?= samri_lite
CONF ?=

.PHONY: setup sysdeps sample-data run test test-fast lint bench clean default-decoder evaluate heldout sysdeps-ohif run-ohif al-sim fuzz

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Debian's mricron-data adds Colin27 + AAL labels to the sample studies (optional: MNI152 alone otherwise).
sysdeps:
	@if [ -d /usr/share/mricron/templates ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data) >/dev/null \
		|| echo "mricron-data not installed: sample data falls back to MNI152 only"; \
	else echo "no apt-get/root: sample data uses MNI152 only"; fi

setup: sysdeps $(STAMP)

sample-data: setup
	$(VENV)/bin/samri sample-data $(STUDIES)

# OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads from spinning against the request thread.
run: sample-data
	OMP_WAIT_POLICY=PASSIVE $(PY) -m monailabel.main start_server --app apps/samri --studies $(STUDIES) \
		--host $(HOST) --port $(PORT) --conf model $(MODEL) $(CONF)

# OHIF path: Debian's Orthanc + DICOMweb plugin, and chromium + chromedriver for the browser test.
sysdeps-ohif:
	@if [ -x /usr/sbin/Orthanc ] && [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
		&& command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb \
			chromium chromium-driver) >/dev/null \
		|| echo "orthanc/chromium not installed: the OHIF/Orthanc tests will be skipped"; \
	else echo "no apt-get/root: install orthanc orthanc-dicomweb chromium chromium-driver for the OHIF path"; fi

# Orthanc (loopback, storage in $(ORTHANC_STORAGE)) with the sample studies as DICOM MR series, and the
# app serving it over DICOMweb: OHIF at http://$(HOST):$(PORT)/ohif/. OHIF_LABELS=--labels also uploads
# the sample labels as DICOM SEG.
ORTHANC_STORAGE ?= data/orthanc
ORTHANC_PORT ?= 8043
OHIF_LABELS ?=
run-ohif: sample-data sysdeps-ohif
	$(VENV)/bin/samri dicom serve --storage $(ORTHANC_STORAGE) --orthanc-port $(ORTHANC_PORT) \
		--studies $(STUDIES) $(OHIF_LABELS) --host $(HOST) --port $(PORT) --conf model $(MODEL) $(CONF)

# make test: ruff, then the whole suite (~15 min on 2 cores); make test-fast: ruff, then everything not
# marked slow (no real weights, no long server runs).
lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow"

# The seeded fuzz suite at full size: malformed requests against a real server (tests/apps/test_fuzz.py;
# make test runs it with 300). FUZZ_SEED picks another sequence.
FUZZ_COUNT ?= 2000
FUZZ_SEED ?= 0
fuzz: sample-data
	SAMRI_FUZZ_COUNT=$(FUZZ_COUNT) SAMRI_FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q -rA tests/apps/test_fuzz.py

bench: sample-data
	$(VENV)/bin/samri bench --json docs/bench.json --markdown docs/BENCHMARKS.md --http --clients 4

clean:
	rm -rf $(VENV) data

# Retrain the shipped samri_lite decoder (MNI152 tissues + Colin27 AAL only); see lib/samri/train/recipe.py.
default-decoder: sample-data
	$(VENV)/bin/samri default-decoder --out lib/samri/assets/samri_lite_decoder.pt

# docs/EVALUATION.md: SAMRI's protocol on the sample studies (see docs/evaluation/PREAMBLE.md)
EVAL_DIR ?= docs/evaluation
# embeddings kept on disk so make evaluate / make heldout re-runs only decode
EVAL_CACHE ?= data/embedding_cache
EVAL_MODELS ?= --model litemedsam --model samri_lite
EVAL_LABELS ?= Caudate_L,Caudate_R,Putamen_L,Putamen_R,Pallidum_L,Pallidum_R,Thalamus_L,Thalamus_R,Hippocampus_L,Hippocampus_R,Amygdala_L,Amygdala_R,Insula_L,Cingulum_Ant_L,Precentral_L,Cerebelum_6_L,grey_matter,white_matter
EVAL_LABELS_3D ?= Caudate_L,Caudate_R,Putamen_L,Putamen_R,Thalamus_L,Thalamus_R
COLIN := --image $(STUDIES)/colin27_t1.nii.gz --label $(STUDIES)/labels/final/colin27_t1.nii.gz
MNI := --image $(STUDIES)/mni152_t1.nii.gz --label $(STUDIES)/labels/final/mni152_t1.nii.gz

evaluate: sample-data
	$(VENV)/bin/samri evaluate $(COLIN) $(MNI) --labels $(EVAL_LABELS) $(EVAL_MODELS) \
		--prompts box,point,box+point --axis 2 --mode 2d --slice-step 3 --max-pairs 6 \
		--variant bias --variant inverted --cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/2d
	$(VENV)/bin/samri evaluate $(COLIN) --labels $(EVAL_LABELS_3D) $(EVAL_MODELS) \
		--prompts box,box+point --axis 2 --mode 3d --cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/3d
	$(PY) -m samri.evaluation.report $(EVAL_DIR)/2d $(EVAL_DIR)/3d --doc docs/EVALUATION.md \
		--command "make evaluate" --preamble $(EVAL_DIR)/PREAMBLE.md

# docs/decoder-heldout: the shipped decoder vs plain LiteMedSAM on structures and contrasts no training saw:
# Colin27's Brodmann areas (mricron-data; value N = area N, configs/brodmann_names.json), original and
# bias-field / inverted-T1 / noise copies.
MRICRON_DIR ?= /usr/share/mricron/templates
HELDOUT_MODELS ?= --model litemedsam --model samri_lite
heldout: sample-data
	$(VENV)/bin/samri evaluate --image $(STUDIES)/colin27_t1.nii.gz --label $(MRICRON_DIR)/brodmann.nii.gz \
		--label-names configs/brodmann_names.json $(HELDOUT_MODELS) --prompts box,box+point,point --axis 2 \
		--mode 2d --slice-step 6 --max-pairs 3 --variant bias --variant inverted --variant noise \
		--cache-dir $(EVAL_CACHE) --out docs/decoder-heldout

# docs/al-sim + docs/ACTIVE_LEARNING.md: simulated annotation loop, SAMRI strategies vs MONAI Label's random
# (settings: `simulation` in configs/activelearning.yaml; CPU heavy: ~25 min on 2 cores)
AL_SIM_WORK ?= data/al-sim
al-sim: sample-data
	nice -n 10 $(VENV)/bin/samri al-sim --work-dir $(AL_SIM_WORK) --out docs/al-sim

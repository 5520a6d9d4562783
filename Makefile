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

.PHONY: setup sysdeps sample-data run test test-fast lint bench bench-backends bench-vit-b bench-vit-l bench-vit-h bench-limits bench-cuda evaluate-backends evaluate-ohif clean default-decoder evaluate heldout sysdeps-ohif run-ohif al-sim al-effort fuzz test-split val-split validate-3d adapt-cohort adapt-sim oracle propagation-gap click-response

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

# BACKENDS: inference backends measured side by side with PyTorch eager (samri.bench.backends), also with a
# second process busy on every core (--contention). auto = what the server serves on this machine.
BACKENDS ?= --backend torch --backend auto --contention --volume
bench: sample-data
	$(VENV)/bin/samri bench --json docs/bench.json --markdown docs/BENCHMARKS.md --http --clients 4 $(BACKENDS)

# Only the backend comparison: updates its section of docs/BENCHMARKS.md.
bench-backends: sample-data
	$(VENV)/bin/samri bench --backends-only $(BACKENDS) --json docs/bench-backends.json --markdown docs/BENCHMARKS.md

# The backend comparison for SAM ViT-B (1024 px) with random weights (its checkpoint cannot be downloaded
# here; speed does not depend on the weights): its own section of docs/BENCHMARKS.md. The first run exports
# the encoder (~2 min on 2 cores).
bench-vit-b: sample-data
	$(VENV)/bin/samri bench --backends-only --model sam_vit_b --random-weights --backend torch --backend auto \
		--repeats 5 --json docs/bench-vit-b.json --markdown docs/BENCHMARKS.md

# The same for SAM ViT-L (its own section; the first run exports the encoder, ~6.5 min on 2 cores, and eager
# takes ~45 s per slice: about 16 min in all).
bench-vit-l: sample-data
	$(VENV)/bin/samri bench --backends-only --model sam_vit_l --random-weights --backend torch --backend auto \
		--repeats 5 --json docs/bench-vit-l.json --markdown docs/BENCHMARKS.md

# The same for SAM ViT-H (its own section; about twice ViT-L's time: the export and eager ~1.5 min per slice,
# so 3 repeats).
bench-vit-h: sample-data
	$(VENV)/bin/samri bench --backends-only --model sam_vit_h --random-weights --backend torch --backend auto \
		--repeats 3 --json docs/bench-vit-h.json --markdown docs/BENCHMARKS.md

# Each bench figure as a fraction of this CPU's limit: FLOPs (torch.utils.flop_counter) over dense-matmul
# speed per runtime and precision (samri.bench.limits; about a minute, reads the bench JSONs above).
bench-limits: sample-data
	$(PY) -m samri.bench.limits docs/bench.json docs/bench-vit-b.json docs/bench-vit-l.json docs/bench-vit-h.json \
		--json docs/bench-limits.json --markdown docs/BENCHMARKS.md

# On a machine with an NVIDIA GPU: the PyTorch CUDA path (encoder throughput, clicks, 3D, whole stack, training
# steps, SAM ViT-B with random weights): its own section of docs/BENCHMARKS.md (samri.bench.gpu).
bench-cuda: sample-data
	$(VENV)/bin/samri bench --device cuda --json docs/bench-cuda.json --markdown docs/BENCHMARKS.md

clean:
	rm -rf $(VENV) data

# Retrain the shipped samri_lite decoder (MNI152 tissues + Colin27 AAL only) in five stages: prompts,
# corrective clicks from the first stage's decoder, clicks with Colin27's pseudo-structures added, the same
# with a lighter click loss, then finer white-matter parcels and tract-like tubes, chosen on the AAL
# validation structures and the validation cohort's structures, pooled (never the test split);
# see lib/samri/train/recipe.py and docs/DECODER.md.
default-decoder: sample-data val-split
	$(VENV)/bin/samri default-decoder --out data/default-decoder/stage1_decoder.pt
	$(VENV)/bin/samri default-decoder --init-decoder data/default-decoder/stage1_decoder.pt \
		--config configs/training_default_decoder_clicks.yaml --out data/default-decoder/stage2_decoder.pt
	$(VENV)/bin/samri default-decoder --init-decoder data/default-decoder/stage2_decoder.pt \
		--config configs/training_default_decoder_pseudo.yaml --out data/default-decoder/stage3_decoder.pt
	$(VENV)/bin/samri default-decoder --init-decoder data/default-decoder/stage3_decoder.pt \
		--config configs/training_default_decoder_light_clicks.yaml --out data/default-decoder/stage4_decoder.pt
	$(VENV)/bin/samri default-decoder --init-decoder data/default-decoder/stage4_decoder.pt \
		--config configs/training_default_decoder_tracts.yaml --validation-cohort $(VAL_SPLIT) \
		--validation-labels $(VAL_COHORT_LABELS) --out lib/samri/assets/samri_lite_decoder.pt

# The test split (docs/EVALUATION.md): pseudo-subjects no training or checkpoint choice saw.
TEST_SPLIT ?= data/test-split
test-split: sample-data
	$(VENV)/bin/samri cohort $(TEST_SPLIT) --subjects 4 --seed 0

# The validation cohort (docs/EVALUATION.md, "Which data is in which split"): the test split's generator with
# another seed, scored on JHU / Harvard-Oxford structures that are neither test structures nor their twins
# (samri.evaluation.splits). It chooses the 3D rules for structures of the test split's kind; never scored in
# docs/EVALUATION.md.
VAL_SPLIT ?= data/val-split
val-split: sample-data
	$(VENV)/bin/samri cohort $(VAL_SPLIT) --subjects 2 --seed 1
VAL_SUBJECTS := $(foreach s,cohort_s00_t1 cohort_s01_t2like,--image $(VAL_SPLIT)/$(s).nii.gz --label $(VAL_SPLIT)/labels/final/$(s).nii.gz)
VAL_COHORT_LABELS = $(shell $(PY) -m samri.evaluation.splits $(VAL_SPLIT)/label_names.json --exclude $(EVAL_LABELS))

# 3D clicks on the validation cohort, both models, first box and point, 3 interactions (about 9 min);
# PROPAGATION="--propagation KEY=VALUE" tries a stop rule, VAL3D_DIR another output folder.
VAL3D_DIR ?= data/val3d/run
validate-3d: val-split
	$(VENV)/bin/samri evaluate $(VAL_SUBJECTS) --labels $(VAL_COHORT_LABELS) $(EVAL_MODELS) --protocol clicks \
		--first box,point --max-clicks 3 --axis 2 --mode 3d --seed 0 --cache-dir $(EVAL_CACHE) --out $(VAL3D_DIR) \
		$(PROPAGATION)

# docs/EVALUATION.md: clicks to an accurate mask on the test split, 2D and 3D, first box and first point
# (see docs/evaluation/PREAMBLE.md). A fixed subset of structures (both atlases, both sides) bounds the CPU time.
EVAL_DIR ?= docs/evaluation
# embeddings kept on disk so re-runs only decode
EVAL_CACHE ?= data/embedding_cache
EVAL_MODELS ?= --model litemedsam --model samri_lite
EVAL_LABELS ?= jhu_genu_of_corpus_callosum,jhu_splenium_of_corpus_callosum,jhu_cerebral_peduncle_l,jhu_anterior_limb_of_internal_capsule_r,jhu_posterior_limb_of_internal_capsule_l,jhu_superior_corona_radiata_r,jhu_external_capsule_l,jhu_cingulum_cingulate_gyrus_r,jhu_superior_longitudinal_fasciculus_l,jhu_middle_cerebellar_peduncle,ho_insular_cortex_l,ho_precentral_gyrus_r,ho_superior_frontal_gyrus_l,ho_temporal_pole_r,ho_frontal_pole_l,ho_postcentral_gyrus_r,ho_lingual_gyrus_l,ho_cingulate_gyrus_anterior_division_r,ho_superior_temporal_gyrus_posterior_division_l,ho_occipital_pole_r
EVAL_LABELS_3D ?= jhu_genu_of_corpus_callosum,jhu_cerebral_peduncle_l,jhu_posterior_limb_of_internal_capsule_l,ho_insular_cortex_l,ho_precentral_gyrus_r,ho_cingulate_gyrus_anterior_division_r
SUBJECTS := $(foreach s,cohort_s00_t1 cohort_s01_t2like cohort_s02_inverted_bias cohort_s03_lowres_noise,--image $(TEST_SPLIT)/$(s).nii.gz --label $(TEST_SPLIT)/labels/final/$(s).nii.gz)
SUBJECTS_3D := $(foreach s,cohort_s00_t1 cohort_s01_t2like,--image $(TEST_SPLIT)/$(s).nii.gz --label $(TEST_SPLIT)/labels/final/$(s).nii.gz)

# docs/EVALUATION.md from the runs of evaluate, evaluate-ohif and evaluate-backends that exist
EVAL_RUNS = clicks-2d clicks-3d clicks-2d-ohif clicks-2d-ohif-no-history clicks-3d-ohif backends-2d
EVAL_REPORT = $(PY) -m samri.evaluation.report $$(for d in $(EVAL_RUNS); do test -d $(EVAL_DIR)/$$d && echo $(EVAL_DIR)/$$d; done) \
		--doc docs/EVALUATION.md --command "make evaluate" --preamble $(EVAL_DIR)/PREAMBLE.md

evaluate: test-split
	$(VENV)/bin/samri evaluate $(SUBJECTS) --labels $(EVAL_LABELS) $(EVAL_MODELS) --protocol clicks \
		--first box,point --max-clicks 20 --axis 2 --mode 2d --max-pairs 1 --cache-dir $(EVAL_CACHE) \
		--out $(EVAL_DIR)/clicks-2d
	$(VENV)/bin/samri evaluate $(SUBJECTS_3D) --labels $(EVAL_LABELS_3D) $(EVAL_MODELS) --protocol clicks \
		--first box,point --max-clicks 5 --axis 2 --mode 3d --cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/clicks-3d
	$(MAKE) oracle
	$(MAKE) propagation-gap
	$(EVAL_REPORT)

# What a box and each kind of corrective click can buy at best on the 2D and 3D sessions above
# (samri.evaluation.oracle): numpy on the label maps (and, for the 2D intensity-band box oracle, the images),
# a few minutes.
oracle:
	$(PY) -m samri.evaluation.oracle $(EVAL_DIR)/clicks-2d \
		$(foreach s,cohort_s00_t1 cohort_s01_t2like cohort_s02_inverted_bias cohort_s03_lowres_noise,--label $(TEST_SPLIT)/labels/final/$(s).nii.gz --image $(TEST_SPLIT)/$(s).nii.gz)
	$(PY) -m samri.evaluation.oracle $(EVAL_DIR)/clicks-3d \
		$(foreach s,cohort_s00_t1 cohort_s01_t2like,--label $(TEST_SPLIT)/labels/final/$(s).nii.gz)

# How much of a first box's 3D Dice the propagation costs (samri.evaluation.propagation_gap): samri_lite's 3D
# box sessions above again, with the structure's extent known and with every slice's own box (about a minute).
propagation-gap:
	$(PY) -m samri.evaluation.propagation_gap $(EVAL_DIR)/clicks-3d $(SUBJECTS_3D) --cache-dir $(EVAL_CACHE)

# How the decoder itself answers each corrective click, before serving's local merge and click fill
# (samri.evaluation.click_response), on the recipe's 30 validation structures (samri.train.recipe's
# split_validation_labels(..., 4) on Colin27's AAL, computed when used; never the test split).
# DECODER= another decoder.
VAL_LABELS = $(shell $(PY) -c "from pathlib import Path; from samri.labels import load_label_names; \
	from samri.train.recipe import split_validation_labels as split; \
	print(','.join(split(load_label_names(Path('$(STUDIES)'))['colin27_t1'], 4)[1]))" 2>/dev/null)
DECODER ?=
click-response: sample-data
	$(PY) -m samri.evaluation.click_response --image $(STUDIES)/colin27_t1.nii.gz \
		--label $(STUDIES)/labels/final/colin27_t1.nii.gz --labels $(VAL_LABELS) --model samri_lite \
		$(if $(DECODER),--decoder $(DECODER)) --max-pairs 2 --max-clicks 6 --cache-dir $(EVAL_CACHE) \
		--out docs/decoder-clicks/click-response$(if $(DECODER),-$(notdir $(basename $(DECODER)))).json

# OHIF's requests (points only, every click so far, no client_id) on the 2D point sessions of make evaluate,
# served with the click history (samri.inference.click_history) and without it, and on its 3D point sessions
# with it (about 12 min); then docs/EVALUATION.md.
evaluate-ohif: test-split
	$(VENV)/bin/samri evaluate $(SUBJECTS) --labels $(EVAL_LABELS) $(EVAL_MODELS) --protocol clicks --client ohif \
		--first point --max-clicks 20 --axis 2 --mode 2d --max-pairs 1 --cache-dir $(EVAL_CACHE) \
		--out $(EVAL_DIR)/clicks-2d-ohif
	$(VENV)/bin/samri evaluate $(SUBJECTS) --labels $(EVAL_LABELS) $(EVAL_MODELS) --protocol clicks \
		--client ohif_no_history --first point --max-clicks 20 --axis 2 --mode 2d --max-pairs 1 \
		--cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/clicks-2d-ohif-no-history
	$(VENV)/bin/samri evaluate $(SUBJECTS_3D) --labels $(EVAL_LABELS_3D) $(EVAL_MODELS) --protocol clicks --client ohif \
		--first point --max-clicks 5 --axis 2 --mode 3d --cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/clicks-3d-ohif
	$(EVAL_REPORT)

# The served backend (auto) against PyTorch eager fp32 on the 2D sessions of make evaluate (samri_lite), then
# docs/EVALUATION.md recomposed with it.
evaluate-backends: test-split
	$(VENV)/bin/samri evaluate $(SUBJECTS) --labels $(EVAL_LABELS) --model samri_lite --backend torch --backend auto \
		--protocol clicks --first box,point --max-clicks 10 --axis 2 --mode 2d --max-pairs 1 \
		--cache-dir $(EVAL_CACHE) --out $(EVAL_DIR)/backends-2d
	$(EVAL_REPORT)

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

# docs/ADAPTATION.md: the adaptation experiment (samri adapt-sim, configs/adaptation.yaml). A new domain
# (INIA19 macaque, NeuroMaps structures, T2-like): 5 studies to annotate, 3 held out; a real server trains
# after 1, 3 and 5 finished studies. About half an hour on the 2-core CPU; run nothing else meanwhile.
ADAPT_COHORT ?= data/adapt-cohort
ADAPT_OUT ?= data/adapt-sim
adapt-cohort: setup sysdeps
	$(VENV)/bin/samri cohort $(ADAPT_COHORT) --domain macaque --contrasts t2like --min-voxels 2000 \
		--subjects 8 --annotate 5 --seed 0

# docs/al-effort: active-learning strategies compared by annotator clicks on the same new domain (samri al-effort,
# `effort` in configs/activelearning.yaml; in-process, 4 strategies x 3 seeds; about an hour on the 2-core CPU;
# decoders and figures are memoised in $(AL_EFFORT_WORK), so an interrupted run resumes)
AL_EFFORT_WORK ?= data/al-effort
al-effort: adapt-cohort
	$(VENV)/bin/samri -v al-effort --cohort $(ADAPT_COHORT) --work-dir $(AL_EFFORT_WORK) --out docs/al-effort \
		--command-text "make al-effort"

adapt-sim: adapt-cohort test-split
	$(VENV)/bin/samri adapt-sim --cohort $(ADAPT_COHORT) --out $(ADAPT_OUT) --doc docs/ADAPTATION.md \
		--preamble docs/adaptation/PREAMBLE.md
	mkdir -p docs/adaptation && cp $(ADAPT_OUT)/summary.json docs/adaptation/summary.json

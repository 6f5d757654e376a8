# ITEM pipeline. `make help` lists the targets.
# The targets make and use a project environment in $(VENV) from pyproject.toml when it is missing or
# older than pyproject.toml, and reuse it otherwise. PYTHON is the interpreter that creates it.
PYTHON ?= python3
VENV ?= .venv
PY = $(VENV)/bin/python
ENV_STAMP = $(VENV)/.installed
DATA ?= data
PROFILE ?=
INPUTS ?=
# `make demo` runs in a data directory of its own, inside DATA: your data never meets demo rows
DEMO_DATA = $(DATA)/demo
DEMO_N ?= 40
# `make reproduce`: the paper's datasets (folders, zips or tars); only CNNDETECTION is required
CNNDETECTION ?=
UFD ?=
DIFFUSIONFORENSICS ?=
GENIMAGE ?=
TRAIN_COUNT ?= 40000
# Run the CLI from this checkout (not whichever checkout was pip-installed last).
ITEM = PYTHONPATH=$(CURDIR) $(PY) -m pipeline
OPTS = --data-dir $(DATA) $(if $(PROFILE),--profile $(PROFILE))
# The environment's bin first on PATH: `dvc`, `item` and `python3` are the project's (dvc.yaml calls python3).
OFFLINE = HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

.PHONY: help install demo test bench gpu-check gpu-wheels smoke-paper reproduce soak lint ingest caption ground embed distance fit evaluate report status check clean-demo

help: ## list the targets and the variables they take
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'
	@echo "variables: DATA=dir (data root, default data; the demo's is DATA/demo)  PROFILE=name (default: params.yaml's)"
	@echo "           INPUTS=\"folders or lists\" (make ingest)  QUARANTINE=1 (make check)  DEMO_N=40 (make demo: images per class and generator)"
	@echo "           PYTHON=python3 (makes the environment)  VENV=.venv (where it lives)"
	@echo "           CNNDETECTION= UFD= DIFFUSIONFORENSICS= GENIMAGE= TRAIN_COUNT=40000 (make reproduce)"

install: $(ENV_STAMP) ## make the project environment .venv (torch from the registry, uncapped); done by every target

$(ENV_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(ENV_STAMP)

demo: $(ENV_STAMP) ## synthetic images through every stage, tiny profile (offline, random weights), in data/demo (DATA/demo)
	$(OFFLINE) $(ITEM) demo --data-dir $(DEMO_DATA) --n-per-class $(DEMO_N)

test: $(ENV_STAMP) ## run the test suite (offline)
	$(OFFLINE) PYTHONPATH=$(CURDIR) $(PY) -m pytest -q

bench: $(ENV_STAMP) ## speed figures with their targets, appended to BENCHMARKS.md (under 10 minutes)
	$(OFFLINE) PYTHONPATH=$(CURDIR) $(PY) -m benchmarks.bench

reproduce: $(ENV_STAMP) ## the paper's Tables I-III: make reproduce CNNDETECTION=dir [UFD=... DIFFUSIONFORENSICS=... GENIMAGE=...]
	$(ITEM) reproduce --cnndetection $(CNNDETECTION) $(if $(UFD),--ufd $(UFD)) \
		$(if $(DIFFUSIONFORENSICS),--diffusionforensics $(DIFFUSIONFORENSICS)) $(if $(GENIMAGE),--genimage $(GENIMAGE)) \
		--train-count $(TRAIN_COUNT) $(OPTS)

# What a GPU machine without a package registry lacks for `make gpu-check` (Python 3.12 wheels, one version
# each, the versions of this environment): `make gpu-wheels` here, then carry .whl/ to that machine.
GPU_WHEELS = polars polars-runtime-32 open_clip_torch ftfy wcwidth regex dask distributed cloudpickle toolz partd \
	locket msgpack sortedcontainers tblib zict tornado psutil fsspec
GPU_PLATFORMS = $(foreach n,2_28 2_27 2_17 2_5,--platform manylinux_$(n)_x86_64) --platform manylinux2014_x86_64 --platform manylinux1_x86_64
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)

gpu-wheels: $(ENV_STAMP) ## download the wheels gpu-check needs on a GPU machine without a registry into .whl/ (then carry .whl)
	mkdir -p .whl
	for w in $(GPU_WHEELS); do echo "$$w==$$($(PY) -m pip show $$w | awk '/^Version/{print $$2}')"; done > .whl/requirements.txt
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $(GPU_PLATFORMS) \
		-d .whl -r .whl/requirements.txt

gpu-check: ## one GPU, paper profile at full size (random weights): images/s per stage, utilisation, memory, batch and precision variants, dask vs in-process; appends to BENCHMARKS.md (H200: under 8 min)
	@if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
		--target /tmp/site .whl/*.whl; fi
	HF_HUB_OFFLINE=1 PYTHONPATH=$(CURDIR)$(if $(wildcard .whl),:/tmp/site) $(GPU_PY) -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

smoke-paper: $(ENV_STAMP) ## paper-size BLIP-2 OPT-2.7B, Grounding DINO base, ViT-L/14 (random weights) from local dirs through every stage; appends to BENCHMARKS.md (2-core CPU: about 3 min, 2.5 when the build is kept; 8.2 GiB RAM; 9.5 GB disk in data/smoke-paper; see docs/datasets.md)
	$(OFFLINE) PYTHONPATH=$(CURDIR) $(PY) -m benchmarks.smoke

soak: $(ENV_STAMP) ## the kill test, the store's state machine and the input-tree and config property tests, many more trials (minutes)
	$(OFFLINE) ITEM_SOAK_TRIALS=25 ITEM_SOAK_IMAGES=600 ITEM_SOAK_STATES=300 ITEM_SOAK_TREES=400 ITEM_SOAK_CONFIGS=200 \
		PYTHONPATH=$(CURDIR) $(PY) -m pytest -q tests/engine/test_kill.py tests/engine/test_store_state_machine.py \
		tests/stages/test_ingest_property.py tests/engine/test_config_values.py

lint: $(ENV_STAMP) ## ruff, and the layer contract (import-linter: engine never imports stages, no stage imports another)
	$(PY) -m ruff check pipeline stages tests
	PYTHONPATH=$(CURDIR) $(VENV)/bin/lint-imports

ingest: $(ENV_STAMP) ## add images to the manifest: make ingest INPUTS="path/to/folder list.csv"
	$(ITEM) ingest $(INPUTS) $(OPTS)

caption: $(ENV_STAMP) ## caption every ingested image
	$(ITEM) caption $(OPTS)

ground: $(ENV_STAMP) ## ground the caption's objects
	$(ITEM) ground $(OPTS)

embed: $(ENV_STAMP) ## CLIP embeddings of images, captions, crops and phrases
	$(ITEM) embed $(OPTS)

distance: $(ENV_STAMP) ## misalignment vectors D_g, D_l (Eq. 3-7)
	$(ITEM) distance $(OPTS)

fit: $(ENV_STAMP) ## train the head on cached distance rows
	$(ITEM) fit $(OPTS)

evaluate: $(ENV_STAMP) ## ACC and AP of the latest head
	$(ITEM) evaluate $(OPTS)

report: $(ENV_STAMP) ## the self-contained HTML report (data/reports/report.html)
	$(ITEM) report $(OPTS)

status: $(ENV_STAMP) ## rows ok / error / missing per stage
	$(ITEM) status $(OPTS)

check: $(ENV_STAMP) ## find unreadable or foreign part files (QUARANTINE=1 moves them aside)
	$(ITEM) check --data-dir $(DATA) $(if $(QUARANTINE),--quarantine)

clean-demo: ## remove the demo's data directory data/demo (DATA/demo), nothing else
	@if [ -f "$(DEMO_DATA)/DEMO" ]; then rm -rf "$(DEMO_DATA)" && echo "removed $(DEMO_DATA)"; \
	elif [ -e "$(DEMO_DATA)" ]; then echo "$(DEMO_DATA) was not made by the demo (no DEMO file): left alone" >&2; exit 1; \
	else echo "no demo data in $(DEMO_DATA)"; fi

# ITEM pipeline. `make help` lists the targets.
PYTHON ?= python3
DATA ?= data
PROFILE ?=
INPUTS ?=
# Run the CLI from this checkout (not whichever checkout was pip-installed last).
ITEM = PYTHONPATH=$(CURDIR) $(PYTHON) -m pipeline
OPTS = --data-dir $(DATA) $(if $(PROFILE),--profile $(PROFILE))
OFFLINE = HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1

.PHONY: help install demo test bench soak lint ingest caption ground embed distance fit evaluate status check clean-demo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install: ## install the package and its dependencies (torch from the registry, uncapped)
	$(PYTHON) -m pip install -e '.[dev]'

demo: ## synthetic images through every stage with the tiny profile (offline, random weights)
	$(OFFLINE) $(ITEM) demo --data-dir $(DATA)

test: ## run the test suite (offline)
	$(OFFLINE) PYTHONPATH=$(CURDIR) $(PYTHON) -m pytest -q

bench: ## speed figures with their targets, appended to BENCHMARKS.md (under 10 minutes)
	$(OFFLINE) $(ITEM) bench

soak: ## the kill test with many more trials and images (minutes)
	$(OFFLINE) ITEM_SOAK_TRIALS=25 ITEM_SOAK_IMAGES=600 PYTHONPATH=$(CURDIR) $(PYTHON) -m pytest -q tests/pipeline/test_kill.py

lint: ## ruff
	$(PYTHON) -m ruff check pipeline stages tests

ingest: ## add images to the manifest: make ingest INPUTS="path/to/folder list.csv"
	$(ITEM) ingest $(INPUTS) $(OPTS)

caption: ## caption every ingested image
	$(ITEM) caption $(OPTS)

ground: ## ground the caption's objects
	$(ITEM) ground $(OPTS)

embed: ## CLIP embeddings of images, captions, crops and phrases
	$(ITEM) embed $(OPTS)

distance: ## misalignment vectors D_g, D_l (Eq. 3-7)
	$(ITEM) distance $(OPTS)

fit: ## train the head on cached distance rows
	$(ITEM) fit $(OPTS)

evaluate: ## ACC and AP of the latest head
	$(ITEM) evaluate $(OPTS)

status: ## rows ok / error / missing per stage
	$(ITEM) status $(OPTS)

check: ## find unreadable or foreign part files (QUARANTINE=1 moves them aside)
	$(ITEM) check --data-dir $(DATA) $(if $(QUARANTINE),--quarantine)

clean-demo: ## remove the demo's generated images and outputs from $(DATA)
	rm -rf $(DATA)/raw/demo $(DATA)/manifest $(DATA)/sources $(DATA)/features $(DATA)/models $(DATA)/reports

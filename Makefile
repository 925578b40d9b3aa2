# lmlab: `make demo` and `make test` each set up everything on a fresh machine (they depend on `install`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
VENV_BIN := $(VENV)/bin
INSTALL_STAMP := $(VENV)/.installed
PACKAGES := $(patsubst packages/%/pyproject.toml,%,$(wildcard packages/*/pyproject.toml))
SCRIPTS := $(subst _,-,$(PACKAGES))
EDITABLES := -e "shared[test]" $(foreach p,$(PACKAGES),-e "packages/$(p)[test]")
PYTEST_WORKERS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install install-gpu test coverage demo lint format clean bench-cpu bench-gpu papers

help: ## list the targets
	@grep -hE '^[a-zA-Z_%-]+:.*?## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | awk -F'\t' '{printf "  %-28s %s\n", $$1, $$2}'
	@echo "  reproduce-<paper>            scaled-down reproduction of a paper: $(addprefix reproduce-,$(PACKAGES))"
	@echo "  bench-<paper>                benchmark JSON and markdown: $(addprefix bench-,$(PACKAGES))"

install: $(INSTALL_STAMP) ## create .venv with torch pinned and every package editable (a second run does nothing)

$(INSTALL_STAMP): constraints.txt shared/pyproject.toml $(wildcard packages/*/pyproject.toml)
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(VENV_BIN)/python -m pip install -q --upgrade pip
	$(VENV_BIN)/python -m pip install -q -c constraints.txt $(EDITABLES)
	touch $@

install-gpu: $(INSTALL_STAMP) ## on a CUDA machine: PyPI's CUDA build of the pinned torch, and the [gpu] extras
	$(VENV_BIN)/python -m pip install -q --no-cache-dir --force-reinstall --no-deps -c constraints.txt torch
	$(VENV_BIN)/python -m pip install -q $(foreach p,$(PACKAGES),-e "packages/$(p)[gpu]")

test: $(INSTALL_STAMP) ## run every test not marked gpu (CPU, offline)
	$(VENV_BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not gpu and not reproduce" -q

coverage: $(INSTALL_STAMP) ## coverage of the shared library lmlab
	$(VENV_BIN)/python -m pytest -q -p no:xdist shared/tests --cov=lmlab --cov-report=term-missing

demo: $(INSTALL_STAMP) ## run every package's tiny end-to-end demo on the embedded data
	@set -e; for s in $(SCRIPTS); do \
	  p=$${s//-/_}; echo "== $$s demo"; \
	  $(VENV_BIN)/$$s demo --output_dir results/demo/$$p; \
	  echo "   results: results/demo/$$p"; \
	done

bench-cpu: $(INSTALL_STAMP) ## every package's bench at CPU sizes, interleaved rounds: results/bench/cpu.{json,md}
	@set -e; for s in $(SCRIPTS); do p=$${s//-/_}; echo "== $$s bench --preset cpu"; \
	  $(VENV_BIN)/$$s bench --preset cpu --output_dir results/bench/cpu/$$p; done
	$(VENV_BIN)/python -c "from lmlab.bench import collect; collect('results/bench/cpu', 'cpu')"

bench-gpu: $(INSTALL_STAMP) ## on one CUDA GPU (after make install-gpu): every bench at the target sizes: results/bench/gpu.{json,md}
	@set -e; for s in $(SCRIPTS); do p=$${s//-/_}; echo "== $$s bench --preset gpu"; \
	  $(VENV_BIN)/$$s bench --preset gpu --output_dir results/bench/gpu/$$p; done
	$(VENV_BIN)/python -c "from lmlab.bench import collect; collect('results/bench/gpu', 'gpu')"

papers: $(INSTALL_STAMP) ## print each paper's claims table from results/*/claims.json (for PAPERS.md and the package READMEs)
	$(VENV_BIN)/python -m lmlab.claims $(wildcard results/*/claims.json)

lint: $(INSTALL_STAMP) ## ruff format --check and ruff check
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/ruff check .

format: $(INSTALL_STAMP) ## apply ruff format and the safe ruff fixes
	$(VENV_BIN)/ruff format .
	$(VENV_BIN)/ruff check --fix .

clean: ## remove the venv, caches and results
	rm -rf $(VENV) .pytest_cache .ruff_cache results .coverage

# Each package adds its reproduce-<paper> and bench-<paper> targets.
-include $(wildcard packages/*/make.mk)

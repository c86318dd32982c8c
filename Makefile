# modeldeploy: the two commands for a fresh machine are `make demo` and `make test`; the rest are building blocks.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTER ?= modeldeploy
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv test test-unit lint cluster-binaries cluster-up cluster-down cluster-status demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

$(BIN)/modeldeploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[serving,training,operator,dev]'
	touch $@

venv: $(BIN)/modeldeploy ## create .venv with the modeldeploy CLI and every extra

cluster-binaries: ## build (once, cached) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok
	@bash src/modeldeploy/cluster/build-binaries.sh >/dev/null

cluster-up: venv cluster-binaries ## start the local control plane CLUSTER; the last line printed is its kubeconfig
	@$(BIN)/modeldeploy cluster up --name $(CLUSTER)

cluster-down: venv ## stop the local control plane CLUSTER and remove its state
	@$(BIN)/modeldeploy cluster down --name $(CLUSTER)

cluster-status: venv ## show the local control plane's processes
	@$(BIN)/modeldeploy cluster status --name $(CLUSTER)

lint: venv ## ruff and mypy strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

demo: venv cluster-binaries ## the main job: a local control plane, the CRD, the operator, a sample to Ready, then its real training, serving and a prediction
	@$(BIN)/python -m modeldeploy.tools.demo

test: venv cluster-binaries ## everything: lint, unit tests, and the integration tests on a local control plane
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

test-unit: venv ## only the tests that need no cluster
	$(BIN)/pytest -m 'not cluster'

# Container images (dockerd, the local base image, the three images) and their targets.
-include images/images.mk

# The operator's targets (install, uninstall, run, deploy) live beside its code.
-include operator/operator.mk

clean: ## remove the virtual environment (the binary cache stays, outside the tree)
	rm -rf $(VENV)

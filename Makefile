# modeldeploy: the two commands for a fresh machine are `make demo` and `make test`; the rest are building blocks.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CLUSTER ?= modeldeploy
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv test test-unit lint cluster-binaries oldest-binaries flux-binaries netpol-binaries objectstore-binaries cluster-up cluster-down cluster-status demo docs clean

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# setuptools announces every editable install of a multi-directory layout like ours ("Editable installation ...
# be careful with folders ...") as a warning of its class InformationOnly; that note only is silenced, by module.
$(BIN)/modeldeploy: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore::Warning:setuptools.command.editable_wheel \
	  $(BIN)/pip install --quiet -e '.[serving,training,operator,dev]'
	touch $@

venv: $(BIN)/modeldeploy ## create .venv with the modeldeploy CLI and every extra

cluster-binaries: ## build (once, cached) etcd, kube-apiserver, controller-manager, scheduler, kubectl, kwok (REAL_NODE=1: kubelet, kube-proxy too)
	@bash src/modeldeploy/cluster/build-binaries.sh $(if $(REAL_NODE),--real-node) >/dev/null

oldest-binaries: cluster-binaries ## build (once, cached) the control plane of the oldest supported Kubernetes (1.30), for the test that it takes the CRD and every child
	@nice -n 19 bash src/modeldeploy/cluster/build-binaries.sh --oldest >/dev/null

flux-binaries: ## build (once, cached) Flux's source-controller and kustomize-controller with their CRDs, for `cluster up --gitops` and the gitops tests
	@nice -n 19 bash src/modeldeploy/cluster/build-flux.sh >/dev/null

argocd-binaries: ## build (once, cached) Argo CD's repo-server and application-controller and kustomize, for the Argo CD tests (docs/gitops.md)
	@nice -n 19 bash src/modeldeploy/cluster/build-argocd.sh >/dev/null

netpol-binaries: ## build (once, cached) kube-router, whose network-policy controller enforces NetworkPolicy on the real node, for the opt-in test MODELDEPLOY_NETPOL_TEST=1 (docs/real-node.md)
	@nice -n 19 bash src/modeldeploy/cluster/build-netpol.sh >/dev/null

objectstore-binaries: ## build (once, cached) versitygw, the S3 server of `cluster up --object-store` and the object-storage tests
	@nice -n 19 bash src/modeldeploy/cluster/build-objectstore.sh >/dev/null

cluster-up: venv cluster-binaries $(if $(GITOPS),flux-binaries) $(if $(OBJECT_STORE),objectstore-binaries) ## start the local control plane CLUSTER (REAL_NODE=1: plus a real node, docs/real-node.md; GITOPS=1: plus Flux and a Git server, docs/gitops.md); the last line printed is its kubeconfig
	@$(BIN)/modeldeploy cluster up --name $(CLUSTER) $(if $(REAL_NODE),--real-node) $(if $(GITOPS),--gitops) $(if $(OBJECT_STORE),--object-store)

cluster-down: venv ## stop the local control plane CLUSTER and remove its state
	@$(BIN)/modeldeploy cluster down --name $(CLUSTER)

cluster-status: venv ## show the local control plane's processes
	@$(BIN)/modeldeploy cluster status --name $(CLUSTER)

lint: venv ## ruff, mypy strict, the layers' import contracts (pyproject's [tool.importlinter]), and actionlint on .github/workflows (built once from its Go module)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	hack/actionlint.sh

# The demo builds the control plane's binaries itself: in the background while the local pipeline runs (a first
# prediction within minutes on a fresh machine), or, with REAL_NODE=1, after checking the machine (a refusal comes
# before a build). MODELDEPLOY_DEMO_STARTED: when make started, for the time to the first prediction.
demo: export MODELDEPLOY_DEMO_STARTED := $(shell date +%s)
demo: venv ## the main job: a sample's real training, serving and a prediction here, then a local control plane, the CRD, the operator and the sample to Ready (REAL_NODE=1: all of it in the cluster, on a real node)
	@$(BIN)/python -m modeldeploy.tools.demo $(if $(REAL_NODE),--real-node)

docs: venv ## regenerate docs/api-reference.md from the CRD's schema
	$(BIN)/python -m modeldeploy.tools.apidoc --output docs/api-reference.md

test: venv cluster-binaries oldest-binaries flux-binaries objectstore-binaries ## everything: lint, unit tests, and the integration tests on a local control plane
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache
	$(BIN)/pytest

test-unit: venv ## only the tests that need no cluster
	$(BIN)/pytest -m 'not cluster and not docker and not realnode and not gitops and not kind and not argocd'

# Container images (dockerd, the local base image, the three images) and their targets.
-include images/images.mk

# The operator's targets (install, uninstall, run, deploy) live beside its code.
-include operator/operator.mk

# kind: the operator, the training Job and the inference pods for real, on Docker. Needs docker, kind and kubectl on
# PATH (or KIND=..., KUBECTL=...). KIND_NODE_IMAGE: the node image (default: the one the kind CLI names; a machine
# with no registry builds one with `make kind-node-image`). KIND_PREBUILT=1: load the images as they are, no build.
KIND ?= kind
KUBECTL ?= kubectl
KIND_CLUSTER ?= modeldeploy
KIND_CONFIG ?= kind-config.yaml
KIND_NODE_IMAGE ?=
KIND_WAIT ?= 120s
KIND_KUBECTL = $(KUBECTL) --context kind-$(KIND_CLUSTER)
KIND_PORT ?= 18080
KIND_IMAGES = operator training serving

.PHONY: kind-binaries kind-node-image kind-up kind-load kind-deploy kind-sample kind-predict kind-demo kind-down

kind-binaries: ## build (once, cached) the kind CLI and its node's programs from their Go modules; prints where
	@bash src/modeldeploy/cluster/build-kind.sh | tail -n 1

kind-node-image: ## build (once, cached; root) a kind node image with no registry: modeldeploy.local/kind-node:v1.34.4
	@bash hack/kind-node-image.sh | tail -n 1

kind-up: ## create the kind cluster KIND_CLUSTER from kind-config.yaml (kept if it exists)
	@$(KIND) get clusters 2>/dev/null | grep -qx '$(KIND_CLUSTER)' || $(KIND) create cluster --name $(KIND_CLUSTER) --config $(KIND_CONFIG) $(if $(KIND_NODE_IMAGE),--image $(KIND_NODE_IMAGE)) --wait $(KIND_WAIT)

# Into the nodes that run workloads only: the control plane is tainted, and the training image (~2 GB, unpacked once
# more in each node) filled this machine's disk when copied into every node. A cluster without workers gets them all.
kind-load: $(if $(KIND_PREBUILT),,images) ## build the three images and copy them into the kind nodes (no registry involved)
	@nodes=$$($(KIND) get nodes --name $(KIND_CLUSTER) | grep -v -- '-control-plane' | paste -sd, -); \
	for image in $(KIND_IMAGES); do \
	  $(KIND) load docker-image --name $(KIND_CLUSTER) $${nodes:+--nodes $$nodes} $(IMAGE_PREFIX)/$$image:$(IMAGE_TAG) || exit 1; \
	done

kind-deploy: ## apply the CRD, then the operator (manifests/overlays/kind), and wait until it runs
	$(KIND_KUBECTL) apply --server-side -f crds/
	$(KIND_KUBECTL) wait --for condition=Established --timeout=60s -f crds/
	$(KIND_KUBECTL) apply --server-side -k manifests/overlays/kind
	$(KIND_KUBECTL) -n modeldeploy-system rollout status deployment/modeldeploy-operator --timeout=180s

kind-sample: ## apply samples/digits-cnn.yaml and wait until it is trained and served (Ready)
	$(KIND_KUBECTL) apply -f samples/digits-cnn.yaml
	$(KIND_KUBECTL) wait --for=condition=Ready md/digits --timeout=15m
	$(KIND_KUBECTL) get md digits -o wide

kind-predict: venv ## port-forward to the digits Service and send one digit through modeldeploy predict
	@set -euo pipefail; \
	$(BIN)/python -c 'import numpy as np, sklearn.datasets as d; np.save("/tmp/modeldeploy-digit.npy", (d.load_digits().images[0] / 16.0).astype("float32")[..., None])'; \
	$(KIND_KUBECTL) port-forward svc/digits $(KIND_PORT):8080 >/tmp/modeldeploy-port-forward.log 2>&1 & pf=$$!; \
	trap 'kill $$pf 2>/dev/null' EXIT; \
	for _ in $$(seq 100); do curl -sf http://127.0.0.1:$(KIND_PORT)/v2/health/ready >/dev/null && break; sleep 0.2; done; \
	echo "the digit 0 of scikit-learn's digits:"; \
	$(BIN)/modeldeploy predict --url http://127.0.0.1:$(KIND_PORT) --model digits --top 3 /tmp/modeldeploy-digit.npy

kind-demo: kind-up kind-load kind-deploy kind-sample kind-predict ## all of the above: cluster, images, operator, sample to Ready, a prediction

kind-down: ## delete the kind cluster KIND_CLUSTER
	$(KIND) delete cluster --name $(KIND_CLUSTER)

clean: ## remove the virtual environment (the binary cache stays, outside the tree)
	rm -rf $(VENV)

# The operator's kubebuilder-style targets, included by the top-level Makefile. KUBECONFIG names the cluster.
KUBECTL ?= kubectl
OPERATOR_ARGS ?=
OPERATOR_IMAGE ?= modeldeploy/operator:0.1.0

.PHONY: install uninstall run operator-image

install: ## apply the CRDs to the cluster KUBECONFIG names and wait until they are served
	$(KUBECTL) apply -f crds/
	$(KUBECTL) wait --for condition=established --timeout=60s -f crds/

uninstall: ## delete the CRDs (and with them every ModelDeployment and its children) from the cluster
	$(KUBECTL) delete --ignore-not-found -f crds/

run: venv install ## run the operator here against KUBECONFIG, in the foreground (Ctrl-C or SIGTERM stops it cleanly)
	@exec $(BIN)/modeldeploy operator $(OPERATOR_ARGS)

operator-image: ## build the operator's image
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .

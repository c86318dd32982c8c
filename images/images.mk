# Container images without an image registry: a Docker engine started by hand, the base image made locally when it
# cannot be pulled, the three images built from their Dockerfiles. Included by the top-level Makefile; docs/images.md.
IMAGE_PREFIX ?= modeldeploy
IMAGE_TAG ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)
export IMAGE_PREFIX IMAGE_TAG

.PHONY: docker-up docker-down base-image images image-training image-serving image-operator images-bench release-dry-run

docker-up: ## start dockerd when no Docker engine answers (installs docker.io if it is missing)
	@images/docker.sh up

docker-down: ## stop the dockerd that docker-up started (an engine it found running is left alone)
	@images/docker.sh down

base-image: docker-up ## make python:3.11-slim available: local, pulled, or built from debootstrap
	@images/base-image.sh

images: base-image ## build the training, serving and operator images (a missing Dockerfile is skipped)
	@images/build.sh training serving operator

image-training: base-image ## build only the training image
	@images/build.sh training

image-serving: base-image ## build only the serving image
	@images/build.sh serving

image-operator: base-image ## build only the operator image
	@images/build.sh operator

images-bench: images venv ## image sizes and the serving image's start-to-ready time
	@$(BIN)/python bench/images.py

# What .github/workflows/release.yml would push, built here (host platform only) with its exact names and labels:
# $(RELEASE_REGISTRY)/modeldeploy-NAME:$(RELEASE_VERSION). RELEASE_VERSION=0.1.0-mine keeps others' builds intact.
RELEASE_REGISTRY ?= ghcr.io/modeldeploy
RELEASE_VERSION ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)

release-dry-run: base-image ## build the three release images with the workflow's names and labels, without pushing
	@RELEASE_REGISTRY=$(RELEASE_REGISTRY) RELEASE_VERSION=$(RELEASE_VERSION) images/release.sh dry-run

#!/usr/bin/env bash
# The release's one name scheme and label set, used by .github/workflows/release.yml (which pushes) and by
# `make release-dry-run` (which builds the same names and labels locally, without pushing).
#
#   images/release.sh name IMAGE [VERSION]        the image's name: $RELEASE_REGISTRY/modeldeploy-IMAGE:VERSION
#   images/release.sh labels IMAGE [VERSION]      its OCI labels, one key=value a line
#   images/release.sh check-manifests [VERSION]   manifests/base names the three images by that name and version
#   images/release.sh dry-run [IMAGE...]          build them here with those names and labels (host platform only)
#
# IMAGE is operator, training or serving; VERSION defaults to $RELEASE_VERSION, else pyproject.toml's version.
# RELEASE_REGISTRY (default ghcr.io/modeldeploy) and RELEASE_SOURCE (default https://github.com/modeldeploy/modeldeploy)
# are what the workflow derives from the GitHub repository. The labels depend only on the commit (its hash and time),
# so a dry run of a commit labels its images exactly as the workflow does for that commit.
set -euo pipefail

cd "$(dirname "$0")/.."
RELEASE_REGISTRY=${RELEASE_REGISTRY:-ghcr.io/modeldeploy}
RELEASE_SOURCE=${RELEASE_SOURCE:-https://github.com/modeldeploy/modeldeploy}
IMAGES=(operator training serving)

log() { echo "release: $*" >&2; }

declared_version() { sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1; }

version_or_default() { echo "${1:-${RELEASE_VERSION:-$(declared_version)}}"; }

dockerfile_dir() {
  case "$1" in
    operator) echo operator ;;
    training) echo training_image ;;
    serving) echo serving_image ;;
    *) log "unknown image '$1': expected operator, training or serving"; exit 2 ;;
  esac
}

description() {
  case "$1" in
    operator) echo "modeldeploy's Kubernetes operator: a ModelDeployment to a trained, compressed, served model" ;;
    training) echo "modeldeploy's training Job: TensorFlow/Keras training, ONNX export and compression" ;;
    serving) echo "modeldeploy's inference server: ONNX Runtime over the Open Inference Protocol (REST and gRPC)" ;;
  esac
}

name() {
  dockerfile_dir "$1" >/dev/null
  echo "$RELEASE_REGISTRY/modeldeploy-$1:$(version_or_default "${2:-}")"
}

labels() {
  dockerfile_dir "$1" >/dev/null
  local version revision created
  version=$(version_or_default "${2:-}")
  revision=$(git rev-parse HEAD)
  created=$(git log -1 --format=%cI HEAD)
  cat <<LABELS
org.opencontainers.image.title=modeldeploy-$1
org.opencontainers.image.description=$(description "$1")
org.opencontainers.image.version=$version
org.opencontainers.image.revision=$revision
org.opencontainers.image.created=$created
org.opencontainers.image.source=$RELEASE_SOURCE
org.opencontainers.image.url=$RELEASE_SOURCE
org.opencontainers.image.licenses=Apache-2.0
LABELS
}

# The base's Deployment must pull exactly what the workflow pushes: the operator's image, and the training and
# serving images it hands to its Jobs and Deployments.
check_manifests() {
  local version missing=0 image
  version=$(version_or_default "${1:-}")
  for image in "${IMAGES[@]}"; do
    if ! grep -q "$(name "$image" "$version")\$" manifests/base/deployment.yaml; then
      log "manifests/base/deployment.yaml does not name $(name "$image" "$version")"
      missing=1
    fi
  done
  if [ "$missing" -ne 0 ]; then
    log "the manifests and the release disagree: set the images in manifests/base (deployment.yaml, kustomization.yaml) to $RELEASE_REGISTRY/modeldeploy-<image>:$version"
    return 1
  fi
  log "manifests/base names the three images as $RELEASE_REGISTRY/modeldeploy-<image>:$version"
}

dry_run() {
  local names=("$@") image dir tag start args label expected actual
  [ "${#names[@]}" -gt 0 ] || names=("${IMAGES[@]}")
  docker version >/dev/null 2>&1 || { log "no Docker engine answers: run 'make docker-up' first"; exit 1; }
  check_manifests "$(declared_version)"
  local built=()
  for image in "${names[@]}"; do
    dir=$(dockerfile_dir "$image")
    tag=$(name "$image")
    args=()
    while IFS= read -r label; do args+=(--label "$label"); done < <(labels "$image")
    log "building $tag from $dir/Dockerfile for $(docker version --format '{{.Server.Os}}/{{.Server.Arch}}') (the workflow builds linux/amd64 and linux/arm64)"
    start=$SECONDS
    # The same context as images/build.sh: the checkout's source files.
    git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
      | tar --null --no-recursion -T - -c \
      | docker build --network host --quiet "${args[@]}" -f "$dir/Dockerfile" -t "$tag" - >/dev/null
    expected=$(labels "$image" | sort)
    actual=$(docker image inspect --format '{{range $k, $v := .Config.Labels}}{{$k}}={{$v}}{{"\n"}}{{end}}' "$tag" \
      | grep '^org.opencontainers.image.' | sort)
    if [ "$expected" != "$actual" ]; then
      log "$tag carries other labels than the workflow's:"; diff <(echo "$expected") <(echo "$actual") >&2 || true
      exit 1
    fi
    built+=("$(printf '%-52s %4ss %6s MB' "$tag" "$((SECONDS - start))" "$(($(docker image inspect --format '{{.Size}}' "$tag") / 1000000))")")
  done
  for line in "${built[@]}"; do echo "built $line"; done
  echo "labels (each image: its title and description, then):"
  labels "${names[0]}" | grep -v -e '\.title=' -e '\.description=' | sed 's/^/  /'
}

command=${1:-}
shift || true
case "$command" in
  name) name "$@" ;;
  labels) labels "$@" ;;
  check-manifests) check_manifests "$@" ;;
  dry-run) dry_run "$@" ;;
  *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac

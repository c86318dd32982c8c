#!/usr/bin/env bash
# Build the project's images from their Dockerfiles, with build networking that reaches the package index.
#
#   images/build.sh [training] [serving] [operator]     (default: all three)
#
# Each image is DIR/Dockerfile (training_image, serving_image, operator) built with the repository root as context
# and tagged $IMAGE_PREFIX/NAME:$IMAGE_TAG (default modeldeploy/NAME:<version in pyproject.toml>). A Dockerfile that
# does not exist yet is skipped with a message. The context is only the checkout's source files (what git tracks or
# would track), not .venv or caches, so a build sends kilobytes, not gigabytes. Needs a Docker engine and the base
# image (make docker-up base-image). Prints one line per image: name, seconds, size.
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE_PREFIX=${IMAGE_PREFIX:-modeldeploy}
IMAGE_TAG=${IMAGE_TAG:-$(sed -n 's/^version *= *"\(.*\)"/\1/p' pyproject.toml | head -n 1)}
LOG_DIR=${MODELDEPLOY_IMAGES_LOGS:-${XDG_STATE_HOME:-$HOME/.local/state}/modeldeploy/images}
# Extra arguments for every `docker build`, e.g. DOCKER_BUILD_ARGS=--no-cache for a cold build.
read -r -a extra_args <<<"${DOCKER_BUILD_ARGS:-}"

log() { echo "images: $*" >&2; }

dockerfile_dir() {
  case "$1" in
    training) echo training_image ;;
    serving) echo serving_image ;;
    operator) echo operator ;;
    *) log "unknown image '$1': expected training, serving or operator"; exit 2 ;;
  esac
}

# The build context as a tar stream on stdout: the source files, nothing the checkout accumulates.
write_context() {
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files that exist (a deleted tracked file is left out).
    git ls-files -z --cached --others --exclude-standard \
      | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
      | tar --null --no-recursion -T - -c
  else
    tar -c --exclude=./.venv --exclude=./.git --exclude='__pycache__' --exclude='*.egg-info' \
      --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.pytest_cache --exclude=./.hypothesis .
  fi
}

docker version >/dev/null 2>&1 || { log "no Docker engine answers: run 'make docker-up' first"; exit 1; }
docker image inspect python:3.11-slim >/dev/null 2>&1 \
  || log "python:3.11-slim is not present locally; 'make base-image' makes it (the build will try to pull it)"

names=("$@")
[ "${#names[@]}" -gt 0 ] || names=(training serving operator)
mkdir -p "$LOG_DIR"
failed=()
built=()
for name in "${names[@]}"; do
  dir=$(dockerfile_dir "$name")
  image=$IMAGE_PREFIX/$name:$IMAGE_TAG
  if [ ! -f "$dir/Dockerfile" ]; then
    log "skipping $name: $dir/Dockerfile does not exist yet"
    continue
  fi
  build_log=$LOG_DIR/build-$name.log
  log "building $image from $dir/Dockerfile (log: $build_log)"
  start=$SECONDS
  # --network host: the package index is reached the way the host reaches it (through its proxy, DNS and all).
  if write_context | docker build --network host "${extra_args[@]}" -f "$dir/Dockerfile" -t "$image" - \
    >"$build_log" 2>&1; then
    seconds=$((SECONDS - start))
    size=$(docker image inspect --format '{{.Size}}' "$image")
    built+=("$(printf '%-34s %5ss %7s MB' "$image" "$seconds" "$((size / 1000000))")")
  else
    tail -n 30 "$build_log" >&2
    log "building $image failed after $((SECONDS - start))s; the end of its log is above (full log: $build_log)"
    failed+=("$name")
  fi
done

for line in "${built[@]}"; do echo "built $line"; done
if [ "${#failed[@]}" -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi

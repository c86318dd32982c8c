#!/usr/bin/env bash
# Builds Flux's source-controller and kustomize-controller from their Go modules, once per version, into the same
# cache root as the control plane's binaries, and copies their CRDs from the same modules beside them. A second run
# finds them and builds nothing. Prints the bin directory as its last line.
#
# Why a wrapper module per controller: both modules carry `replace` directives (their own api submodule, go-digest,
# and for kustomize-controller kustomize/api, kyaml and yaml.v3), so `go install ...@v` refuses them. Each wrapper is
# the controller's own go.mod and go.sum under another module name, without the `./api` replace (the api submodule
# is required at its published tag instead), so the build list is exactly the one upstream tested.
# The 1.9 line is the newest that builds with Go 1.26 (1.10 wants Go 1.27).
set -euo pipefail

SOURCE_VERSION="${FLUX_SOURCE_VERSION:-v1.9.1}"
KUSTOMIZE_VERSION="${FLUX_KUSTOMIZE_VERSION:-v1.9.4}"
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
BIN="$CACHE/bin/flux-source-$SOURCE_VERSION-kustomize-$KUSTOMIZE_VERSION"

die() { echo "build-flux: $*" >&2; exit 1; }
have_all() {
  [ -x "$BIN/source-controller" ] && [ -x "$BIN/kustomize-controller" ] && [ -f "$BIN/crds/.complete" ]
}

if have_all; then echo "$BIN"; exit 0; fi
[ -z "${MODELDEPLOY_NO_BUILD:-}" ] || die "Flux's controllers are not built in $BIN: run \`make flux-binaries\`"
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.26 on PATH)."
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$CACHE/logs"
LOG="$CACHE/logs/build-flux-$(date +%s).log"

run_logged() {  # run a build step, keeping its output; on failure show the tail and where the whole log is
  local what="$1"; shift
  echo "build-flux: $what ..." >&2
  local start=$SECONDS
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build-flux: $what FAILED; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  echo "build-flux: $what done in $((SECONDS - start)) s" >&2
}

build_controller() {  # name version
  local name="$1" version="$2" module="github.com/fluxcd/$1"
  local work="$CACHE/src/flux-$name-$version"
  mkdir -p "$work"
  local dir
  dir=$(cd "$work" && go mod download -json "$module@$version" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
  [ -f "$dir/go.mod" ] || die "could not fetch $module@$version from the module proxy"
  # The controller's go.mod under another name; its own module becomes a requirement, its ./api replace goes.
  sed -e "s#^module .*#module modeldeploy.local/flux-$name-build#" \
      -e "\#^replace $module/api => ./api#d" "$dir/go.mod" > "$work/go.mod"
  printf '\nrequire %s %s\n' "$module" "$version" >> "$work/go.mod"
  mkdir -p "$BIN/crds"
  cp "$dir"/config/crd/bases/*.yaml "$BIN/crds/"
  chmod u+w "$BIN"/crds/*.yaml
  [ ! -x "$BIN/$name" ] || return 0
  cp "$dir/go.sum" "$work/go.sum"
  chmod u+w "$work/go.mod" "$work/go.sum"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$module" > "$work/tools.go"
  run_logged "resolving $name $version modules" bash -c "cd '$work' && go mod tidy"
  run_logged "compiling $name $version" bash -c "cd '$work' && go build -trimpath -ldflags '-s -w' -o '$BIN/$name' '$module'"
}

build_controller source-controller "$SOURCE_VERSION"
build_controller kustomize-controller "$KUSTOMIZE_VERSION"
touch "$BIN/crds/.complete"
have_all || die "build finished but binaries are missing in $BIN"
echo "$BIN"

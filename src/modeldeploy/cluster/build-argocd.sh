#!/usr/bin/env bash
# Builds Argo CD's one binary (repo-server and application-controller by ARGOCD_BINARY_NAME) and kustomize, which the
# repo-server runs for a folder with a kustomization.yaml, from their Go modules, once per version, into the same
# cache root as the control plane's binaries; copies Argo CD's CRDs and the repo-server's git-verify-wrapper.sh (it
# runs it on every checkout, signatures or not) from the same module. Prints the bin directory as its last line.
#
# Why v3.6: v3.4 and v3.5 require argo-cd/gitops-engine v0.7.1-0.20250908182407-97ad5b59a627, which the module proxy
# refuses (403); the next commits it serves already changed diff.Diff's signature, so v3.5.7 does not compile with
# them. v3.6 requires gitops-engine/v3 at its own tag, which the proxy serves, and Go 1.27, which the go command
# fetches from the module proxy as a toolchain (GOTOOLCHAIN). The wrapper module is v3.6's go.mod without its
# `./gitops-engine` replace and with every other replace kept, so the build list is the one upstream tested.
set -euo pipefail

ARGOCD_VERSION="${ARGOCD_VERSION:-v3.6.1}"
ARGOCD_GO="${ARGOCD_GO:-go1.27.0}"
KUSTOMIZE_VERSION="${ARGOCD_KUSTOMIZE_VERSION:-v5.7.1}"
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
BIN="$CACHE/bin/argocd-$ARGOCD_VERSION-kustomize-$KUSTOMIZE_VERSION"
MODULE=github.com/argoproj/argo-cd/v3

die() { echo "build-argocd: $*" >&2; exit 1; }
have_all() {
  [ -x "$BIN/argocd" ] && [ -x "$BIN/kustomize" ] && [ -x "$BIN/git-verify-wrapper.sh" ] && [ -f "$BIN/crds/.complete" ]
}

if have_all; then echo "$BIN"; exit 0; fi
[ -z "${MODELDEPLOY_NO_BUILD:-}" ] || die "Argo CD is not built in $BIN: run \`make argocd-binaries\`"
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.21 on PATH; it fetches $ARGOCD_GO itself)."
export CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN/crds" "$CACHE/logs"
LOG="$CACHE/logs/build-argocd-$(date +%s).log"

run_logged() {  # run a build step, keeping its output; on failure show the tail and where the whole log is
  local what="$1"; shift
  echo "build-argocd: $what ..." >&2
  local start=$SECONDS
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build-argocd: $what FAILED; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  echo "build-argocd: $what done in $((SECONDS - start)) s" >&2
}

work="$CACHE/src/argocd-$ARGOCD_VERSION"
mkdir -p "$work"
dir=$(cd "$work" && GOTOOLCHAIN="$ARGOCD_GO" go mod download -json "$MODULE@$ARGOCD_VERSION" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')
[ -f "$dir/go.mod" ] || die "could not fetch $MODULE@$ARGOCD_VERSION from the module proxy"
cp "$dir"/manifests/crds/application-crd.yaml "$dir"/manifests/crds/appproject-crd.yaml "$BIN/crds/"
cp "$dir/hack/git-verify-wrapper.sh" "$BIN/git-verify-wrapper.sh"
chmod u+w "$BIN"/crds/*.yaml "$BIN/git-verify-wrapper.sh"
chmod 755 "$BIN/git-verify-wrapper.sh"

if [ ! -x "$BIN/argocd" ]; then
  sed -e "s#^module .*#module modeldeploy.local/argocd-build#" \
      -e "\#^replace github.com/argoproj/argo-cd/gitops-engine/v3 => ./gitops-engine#d" "$dir/go.mod" > "$work/go.mod"
  printf '\nrequire %s %s\n' "$MODULE" "$ARGOCD_VERSION" >> "$work/go.mod"
  cp "$dir/go.sum" "$work/go.sum"
  chmod u+w "$work/go.mod" "$work/go.sum"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s/cmd"\n' "$MODULE" > "$work/tools.go"
  run_logged "resolving Argo CD $ARGOCD_VERSION modules" bash -c "cd '$work' && GOTOOLCHAIN='$ARGOCD_GO' go mod tidy"
  run_logged "compiling Argo CD $ARGOCD_VERSION" bash -c \
    "cd '$work' && GOTOOLCHAIN='$ARGOCD_GO' go build -ldflags '-s -w' -o '$BIN/argocd' '$MODULE/cmd'"
fi
if [ ! -x "$BIN/kustomize" ]; then
  run_logged "compiling kustomize $KUSTOMIZE_VERSION" \
    env GOBIN="$BIN" GOTOOLCHAIN=local go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi
touch "$BIN/crds/.complete"
have_all || die "build finished but binaries are missing in $BIN"
echo "$BIN"

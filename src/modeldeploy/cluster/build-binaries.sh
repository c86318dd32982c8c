#!/usr/bin/env bash
# Builds the local control plane's binaries from the official Go modules, once per version, into a cache outside
# the work tree. A second run finds them and builds nothing. Prints the bin directory as its last line.
#
# Why a wrapper module: k8s.io/kubernetes requires its ~30 staging modules at v0.0.0 with local replaces, and
# replaces only apply in the main module, so `go install k8s.io/kubernetes/cmd/...@v` cannot work. The wrapper
# requires k8s.io/kubernetes and replaces each staging module with its published v0.<minor>.<patch> tag.
#
# `build-binaries.sh --real-node` also requires kubelet and kube-proxy (for `modeldeploy cluster up --real-node`);
# they are built from the same wrapper module, so a control-plane-only run never pays for them.
#
# `build-binaries.sh --oldest` builds the control plane of the oldest Kubernetes the operator supports
# (OLDEST_K8S_VERSION, the newest patch of that minor) into a directory of its own, beside the usual etcd, kwok and
# kubectl (linked from the default directory, built first if missing): the test that the CRD and every child the
# operator writes are taken by that release runs a whole local cluster on it.
set -euo pipefail

DEFAULT_K8S_VERSION=v1.34.4
OLDEST_K8S_VERSION="${OLDEST_K8S_VERSION:-v1.30.14}"
K8S_VERSION="${K8S_VERSION:-$DEFAULT_K8S_VERSION}"
ETCD_VERSION="${ETCD_VERSION:-v3.5.35}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
NODE_CMDS=(kubelet kube-proxy)
REAL_NODE=""
OLDEST=""
for arg in "$@"; do
  case "$arg" in
    --real-node) REAL_NODE=1 ;;
    --oldest) OLDEST=1 ;;
    *) echo "build-binaries: unknown argument $arg (known: --real-node, --oldest)" >&2; exit 2 ;;
  esac
done
[ -z "$REAL_NODE" ] || [ -z "$OLDEST" ] || { echo "build-binaries: --oldest builds no real node" >&2; exit 2; }
WANTED=("${K8S_CMDS[@]}")
[ -z "$REAL_NODE" ] || WANTED+=("${NODE_CMDS[@]}")
if [ -n "$OLDEST" ]; then
  # etcd, kwok and kubectl of the default set: kubectl is within the supported skew of both, kwok fakes any release.
  DEFAULT_BIN=$(K8S_VERSION="$DEFAULT_K8S_VERSION" bash "${BASH_SOURCE[0]}" | tail -n 1)
  K8S_VERSION="$OLDEST_K8S_VERSION"
  WANTED=(kube-apiserver kube-controller-manager kube-scheduler)
  BIN="$CACHE/bin/k8s-$K8S_VERSION-control-plane"
  mkdir -p "$BIN"
  for b in etcd kwok kubectl; do ln -sfn "$DEFAULT_BIN/$b" "$BIN/$b"; done
else
  BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
fi

die() { echo "build-binaries: $*" >&2; exit 1; }
have_all() {
  for b in "${WANTED[@]}" etcd kwok; do [ -x "$BIN/$b" ] || return 1; done
  [ -z "$REAL_NODE" ] || [ -x "$BIN/pause" ] || return 1
}

if have_all; then echo "$BIN"; exit 0; fi
if [ -n "${MODELDEPLOY_NO_BUILD:-}" ]; then
  [ -z "$OLDEST" ] || die "the oldest supported control plane ($K8S_VERSION) is not built in $BIN: run \`make oldest-binaries\`"
  [ -z "$REAL_NODE" ] || die "the real node's binaries (kubelet, kube-proxy) are not built in $BIN: run \`make cluster-binaries REAL_NODE=1\`"
  die "the control plane's binaries are not built in $BIN: run \`make cluster-binaries\`"
fi

command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.24 on PATH; Debian: apt-get install golang, or the go.dev toolchain)."
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$CACHE/logs"
LOG="$CACHE/logs/build-$(date +%s).log"

run_logged() {  # run a build step, keeping its output; on failure show the tail and where the whole log is
  local what="$1"; shift
  echo "build-binaries: $what ..." >&2
  local start=$SECONDS
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build-binaries: $what FAILED; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  echo "build-binaries: $what done in $((SECONDS - start)) s" >&2
}

build_kubernetes() {
  local work="$CACHE/src/k8s-$K8S_VERSION"
  mkdir -p "$work"
  local gomod
  gomod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  [ -f "$gomod" ] || die "could not fetch k8s.io/kubernetes@$K8S_VERSION's go.mod from the module proxy"
  local minor_patch="v0.${K8S_VERSION#v1.}"
  {
    echo "module modeldeploy.local/k8s-build"
    echo
    grep -E '^go ' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    # Every staging module the release requires at v0.0.0 becomes its published tag.
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$gomod" | awk -v v="$minor_patch" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } > "$work/go.mod"
  printf 'package tools\n\nimport (\n' > "$work/tools.go"
  # Every command, wanted now or not: one go.sum serves a control-plane build and a later real-node build.
  for c in "${K8S_CMDS[@]}" "${NODE_CMDS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c" >> "$work/tools.go"; done
  printf ')\n' >> "$work/tools.go"
  sed -i '1i //go:build tools' "$work/tools.go"
  run_logged "resolving Kubernetes $K8S_VERSION modules" bash -c "cd '$work' && go mod tidy"
  local pkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version
  local major=1 minor
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ld="-s -w"
  for p in $pkg $cpkg; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  local targets=() missing=()
  for c in "${WANTED[@]}"; do [ -x "$BIN/$c" ] || missing+=("$c"); done
  for c in "${missing[@]}"; do targets+=("k8s.io/kubernetes/cmd/$c"); done
  run_logged "compiling ${missing[*]} $K8S_VERSION" bash -c "cd '$work' && go build -trimpath -ldflags '$ld' -o '$BIN/' ${targets[*]}"
}

build_etcd() {
  local work="$CACHE/src/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  cat > "$work/go.mod" <<MOD
module modeldeploy.local/etcd-build

go 1.23

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > "$work/tools.go"
  run_logged "resolving etcd $ETCD_VERSION modules" bash -c "cd '$work' && go mod tidy"
  run_logged "compiling etcd $ETCD_VERSION" bash -c "cd '$work' && go build -trimpath -ldflags '-s -w' -o '$BIN/etcd' go.etcd.io/etcd/server/v3"
}

build_kwok() {
  run_logged "compiling kwok $KWOK_VERSION" env GOBIN="$BIN" go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_pause() {  # the real node's sandbox process, a static binary of a few lines (pause/main.go beside this script)
  local work="$CACHE/src/pause"
  mkdir -p "$work"
  cp "$(dirname "${BASH_SOURCE[0]}")/pause/main.go" "$work/main.go"
  printf 'module modeldeploy.local/pause\n\ngo 1.23\n' > "$work/go.mod"
  run_logged "compiling pause" bash -c "cd '$work' && go build -trimpath -ldflags '-s -w' -o '$BIN/pause' ."
}

[ -x "$BIN/etcd" ] || build_etcd
[ -x "$BIN/kwok" ] || build_kwok
if [ -n "$REAL_NODE" ] && [ ! -x "$BIN/pause" ]; then build_pause; fi
have_all || build_kubernetes
have_all || die "build finished but binaries are missing in $BIN"
echo "$BIN"

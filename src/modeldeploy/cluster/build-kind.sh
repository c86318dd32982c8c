#!/usr/bin/env bash
# Builds, once per machine, the kind CLI and the Go programs a kind node image needs, from their Go modules, into a
# cache outside the work tree (beside the local control plane's binaries, which it reuses). A second run builds
# nothing. Prints the bin directory as its last line. The node image itself: hack/kind-node-image.sh.
#
#   kind           sigs.k8s.io/kind (the CLI users run)
#   kubeadm        k8s.io/kubernetes/cmd/kubeadm, from the same wrapper module as build-binaries.sh
#   crictl         sigs.k8s.io/cri-tools (kind load and kind's node scripts call it)
#   etcd           go.etcd.io/etcd/server/v3 at the 3.6 release kubeadm 1.34 names (its flags are 3.6-only)
#   coredns        github.com/coredns/coredns (the releases kubeadm names are not on the module proxy: the
#                  nearest one there, tagged with kubeadm's name)
#   local-path-provisioner  github.com/rancher/local-path-provisioner (kind's default StorageClass)
set -euo pipefail

KIND_VERSION="${KIND_VERSION:-v0.33.0}"
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KIND_ETCD_VERSION="${KIND_ETCD_VERSION:-v3.6.5}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.34.0}"
LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-v0.0.30}"
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
BIN="$CACHE/bin/kind-$KIND_VERSION-k8s-$K8S_VERSION"
WANTED=(kind kubeadm crictl etcd coredns local-path-provisioner)

die() { echo "build-kind: $*" >&2; exit 1; }
have_all() { for b in "${WANTED[@]}"; do [ -x "$BIN/$b" ] || return 1; done; }

if have_all; then echo "$BIN"; exit 0; fi
mkdir -p "$CACHE/bin"
exec 9>"$CACHE/bin/.build-kind.lock"
flock 9  # two builds at once (make and a test) would write the same files: the second waits, then finds them
if have_all; then echo "$BIN"; exit 0; fi
[ -z "${MODELDEPLOY_NO_BUILD:-}" ] || die "kind and its node's programs are not built in $BIN: run \`make kind-binaries\`"
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.24 on PATH; Debian: apt-get install golang)."
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$CACHE/logs"
LOG="$CACHE/logs/build-kind-$(date +%s).log"

run_logged() {  # run a build step, keeping its output; on failure show the tail and where the whole log is
  local what="$1"; shift
  echo "build-kind: $what ..." >&2
  local start=$SECONDS
  if ! "$@" >>"$LOG" 2>&1; then
    echo "build-kind: $what FAILED; last lines of $LOG:" >&2
    tail -n 30 "$LOG" >&2
    exit 1
  fi
  echo "build-kind: $what done in $((SECONDS - start)) s" >&2
}

# A module with replace directives cannot be `go install`ed: build it from a small wrapper module that requires it.
build_wrapped() {  # name module version package [ldflags]
  local name="$1" module="$2" version="$3" package="$4" ld="${5:--s -w}"
  local work="$CACHE/src/$name-$version"
  mkdir -p "$work"
  printf 'module modeldeploy.local/%s-build\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$module" "$version" > "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$package" > "$work/tools.go"
  run_logged "resolving $name $version" bash -c "cd '$work' && go mod tidy"
  run_logged "compiling $name $version" bash -c "cd '$work' && go build -trimpath -ldflags '$ld' -o '$BIN/$name' '$package'"
}

build_kubeadm() {  # the control plane's wrapper module (build-binaries.sh) plus kubeadm
  local k8s_src="$CACHE/src/k8s-$K8S_VERSION" work="$CACHE/src/k8s-$K8S_VERSION-kubeadm"
  [ -f "$k8s_src/go.mod" ] || bash "$(dirname "${BASH_SOURCE[0]}")/build-binaries.sh" --real-node >/dev/null
  mkdir -p "$work"
  cp "$k8s_src/go.mod" "$k8s_src/go.sum" "$work/"
  sed -i 's|^module .*|module modeldeploy.local/k8s-kubeadm-build|' "$work/go.mod"
  printf '//go:build tools\n\npackage tools\n\nimport _ "k8s.io/kubernetes/cmd/kubeadm"\n' > "$work/tools.go"
  run_logged "resolving kubeadm $K8S_VERSION" bash -c "cd '$work' && go mod tidy"
  local minor ld="-s -w" p
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  run_logged "compiling kubeadm $K8S_VERSION" bash -c "cd '$work' && go build -trimpath -ldflags '$ld' -o '$BIN/kubeadm' k8s.io/kubernetes/cmd/kubeadm"
}

[ -x "$BIN/kind" ] || run_logged "compiling kind $KIND_VERSION" env GOBIN="$BIN" go install -trimpath -ldflags '-s -w' "sigs.k8s.io/kind@$KIND_VERSION"
[ -x "$BIN/crictl" ] || run_logged "compiling crictl $CRICTL_VERSION" env GOBIN="$BIN" go install -trimpath \
  -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
[ -x "$BIN/coredns" ] || run_logged "compiling coredns $COREDNS_VERSION" env GOBIN="$BIN" go install -trimpath -ldflags '-s -w' "github.com/coredns/coredns@$COREDNS_VERSION"
[ -x "$BIN/local-path-provisioner" ] || build_wrapped local-path-provisioner github.com/rancher/local-path-provisioner "$LOCAL_PATH_VERSION" github.com/rancher/local-path-provisioner
[ -x "$BIN/etcd" ] || build_wrapped etcd go.etcd.io/etcd/server/v3 "$KIND_ETCD_VERSION" go.etcd.io/etcd/server/v3
[ -x "$BIN/kubeadm" ] || build_kubeadm
have_all || die "build finished but binaries are missing in $BIN"
echo "$BIN"

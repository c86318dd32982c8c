#!/usr/bin/env bash
# Builds a kind node image locally, with no image registry: the layout of kind's own base image (kind's
# images/base/files, from its Go module) on a Debian bookworm root from debootstrap with Debian's systemd,
# containerd, runc and CNI plugins; kubeadm, kubelet, kubectl, crictl built from their Go modules
# (src/modeldeploy/cluster/build-binaries.sh and build-kind.sh); and, already in the node's containerd, every image
# kubeadm and kind start: the control plane, kube-proxy, etcd, CoreDNS, pause, a CNI and local-path storage, each
# built here from its Go module into a minimal image. The real kind CLI creates clusters from it unmodified:
#
#   kind create cluster --config kind-config.yaml --image modeldeploy.local/kind-node:v1.34.4
#
#   hack/kind-node-image.sh          build it unless an image of that name exists (prints its name as the last line)
#   hack/kind-node-image.sh --force  build it again
#
# Needs root (debootstrap, chroot), a Docker engine (DOCKER_HOST is honoured) and Go. What differs from kind's
# release images: containerd 1.6 and runc 1.1 (Debian bookworm's); CoreDNS is the nearest release on the module
# proxy, tagged with the name kubeadm asks for; kind's kindnetd is not on the module proxy, so the default CNI is
# hack/kind-node/cni.sh (ptp + host-local per node, routes to the other nodes' pod ranges), installed by kind the
# same way. Cached: a second run finds the image and builds nothing.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
NODE_IMAGE="${KIND_NODE_IMAGE:-modeldeploy.local/kind-node:$K8S_VERSION}"
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
DEBS="$CACHE/images/debs"
# The names kubeadm $K8S_VERSION and kind's containerd config ask for (`kubeadm config images list`).
ETCD_TAG=3.6.5-0
COREDNS_TAG=v1.12.1
PAUSE_IMAGE=registry.k8s.io/pause:3.10
LOCAL=modeldeploy.local/kind
NODE_PACKAGES=systemd,systemd-sysv,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,containerd,runc,containernetworking-plugins,e2fsprogs,sed,findutils
TOOLS_PACKAGES=iptables,conntrack,iproute2

log() { echo "kind-node-image: $*" >&2; }
die() { log "$*"; exit 1; }

force=false
case "${1:-}" in "") ;; --force) force=true ;; *) echo "usage: $0 [--force]" >&2; exit 2 ;; esac

docker version >/dev/null 2>&1 || die "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-default}): run 'make docker-up' first"
if ! $force && docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
  log "$NODE_IMAGE is present (--force builds it again)"
  echo "$NODE_IMAGE"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "building the node image needs root (debootstrap, chroot): run 'sudo $0'"
command -v debootstrap >/dev/null || { log "installing debootstrap (apt-get)"; apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
command -v jq >/dev/null || { log "installing jq (apt-get)"; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null; }

start=$SECONDS

work=$(mktemp -d /var/tmp/modeldeploy-kind-node.XXXXXX)
builder=modeldeploy-kind-node-build-$$
cleanup() { docker rm -f "$builder" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$DEBS"

bootstrap() {  # rootfs packages
  log "debootstrap $SUITE minbase + ${2//,/ } (packages cached in $DEBS)"
  if ! debootstrap --variant=minbase --cache-dir="$DEBS" --include="$2" "$SUITE" "$1" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above): check that $MIRROR is reachable, or set DEBIAN_MIRROR"
  fi
  rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*
}

import_rootfs() {  # rootfs image [docker import --change ...]
  local rootfs=$1 image=$2; shift 2
  tar -C "$rootfs" --numeric-owner -c . | docker import "$@" - "$image" >/dev/null
}

# --- the small images kubeadm and kind start, in the node's containerd before it boots -----------------------------
tools_rootfs=$work/tools
bootstrap "$tools_rootfs" "$TOOLS_PACKAGES"
import_rootfs "$tools_rootfs" "$LOCAL/tools:$SUITE"
rm -rf "$tools_rootfs"
rootfs=$work/node
bootstrap "$rootfs" "$NODE_PACKAGES"

K8S_BIN=$(bash "$ROOT/src/modeldeploy/cluster/build-binaries.sh" --real-node | tail -n 1)
KIND_BIN=$(bash "$ROOT/src/modeldeploy/cluster/build-kind.sh" | tail -n 1)
KIND_SRC=$(cd "$CACHE" && go mod download -json "sigs.k8s.io/kind@$KIND_VERSION" | jq -r .Dir)
[ -d "$KIND_SRC/images/base/files" ] || die "kind's module $KIND_VERSION has no images/base/files"

image_from() {  # base image binary... : a Dockerfile of COPY lines, ENTRYPOINT the first binary
  local base=$1 image=$2; shift 2
  local ctx=$work/ctx-${image//[\/:]/_}
  mkdir -p "$ctx"
  {
    echo "FROM $base"
    # kubeadm's static pods and kind's manifests start etcd, kube-apiserver, local-path-provisioner by bare name.
    echo "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    for b in "$@"; do cp "$b" "$ctx/"; echo "COPY $(basename "$b") /usr/local/bin/$(basename "$b")"; done
    echo "ENTRYPOINT [\"/usr/local/bin/$(basename "$1")\"]"
  } >"$ctx/Dockerfile"
  # (the classic builder's deprecation notice on stderr is kept out of sight unless the build fails)
  docker build --quiet --network none --label "dev.modeldeploy.kind-node-image=$K8S_VERSION" -t "$image" "$ctx" \
    >/dev/null 2>"$ctx/build.log" || { cat "$ctx/build.log" >&2; die "docker build of $image failed"; }
}

scratch=$LOCAL/scratch:1
mkdir -p "$work/empty/tmp" && chmod 1777 "$work/empty/tmp"  # an empty root (and /tmp, which Go programs may use)
import_rootfs "$work/empty" "$scratch"
for c in kube-apiserver kube-controller-manager kube-scheduler; do image_from "$scratch" "registry.k8s.io/$c:$K8S_VERSION" "$K8S_BIN/$c"; done
image_from "$LOCAL/tools:$SUITE" "registry.k8s.io/kube-proxy:$K8S_VERSION" "$K8S_BIN/kube-proxy"
image_from "$scratch" "registry.k8s.io/etcd:$ETCD_TAG" "$KIND_BIN/etcd"
image_from "$scratch" "registry.k8s.io/coredns/coredns:$COREDNS_TAG" "$KIND_BIN/coredns"
image_from "$scratch" "$PAUSE_IMAGE" "$K8S_BIN/pause"
image_from "$scratch" "$LOCAL/local-path-provisioner:v0.0.30" "$KIND_BIN/local-path-provisioner"
docker tag "$LOCAL/tools:$SUITE" "$LOCAL/local-path-helper:$SUITE"  # the provisioner runs `sh /script/setup` in it
image_from "$LOCAL/tools:$SUITE" "$LOCAL/cni:1" "$HERE/kind-node/cni.sh" "$K8S_BIN/kubectl"
node_images=(
  "registry.k8s.io/kube-apiserver:$K8S_VERSION" "registry.k8s.io/kube-controller-manager:$K8S_VERSION"
  "registry.k8s.io/kube-scheduler:$K8S_VERSION" "registry.k8s.io/kube-proxy:$K8S_VERSION"
  "registry.k8s.io/etcd:$ETCD_TAG" "registry.k8s.io/coredns/coredns:$COREDNS_TAG" "$PAUSE_IMAGE"
  "$LOCAL/local-path-provisioner:v0.0.30" "$LOCAL/local-path-helper:$SUITE" "$LOCAL/cni:1"
)

# --- the node's root: kind's base image layout ----------------------------------------------------------------------
files=$KIND_SRC/images/base/files
install -m 0755 "$files"/usr/local/bin/* "$rootfs/usr/local/bin/"
mkdir -p "$rootfs/kind/bin" "$rootfs/kind/manifests" "$rootfs/etc/containerd" "$rootfs/etc/default" \
  "$rootfs/etc/sysctl.d" "$rootfs/etc/systemd/system/kubelet.service.d" "$rootfs/etc/kubernetes/manifests" "$rootfs/opt/cni/bin"
install -m 0644 "$files/kind/README.txt" "$rootfs/kind/"
install -m 0755 "$files"/kind/bin/* "$rootfs/kind/bin/"
install -m 0644 "$files/etc/crictl.yaml" "$rootfs/etc/"
install -m 0644 "$files/etc/default/kubelet" "$rootfs/etc/default/"
install -m 0644 "$files"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
for unit in kubelet.service kubelet.slice undo-mount-hacks.service containerd.service; do
  install -m 0644 "$files/etc/systemd/system/$unit" "$rootfs/etc/systemd/system/"
done
install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"
# Debian installs containerd in /usr/bin; kind's unit starts /usr/local/bin/containerd.
sed -i 's|^ExecStart=/usr/local/bin/containerd|ExecStart=/usr/bin/containerd|' "$rootfs/etc/systemd/system/containerd.service"
# kind's containerd config without the fuse-overlayfs snapshotter (rootless only; not built here).
sed '/^\[proxy_plugins/,/^$/d; /^# fuse-overlayfs/d' "$files/etc/containerd/config.toml" >"$rootfs/etc/containerd/config.toml"
# Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which a node does not have where Docker's capability
# bounding set lacks it (hack/kind-docker.sh): runc then fails every pod with "failed to update
# /proc/self/oom_score_adj: Permission denied". Restricted, containerd never sets a score below its own: where the
# node can lower scores this changes nothing (containerd runs at -999, pods ask for -998 at least).
sed -i 's/^\( *restrict_oom_score_adj = \)false/\1true/' "$rootfs/etc/containerd/config.toml"
grep -q 'restrict_oom_score_adj = true' "$rootfs/etc/containerd/config.toml" || die "kind's containerd config has no restrict_oom_score_adj"
grep -q fuse-overlayfs "$rootfs/etc/containerd/config.toml" && die "could not drop fuse-overlayfs from kind's containerd config"
chroot "$rootfs" ctr oci spec \
  | jq '.hooks.createContainer[.hooks.createContainer | length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' \
  | jq 'del(.process.rlimits)' >"$rootfs/etc/containerd/cri-base.json"
for p in host-local loopback ptp portmap bridge; do ln -sf "/usr/lib/cni/$p" "$rootfs/opt/cni/bin/$p"; done
install -m 0755 "$K8S_BIN/kubelet" "$K8S_BIN/kubectl" "$KIND_BIN/kubeadm" "$rootfs/usr/bin/"
install -m 0755 "$KIND_BIN/crictl" "$rootfs/usr/local/bin/"
echo "$K8S_VERSION" >"$rootfs/kind/version"
# What images/base/Dockerfile does after installing its packages.
find "$rootfs/lib/systemd/system/sysinit.target.wants/" -name systemd-tmpfiles-setup.service -delete
rm -f "$rootfs"/lib/systemd/system/multi-user.target.wants/* "$rootfs"/etc/systemd/system/*.wants/* \
  "$rootfs"/lib/systemd/system/local-fs.target.wants/* "$rootfs"/lib/systemd/system/sockets.target.wants/*udev* \
  "$rootfs"/lib/systemd/system/sockets.target.wants/*initctl* "$rootfs"/lib/systemd/system/basic.target.wants/*
echo "ReadKMsg=no" >>"$rootfs/etc/systemd/journald.conf"
chroot "$rootfs" systemctl enable kubelet.service containerd.service undo-mount-hacks.service >/dev/null 2>&1
chroot "$rootfs" systemctl mask systemd-binfmt.service >/dev/null 2>&1
# The default CNI and StorageClass kind installs, from kind's own manifests with the images made above.
sed "s|image: IMAGE|image: $LOCAL/cni:1|" "$HERE/kind-node/cni.yaml" >"$rootfs/kind/manifests/default-cni.yaml"
awk '/^const defaultStorageManifest = `/{on=1; next} on && /^`/{exit} on' "$KIND_SRC/pkg/build/nodeimage/const_storage.go" \
  | sed -e "s|\` + storageProvisionerImage + \`|$LOCAL/local-path-provisioner:v0.0.30|g" \
        -e "s|\` + storageHelperImage + \`|$LOCAL/local-path-helper:$SUITE|g" >"$rootfs/kind/manifests/default-storage.yaml"
grep -q '` +' "$rootfs/kind/manifests/default-storage.yaml" && die "kind's storage manifest changed shape: update this script"
grep -q "kind: StorageClass" "$rootfs/kind/manifests/default-storage.yaml" || die "kind's storage manifest was not found in $KIND_SRC"

base=$LOCAL/node-base:$K8S_VERSION
import_rootfs "$rootfs" "$base-rootfs"
rm -rf "$rootfs"
# The end of images/base/Dockerfile (`docker import` cannot set a stop signal; a build of metadata only can).
mkdir -p "$work/node-base"
printf '%s\n' "FROM $base-rootfs" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
  'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' >"$work/node-base/Dockerfile"
docker build --quiet --network none -t "$base" "$work/node-base" >/dev/null 2>"$work/node-base/build.log" \
  || { cat "$work/node-base/build.log" >&2; die "docker build of $base failed"; }

# --- the images, imported into the node's containerd (what kind's buildcontext.go does) -----------------------------
log "importing ${#node_images[@]} images into the node's containerd"
# containerd is the builder's main process, so that stopping it leaves no process behind in what is committed.
docker run -d --name "$builder" --entrypoint /usr/bin/containerd --security-opt seccomp=unconfined --tmpfs /run \
  "$base" >/dev/null
for _ in $(seq 150); do docker exec "$builder" ctr version >/dev/null 2>&1 && break; sleep 0.2; done
docker save "${node_images[@]}" | docker exec -i "$builder" ctr -n k8s.io images import --all-platforms --no-unpack --digests -
docker exec "$builder" ctr -n k8s.io images ls -q | sort >"$work/imported"
for i in "${node_images[@]}"; do grep -qxF "$i" "$work/imported" || die "$i is not in the node's containerd after the import"; done
docker kill --signal TERM "$builder" >/dev/null
docker wait "$builder" >/dev/null
docker commit --change 'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' --change 'CMD []' \
  --change "LABEL dev.modeldeploy.kind-node-image=$K8S_VERSION" "$builder" "$NODE_IMAGE" >/dev/null
docker rm -f "$builder" >/dev/null
docker rmi "$base" "$base-rootfs" >/dev/null 2>&1 || true
size=$(docker image inspect --format '{{.Size}}' "$NODE_IMAGE")
log "built $NODE_IMAGE in $((SECONDS - start)) s, $((size / 1000000)) MB"
echo "$NODE_IMAGE"

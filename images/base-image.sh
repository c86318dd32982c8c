#!/usr/bin/env bash
# Make the Dockerfiles' base image (python:3.11-slim) available without an image registry.
#
#   images/base-image.sh           use the local image if present, else pull it, else build a stand-in locally
#   images/base-image.sh --force   build the local stand-in even if an image of that name exists (replaces it)
#
# The stand-in is a Debian bookworm root filesystem from debootstrap (minbase + python3, python3-venv, python3-pip,
# ca-certificates), imported with `docker import` under the exact name the Dockerfiles use, so the Dockerfiles stay
# standard for anyone who can pull. It behaves like the official image for what our Dockerfiles rely on
# (see docs/images.md): python3/python/pip on PATH in /usr/local/bin, `python3 -m venv`, `pip install` as root.
# The host's CA certificates are copied in, so pip inside `docker build --network host` trusts what the host trusts.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE_DIR=${MODELDEPLOY_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy/images}
PULL_TIMEOUT=${MODELDEPLOY_PULL_TIMEOUT:-60}
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
LOCAL_LABEL=dev.modeldeploy.local-base

log() { echo "base-image: $*" >&2; }
die() { log "$*"; exit 1; }

force=false
case "${1:-}" in
  "") ;;
  --force) force=true ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

docker version >/dev/null 2>&1 || die "no Docker engine answers: run 'make docker-up' (images/docker.sh up) first"

if ! $force && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  origin=$(docker image inspect --format "{{index .Config.Labels \"$LOCAL_LABEL\"}}" "$BASE_IMAGE")
  log "$BASE_IMAGE is present (${origin:-pulled from a registry})"
  exit 0
fi

if ! $force; then
  log "pulling $BASE_IMAGE (at most ${PULL_TIMEOUT}s)"
  if timeout "$PULL_TIMEOUT" docker pull --quiet "$BASE_IMAGE" >/dev/null 2>&1; then
    log "pulled $BASE_IMAGE"
    exit 0
  fi
  log "cannot pull $BASE_IMAGE (no registry reachable): building a local stand-in from Debian $SUITE"
fi

[ "$(id -u)" -eq 0 ] || die "building the local base image needs root (debootstrap): run 'sudo $0'"
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "debootstrap is missing and apt-get is not available to install it"
  log "installing debootstrap (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi
[ -s "$HOST_CA_BUNDLE" ] || die "$HOST_CA_BUNDLE is missing: install ca-certificates on this machine"

start=$SECONDS
mkdir -p "$CACHE_DIR/debs"
work=$(mktemp -d /var/tmp/modeldeploy-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs

log "debootstrap $SUITE (minbase) from $MIRROR; downloaded packages are kept in $CACHE_DIR/debs"
if ! debootstrap --variant=minbase --cache-dir="$CACHE_DIR/debs" \
  --include=python3,python3-venv,python3-pip,ca-certificates \
  "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1; then
  tail -n 20 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above): check that $MIRROR is reachable, or set DEBIAN_MIRROR"
fi

python_version=$(chroot "$rootfs" /usr/bin/python3 -c 'import platform; print(platform.python_version())')

# What the official image has and a Dockerfile may rely on: python3, python, pip in /usr/local/bin (first on PATH).
for name in python3 python python3.11; do ln -sf /usr/bin/python3.11 "$rootfs/usr/local/bin/$name"; done
for name in pip pip3 pip3.11; do ln -sf /usr/bin/pip3 "$rootfs/usr/local/bin/$name"; done
# The official image lets root `pip install` into the system Python; Debian marks it externally managed (PEP 668).
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED

# Trust what the host trusts (its proxy's CA among them). The extra CAs also go where update-ca-certificates finds
# them, so a Dockerfile that reinstalls ca-certificates keeps them.
cp "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi

cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF

# Slim it like the official slim image: no package caches, documentation or translations.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
  "$rootfs"/var/log/* "$rootfs"/tmp/* 2>/dev/null || true
find "$rootfs/usr/lib/python3" "$rootfs"/usr/lib/python3.* -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
# A resolv.conf from the build host would be wrong in a container; Docker provides one at run time.
rm -f "$rootfs/etc/resolv.conf"

log "importing as $BASE_IMAGE (Python $python_version)"
tar --numeric-owner -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PYTHON_VERSION=$python_version" \
  --change "ENV PIP_CERT=$HOST_CA_BUNDLE" \
  --change "ENV SSL_CERT_FILE=$HOST_CA_BUNDLE" \
  --change "LABEL $LOCAL_LABEL=debootstrap-$SUITE" \
  --change 'CMD ["python3"]' \
  --message "local stand-in for $BASE_IMAGE: debootstrap $SUITE minbase with python3" \
  - "$BASE_IMAGE" >/dev/null

size=$(docker image inspect --format '{{.Size}}' "$BASE_IMAGE")
log "built $BASE_IMAGE locally in $((SECONDS - start))s: $((size / 1000000)) MB, Python $python_version"

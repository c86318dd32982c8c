#!/usr/bin/env bash
# A Docker engine for kind on a machine where `docker run --privileged` fails with "unable to apply caps" (a
# capability bounding set without CAP_SYS_RESOURCE: some sandboxes, nested containers). It is a dockerd of its own,
# on its own socket, data root and bridge, whose default runtime is hack/runc-without-sys-resource (kind cannot pass
# --runtime). Any other Docker engine on the machine is left alone.
#
#   hack/kind-docker.sh check   exit 0 when the current Docker engine runs a privileged container (kind needs no help)
#   hack/kind-docker.sh up      start the engine (root), wait for it; prints DOCKER_HOST=unix://... as its last line
#   hack/kind-docker.sh down    stop it: its containers (kind's nodes) first, then dockerd; its data root stays
#   hack/kind-docker.sh purge   down, then remove its data root (the node image and everything loaded into it)
#   hack/kind-docker.sh host    print its DOCKER_HOST
#
# State: $MODELDEPLOY_KIND_DOCKER_STATE (default ${XDG_STATE_HOME:-~/.local/state}/modeldeploy/kind-docker); its data
# root: /var/lib/modeldeploy-kind-docker. Its bridge mdkind0 (172.28.0.1/24) and kind's network, made here on bridge
# mdkind1 (172.29.0.0/24; kind uses a network named "kind" that exists), stay clear of docker0 (172.17.0.0/16) and
# the real node's bridge (10.245.0.0/24). It manages no iptables rules (--iptables=false: another dockerd owns the
# DOCKER chains, and a second one would flush them at its start); published ports go through docker-proxy, and two
# FORWARD rules let the nodes talk over mdkind1 (removed by `down`). The nodes reach nothing outside: no registry.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${MODELDEPLOY_KIND_DOCKER_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/modeldeploy/kind-docker}
DATA_ROOT=${MODELDEPLOY_KIND_DOCKER_ROOT:-/var/lib/modeldeploy-kind-docker}
SOCKET=$STATE/docker.sock
PID_FILE=$STATE/dockerd.pid
LOG_FILE=$STATE/dockerd.log
BRIDGE=mdkind0
BRIDGE_IP=${MODELDEPLOY_KIND_DOCKER_BIP:-172.28.0.1/24}
KIND_BRIDGE=mdkind1
KIND_SUBNET=${MODELDEPLOY_KIND_DOCKER_SUBNET:-172.29.0.0/24}
READY_TIMEOUT=60

log() { echo "kind-docker: $*" >&2; }
die() { log "$*"; exit 1; }
host() { echo "unix://$SOCKET"; }
answers() { DOCKER_HOST=$(host) docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

running_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then echo "$pid"; return 0; fi
  rm -f "$PID_FILE"
  return 1
}

cmd_check() {  # the engine in the environment (DOCKER_HOST or the default socket), with any local image
  local image
  image=$(docker images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep -v '<none>' | head -n 1) || true
  [ -n "$image" ] || { log "no local image to try a privileged container with"; return 2; }
  local out
  if out=$(docker run --rm --privileged --user 0 --entrypoint /bin/sh "$image" -c true 2>&1); then
    log "this Docker engine runs privileged containers: kind needs no other engine"
    return 0
  fi
  log "this Docker engine cannot run a privileged container: $(echo "$out" | head -n 1)"
  return 1
}

cmd_up() {
  if answers; then log "running (pid $(running_pid || echo '?'))"; host; return 0; fi
  [ "$(id -u)" -eq 0 ] || die "starting a dockerd needs root"
  command -v dockerd >/dev/null || die "dockerd is not installed: images/docker.sh up installs Debian's docker.io"
  if ! command -v jq >/dev/null; then  # the runtime wrapper edits config.json with it
    command -v apt-get >/dev/null || die "jq is missing: install it"
    log "installing jq (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq jq >/dev/null
  fi
  mkdir -p "$STATE" "$DATA_ROOT"
  exec 9>"$STATE/lock"
  flock 9
  local pid
  if ! pid=$(running_pid); then
    cat >"$STATE/daemon.json" <<JSON
{
  "runtimes": {"runc-without-sys-resource": {"path": "$HERE/runc-without-sys-resource"}},
  "default-runtime": "runc-without-sys-resource",
  "iptables": false,
  "ip-masq": false
}
JSON
    ip link show "$BRIDGE" >/dev/null 2>&1 || {
      ip link add "$BRIDGE" type bridge
      ip addr add "$BRIDGE_IP" dev "$BRIDGE"
      ip link set "$BRIDGE" up
    }
    log "starting dockerd on $SOCKET (data root $DATA_ROOT, log $LOG_FILE)"
    setsid dockerd --config-file "$STATE/daemon.json" --host "$(host)" --data-root "$DATA_ROOT" \
      --exec-root "$STATE/exec" --pidfile "$PID_FILE" --bridge "$BRIDGE" \
      --containerd-namespace modeldeploy-kind --containerd-plugins-namespace modeldeploy-kind-plugins \
      >"$LOG_FILE" 2>&1 </dev/null 9>&- &
    pid=$!
  fi
  local deadline=$((SECONDS + READY_TIMEOUT))
  until answers; do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$LOG_FILE" >&2; die "dockerd exited before answering (log above)"; }
    [ "$SECONDS" -lt "$deadline" ] || die "dockerd did not answer within ${READY_TIMEOUT}s; see $LOG_FILE"
    sleep 0.5
  done
  if ! DOCKER_HOST=$(host) docker network inspect kind >/dev/null 2>&1; then
    DOCKER_HOST=$(host) docker network create kind --driver bridge --subnet "$KIND_SUBNET" \
      -o com.docker.network.bridge.name="$KIND_BRIDGE" -o com.docker.network.bridge.enable_ip_masquerade=false \
      -o com.docker.network.driver.mtu=1500 >/dev/null
  fi
  forward_rules -I
  log "ready"
  host
}

forward_rules() {  # -I adds the two FORWARD rules for kind's bridge once, -D removes them
  local rule
  for rule in "-i $KIND_BRIDGE" "-o $KIND_BRIDGE"; do
    # shellcheck disable=SC2086
    if iptables -C FORWARD $rule -j ACCEPT 2>/dev/null; then
      [ "$1" = -I ] || iptables -D FORWARD $rule -j ACCEPT
    elif [ "$1" = -I ]; then
      iptables -I FORWARD $rule -j ACCEPT
    fi
  done
}

cmd_down() {
  local pid
  if ! pid=$(running_pid); then log "not running"; else
    local ids
    ids=$(DOCKER_HOST=$(host) docker ps -aq 2>/dev/null || true)
    # kind's nodes are containers of this engine: stopped, not left to be restarted with it.
    # shellcheck disable=SC2086
    [ -z "$ids" ] || DOCKER_HOST=$(host) docker rm -f $ids >/dev/null 2>&1 || true
    DOCKER_HOST=$(host) docker network rm kind >/dev/null 2>&1 || true
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null; do
      [ "$SECONDS" -lt "$deadline" ] || { kill -KILL "$pid" 2>/dev/null || true; break; }
      sleep 0.2
    done
    rm -f "$PID_FILE"
    log "stopped"
  fi
  forward_rules -D
  local b
  for b in "$KIND_BRIDGE" "$BRIDGE"; do
    if ip link show "$b" >/dev/null 2>&1; then ip link del "$b"; fi
  done
}

cmd_purge() {
  cmd_down
  rm -rf "$DATA_ROOT" "$STATE"
  log "removed $DATA_ROOT"
}

case "${1:-}" in
  check) cmd_check ;;
  up) cmd_up ;;
  down) cmd_down ;;
  purge) cmd_purge ;;
  host) host ;;
  *) echo "usage: $0 check|up|down|purge|host" >&2; exit 2 ;;
esac

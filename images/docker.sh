#!/usr/bin/env bash
# A Docker engine for building and running the images on a machine without systemd: start it when none answers,
# stop only the one this script started.
#
#   images/docker.sh up       install docker.io when dockerd is missing (root + apt), start dockerd, wait for it
#   images/docker.sh down     stop the dockerd that `up` started (an engine it found running is left alone)
#   images/docker.sh status   say whether an engine answers and whether this script started it
#
# State (the PID of the dockerd it started, its log) lives in $MODELDEPLOY_DOCKER_STATE, by default
# ${XDG_STATE_HOME:-~/.local/state}/modeldeploy/docker.
set -euo pipefail

STATE_DIR=${MODELDEPLOY_DOCKER_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/modeldeploy/docker}
PID_FILE=$STATE_DIR/dockerd.pid
LOG_FILE=$STATE_DIR/dockerd.log
READY_TIMEOUT=${MODELDEPLOY_DOCKER_READY_TIMEOUT:-60}

log() { echo "docker: $*" >&2; }
die() { log "$*"; exit 1; }

engine_answers() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

# The PID this script recorded, if that process is still a dockerd (a PID can be reused after a reboot).
started_pid() {
  [ -f "$PID_FILE" ] || return 1
  local pid
  pid=$(cat "$PID_FILE")
  if [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    echo "$pid"
    return 0
  fi
  rm -f "$PID_FILE"
  return 1
}

install_engine() {
  command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    die "dockerd is not installed and this is not root on a Debian-like machine: install Docker (the docker.io package, or Docker Engine), then run this again"
  fi
  log "installing docker.io (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
}

cmd_up() {
  if engine_answers; then
    if pid=$(started_pid); then
      log "dockerd (pid $pid, started by this script) is running"
    else
      log "a Docker engine is already running (not started by this script; 'down' will leave it alone)"
    fi
    return 0
  fi
  install_engine
  [ "$(id -u)" -eq 0 ] || die "no Docker engine answers and starting dockerd needs root: start Docker, or run 'sudo $0 up'"
  mkdir -p "$STATE_DIR"
  # Two `up` at once (two test sessions, say) must not start two engines on one socket.
  exec 9>"$STATE_DIR/lock"
  flock 9
  if engine_answers; then
    log "a Docker engine came up meanwhile"
    return 0
  fi
  if pid=$(started_pid); then
    log "dockerd (pid $pid) was started earlier but does not answer yet"
  else
    log "starting dockerd (log: $LOG_FILE)"
    # setsid: the engine outlives this shell and is not killed by a Ctrl-C meant for make.
    setsid dockerd >"$LOG_FILE" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PID_FILE"
  fi
  local deadline=$((SECONDS + READY_TIMEOUT))
  until engine_answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      tail -n 20 "$LOG_FILE" >&2 || true
      die "dockerd exited before answering; its log is above (full log: $LOG_FILE)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      die "dockerd (pid $pid) did not answer within ${READY_TIMEOUT}s; see $LOG_FILE"
    fi
    sleep 0.5
  done
  log "dockerd (pid $pid) is ready: $(docker version --format 'server {{.Server.Version}}, storage driver: ')$(docker info --format '{{.Driver}}')"
}

cmd_down() {
  local pid
  if ! pid=$(started_pid); then
    if engine_answers; then
      log "the running Docker engine was not started by this script: leaving it alone"
    else
      log "no dockerd started by this script is running"
    fi
    return 0
  fi
  log "stopping dockerd (pid $pid)"
  kill -TERM "$pid"
  # dockerd stops its containers and its own containerd first; give it the time it asks for.
  local deadline=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "dockerd (pid $pid) still running after 30s: sending KILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  log "stopped"
}

cmd_status() {
  if engine_answers; then
    if pid=$(started_pid); then
      echo "running: dockerd pid $pid, started by this script"
    else
      echo "running: not started by this script"
    fi
  else
    echo "not running"
    return 1
  fi
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac

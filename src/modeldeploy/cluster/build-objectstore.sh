#!/usr/bin/env bash
# Builds versitygw (the Versity S3 Gateway, Apache-2.0) from its Go module, once per version, into the same cache root
# as the control plane's binaries. Its posix backend keeps buckets as directories and objects as files: a real S3
# server for `modeldeploy cluster up --object-store` and the object-storage tests. A second run builds nothing.
# Prints the bin directory as its last line.
set -euo pipefail

VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
BIN="$CACHE/bin/versitygw-$VERSITYGW_VERSION"

die() { echo "build-objectstore: $*" >&2; exit 1; }

if [ -x "$BIN/versitygw" ]; then echo "$BIN"; exit 0; fi
[ -z "${MODELDEPLOY_NO_BUILD:-}" ] || die "versitygw is not built in $BIN: run \`make objectstore-binaries\`"
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.25 on PATH)."
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$CACHE/logs" "$CACHE/bin"
LOG="$CACHE/logs/build-objectstore-$(date +%s).log"
# Built into a temporary directory and moved into place: a build stopped half way leaves no binary that looks done.
STAGE=$(mktemp -d "$CACHE/bin/.versitygw-XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
echo "build-objectstore: versitygw $VERSITYGW_VERSION ..." >&2
start=$SECONDS
# No replace directives in its go.mod, so `go install module@version` builds exactly the build list upstream tested.
if ! GOBIN="$STAGE" nice -n 10 go install -trimpath -ldflags='-s -w' \
    "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION" >>"$LOG" 2>&1; then
  echo "build-objectstore: FAILED; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
fi
"$STAGE/versitygw" --version >/dev/null || die "the built versitygw does not run; see $LOG"
rm -rf "$BIN"
mv "$STAGE" "$BIN"
echo "build-objectstore: versitygw done in $((SECONDS - start)) s" >&2
echo "$BIN"

#!/usr/bin/env bash
# Builds one binary from a Go module with `go install module@version`, once per version, into the cache root of the
# control plane's binaries (for modules without replace directives: `go install` then builds exactly the build list
# upstream tested). A second run builds nothing; MODELDEPLOY_NO_BUILD=1 only says whether it is built. Prints the bin
# directory as its last line.
#   build-go-binary.sh LABEL BINARY PACKAGE VERSION MAKE_TARGET
set -euo pipefail

LABEL=$1 NAME=$2 PACKAGE=$3 VERSION=$4 TARGET=$5
CACHE="${MODELDEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy}"
BIN="$CACHE/bin/$NAME-$VERSION"

die() { echo "$LABEL: $*" >&2; exit 1; }

if [ -x "$BIN/$NAME" ]; then echo "$BIN"; exit 0; fi
[ -z "${MODELDEPLOY_NO_BUILD:-}" ] || die "$NAME is not built in $BIN: run \`make $TARGET\`"
command -v go >/dev/null 2>&1 || die "Go is not installed (need go >= 1.25 on PATH)."
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$CACHE/logs" "$CACHE/bin"
LOG="$CACHE/logs/$LABEL-$(date +%s).log"
# Built into a temporary directory and moved into place: a build stopped half way leaves no binary that looks done.
STAGE=$(mktemp -d "$CACHE/bin/.$NAME-XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
echo "$LABEL: $NAME $VERSION ..." >&2
start=$SECONDS
if ! GOBIN="$STAGE" nice -n 10 go install -trimpath -ldflags='-s -w' "$PACKAGE@$VERSION" >>"$LOG" 2>&1; then
  echo "$LABEL: FAILED; last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
fi
"$STAGE/$NAME" --version >/dev/null || die "the built $NAME does not run; see $LOG"
rm -rf "$BIN"
mv "$STAGE" "$BIN"
echo "$LABEL: $NAME done in $((SECONDS - start)) s" >&2
echo "$BIN"

#!/usr/bin/env bash
# Lint the GitHub Actions workflows with actionlint, built once from its Go module (no release download) and cached
# outside the tree beside the control plane's binaries: ~/.cache/modeldeploy/bin/actionlint-<version>/actionlint.
#
#   hack/actionlint.sh [actionlint arguments]      (default: every .github/workflows/*.yml)
set -euo pipefail

cd "$(dirname "$0")/.."
ACTIONLINT_VERSION=${ACTIONLINT_VERSION:-v1.7.12}
BIN_DIR=${MODELDEPLOY_BIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modeldeploy/bin}/actionlint-$ACTIONLINT_VERSION
actionlint=$BIN_DIR/actionlint

if [ ! -x "$actionlint" ]; then
  command -v go >/dev/null 2>&1 || { echo "actionlint: Go is needed to build actionlint $ACTIONLINT_VERSION" >&2; exit 1; }
  echo "actionlint: building $ACTIONLINT_VERSION from its Go module into $BIN_DIR (once) ..." >&2
  start=$SECONDS
  mkdir -p "$BIN_DIR"
  # Into a temporary directory first: an interrupted build never leaves a half-written binary in the cache.
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  GOBIN=$tmp GOTOOLCHAIN=local CGO_ENABLED=0 go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  mv "$tmp/actionlint" "$actionlint"
  echo "actionlint: built in $((SECONDS - start)) s" >&2
fi

# shellcheck and pyflakes run on `run:` scripts when they are on PATH; actionlint says nothing when they are not.
if [ "$#" -eq 0 ]; then
  exec "$actionlint" -no-color .github/workflows/*.yml
fi
exec "$actionlint" "$@"

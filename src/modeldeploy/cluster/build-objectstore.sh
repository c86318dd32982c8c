#!/usr/bin/env bash
# Builds versitygw (the Versity S3 Gateway, Apache-2.0) from its Go module, once per version, into the same cache root
# as the control plane's binaries. Its posix backend keeps buckets as directories and objects as files: a real S3
# server for `modeldeploy cluster up --object-store` and the object-storage tests. A second run builds nothing.
# Prints the bin directory as its last line.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-go-binary.sh" build-objectstore versitygw \
  github.com/versity/versitygw/cmd/versitygw "${VERSITYGW_VERSION:-v1.8.0}" objectstore-binaries

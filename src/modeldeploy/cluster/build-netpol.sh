#!/usr/bin/env bash
# Builds kube-router (Apache-2.0) from its Go module, once per version, into the same cache root as the control
# plane's binaries: its network-policy controller enforces NetworkPolicy on the real node beside the bridge CNI, for
# the opt-in test tests/realnode/test_network_policy_realnode.py (MODELDEPLOY_NETPOL_TEST=1). v2.1.0 is the only
# release the Go module proxy serves here, and advisories are reported against it: nothing but that test runs it.
# A second run builds nothing. Prints the bin directory as its last line.
set -euo pipefail
exec bash "$(dirname "${BASH_SOURCE[0]}")/build-go-binary.sh" build-netpol kube-router \
  github.com/cloudnativelabs/kube-router/v2/cmd/kube-router "${KUBE_ROUTER_VERSION:-v2.1.0}" netpol-binaries

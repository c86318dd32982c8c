"""The local Kubernetes control plane: build, start, stop."""

"""The GitOps tests' fixture (a cluster of their own with Flux and the two repositories) lives in fluxenv.py."""

from .fluxenv import flux  # noqa: F401 (a fixture, found by pytest through this module)

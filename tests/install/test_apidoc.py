"""docs/api-reference.md is generated from the CRD; it must match what the generator makes from today's CRD."""

from __future__ import annotations

from modeldeploy.tools import apidoc

from .conftest import REPO


def test_the_api_reference_is_current() -> None:
    page = REPO / "docs" / "api-reference.md"
    assert page.read_text(encoding="utf-8") == apidoc.render(), "docs/api-reference.md is stale: run `make docs`"


def test_the_reference_lists_every_field_with_its_default_and_rules() -> None:
    text = apidoc.render()
    assert "| `spec.training.epochs` | integer | `5` | >= 1; <= 1000 |" in text
    assert "| `spec.serving.strategy.maxSurge` | integer or string | `1` |" in text
    assert "set exactly one of spec.training (train a model) or spec.importModel" in text
    assert "| `status.conditions[].type` (required) | string |" in text


def test_the_reference_states_the_minimum_kubernetes_and_why() -> None:
    text = apidoc.render()
    assert "**Kubernetes 1.30 or newer**" in text
    assert "`lifecycle.preStop.sleep`" in text and "`quantity()`" in text and "`podFailurePolicy`" in text

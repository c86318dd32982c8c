"""Pure parts without TensorFlow: data validation and the choice among compression candidates."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from modeldeploy_training import compression, data, runner, tflite
from modeldeploy_training.compression import Candidate
from modeldeploy_training.errors import AccuracyBudgetExceeded, InvalidData, InvalidSpec
from modeldeploy_training.settings import settings_from_env

from modeldeploy import contracts

pytestmark = pytest.mark.training


def check(x: object, y: object) -> data.Dataset:
    return data.validate(np.asarray(x), np.asarray(y), source="t.npz", fingerprint="f")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((20, 3)), np.arange(19) % 2, "20 samples but 19 labels"),
        (np.zeros((20, 3)), np.zeros(20), "a classifier needs at least two classes"),
        (np.zeros((20, 3)), np.linspace(0, 1, 20), "is not a class"),
        (np.zeros((20, 3)), np.eye(20)[:, :2], "not one-hot"),
        (np.zeros((5, 3)), np.arange(5) % 2, "at least 10 are needed"),
        (np.array([["a"] * 3] * 20), np.arange(20) % 2, "must be numbers"),
        (np.where(np.eye(20, 3) > 0, np.nan, 0.0), np.arange(20) % 2, "3 samples hold NaN"),
        (np.zeros((20, 3)), np.r_[np.zeros(19), 1], "class '1' has fewer than 2 samples"),
        (np.zeros((20, 3)), np.r_[np.arange(19) % 2, np.nan], "label of sample 19 is nan"),
    ],
)
def test_bad_data_is_named(x: object, y: object, message: str) -> None:
    with pytest.raises(InvalidData, match=message):
        check(x, y)


def test_labels_sort_as_numbers_and_index_the_outputs() -> None:
    ds = check(np.zeros((20, 2)), np.array([10, 2] * 10))
    assert ds.labels == ["2", "10"]
    assert ds.y[:2].tolist() == [1, 0]


def test_split_is_seeded_and_keeps_every_class_on_both_sides() -> None:
    ds = check(np.arange(60, dtype=np.float32).reshape(30, 2), np.array([0] * 25 + [1] * 3 + [2] * 2))
    a, b = data.split(ds, 0.2, seed=7), data.split(ds, 0.2, seed=7)
    assert np.array_equal(a.x_test, b.x_test)
    assert set(a.y_test.tolist()) == set(a.y_train.tolist()) == {0, 1, 2}
    assert len(a.x_train) + len(a.x_test) == 30


def cand(name: str, size: int, drop: float, ratio: float) -> Candidate:
    return Candidate(
        name=name,
        size_bytes=size,
        accuracy=0.9 - drop,
        accuracy_drop=drop,
        latency_p50_us_batch1=10.0,
        latency_p50_us_batch32=100.0 * ratio,
        latency_ratio=ratio,
    )


def test_auto_takes_the_smallest_within_both_budgets() -> None:
    cands = [
        cand("fp32", 100, 0.0, 1.0),
        cand("dynamic-int8", 30, 0.0, 5.0),  # smallest but slow
        cand("dynamic-matmul", 40, 0.02, 1.0),  # loses too much
        cand("fp16", 50, 0.0, 1.1),
    ]
    chosen, reason = compression.choose(cands, "auto", 0.01, 1.25)
    assert chosen.name == "fp16"
    assert "fp16" in reason
    by_name = {c.name: c for c in cands}
    assert "maxLatencyRatio" in (by_name["dynamic-int8"].rejected_because or "")
    assert "maxAccuracyDrop" in (by_name["dynamic-matmul"].rejected_because or "")


def test_explicit_request_over_budget_fails_naming_the_candidates() -> None:
    cands = [cand("fp32", 100, 0.0, 1.0), cand("static-qdq", 30, 0.2, 1.0)]
    with pytest.raises(AccuracyBudgetExceeded, match=r"static-qdq: loses 0\.2000"):
        compression.choose(cands, "static", 0.01, 1.25)


def test_explicit_request_that_is_only_slow_is_served_and_says_so() -> None:
    cands = [cand("fp32", 100, 0.0, 1.0), cand("dynamic-int8", 30, 0.0, 5.0), cand("dynamic-uint8", 31, 0.0, 2.0)]
    chosen, reason = compression.choose(cands, "dynamic", 0.01, 1.25)
    assert chosen.name == "dynamic-uint8"
    assert "beyond maxLatencyRatio" in reason


@given(
    st.lists(
        st.tuples(st.integers(1, 10**6), st.floats(0, 0.5), st.floats(0.1, 10)),
        min_size=1,
        max_size=5,
    ),
    st.floats(0, 0.2),
)
def test_auto_never_picks_a_variant_over_the_accuracy_budget(
    rows: list[tuple[int, float, float]], budget: float
) -> None:
    names = compression.FAMILIES["auto"][1:]
    cands = [cand("fp32", 10**7, 0.0, 1.0)] + [cand(n, s, d, r) for n, (s, d, r) in zip(names, rows, strict=False)]
    chosen, _ = compression.choose(cands, "auto", budget, 1.25)
    assert chosen.accuracy_drop is not None and chosen.accuracy_drop <= budget + 1e-9
    assert chosen.size_bytes == min(c.size_bytes for c in cands if c.accepted)


def test_a_candidates_card_entry_keeps_the_model_card_contracts_names() -> None:
    onnx_entry = cand("dynamic-int8", 100, 0.01, 0.5).card()
    assert list(onnx_entry) == [
        "name",
        "sizeBytes",
        "accuracy",
        "accuracyDrop",
        "latencyP50UsBatch1",
        "latencyP50UsBatch32",
        "latencyRatio",
        "accepted",
        "rejectedBecause",
    ]
    assert (onnx_entry["sizeBytes"], onnx_entry["latencyRatio"]) == (100, 0.5)
    tflite_entry = tflite.Candidate(name="float16", size_bytes=10, conversion_seconds=1.5).card()
    assert list(tflite_entry) == [
        "name",
        "sizeBytes",
        "accuracy",
        "accuracyDrop",
        "conversionSeconds",
        "accepted",
        "rejectedBecause",
    ]
    assert tflite_entry["conversionSeconds"] == 1.5


def test_the_trainer_takes_its_spec_from_the_environment_when_no_file_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = {"apiVersion": "modeldeploy.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "d"}}
    monkeypatch.setenv(contracts.SPEC_ENV, json.dumps({**manifest, "spec": {"training": {"epochs": 1}}}))
    read = runner.read_manifest(argparse.Namespace(spec=None), settings_from_env())
    assert read["metadata"]["name"] == "d" and read["spec"]["training"]["epochs"] == 1
    monkeypatch.setenv(contracts.SPEC_ENV, "")  # empty is unset, as for every setting
    with pytest.raises(InvalidSpec, match=f"set {contracts.SPEC_ENV}"):
        runner.read_manifest(argparse.Namespace(spec=None), settings_from_env())

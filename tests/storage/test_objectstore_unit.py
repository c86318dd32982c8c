"""URIs and sizes are checked before anything is fetched (no server needed)."""

from __future__ import annotations

import pytest

from modeldeploy import objectstore
from modeldeploy.fetch import parse_size


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://models", objectstore.Location("s3", "models", "")),
        ("s3://models/team-a/", objectstore.Location("s3", "models", "team-a")),
        ("gs://b/x/y", objectstore.Location("gs", "b", "x/y")),
    ],
)
def test_uris_parse_into_bucket_and_prefix(uri: str, expected: objectstore.Location) -> None:
    assert objectstore.parse_uri(uri, writable=True) == expected
    assert expected.join("digits", "v1").key == "/".join(p for p in (expected.key, "digits/v1") if p)


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:///etc/passwd", "not a URI this supports"),
        ("s3://", "not a URI this supports"),
        ("s3://b/../other", "'..' segment"),
        ("s3://b/a//b", "empty"),
        ("https://example.org/x", "not a URI this supports"),  # read-only: never the artifact's home
        ("s3://b/" + "x" * 2000, "at most 1024"),
    ],
)
def test_bad_artifact_uris_are_refused_with_what_to_do(uri: str, why: str) -> None:
    with pytest.raises(objectstore.StorageError, match=why) as refused:
        objectstore.parse_uri(uri, "spec.storage.uri", writable=True)
    assert refused.value.reason == objectstore.INVALID_URI
    assert "spec.storage.uri" in refused.value.message


def test_https_is_read_only() -> None:
    assert objectstore.parse_uri("https://example.org/d.npz", "spec.training.dataset.uri").scheme == "https"


def test_sizes_are_kubernetes_quantities() -> None:
    assert parse_size("1Gi") == 2**30
    assert parse_size("500M") == 500 * 10**6
    assert parse_size("1048576") == 2**20
    with pytest.raises(ValueError, match="not a size"):
        parse_size("lots")


def test_card_file_names_may_not_leave_the_version() -> None:
    assert objectstore.safe_relative("source/model.keras") == "source/model.keras"
    for bad in ("/etc/x", "../x", "a/../../x", "", "a\\b"):
        with pytest.raises(objectstore.StorageError):
            objectstore.safe_relative(bad)

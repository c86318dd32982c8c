"""The distribution's packaging: every directory that ships files is a declared package (setuptools warns, at every
`make venv`, about a directory it installs data from without being told it is a package)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_directory_with_shipped_files_is_a_declared_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    declared = set(config["packages"])
    undeclared = []
    for top, root in config["package-dir"].items():
        for directory in sorted(p for p in (REPO / root).rglob("*") if p.is_dir() and p.name != "__pycache__"):
            shipped = [f for f in directory.iterdir() if f.is_file() and not f.name.endswith(".pyc")]
            name = ".".join([top, *directory.relative_to(REPO / root).parts])
            if shipped and name not in declared:
                undeclared.append(name)
    assert undeclared == [], f"add these to [tool.setuptools] packages in pyproject.toml: {undeclared}"


def test_package_data_names_only_declared_packages() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert set(config["package-data"]) <= set(config["packages"])

"""Datasets for the built-in recipes: reading (digits, .npz, CSV, a folder of images per class) and validating
them, so that bad data fails before training with a message that names the problem."""

from __future__ import annotations

import csv
import hashlib
import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy import spec
from modeldeploy_training.errors import InvalidData, InvalidSpec

log = logging.getLogger(__name__)

MIN_SAMPLES = 10
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
DIGITS_SCALE = 1.0 / 16.0
PIXEL_SCALE = 1.0 / 255.0


@dataclass(frozen=True)
class Dataset:
    """Validated data: float32 features, class indices into `labels`, and where they came from."""

    x: npt.NDArray[np.float32]
    y: npt.NDArray[np.int64]
    labels: list[str]
    fingerprint: str
    source: str
    preprocessing: dict[str, Any] | None = field(default=None)

    @property
    def num_classes(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Split:
    """Training and held-out parts of a dataset (held-out is used for validation, parity and the accuracy gate)."""

    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float32]
    y_test: npt.NDArray[np.int64]


def fingerprint_path(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's relative paths and bytes in sorted order."""
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(item.relative_to(path).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(item.read_bytes()).digest())
    else:
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_data_path(relative: str, data_root: Path, field_name: str) -> Path:
    """The path of a file on the data claim; it may not leave the claim."""
    root = data_root.resolve()
    path = (root / relative).resolve()
    if path != root and root not in path.parents:
        raise InvalidSpec(f"{field_name} {relative!r} leaves the data volume; give a path inside the claim")
    if not path.exists():
        raise InvalidData(f"{path} not found; check {field_name} and the claim it is read from")
    return path


def load_dataset(dataset_spec: spec.Dataset, data_root: Path) -> Dataset:
    """Read and validate spec.training.dataset."""
    if dataset_spec.builtin:
        return load_digits()  # the one built-in dataset (the spec's type allows no other)
    relative = dataset_spec.path
    if not relative:
        raise InvalidSpec("spec.training.dataset needs builtin or path")
    path = resolve_data_path(relative, data_root, "spec.training.dataset.path")
    fmt: str = dataset_spec.format
    if fmt == "auto":
        fmt = _guess_format(path)
    if fmt == "npz":
        x, y = read_npz(path)
        return validate(x, y, source=str(path), fingerprint=fingerprint_path(path))
    if fmt == "csv":
        x, y = read_csv(path, dataset_spec.label_column)
        return validate(x, y, source=str(path), fingerprint=fingerprint_path(path))
    if fmt == "images":
        x, y = read_image_folder(path)
        return validate(
            x, y, source=str(path), fingerprint=fingerprint_path(path), preprocessing={"scale": PIXEL_SCALE}
        )
    raise InvalidSpec(f"spec.training.dataset.format {fmt!r} is unknown; use auto, npz, csv or images")


def _guess_format(path: Path) -> str:
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".csv":
        return "csv"
    raise InvalidSpec(
        f"cannot tell the format of {path} from its name; set spec.training.dataset.format (npz, csv or images)"
    )


def load_digits() -> Dataset:
    """scikit-learn's digits (shipped with the package: nothing is downloaded), as (N, 8, 8, 1) scaled to 0..1."""
    from sklearn.datasets import load_digits as sk_load_digits  # noqa: PLC0415  (only for this dataset)

    bunch: Any = sk_load_digits()
    x = np.asarray(bunch.images, dtype=np.float32).reshape(-1, 8, 8, 1) * np.float32(DIGITS_SCALE)
    y = np.asarray(bunch.target, dtype=np.int64)
    return validate(x, y, source="builtin:digits", fingerprint="builtin:digits", preprocessing={"scale": DIGITS_SCALE})


def read_npz(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """Arrays x and y of an .npz (pickles refused: a dataset must not run code)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("x", "y") if k not in npz.files]
            if missing:
                raise InvalidData(
                    f"{path} has no array {' or '.join(repr(m) for m in missing)} (arrays: {', '.join(npz.files)}); "
                    "save it with numpy.savez(path, x=features, y=labels)"
                )
            return npz["x"], npz["y"]
    except InvalidData:
        raise
    except ValueError as err:
        # numpy says "Object arrays cannot be loaded when allow_pickle=False" for object arrays.
        raise InvalidData(f"{path}: {err}; store numeric features and integer or string labels") from err
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise InvalidData(f"{path} is not a readable .npz file ({err}); write it with numpy.savez") from err


def read_csv(path: Path, label_column: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """A CSV with a header row: `label_column` is the label, every other column a numeric feature."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidData(f"{path} is not a readable UTF-8 CSV file ({err})") from err
    if not rows:
        raise InvalidData(f"{path} is empty; give a CSV with a header row and one sample per row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise InvalidData(
            f"dataset {path}: column {label_column!r} not found (columns: {', '.join(header)}); "
            "set spec.training.dataset.labelColumn"
        )
    label_index = header.index(label_column)
    features = [i for i in range(len(header)) if i != label_index]
    if not features:
        raise InvalidData(f"dataset {path}: no feature columns besides {label_column!r}")
    x = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    labels: list[str] = []
    for r, row in enumerate(rows[1:]):
        line = r + 2
        if len(row) != len(header):
            raise InvalidData(f"dataset {path}: line {line} has {len(row)} fields, the header has {len(header)}")
        for c, i in enumerate(features):
            cell = row[i].strip()
            try:
                x[r, c] = float(cell) if cell else math.nan
            except ValueError:
                raise InvalidData(
                    f"dataset {path}: line {line}, column {header[i]!r}: {cell!r} is not a number; "
                    "features must be numeric"
                ) from None
        label = row[label_index].strip()
        if not label:
            raise InvalidData(f"dataset {path}: line {line} has an empty label in column {label_column!r}")
        labels.append(label)
    y: npt.NDArray[Any]
    try:
        y = np.array([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        y = np.array(labels, dtype=np.str_)
    return x, y


def read_image_folder(path: Path) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """One subfolder per class, its images inside; all images of one size. Grayscale stays one channel."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415  (only for image folders)

    classes = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InvalidData(f"dataset {path}: no class folders; put the images of each class in a folder named after it")
    files: list[tuple[Path, str]] = []
    for folder in classes:
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise InvalidData(
                f"dataset {path}: class folder {folder.name!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        files.extend((f, folder.name) for f in found)
    images: list[Any] = []
    for file, _ in files:
        try:
            with Image.open(file) as img:
                img.load()
                images.append(img.copy())
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise InvalidData(f"dataset {path}: {file.relative_to(path)} is not a readable image ({err})") from err
    grayscale = all(img.mode in {"1", "L", "I", "I;16", "F"} for img in images)
    mode = "L" if grayscale else "RGB"
    first_size = images[0].size
    arrays = []
    for (file, _), img in zip(files, images, strict=True):
        if img.size != first_size:
            raise InvalidData(
                f"dataset {path}: {file.relative_to(path)} is {img.size[0]}x{img.size[1]}, the others "
                f"{first_size[0]}x{first_size[1]}; resize the images to one size"
            )
        arr = np.asarray(img.convert(mode), dtype=np.float32)
        arrays.append(arr if arr.ndim == 3 else arr[:, :, None])
    x = np.stack(arrays) * np.float32(PIXEL_SCALE)
    y = np.array([label for _, label in files], dtype=np.str_)
    return x, y


def validate(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    source: str,
    fingerprint: str,
    preprocessing: dict[str, Any] | None = None,
) -> Dataset:
    """Check features and labels and turn labels into class indices; every failure names what and where."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise InvalidData(f"dataset {source}: features have dtype {x.dtype}; they must be numbers")
    if x.ndim < 2:
        raise InvalidData(f"dataset {source}: features have shape {x.shape}; give one row per sample, (N, features...)")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InvalidData(
            f"dataset {source}: labels have shape {y.shape}; give one label per sample, shape (N,) (not one-hot)"
        )
    if len(x) != len(y):
        raise InvalidData(f"dataset {source}: {len(x)} samples but {len(y)} labels; they must match")
    if len(x) < MIN_SAMPLES:
        raise InvalidData(f"dataset {source}: {len(x)} samples; at least {MIN_SAMPLES} are needed")
    xf = x.astype(np.float32)
    bad = ~np.isfinite(xf.reshape(len(xf), -1)).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise InvalidData(
            f"dataset {source}: {int(bad.sum())} samples hold NaN or infinite features (first: sample {first}); "
            "remove or impute them"
        )
    indices, labels = encode_labels(y, source)
    counts = np.bincount(indices, minlength=len(labels))
    if len(labels) < 2:
        raise InvalidData(f"dataset {source}: all labels are {labels[0]!r}; a classifier needs at least two classes")
    lonely = [labels[i] for i in np.flatnonzero(counts < 2)]
    if lonely:
        raise InvalidData(
            f"dataset {source}: class {', '.join(repr(c) for c in lonely[:5])} has fewer than 2 samples; "
            "add samples or fix the labels"
        )
    return Dataset(x=xf, y=indices, labels=labels, fingerprint=fingerprint, source=source, preprocessing=preprocessing)


def encode_labels(y: npt.NDArray[Any], source: str) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Class indices and the labels in index order (integers sorted as numbers, strings as text)."""
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            first = int(np.argmax(~np.isfinite(y)))
            raise InvalidData(f"dataset {source}: label of sample {first} is {y[first]}; every sample needs a label")
        if not np.array_equal(y, np.round(y)):
            first = int(np.argmax(y != np.round(y)))
            raise InvalidData(
                f"dataset {source}: label {y[first]} (sample {first}) is not a class; the built-in recipes classify: "
                "give integer or string labels"
            )
        y = y.astype(np.int64)
    if y.dtype.kind in "biu":
        values, indices = np.unique(y.astype(np.int64), return_inverse=True)
        return indices.astype(np.int64), [str(v) for v in values]
    if y.dtype.kind in "US":
        values, indices = np.unique(y.astype(np.str_), return_inverse=True)
        if any(not str(v).strip() for v in values):
            raise InvalidData(f"dataset {source}: some labels are empty strings; every sample needs a label")
        return indices.astype(np.int64), [str(v) for v in values]
    raise InvalidData(f"dataset {source}: labels have dtype {y.dtype}; give integer or string labels")


def split(dataset: Dataset, held_out_fraction: float, seed: int) -> Split:
    """A seeded, stratified split: every class is in both parts, so held-out accuracy covers all of them."""
    rng = np.random.default_rng(seed)
    test_idx: list[int] = []
    train_idx: list[int] = []
    for cls in range(dataset.num_classes):
        members = np.flatnonzero(dataset.y == cls)
        rng.shuffle(members)
        n_test = min(len(members) - 1, max(1, round(len(members) * held_out_fraction)))
        test_idx.extend(members[:n_test].tolist())
        train_idx.extend(members[n_test:].tolist())
    train = rng.permutation(np.array(train_idx))
    test = np.sort(np.array(test_idx))
    return Split(dataset.x[train], dataset.y[train], dataset.x[test], dataset.y[test])

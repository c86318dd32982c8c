"""TensorFlow's notices stay out of the trainer's stderr; its warnings, its errors and tracebacks still show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from modeldeploy_training.quiet import is_noise

from .conftest import digits_spec, manifest

pytestmark = pytest.mark.training

# Lines as TensorFlow 2.21 wrote them during `modeldeploy run` before the filter.
ONEDNN = (
    b"I0000 00:00:1796188897.690075   13478 port.cc:153] oneDNN custom operations are on. You may see slightly "
    b"different numerical results due to floating-point round-off errors from different computation orders.\n"
)
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
THREADPOOL = (
    b"E0000 00:00:1796188907.804074   13478 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
    b"which is not in the op definition: Op<name=MapDataset; signature=input_dataset:variant> This may be expected "
    b"if your graph generating binary is newer  than this binary. Unknown attributes will be ignored.\n"
)
OTHER_ERROR = b"E0000 00:00:1796188907.804074   13478 op_kernel.cc:1857] OP_REQUIRES failed at save_restore.cc\n"


OLD_FORMAT_INFO = b"2026-12-02 05:16:02.123456: I tensorflow/core/x.cc:42] hello\n"


@pytest.mark.parametrize("line", [ONEDNN, BANNER, THREADPOOL, OLD_FORMAT_INFO])
def test_tensorflows_notices_are_noise(line: bytes) -> None:
    assert is_noise(line)


@pytest.mark.parametrize(
    "line",
    [
        OTHER_ERROR,
        b"W0000 00:00:1796188907.804074   13478 cpu_allocator_impl.cc:83] Allocation exceeds 10% of free memory.\n",
        b"F0000 00:00:1796188907.804074   13478 check.cc:1] Check failed: x == y\n",
        b"tensorflow.python.framework.errors_impl.InvalidArgumentError: use_unbounded_threadpool\n",
        b"2026-12-02 05:16:02,123 INFO modeldeploy_training.tfmodels: epoch 1/1\n",
    ],
)
def test_warnings_errors_and_our_lines_are_kept(line: bytes) -> None:
    assert not is_noise(line)


def test_the_trainer_prints_its_progress_without_tensorflows_notices(tmp_path: Path) -> None:
    spec_file = tmp_path / "digits.yaml"
    spec = digits_spec(epochs=1, compression={"quantization": "none"})
    spec_file.write_text(yaml.safe_dump(manifest("digits", spec)))
    result = subprocess.run(
        [sys.executable, "-m", "modeldeploy.cli", "train", "--spec", str(spec_file), "--output", str(tmp_path / "m")],
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    stderr = result.stderr.decode()
    assert "epoch 1/1" in stderr and "trained in" in stderr
    for notice in ("absl::InitializeLog", "oneDNN", "use_unbounded_threadpool", "I0000"):
        assert notice not in stderr, stderr


def test_tensorflows_errors_still_show(tmp_path: Path) -> None:
    """Under the filter, and with the determinism that causes the tf.data notice: a C++ error line written to the
    process's stderr and an error TensorFlow raises both reach the terminal; the notice does not."""
    script = tmp_path / "fails.py"
    script.write_text(
        "import os\n"
        "from modeldeploy_training.quiet import quiet_tensorflow\n"
        "quiet_tensorflow()\n"
        "import keras, numpy as np, tensorflow as tf\n"
        "keras.utils.set_random_seed(0)\n"
        "tf.config.experimental.enable_op_determinism()\n"
        "model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation='softmax')])\n"
        "model.compile('adam', 'sparse_categorical_crossentropy')\n"
        "model.fit(np.zeros((64, 4)), np.zeros(64), epochs=1, shuffle=True, verbose=0)\n"
        f"os.write(2, {OTHER_ERROR!r})\n"
        "tf.debugging.assert_equal(tf.constant(1), tf.constant(2), message='one is not two')\n"
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, timeout=300, check=False)
    assert result.returncode == 1
    stderr = result.stderr.decode()
    assert OTHER_ERROR.decode() in stderr
    assert "InvalidArgumentError" in stderr and "one is not two" in stderr
    for notice in ("absl::InitializeLog", "oneDNN", "use_unbounded_threadpool"):
        assert notice not in stderr, stderr

"""Benchmark of the training program's compression variants on the digits CNN.

Per variant: file size, held-out accuracy, onnxruntime p50 latency at batch 1 and 32 (one intra-op thread), beside
Keras `model.predict` and a `tf.function` on the same inputs, all measured in one run. Checks the two goals:
onnxruntime fp32 >= 20x faster than the tf.function at batch 1, and auto never picking a variant that loses more
accuracy than the budget.

    .venv/bin/python bench/training_variants.py [--epochs 5] [--budget 0.01]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

COMMAND = ".venv/bin/python bench/training_variants.py"


def p50_us(fn: Callable[[], Any], runs: int) -> float:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1000.0)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.01, help="maxAccuracyDrop for the auto choice")
    parser.add_argument("--ratio", type=float, default=1.25, help="maxLatencyRatio for the auto choice")
    args = parser.parse_args()

    import onnx  # noqa: PLC0415  (the heavy imports happen when the benchmark runs, not at import)
    import tensorflow as tf  # noqa: PLC0415

    # One thread for TensorFlow too, so the comparison with onnxruntime's single intra-op thread is fair.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from modeldeploy_training import compression, data, onnxutil, tfmodels  # noqa: PLC0415

    dataset = data.load_digits()
    parts = data.split(dataset, 0.2, seed=42)
    tfmodels.set_seed(42)
    model = tfmodels.build_model("cnn", parts.x_train, dataset.num_classes, 0.001)
    tfmodels.train(model, parts, args.epochs, 32, 42)
    x1, x32 = parts.x_test[:1], parts.x_test[:32]
    keras_acc = compression.accuracy(model.predict(parts.x_test, verbose=0), parts.y_test)

    @tf.function(input_signature=[tf.TensorSpec((None, 8, 8, 1), tf.float32)])  # type: ignore[untyped-decorator]
    def serve(x: Any) -> Any:
        return model(x, training=False)

    t1, t32 = tf.constant(x1), tf.constant(x32)
    rows: list[tuple[str, int | None, float, float, float]] = [
        ("keras model.predict", None, keras_acc, p50_us(lambda: model.predict(x1, verbose=0), 50),
         p50_us(lambda: model.predict(x32, verbose=0), 50)),
        ("tf.function", None, keras_acc, p50_us(lambda: serve(t1), 300), p50_us(lambda: serve(t32), 300)),
    ]  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        onnx.save_model(tfmodels.keras_to_onnx(model, 17), fp32)
        paths = {
            name: compression.build_candidate(name, fp32, work, parts.x_train[:256])
            for name in compression.candidate_names("auto")
        }
        latency = compression.measure_latency(paths, parts.x_test)
        candidates = []
        for name, path in paths.items():
            acc = compression.accuracy(onnxutil.run_batched(onnxutil.session(path), parts.x_test), parts.y_test)
            b1, b32 = latency[name]
            rows.append((f"onnxruntime {name}", path.stat().st_size, acc, b1, b32))
            candidates.append(
                compression.Candidate(
                    name=name,
                    size_bytes=path.stat().st_size,
                    accuracy=acc,
                    accuracy_drop=keras_acc - acc,
                    latency_p50_us_batch1=b1,
                    latency_p50_us_batch32=b32,
                    latency_ratio=b32 / latency["fp32"][1],
                )
            )
        chosen, reason = compression.choose(candidates, "auto", args.budget, args.ratio)

    print(f"digits CNN, {args.epochs} epochs, {len(parts.x_test)} held-out samples, 1 intra-op thread")
    print(f"{'variant':<30} {'size (B)':>9} {'accuracy':>9} {'p50 b1 (us)':>12} {'p50 b32 (us)':>13}")
    for name, size, acc, b1, b32 in rows:
        print(f"{name:<30} {size if size is not None else '-':>9} {acc:>9.4f} {b1:>12.1f} {b32:>13.1f}")
    speedup = rows[1][3] / latency["fp32"][0]
    print(f"auto (maxAccuracyDrop {args.budget}, maxLatencyRatio {args.ratio}): {chosen.name}: {reason}")
    print(f"onnxruntime fp32 vs tf.function at batch 1: {speedup:.1f}x faster (goal >= 20x)")
    ok = speedup >= 20 and (chosen.accuracy_drop or 0.0) <= args.budget + 1e-9
    print(f"goals {'met' if ok else 'NOT met'}; command: {COMMAND} --epochs {args.epochs} --budget {args.budget}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

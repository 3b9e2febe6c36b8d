"""Compact export vs the dense float32 SavedModel, for trained models.

For each `model.keras` (e.g. from `tools/train.py` workdirs): exports it with
`selfcompress.export`, then prints the packed weight bytes against the size
accounting, the folder sizes, the LiteRT file sizes, and the serving latency of both SavedModels
at batch 1 and 1024 (median over interleaved repeats, same inputs).

  python tools/bench_export.py --models=/tmp/l300/model.keras,/tmp/l5/model.keras
"""

import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import selfcompress as sc  # noqa: E402
from selfcompress import exporting as export_lib, litert  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", None, "Trained .keras files.")
flags.DEFINE_list("batches", ["1", "1024"], "Batch sizes to time.")
flags.DEFINE_integer("repeats", 15, "Timed repeats (median taken).")
flags.DEFINE_integer("calls", 50, "Calls per timed repeat.")


def serving_fn(path):
  fn = tf.saved_model.load(path).signatures["serving_default"]
  (name,) = fn.structured_input_signature[1]
  return lambda x: fn(**{name: x})["output"]


def litert_sizes(model, work):
  """LiteRT file sizes (float32 and float16 weights) and their largest
  output difference from the trained model, on 256 random inputs."""
  x = np.random.default_rng(1).normal(
      size=(256,) + tuple(model.input_shape[1:])).astype("float32")
  expected = np.asarray(model(x, training=False))
  for weights in ("float32", "float16"):
    path = os.path.join(work, f"{weights}.tflite")
    nbytes = sc.export(model, path, format="tflite",
                       litert_weights=weights).total_bytes
    served = litert.run_litert(path, x)
    same = (served.argmax(1) == expected.argmax(1)).mean()
    print(f"  LiteRT, {weights} weights: {nbytes:,} B; max |LiteRT - trained| "
          f"= {np.abs(served - expected).max():.2e}, same argmax {100 * same:.1f}%")


def main(_):
  for model_path in FLAGS.models:
    model = keras.models.load_model(model_path)
    work = tempfile.mkdtemp()
    try:
      report = sc.export(model, os.path.join(work, "compact"))
      _, dense, _ = export_lib.serving_models(model)
      export_lib._write_saved_model(dense, os.path.join(work, "dense"))
      size = sc.size(model)
      print(f"\n{model_path}: {model.name}, {size.kb:.2f} KB by the accounting")
      print(f"  packed weight codes: {report.packed_weight_bytes:,} B "
            f"(accounting's weight bits: {sum(l.weight_bits for l in size.layers) / 8:,.0f} B); "
            f"zlib of the codes: {report.zlib_weight_bytes:,} B")
      variables = export_lib._folder_bytes(os.path.join(work, "compact", "variables"))
      print(f"  compact SavedModel: {report.directory_bytes:,} B "
            f"(variables {variables:,} B) vs accounting {size.bytes:,.0f} B: "
            f"variables/accounting {variables / size.bytes:.2f}")
      print(f"  dense float32 SavedModel: {report.dense_float32_bytes:,} B; "
            f"compact is {report.dense_float32_bytes / report.directory_bytes:.1f}x smaller")
      litert_sizes(model, work)
      fns = {"compact": serving_fn(os.path.join(work, "compact")),
             "dense": serving_fn(os.path.join(work, "dense"))}
      rng = np.random.default_rng(0)
      for batch in map(int, FLAGS.batches):
        x = tf.constant(rng.normal(size=(batch,) + tuple(model.input_shape[1:])),
                        tf.float32)
        out = {k: f(x).numpy() for k, f in fns.items()}  # trace, warm up
        diff = np.abs(out["compact"] - out["dense"]).max()
        times = {k: [] for k in fns}
        for _ in range(FLAGS.repeats):
          for k, f in fns.items():
            start = time.perf_counter()
            for _ in range(FLAGS.calls):
              y = f(x)
            y.numpy()
            times[k].append((time.perf_counter() - start) / FLAGS.calls)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"  batch {batch:5d}: compact {med['compact']:.3f} ms, dense "
              f"{med['dense']:.3f} ms, ratio {med['compact'] / med['dense']:.2f}; "
              f"max |compact - dense| = {diff:.2e}")
    finally:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("models")
  app.run(main)

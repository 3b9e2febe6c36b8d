"""Every export format of a trained model, side by side: bytes against the
size accounting, LiteRT interpreter latency with float vs integer kernels,
and test accuracy of each LiteRT variant next to the trained model's.

Models: tools/train.py workdirs (their model.keras, and their config's data
for calibration and test accuracy), and/or "mobilenetv2": Keras'
MobileNetV2 (32x32x3, alpha 0.35, 10 classes, weights=None), compressed,
with each channel's bit depth drawn from [2, 6], its exponent fitted to its
weights, and half the channels dead: an export-shaped model, not a trained
one, so its "accuracy" is agreement with the Keras model's argmax on
random inputs.

  python tools/bench_litert.py --workdirs=/tmp/l5,/tmp/l300 --data_dir=../shared/data/mnist --zoo=mobilenetv2

Latency: the LiteRT interpreter (XNNPACK on), batch 1, the variants called
in turn within each repeat, the median over repeats of the mean over calls.
"""

import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import selfcompress as sc  # noqa: E402
from selfcompress import data, litert, workdir  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("workdirs", [], "tools/train.py workdirs.")
flags.DEFINE_string("data_dir", None, "Where the workdirs' dataset is now.")
flags.DEFINE_list("zoo", [], "Untrained zoo models to export: mobilenetv2.")
flags.DEFINE_integer("repeats", 15, "Timed repeats (median taken).")
flags.DEFINE_integer("calls", 50, "Calls per timed repeat.")
flags.DEFINE_integer("seed", 0, "Seed of the zoo model and inputs.")

VARIANTS = ("float", "dynamic", "integer")


def zoo_mobilenetv2(rng):
  model = sc.compress(keras.applications.MobileNetV2(
      input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10))
  for layer in model._flatten_layers(include_self=False):
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.moving_mean.assign(rng.normal(size=n) * 0.1)
      layer.moving_variance.assign(rng.uniform(0.5, 2.0, n))
    if not isinstance(layer, sc.layers.CompressedLayer):
      continue
    c = layer.compressor
    n = c.num_channels
    bits = rng.uniform(2.0, 6.0, n)
    kernel = np.asarray(layer.kernel_variable)
    axes = tuple(i for i, d in enumerate(layer.kind.param_shape(layer))
                 if d == 1)
    top = np.abs(kernel).max(axis=axes).reshape(-1)
    alive = rng.random(n) >= 0.5
    alive[0] = True
    c.assign(bits=np.where(alive, bits, -1.0),
             exponent=np.log2(top / (2.0 ** (np.floor(bits) - 1) - 1)))
  return model


def sources(rng):
  for path in FLAGS.workdirs:
    config = workdir.recorded(path)
    ds = data.load(config["dataset"], FLAGS.data_dir or config["data_dir"],
                   batch_size=config["batch_size"],
                   num_validation=config["num_validation"],
                   seed=config["seed"], max_train_examples=config[
                       "max_train_examples"] or None)
    yield path, sc.load_model(os.path.join(path, "model.keras")), ds
  for name in FLAGS.zoo:
    if name != "mobilenetv2":
      raise app.UsageError(f"--zoo knows mobilenetv2, not {name!r}.")
    yield name, zoo_mobilenetv2(rng), None


def latency(runners, x):
  for run in runners.values():
    run(x)  # allocate, warm up
  times = {k: [] for k in runners}
  for _ in range(FLAGS.repeats):
    for k, run in runners.items():
      start = time.perf_counter()
      for _ in range(FLAGS.calls):
        run(x)
      times[k].append((time.perf_counter() - start) / FLAGS.calls)
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(_):
  logging.set_verbosity(logging.WARNING)
  rng = np.random.default_rng(FLAGS.seed)
  for name, model, ds in sources(rng):
    work = tempfile.mkdtemp()
    try:
      shape = tuple(model.input_shape[1:])
      probe = rng.normal(size=(512,) + shape).astype("float32")
      calibration = ds.train if ds is not None else probe[:256]
      size = sc.size(model)
      print(f"\n{name}: {size.bytes:,.0f} B by the accounting "
            f"(float32 reference {size.float_bits / 8:,.0f} B)")
      print(f"  {'format':<28}{'whole':>11}{'weights':>11}{'graph':>10}"
            f"{'/ accounted':>13}{'target':>9}")
      reports = {
          "SavedModel": sc.export(model, os.path.join(work, "sm")),
          "Keras .keras": sc.export(model, os.path.join(work, "m.keras"),
                                    format="keras")}
      for v in VARIANTS:
        reports[f"LiteRT {v}"] = sc.export(
            model, os.path.join(work, f"{v}.tflite"), format="tflite",
            litert_compute=v,
            representative_data=calibration if v == "integer" else None)
      target = 1.25 * size.bytes + 4096
      for k, r in reports.items():
        mark = ("met" if r.total_bytes <= target else
                f"{r.total_bytes / target:.2f}x") if k.startswith("LiteRT") else ""
        print(f"  {k:<28}{r.total_bytes:>11,}{r.weight_bytes:>11,}"
              f"{r.graph_bytes:>10,}{r.total_bytes / size.bytes:>12.2f}x{mark:>9}")
      print(f"  LiteRT target: 1.25 x accounted + 4 KB = {target:,.0f} B; the "
            f"dense float32 .tflite is {reports['LiteRT float'].dense_float32_bytes:,} B")
      saved = reports["SavedModel"]
      dense_graph = saved.dense_float32_bytes - saved.dense_weight_bytes
      bound = 1.1 * (size.bytes + dense_graph) + 8192
      print(f"  SavedModel target: 1.1 x (accounted + the dense SavedModel's graph, "
            f"{dense_graph:,} B) + 8 KB = {bound:,.0f} B; folder / target "
            f"{saved.total_bytes / bound:.2f}")
      runners = {v: litert.Runner(os.path.join(work, f"{v}.tflite"))
                 for v in VARIANTS}
      ms = latency(runners, probe[:1])
      print("  LiteRT latency, batch 1: " + ", ".join(
          f"{v} {ms[v]:.3f} ms" for v in VARIANTS) + "; integer kernels / "
          f"float: dynamic {ms['dynamic'] / ms['float']:.2f}, full integer "
          f"{ms['integer'] / ms['float']:.2f}")
      if ds is not None:
        keras_acc = litert.accuracy(lambda x: model(x, training=False), ds.test)
        accs = {v: litert.accuracy(runners[v], ds.test) for v in VARIANTS}
        print(f"  test accuracy ({ds.num_test:,} {ds.name}): trained model "
              f"{100 * keras_acc:.2f}%, " + ", ".join(
                  f"LiteRT {v} {100 * a:.2f}%" for v, a in accs.items()))
      else:
        expected = np.asarray(model(probe, training=False)).argmax(1)
        same = {v: (runners[v](probe).argmax(1) == expected).mean()
                for v in VARIANTS}
        print("  same argmax as the Keras model on 512 random inputs: " +
              ", ".join(f"{v} {100 * a:.1f}%" for v, a in same.items()))
    finally:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)

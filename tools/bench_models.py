"""Training-step time of `compress(M)` vs plain M, for two realistic models.

M is (a) MobileNetV2 (32x32x3 inputs, alpha 0.35, 10 classes, random
weights) and (b) a small transformer encoder block (int32 ids of length 64,
vocabulary 1000, Embedding 64, MultiHeadAttention 4 heads x 16, residual add,
LayerNormalization, Dense 128 relu, Dense 64, residual add,
LayerNormalization, GlobalAveragePooling1D, Dense 10).

Each model is compiled at its own defaults: plain Keras with
`compile("adam", SparseCategoricalCrossentropy(from_logits=True))`, the
compressed one with the same call (`SelfCompressingModel.compile` then picks
XLA with its `jit_compile="auto"`). Both run their compiled train function
(the step `fit()` runs: forward, loss with the size penalty, gradients, Adam,
metrics) over the same small fixed set of random batches, held in memory and
repeated. After a warm-up (trace, XLA compile) the two take turns, plain then
compressed, then compressed then plain, ..., `--repeats` times, each turn
`--steps` steps; machine noise thus hits both alike. Printed: the median ms
per step of each, the ratio of the medians (compressed/plain) and the min and
max of the per-repeat ratios (each repeat's compressed turn over its plain
turn). The process CPU time per step is printed too: on a machine shared with
other work, wall times swing with the load, CPU time much less.

A model that `compress()` (or its training step) cannot handle yet is
reported with its error and skipped; the other models still run.
`--export` also exports the compressed MobileNetV2 with `sc.export` and
prints the folder size, the saved_model.pb size and the accounting's
`sc.size(m).bytes` (errors are printed, not raised).

  python tools/bench_models.py --models=mobilenetv2,transformer --repeats=11 --steps=10 --export
"""

import os
import shutil
import statistics
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import selfcompress as sc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_list("models", ["mobilenetv2", "transformer"], "Models to time.")
flags.DEFINE_integer("batch_size", 64, "Batch size of the timed step.")
flags.DEFINE_integer("batches", 4, "Distinct random batches, cycled.")
flags.DEFINE_integer("steps", 10, "Training steps per timed turn.")
flags.DEFINE_integer("repeats", 11, "Interleaved turns per model (median taken).")
flags.DEFINE_integer("warmup", 5, "Untimed steps per model before timing.")
flags.DEFINE_bool("export", False, "Also export the compressed MobileNetV2.")
flags.DEFINE_float("gamma", 0.05, "Size penalty of the compressed models.")
flags.DEFINE_integer("seed", 0, "Seed of the weights and batches.")


def mobilenetv2():
  return keras.applications.MobileNetV2(
      input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)


def transformer(seq=64, vocab=1000, dim=64, heads=4, key_dim=16, hidden=128):
  L = keras.layers
  ids = keras.Input((seq,), dtype="int32", name="ids")
  x = L.Embedding(vocab, dim, name="embedding")(ids)
  a = L.MultiHeadAttention(heads, key_dim, name="attention")(x, x)
  x = L.LayerNormalization(name="norm1")(L.Add(name="residual1")([x, a]))
  f = L.Dense(hidden, activation="relu", name="ffn1")(x)
  f = L.Dense(dim, name="ffn2")(f)
  x = L.LayerNormalization(name="norm2")(L.Add(name="residual2")([x, f]))
  x = L.GlobalAveragePooling1D(name="pool")(x)
  return keras.Model(ids, L.Dense(10, name="logits")(x), name="encoder")


MODELS = {"mobilenetv2": mobilenetv2, "transformer": transformer}


def random_batches(model, rng):
  """`--batches` fixed (x, y) batches for `model`'s input, as a dataset."""
  shape = (FLAGS.batches * FLAGS.batch_size,) + tuple(model.input_shape[1:])
  if model.inputs[0].dtype.startswith("int"):
    x = rng.integers(0, 1000, shape).astype("int32")
  else:
    x = rng.normal(size=shape).astype("float32")
  y = rng.integers(0, 10, shape[0]).astype("int32")
  return tf.data.Dataset.from_tensor_slices((x, y)).batch(
      FLAGS.batch_size, drop_remainder=True).cache()


def compile_default(model):
  model.compile("adam",
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def compressed_layers(model):
  found = []

  def walk(m):
    for layer in m._flatten_layers(include_self=False):
      if isinstance(layer, sc.layers.CompressedLayer):
        found.append(layer)
  walk(model)
  return found


def timed(model, iterator, steps):
  """Wall and process CPU seconds per step over `steps` training steps."""
  start, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    logs = model.train_function(iterator)
  float(logs["loss"])  # wait for the last step to finish
  return ((time.perf_counter() - start) / steps,
          (time.process_time() - cpu) / steps)


def bench(name):
  keras.utils.set_random_seed(FLAGS.seed)
  plain = MODELS[name]()
  data = random_batches(plain, np.random.default_rng(FLAGS.seed))
  models = {"plain": plain}
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      models["compressed"] = sc.compress(plain, gamma=FLAGS.gamma)
    for w in caught:
      print(f"  compress() warned: {str(w.message).splitlines()[0][:300]}")
  except Exception as e:  # noqa: BLE001: report and go on with the others
    print(f"  compress() FAILED: {type(e).__name__}: {e}")
    print("  " + traceback.format_exc(limit=-3).replace("\n", "\n  "))
    return None
  compressed = models["compressed"]
  n_comp = len(compressed_layers(compressed))
  print(f"  compressed layers: {n_comp}; parameters: plain "
        f"{plain.count_params():,}, compressed {compressed.count_params():,}")
  iterators = {}
  for key, model in models.items():
    try:
      compile_default(model)
      model.make_train_function()
      iterators[key] = iter(data.repeat())
      start = time.perf_counter()
      for _ in range(FLAGS.warmup):  # trace, XLA compile, warm up
        logs = model.train_function(iterators[key])
      float(logs["loss"])
      print(f"  {key:>10}: jit_compile={model.jit_compile}, warm-up "
            f"{FLAGS.warmup} steps {time.perf_counter() - start:.1f} s, "
            f"loss {float(logs['loss']):.3f}")
    except Exception as e:  # noqa: BLE001
      print(f"  {key} training step FAILED: {type(e).__name__}: {e}")
      print("  " + traceback.format_exc(limit=-3).replace("\n", "\n  "))
      return None
  times = {key: [] for key in models}
  cpu = {key: [] for key in models}
  order = list(models)
  for r in range(FLAGS.repeats):
    for key in (order if r % 2 == 0 else order[::-1]):
      wall, cpu_time = timed(models[key], iterators[key], FLAGS.steps)
      times[key].append(wall)
      cpu[key].append(cpu_time)
  med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
  med_cpu = {k: 1e3 * statistics.median(v) for k, v in cpu.items()}
  ratios = [c / p for c, p in zip(times["compressed"], times["plain"])]
  for key in models:
    print(f"  {key:>10}: median {med[key]:.2f} ms/step (min "
          f"{1e3 * min(times[key]):.2f}, max {1e3 * max(times[key]):.2f}); "
          f"process CPU {med_cpu[key]:.2f} ms/step")
  print(f"  ratio compressed/plain: {med['compressed'] / med['plain']:.3f} "
        f"(per-repeat ratios: min {min(ratios):.3f}, median "
        f"{statistics.median(ratios):.3f}, max {max(ratios):.3f}; "
        f"{FLAGS.repeats} interleaved repeats of {FLAGS.steps} steps); "
        f"CPU time ratio {med_cpu['compressed'] / med_cpu['plain']:.3f}")
  return compressed


def export(model):
  work = tempfile.mkdtemp()
  path = os.path.join(work, "served")
  try:
    report = sc.export(model, path)
    folder = sum(os.path.getsize(os.path.join(d, f))
                 for d, _, files in os.walk(path) for f in files)
    pb = os.path.getsize(os.path.join(path, "saved_model.pb"))
    print(f"  export: folder {folder:,} B, saved_model.pb {pb:,} B, "
          f"sc.size(m).bytes {sc.size(model).bytes:,.0f} B")
    print(f"  export report: {report}")
  except Exception as e:  # noqa: BLE001
    print(f"  export FAILED: {type(e).__name__}: {e}")
    print("  " + traceback.format_exc(limit=-3).replace("\n", "\n  "))
  finally:
    shutil.rmtree(work, ignore_errors=True)


def main(_):
  # MobileNetV2(classes=10) ends in a softmax; both models are compiled with
  # from_logits=True all the same (the timed step is what matters here).
  warnings.filterwarnings("ignore", message=".*from_logits=True.*")
  unknown = sorted(set(FLAGS.models) - set(MODELS))
  if unknown:
    raise app.UsageError(f"Unknown models {unknown}; known: {sorted(MODELS)}")
  print(f"batch {FLAGS.batch_size}, {FLAGS.repeats} interleaved repeats of "
        f"{FLAGS.steps} steps, keras {keras.__version__}, tensorflow "
        f"{tf.__version__}, {os.cpu_count()} CPUs")
  for name in FLAGS.models:
    print(f"\n{name}:")
    compressed = bench(name)
    if FLAGS.export and name == "mobilenetv2" and compressed is not None:
      export(compressed)


if __name__ == "__main__":
  app.run(main)

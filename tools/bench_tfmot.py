"""tensorflow-model-optimization's `prune_low_magnitude` on LeNet-300-100:
the IMP side-by-side's optional peer row (BENCHMARKS.md, issue 6).

tfmot works only with legacy Keras 2 (`tf_keras`), so this runs in its own
environment and is never a dependency of selfcompress:

  python -m venv /tmp/tfmot && /tmp/tfmot/bin/pip install -e . \
      tf-keras tensorflow-model-optimization
  TF_USE_LEGACY_KERAS=1 /tmp/tfmot/bin/python tools/bench_tfmot.py \
      --data_dir=../shared/data/mnist

Same data pipeline as IMP (`selfcompress.data`: 5,000 training images held
out for validation, chosen by seed), same network (784-300-100-10, Glorot
normal), same optimizer (Adam 1.2e-3, batch 60), and the same per-layer
density as IMP level `--levels` (hidden layers `(1 - fraction)^levels`,
the output layer `(1 - fraction * output_rate)^levels`). Pruning is gradual
(polynomial decay, every 100 steps) over the first `--prune_epochs`; the
remaining epochs train at the final sparsity. Size is counted exactly as for
IMP (`selfcompress.pruning.relative_index_bits`: kept float32 values plus
relative indices, plus float32 biases). Test accuracy is reported at the
epoch of best validation accuracy among those at the final sparsity, and at
the end.
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags  # noqa: E402
import tensorflow as tf  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder with the MNIST IDX .gz files.")
flags.DEFINE_integer("seed", 0, "Seed of the split, the init and the order.")
flags.DEFINE_integer("epochs", 30, "Training epochs in all.")
flags.DEFINE_integer("prune_epochs", 20, "Epochs over which sparsity rises.")
flags.DEFINE_integer("levels", 15, "Match the density of this IMP level.")
flags.DEFINE_float("fraction", 0.2, "IMP's pruning fraction per level.")
flags.DEFINE_float("output_rate", 0.5, "IMP's rate for the output layer.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    import tensorflow_model_optimization as tfmot
    import tf_keras
  except ImportError as e:
    raise SystemExit(
        f"{e}. This benchmark needs tensorflow-model-optimization and "
        "tf-keras in their own environment (see the module docstring).")
  if tf.keras.layers.Dense is not tf_keras.layers.Dense:
    raise SystemExit("tf.keras is Keras 3 here, and tfmot needs Keras 2: set "
                     "TF_USE_LEGACY_KERAS=1 before Python starts.")
  from selfcompress import data
  from selfcompress.pruning import size as size_lib

  ds = data.load("mnist", FLAGS.data_dir, batch_size=60, seed=FLAGS.seed)
  steps = ds.steps_per_epoch
  hidden = (1 - FLAGS.fraction) ** FLAGS.levels
  output = (1 - FLAGS.fraction * FLAGS.output_rate) ** FLAGS.levels
  tf_keras.utils.set_random_seed(FLAGS.seed)

  def pruned(units, density, **kwargs):
    schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=1.0 - density, begin_step=0,
        end_step=FLAGS.prune_epochs * steps, frequency=100)
    return tfmot.sparsity.keras.prune_low_magnitude(
        tf_keras.layers.Dense(units, kernel_initializer="glorot_normal",
                              **kwargs), pruning_schedule=schedule)

  model = tf_keras.Sequential([
      tf_keras.Input(ds.input_shape), tf_keras.layers.Flatten(),
      pruned(300, hidden, activation="relu"),
      pruned(100, hidden, activation="relu"), pruned(10, output)])
  model.compile(
      optimizer=tf_keras.optimizers.Adam(1.2e-3),
      loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  test_acc = []

  class TestEachEpoch(tf_keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
      test_acc.append(self.model.evaluate(ds.test, verbose=0)[1])

  start = time.perf_counter()
  history = model.fit(
      ds.train, validation_data=ds.validation, epochs=FLAGS.epochs, verbose=2,
      callbacks=[tfmot.sparsity.keras.UpdatePruningStep(), TestEachEpoch()])
  seconds = time.perf_counter() - start
  val = history.history["val_accuracy"]
  final_from = FLAGS.prune_epochs  # epochs whose weights are at full sparsity
  best = max(range(final_from, len(val)), key=val.__getitem__)

  stripped = tfmot.sparsity.keras.strip_pruning(model)
  values = index = other = kept = total = 0
  for layer in stripped.layers:
    if not layer.weights:
      continue
    kernel, bias = (w.numpy() for w in layer.weights)
    keep = kernel != 0
    v, i = size_lib.relative_index_bits(keep, size_lib.FLOAT_BITS)
    values, index = values + v, index + i
    other += size_lib.FLOAT_BITS * bias.size
    kept, total = kept + int(keep.sum()), total + keep.size
    print(f"  {layer.name}: {keep.sum():,}/{keep.size:,} weights kept "
          f"({100 * keep.mean():.2f}%)")
  bits = values + index + other
  print(f"\ntfmot prune_low_magnitude, seed {FLAGS.seed}: {kept:,} of {total:,} "
        f"weights ({100 * kept / total:.2f}%), {FLAGS.epochs} epochs "
        f"({FLAGS.prune_epochs} pruning), {seconds:.0f} s")
  print(f"  test accuracy at the best-validation epoch {best + 1} "
        f"({100 * val[best]:.2f}% val): {100 * test_acc[best]:.2f}%; at the "
        f"end: {100 * test_acc[-1]:.2f}%")
  print(f"  size: {bits / 8000:.2f} KB (values {values / 8000:.2f} KB, "
        f"index {index / 8000:.2f} KB, biases {other / 8000:.2f} KB)")


if __name__ == "__main__":
  flags.mark_flag_as_required("data_dir")
  app.run(main)

"""Times one training step of LeNet-300-100: compress() vs plain Keras.

Both models are built and compiled identically; each one's `train_step` (the
step `fit()` runs: forward, loss with the size penalty, gradients, Adam
update, metrics) is called on the same in-memory batch, so the input pipeline
adds no noise. The two are timed in the same process, interleaved (plain,
compressed, plain, ...), so machine noise hits both alike. Prints the median
step time of each and their ratio.

  python tools/bench_step.py --batch_size=128 --repeats=21 --steps=100 --jit=default
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import selfcompress as sc  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 128, "Batch size of the timed step.")
flags.DEFINE_integer("steps", 200, "Training steps per timed run.")
flags.DEFINE_integer("repeats", 15, "Timed runs per model (median taken).")
flags.DEFINE_enum("jit", "default", ["default", "both", "neither"],
                  "XLA: each model's compile() default (plain Keras: off on "
                  "CPU; selfcompress: on), on for both, or off for both.")


def lenet300():
  return keras.Sequential([
      keras.Input((784,)), keras.layers.Dense(300, activation="relu"),
      keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)])


def timed_steps(step, batch):
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    logs = step(batch)
  float(logs["loss"])  # wait for the last step to finish
  return (time.perf_counter() - start) / FLAGS.steps


def main(_):
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  batch = (tf.constant(rng.random((FLAGS.batch_size, 784), dtype=np.float32)),
           tf.constant(rng.integers(0, 10, FLAGS.batch_size), tf.int32))
  models = {"plain": lenet300(),
            "compressed": sc.compress(lenet300(), gamma=0.05)}
  steps = {}
  jit = {"default": "auto", "both": True, "neither": False}[FLAGS.jit]
  for name, model in models.items():
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=jit)
    # The same compiled step Keras' fit() runs, without the input pipeline.
    steps[name] = tf.function(model.train_step,
                              jit_compile=model.jit_compile)
    timed_steps(steps[name], batch)  # trace and warm up
  times = {name: [] for name in models}
  for _ in range(FLAGS.repeats):
    for name in models:
      times[name].append(timed_steps(steps[name], batch))
  med = {k: statistics.median(v) for k, v in times.items()}
  print(f"LeNet-300-100 train_step, batch {FLAGS.batch_size}, {FLAGS.steps} "
        f"steps x {FLAGS.repeats} repeats (interleaved), "
        f"XLA {FLAGS.jit} (plain: {models['plain'].jit_compile}, compressed: "
        f"{models['compressed'].jit_compile}), {os.cpu_count()} CPUs")
  for name in models:
    print(f"  {name:>10}: median {med[name] * 1e3:.3f} ms/step "
          f"(min {min(times[name]) * 1e3:.3f}, max {max(times[name]) * 1e3:.3f})")
  print(f"  ratio compressed/plain: {med['compressed'] / med['plain']:.3f} "
        f"(of minima: {min(times['compressed']) / min(times['plain']):.3f})")


if __name__ == "__main__":
  app.run(main)

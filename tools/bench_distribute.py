"""Steps per second on one device vs `mirrored` over logical CPU devices.

Splits the host CPU into `--devices` logical devices, builds the same
self-compressing model under the default strategy and under
`MirroredStrategy` over those devices, and times each one's compiled training
step in `fit()` on MNIST batches of the same global size, in turns, with the
median over repeats.

On a CPU the logical devices share the same cores, so this measures the
overhead of replication (splitting the batch, all-reducing the gradients),
not a speed-up.

  python tools/bench_distribute.py --data_dir=../shared/data/mnist
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from selfcompress import config as config_lib  # noqa: E402
from selfcompress import data, distribute, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder with the MNIST IDX .gz files.")
flags.DEFINE_list("models", ["lenet300", "lenet5"], "Models to time.")
flags.DEFINE_integer("devices", 2, "Logical CPU devices for `mirrored`.")
flags.DEFINE_integer("batch_size", 128, "Global batch size.")
flags.DEFINE_integer("steps", 20, "Steps per timed repeat.")
flags.DEFINE_integer("repeats", 15, "Interleaved repeats (median taken).")


def main(_):
  distribute.split_cpu(FLAGS.devices)
  ds = data.load("mnist", FLAGS.data_dir, batch_size=FLAGS.batch_size,
                 seed=0, first_epoch=0)
  steps_per_epoch = ds.steps_per_epoch
  strategies = {"one device": tf.distribute.get_strategy(),
                f"mirrored x{FLAGS.devices}": _mirrored()}
  print(f"{os.cpu_count()} CPUs, logical devices: "
        f"{[d.name for d in tf.config.list_logical_devices('CPU')]}; global "
        f"batch {FLAGS.batch_size}; {FLAGS.repeats} interleaved repeats of "
        f"{FLAGS.steps} steps")
  for name in FLAGS.models:
    config = config_lib.base()
    config.model, config.dataset = name, "mnist"
    runs = {}
    for label, strategy in strategies.items():
      with strategy.scope():
        model = training.build_model(config, ds.input_shape, ds.num_classes,
                                     steps_per_epoch)
      runs[label] = (model, [])
      timed_fit(model, ds)  # trace and warm up
    for _ in range(FLAGS.repeats):
      for model, times in runs.values():
        times.append(timed_fit(model, ds))
    med = {k: statistics.median(v[1]) for k, v in runs.items()}
    base = med["one device"]
    print(f"\n{name}:")
    for label, t in med.items():
      print(f"  {label:>12}: {1 / t:7.1f} steps/s ({1e3 * t:.2f} ms/step), "
            f"{base / t:.2f}x the one-device rate")


class _Clock(keras.callbacks.Callback):
  def on_train_begin(self, logs=None):
    self.ends = []

  def on_train_batch_end(self, batch, logs=None):
    self.ends.append(time.perf_counter())


def timed_fit(model, ds):
  """Seconds per step of `fit` over `--steps` steps, from the end of the
  first step to the end of the last (fit's own setup left out)."""
  clock = _Clock()
  model.fit(ds.train_from(0), steps_per_epoch=FLAGS.steps + 1, epochs=1,
            verbose=0, callbacks=[clock])
  return (clock.ends[-1] - clock.ends[0]) / FLAGS.steps


def _mirrored():
  config = config_lib.base()
  config.strategy = "mirrored"
  return distribute.make(config)


if __name__ == "__main__":
  flags.mark_flag_as_required("data_dir")
  app.run(main)

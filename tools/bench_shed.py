"""Shedding during training: does the network get cheaper as it shrinks?

Trains each model twice from the same seed on MNIST, once shedding dead
channels every epoch (`selfcompress.fit_and_shed`) and once without, and
prints per epoch the physical channels left and the median step time, then
the ratio of the last epoch's step time to the first's and the two runs'
wall times.

Epoch-by-epoch step times drift with whatever else the machine runs, so the
headline ratio is measured again at the end, side by side: the model as it
started (same seed) and the model as it ended take turns on the same
batches, `--repeats` times, and the medians are compared.

  python tools/bench_shed.py --data_dir=../shared/data/mnist \
      --models=lenet300,lenet5 --epochs=10 --gamma=1.0
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402

from selfcompress import config as config_lib  # noqa: E402
from selfcompress import data, graph, kinds, shed_training, training  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", None, "Folder with the MNIST IDX .gz files.")
flags.DEFINE_list("models", ["lenet300", "lenet5"], "Models to train.")
flags.DEFINE_integer("epochs", 10, "Epochs per run.")
flags.DEFINE_float("gamma", 1.0, "Size penalty (strong, so most channels die).")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("seed", 0, "Seed of both runs.")
flags.DEFINE_integer("repeats", 15, "Interleaved repeats of the final timing.")
flags.DEFINE_integer("steps", 20, "Training steps per timed repeat.")


class StepTimes(keras.callbacks.Callback):
  """Median wall time between consecutive training steps, per epoch."""

  def __init__(self):
    super().__init__()
    self.rows = []

  def on_epoch_begin(self, epoch, logs=None):
    self._times, self._start = [], time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self._times.append(time.perf_counter())

  def on_epoch_end(self, epoch, logs=None):
    steps = [b - a for a, b in zip(self._times, self._times[1:])][2:]
    self.rows.append({"epoch": epoch + 1, "step_ms": 1e3 * statistics.median(steps),
                      "channels": channels(self.model),
                      "seconds": time.perf_counter() - self._start,
                      "size_kb": float(logs["size_kb"])})


def channels(model):
  """Physical output channels of the weighted layers (what shedding cuts)."""
  total = 0
  for layer in graph.ChannelGraph.of(model).layers:
    kind = kinds.of(layer)
    if kind is not None:
      total += kind.channels(layer)
  return total


def run(name, shed):
  c = config_lib.base()
  c.dataset, c.model, c.data_dir = "mnist", name, FLAGS.data_dir
  c.epochs, c.batch_size, c.gamma, c.seed = (FLAGS.epochs, FLAGS.batch_size,
                                             FLAGS.gamma, FLAGS.seed)
  ds = data.load("mnist", FLAGS.data_dir, batch_size=c.batch_size,
                 seed=c.seed, first_epoch=0)
  steps = ds.steps_per_epoch
  model = training.build_model(c, ds.input_shape, ds.num_classes, steps)
  timer = StepTimes()
  start = time.perf_counter()
  model, _ = shed_training.fit_and_shed(
      model, ds.train_from, epochs=c.epochs,
      shed_every_epochs=1 if shed else c.epochs + 1, callbacks=[timer],
      steps_per_epoch=steps, verbose=0)
  wall = time.perf_counter() - start
  acc = model.evaluate(ds.test, verbose=0, return_dict=True)["accuracy"]
  first = training.build_model(c, ds.input_shape, ds.num_classes, steps)
  return timer.rows, wall, acc, side_by_side(first, model, ds.train_from(0))


def side_by_side(first, last, train):
  """Median ms per training step of each model, timed in turns on the
  same batches (each model's compiled train step, as fit runs it)."""
  times = {"first": [], "last": []}
  models = {"first": first, "last": last}
  iterators = {}
  for key, model in models.items():
    model.make_train_function()
    iterators[key] = iter(train.repeat())
    for _ in range(3):  # trace and warm up
      model.train_function(iterators[key])
  for _ in range(FLAGS.repeats):
    for key, model in models.items():
      start = time.perf_counter()
      for _ in range(FLAGS.steps):
        logs = model.train_function(iterators[key])
      float(logs["loss"])
      times[key].append((time.perf_counter() - start) / FLAGS.steps)
  return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def main(_):
  for name in FLAGS.models:
    results = {shed: run(name, shed) for shed in (True, False)}
    rows, wall, acc, timed = results[True]
    total = rows[0]["channels"]
    print(f"\n{name}, gamma {FLAGS.gamma}, batch {FLAGS.batch_size}, "
          f"seed {FLAGS.seed}: with shedding every epoch")
    print(" epoch | channels (alive %) | median step ms | size KB")
    for r in rows:
      print(f" {r['epoch']:5d} | {r['channels']:5d} ({100 * r['channels'] / total:5.1f}%) "
            f"| {r['step_ms']:14.3f} | {r['size_kb']:8.2f}")
    base_rows, base_wall, base_acc, base_timed = results[False]
    print(f" last/first epoch step time (from the table), shedding: "
          f"{rows[-1]['step_ms'] / rows[0]['step_ms']:.3f}; without: "
          f"{base_rows[-1]['step_ms'] / base_rows[0]['step_ms']:.3f}")
    for label, t in (("shedding", timed), ("no shedding", base_timed)):
      print(f" side by side, {label}: last model {t['last']:.2f} ms/step, "
            f"first {t['first']:.2f} ms/step, ratio "
            f"{t['last'] / t['first']:.3f} ({FLAGS.repeats} interleaved "
            f"repeats of {FLAGS.steps} steps)")
    print(f" wall time: shedding {wall:.1f}s, without {base_wall:.1f}s, "
          f"ratio {wall / base_wall:.3f}")
    print(f" test accuracy: shedding {100 * acc:.2f}%, without {100 * base_acc:.2f}%")


if __name__ == "__main__":
  flags.mark_flag_as_required("data_dir")
  app.run(main)

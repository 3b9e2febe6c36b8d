"""Callbacks. `CompressionMonitor`, and `WithinBudget` when the model has a
`target_kb`, are attached by `SelfCompressingModel.fit`."""

import math
import os
import time
import warnings

import keras
import numpy as np

from selfcompress import checkpoint
from selfcompress.layers import CompressedLayer


class TrainingDivergedError(FloatingPointError):
  """The loss became NaN or infinite."""


class CompressionMonitor(keras.callbacks.Callback):
  """Guards a self-compressing run and finalises its size logs.

  * A NaN or infinite loss raises `TrainingDivergedError` at the batch where
    it appears (checkpoints written before it are intact).
  * At each epoch end, a layer kept alive only by its `min_channels` (the
    penalty would remove every channel) is reported once with a warning, and
    so is a layer that lost every channel because `min_channels` is 0.
  * Before each validation, at each epoch's end and when training ends, the
    BatchNormalizations' moving means on dead channels are set to what
    training normalised them with (`shedding.settle_statistics`).
  * Each epoch's logs get the exact size at the epoch's end (per-batch values
    are those each step trained with), and the `val_` copies of the size
    metrics, identical to the training ones, are dropped.
  """

  def __init__(self):
    super().__init__()
    self._warned = set()
    self._epoch = 0
    self._settled = False  # no training step since the last settling

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    self._settled = False
    loss = (logs or {}).get("loss")
    if loss is None:
      return
    loss = float(np.asarray(loss))
    if not math.isfinite(loss):
      self.model.stop_training = True
      gamma = getattr(self.model, "size_gamma", None)
      gamma = f"{float(np.asarray(gamma)):.4g}" if gamma is not None else "n/a"
      raise TrainingDivergedError(
          f"The loss became {loss} at epoch {self._epoch + 1}, batch "
          f"{batch + 1} (size gamma = {gamma}). Training was stopped. Lower "
          "the learning rate or the compression parameters' `lr_multiplier`, "
          "or lower `gamma`; check the input data for NaN. Resume from the "
          "last checkpoint.")

  def _settle(self):
    """Once per stretch of training: validation then epoch end share it."""
    from selfcompress import shedding
    if hasattr(self.model, "size_logs") and not self._settled:
      shedding.settle_statistics(self.model)
      self._settled = True

  def on_test_begin(self, logs=None):
    self._settle()  # validation inside fit()

  def on_train_end(self, logs=None):
    self._settle()

  def on_epoch_end(self, epoch, logs=None):
    self._settle()  # before shedding, and without validation data
    if logs is not None and hasattr(self.model, "size_logs"):
      for key, value in self.model.size_logs(exact=True).items():
        logs[key] = float(np.asarray(value))
        logs.pop("val_" + key, None)
    for layer in self.model._flatten_layers(include_self=False):
      if not isinstance(layer, CompressedLayer) or layer.name in self._warned:
        continue
      c = layer.compressor
      alive = int(np.asarray(c.alive()).sum())
      held = int(np.asarray(c.held_channels()).sum())
      if alive == 0:
        message = (f"Layer {layer.name!r} lost every channel at epoch "
                   f"{epoch + 1}: the model's output no longer depends on "
                   "what flows through it. Set `min_channels` >= 1 or lower "
                   "`gamma`.")
      elif held and held == alive:
        message = (f"Layer {layer.name!r} is held at its minimum of "
                   f"{c.min_channels} channel(s) at epoch {epoch + 1}: the "
                   "size penalty would remove every channel. Lower `gamma` "
                   "(or raise `target_kb`) if accuracy suffers.")
      else:
        continue
      self._warned.add(layer.name)
      warnings.warn(message, stacklevel=2)


class WithinBudget(keras.callbacks.Callback):
  """Ends a `fit()` with weights that fit the model's `target_kb`.

  The budget controller keeps the size near `target_kb` from both sides, so
  the last step can leave it a little over (0.2-3% on the LeNets), where a
  budget such as a device's flash is a hard limit. At each epoch end whose
  size (the epoch-end value `CompressionMonitor` logs) is within the budget,
  the weights are kept in memory (the latest `keep` such epochs). When
  training ends over budget by `selfcompress.size()` (the size the report
  and the export store), the latest kept weights that are within it by that
  same count are restored, and the epoch they come from is printed and left
  in `restored_epoch` (1-based; None if nothing was restored). If no epoch
  ended within the budget the weights stay as they are, with a warning.

  Like Keras' `EarlyStopping(restore_best_weights=True)`, it works on one
  `fit()`: what it keeps is dropped when the next `fit()` begins. Training
  in segments (`fit_and_shed`) sets `final=False` for its segments and
  calls `land()` once at the end: weights kept in one segment carry over to
  the next while the model is the same object (a shed one has other
  shapes, and starts afresh).

  With `directory`, the latest kept weights are also written there
  (`within_budget.npz`, atomically), and a `fit()` that resumes a training
  (`initial_epoch` after the epoch they come from) starts from them if they
  fit the model's shapes: a run killed and resumed can still land on an
  epoch from before the resume.
  """

  FILE = "within_budget.npz"

  def __init__(self, keep=3, print_fn=print, directory=None):
    super().__init__()
    if int(keep) < 1:
      raise ValueError(f"`keep` must be an integer >= 1. Received: keep={keep}")
    self.keep = int(keep)
    self.print_fn = print_fn
    self.directory = None if directory is None else os.fspath(directory)
    self.restored_epoch = None
    #: False while a fit() is one segment of a longer training: then
    #: `on_train_end` leaves the landing to the caller's `land()`.
    self.final = True
    self._kept = []
    self._owner = None
    self._resuming = False

  def on_train_begin(self, logs=None):
    if self.final or self._owner is not self.model:
      self._kept = []
    self._owner = self.model
    self.restored_epoch = None
    self._resuming = self.directory is not None and not self._kept

  def on_epoch_begin(self, epoch, logs=None):
    if self._resuming:  # the fit's first epoch: is this a resumed training?
      self._resuming = False
      self._kept = self._saved(before=epoch)

  def _saved(self, before):
    """`[(epoch, weights)]` from `directory` if it holds weights of an
    epoch before `before` in this model's shapes, else `[]`."""
    path = os.path.join(self.directory, self.FILE)
    if not os.path.exists(path):
      return []
    with np.load(path) as f:
      epoch = int(f["epoch"])
      weights = [f[f"w{i}"] for i in range(len(f.files) - 1)]
    shapes = [tuple(np.shape(w)) for w in self.model.get_weights()]
    if epoch >= before or [w.shape for w in weights] != shapes:
      return []
    return [(epoch, weights)]

  def _target(self):
    return getattr(self.model, "target_kb", None)

  def on_epoch_end(self, epoch, logs=None):
    target = self._target()
    if target is None:
      return
    size_kb = (logs or {}).get("size_kb")
    if size_kb is None:
      size_kb = self.model.size_logs(exact=True)["size_kb"]
    if float(np.asarray(size_kb)) <= target:
      weights = self.model.get_weights()
      self._kept = (self._kept + [(epoch, weights)])[-self.keep:]
      if self.directory is not None:
        checkpoint.atomic_write(
            os.path.join(self.directory, self.FILE),
            lambda tmp: np.savez(tmp, epoch=epoch, **{
                f"w{i}": w for i, w in enumerate(weights)}))

  def on_train_end(self, logs=None):
    if self.final:
      self.land()

  def land(self):
    """Restores the latest kept weights within the budget if the model is
    over it now (see the class docstring)."""
    from selfcompress import accounting
    target = self._target()
    if target is None or self.model is None:
      return
    final_kb = accounting.size(self.model).kb
    if final_kb <= target:
      return
    current = self.model.get_weights()
    for epoch, weights in reversed(self._kept):
      self.model.set_weights(weights)
      kb = accounting.size(self.model).kb
      if kb <= target:
        self.restored_epoch = epoch + 1
        if self.print_fn is not None:
          self.print_fn(
              f"Training ended at {final_kb:.3f} KB, over target_kb={target:g}: "
              f"restored the weights of epoch {epoch + 1} ({kb:.3f} KB), the "
              "latest epoch end within the budget.")
        return
    self.model.set_weights(current)
    warnings.warn(
        f"Training ended at {final_kb:.3f} KB, over target_kb={target:g}, and "
        "no epoch of this training ended within it. Train longer (or raise "
        "`target_rate`) so that the budget controller reaches it.",
        stacklevel=2)


class TensorBoard(keras.callbacks.TensorBoard):
  """`keras.callbacks.TensorBoard` without a per-step cost at
  `update_freq="epoch"` (its default).

  Keras' callback hands every step's logs to `tf.summary.scalar` even then,
  where no writer records them: one call per logged value per step (seven
  for a self-compressing model), about 0.15 s of a 3.3 s LeNet-300-100
  epoch on 2 CPU cores. This one passes them on only when they are
  recorded; the graph and the profiler work as in Keras'.
  """

  def on_train_batch_end(self, batch, logs=None):
    super().on_train_batch_end(
        batch, None if self.update_freq == "epoch" else logs)


class EpochLog(keras.callbacks.Callback):
  """Records each epoch's logs and prints one readable line per epoch
  (`print_fn=None`: prints nothing, e.g. under Keras' own progress bar).

  The records (`history`, a list of dicts, shared with the checkpoint) are
  also written to `metrics.json` and `metrics.csv` in `directory`, atomically.

  An epoch's `seconds` is the wall time since the previous epoch's record
  (the first: since training began): what happens between epochs counts
  too, e.g. other callbacks and, when one instance is handed to every
  `fit` of a training (`fit_and_shed`), the sheds between them.
  """

  def __init__(self, history, directory=None, total_epochs=None,
               print_fn=print):
    super().__init__()
    self.history = history
    self.directory = directory
    self.total_epochs = total_epochs
    self.print_fn = print_fn
    self._since = None

  def on_train_begin(self, logs=None):
    if self._since is None:
      self._since = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    if self._since is None:  # not handed to fit() (called directly)
      self._since = time.perf_counter()
    record = {"epoch": epoch + 1,
              "seconds": time.perf_counter() - self._since}
    record.update({k: float(np.asarray(v)) for k, v in (logs or {}).items()})
    self.history.append(record)
    if self.print_fn is not None:
      self.print_fn(format_epoch(record, self.total_epochs))
    if self.directory:
      write_history(self.directory, self.history)
    self._since = time.perf_counter()


def format_epoch(r, total=None):
  parts = [f"epoch {r['epoch']}" + (f"/{total}" if total else "")]
  if "loss" in r:
    parts.append(f"loss {r['loss']:.4f}")
  for key, label in (("accuracy", "acc"), ("val_accuracy", "val_acc")):
    if key in r:
      parts.append(f"{label} {100 * r[key]:.2f}%")
  if "size_kb" in r:
    parts.append(f"size {r['size_kb']:.2f} KB ({r['compression_ratio']:.1f}x)")
    parts.append(f"{r['bits_per_weight']:.2f} bits/w")
    parts.append(f"{int(r['alive_channels'])} channels")
  parts.append(f"{r['seconds']:.1f}s")
  return " | ".join(parts)


# metrics.csv's leading columns; the others follow in alphabetical order, so
# the order is the same however the records were stored (a resumed run reads
# them back from JSON).
_FIRST_COLUMNS = ("epoch", "seconds", "loss", "accuracy", "val_loss",
                  "val_accuracy", "size_kb", "compression_ratio",
                  "bits_per_weight", "alive_channels")


def write_history(directory, history):
  checkpoint.write_json(os.path.join(directory, "metrics.json"), history)
  present = {k for r in history for k in r}
  keys = [k for k in _FIRST_COLUMNS if k in present]
  keys += sorted(present - set(keys))
  lines = [",".join(keys)]
  lines += [",".join(repr(r.get(k, "")) for k in keys) for r in history]
  checkpoint.write_text(os.path.join(directory, "metrics.csv"),
                        "\n".join(lines) + "\n")


class LayerHistograms(keras.callbacks.Callback):
  """Writes per-layer bit-depth histograms and alive channels to TensorBoard."""

  def __init__(self, log_dir):
    super().__init__()
    self.log_dir = log_dir
    self._writer = None

  def on_epoch_end(self, epoch, logs=None):
    import tensorflow as tf  # TensorBoard's writer
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self.log_dir)
    with self._writer.as_default(step=epoch + 1):
      for layer in self.model._flatten_layers(include_self=False):
        if not isinstance(layer, CompressedLayer):
          continue
        state = layer.compressor.state()
        tf.summary.histogram(f"bits/{layer.name}", state.storage_bits)
        tf.summary.scalar(f"alive_channels/{layer.name}",
                          float(np.asarray(state.alive).sum()))
    self._writer.flush()

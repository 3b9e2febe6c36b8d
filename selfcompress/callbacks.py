"""Callbacks. `CompressionMonitor` is attached by `SelfCompressingModel.fit`."""

import math
import warnings

import keras
import numpy as np

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
  * Each epoch's logs get the exact size at the epoch's end (per-batch values
    are those each step trained with), and the `val_` copies of the size
    metrics, identical to the training ones, are dropped.
  """

  def __init__(self):
    super().__init__()
    self._warned = set()
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
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

  def on_epoch_end(self, epoch, logs=None):
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

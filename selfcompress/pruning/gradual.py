"""Gradual magnitude pruning in one training run (Zhu & Gupta, "To prune, or
not to prune: exploring the efficacy of pruning for model compression",
ICLR 2018 workshop).

The algorithm behind TensorFlow Model Optimization's
`prune_low_magnitude` with its `PolynomialDecay` schedule, which runs only
on legacy Keras 2: every `frequency` steps between `begin_step` and
`end_step` each prunable kernel is cut to the sparsity

  s_t = s_f + (s_i - s_f) * (1 - (t - begin_step) / (end_step - begin_step))^3

by removing its smallest-magnitude kept weights. Pruned weights stay pruned
(the masks of `selfcompress.pruning.masking` hold them at 0 after every
optimizer update). It is the single-run pruning baseline of
`tools/bench_methods.py`.
"""

import keras
import numpy as np

from selfcompress.pruning import masking, strategies
from selfcompress.pruning.mask import Mask


def polynomial_sparsity(step, final, begin, end, initial=0.0, power=3):
  """Zhu & Gupta's target sparsity at training step `step`."""
  if step <= begin:
    return initial
  progress = min((step - begin) / max(end - begin, 1), 1.0)
  return final + (initial - final) * (1.0 - progress) ** power


def prune_to(model, sparsities):
  """Cuts each prunable kernel to its sparsity (dict `path -> fraction`,
  never lowered: pruned weights stay pruned) by magnitude; returns the
  new `Mask`, already applied."""
  mask, weights = masking.mask_of(model), masking.kernels(model)
  mask = Mask({
      path: strategies.prune_smallest(
          np.abs(weights[path]), keep,
          int(keep.sum()) - int(round((1.0 - sparsities[path]) * keep.size)))
      for path, keep in mask.items()})
  masking.apply(model, mask)
  return mask


class GradualPruning(keras.callbacks.Callback):
  """Prunes `model`'s kernels to `final_sparsity` along Zhu & Gupta's cubic
  schedule while it trains (`selfcompress.pruning.attach` it first).

  Args:
    final_sparsity: the fraction of each kernel's weights pruned at the end
      (the last kernel, the output layer, `final_sparsity * output_rate`).
    begin_step, end_step: the training steps (optimizer iterations) over
      which sparsity rises from 0.
    frequency: steps between two pruning updates.
    output_rate: the output layer's sparsity relative to the others, as in
      `config.imp.output_rate`.
  """

  def __init__(self, final_sparsity, begin_step, end_step, frequency=100,
               output_rate=1.0):
    super().__init__()
    if not 0.0 <= final_sparsity < 1.0:
      raise ValueError("`final_sparsity` must be in [0, 1). Received: "
                       f"final_sparsity={final_sparsity}")
    if not 0 <= begin_step < end_step:
      raise ValueError("Need 0 <= begin_step < end_step. Received: "
                       f"begin_step={begin_step}, end_step={end_step}")
    if not frequency >= 1:
      raise ValueError(f"`frequency` must be >= 1. Received: {frequency}")
    self.final_sparsity = float(final_sparsity)
    self.begin_step, self.end_step = int(begin_step), int(end_step)
    self.frequency = int(frequency)
    self.output_rate = float(output_rate)

  def _sparsities(self, step):
    s = polynomial_sparsity(step, self.final_sparsity, self.begin_step,
                            self.end_step)
    paths = list(masking.kernel_shapes(self.model))
    out = {p: s for p in paths}
    out[paths[-1]] = s * self.output_rate
    return out

  def on_train_begin(self, logs=None):
    # Counted here, not read from the optimizer every batch (a device read
    # on the training loop's path).
    self._step = int(self.model.optimizer.iterations)

  def on_train_batch_begin(self, batch, logs=None):
    step = self._step
    due = (step - self.begin_step) % self.frequency == 0 or step == self.end_step
    if self.begin_step < step <= self.end_step and due:
      prune_to(self.model, self._sparsities(step))

  def on_train_batch_end(self, batch, logs=None):
    self._step += 1

  def on_train_end(self, logs=None):
    # A run shorter than `end_step` still ends at the sparsity it was given.
    if self._step >= self.begin_step:
      prune_to(self.model, self._sparsities(self.end_step))

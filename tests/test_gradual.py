"""Gradual magnitude pruning (`selfcompress.pruning.gradual`): Zhu & Gupta's
schedule, and the callback pruning by magnitude while `fit()` trains."""

import keras
import numpy as np
import pytest

from selfcompress import pruning
from selfcompress.pruning import gradual


def test_schedule_is_zhu_and_gupta_cubic():
  s = lambda t: gradual.polynomial_sparsity(t, 0.9, begin=10, end=110)
  assert s(0) == 0.0 and s(10) == 0.0
  assert s(60) == pytest.approx(0.9 * (1 - 0.5 ** 3))
  assert s(110) == pytest.approx(0.9) and s(500) == pytest.approx(0.9)
  assert all(s(t) <= s(t + 1) for t in range(0, 120))


def _model():
  keras.utils.set_random_seed(0)
  return pruning.attach(keras.Sequential([
      keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
      keras.layers.Dense(3)]))


class _Record(keras.callbacks.Callback):
  """The kept weights of every kernel after each batch."""

  def __init__(self):
    super().__init__()
    self.masks = []

  def on_train_batch_end(self, batch, logs=None):
    self.masks.append(
        {l.name: np.asarray(l.kernel) != 0 for l in pruning.prunable(self.model)})


def test_callback_prunes_smallest_to_the_final_sparsity_and_keeps_them_pruned():
  model = _model()
  model.compile(keras.optimizers.SGD(0.01), "mse")
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(160, 12)), rng.normal(size=(160, 3))
  record = _Record()
  schedule = gradual.GradualPruning(0.75, begin_step=2, end_step=12,
                                    frequency=3, output_rate=0.5)
  model.fit(x, y, batch_size=16, epochs=2, verbose=0,
            callbacks=[schedule, record])
  hidden, out = pruning.prunable(model)
  assert (np.asarray(hidden.kernel) == 0).sum() == round(0.75 * 12 * 16)
  assert (np.asarray(out.kernel) == 0).sum() == round(0.375 * 16 * 3)
  # Nothing pruned before begin_step; once pruned, a weight stays at 0.
  assert record.masks[0]["dense"].all()
  for before, after in zip(record.masks, record.masks[1:]):
    for name in before:
      assert not (after[name] & ~before[name]).any()
  assert not record.masks[-1]["dense"].all()


def test_prune_to_removes_the_smallest_magnitudes():
  model = _model()
  hidden = pruning.prunable(model)[0]
  w = np.asarray(hidden.kernel)
  gradual.prune_to(model, {p: 0.5 for p in pruning.kernel_shapes(model)})
  kept = np.asarray(hidden.kernel) != 0
  assert kept.sum() == w.size // 2
  assert np.abs(w[kept]).min() >= np.abs(w[~kept]).max()


@pytest.mark.parametrize("kwargs, match", [
    (dict(final_sparsity=1.0, begin_step=0, end_step=5), "final_sparsity"),
    (dict(final_sparsity=0.5, begin_step=5, end_step=5), "begin_step"),
    (dict(final_sparsity=0.5, begin_step=0, end_step=5, frequency=0),
     "frequency")])
def test_bad_arguments_are_named(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gradual.GradualPruning(**kwargs)

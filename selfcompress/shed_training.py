"""Training that sheds dead channels as it goes: the network physically
shrinks during the run, so later epochs are cheaper."""

import keras
import numpy as np
from absl import logging

from selfcompress import distribute
from selfcompress import graph as graph_lib
from selfcompress import kinds
from selfcompress import shedding
from selfcompress.callbacks import WithinBudget


def fit_and_shed(model, train, *, epochs, shed_every_epochs=1,
                 min_reduction=0.1, initial_epoch=0, callbacks=None,
                 **fit_kwargs):
  """`model.fit` that swaps in `shed(model)` every `shed_every_epochs`.

  Every `shed_every_epochs` epochs, at the epoch's end, it asks whether
  shedding pays (`min_reduction`). Only then does the current `fit` end:
  the dead channels are removed (`selfcompress.shed`, exact), the
  optimizer's step and per-weight state (Adam's moments) are carried over,
  sliced to the channels that remain, so the loss curve continues without a
  jump, and a new `fit` trains the shed model from the next epoch. Epochs
  where shedding does not pay run on in the same `fit` (a new one costs
  its setup and a new pass of the input pipeline: about 0.2 s an epoch for
  LeNet-300-100, BENCHMARKS.md). A run resumed at a boundary sheds first
  if that pays, as the uninterrupted run did.

  Args:
    model: a compiled model (usually a `SelfCompressingModel`).
    train: the training data, or a callable `epoch -> data` returning the
      stream from that epoch on (so each segment starts where the previous
      one stopped; `selfcompress.data.load(...).train_from` is one).
    min_reduction: swap only if the shed model has at least this fraction
      fewer parameters: each swap retraces (and with XLA recompiles) the
      training step, which costs seconds; shedding a handful of channels
      does not pay for that.
    epochs, initial_epoch, callbacks, **fit_kwargs: as for `fit`. Callbacks
      see `on_train_begin`/`on_train_end` once per `fit` (one more after
      each shed), except a `WithinBudget` (one is added for a model with a
      `target_kb`), which lands once, at the end of the whole training. A
      callback that stops training (`model.stop_training`) ends it.

  Returns:
    `(model, history)`: the final (shed) model, and a `History` whose
    `history` dict covers every epoch.
  """
  if int(shed_every_epochs) < 1:
    raise ValueError("`shed_every_epochs` must be >= 1. Received: "
                     f"{shed_every_epochs}")
  history = keras.callbacks.History()
  history.history, history.epoch = {}, []
  callbacks = list(callbacks or [])
  # One WithinBudget for the whole training, landing once at its end (each
  # segment's fit() would otherwise attach its own and land at its end).
  budgets = [c for c in callbacks if isinstance(c, WithinBudget)]
  if not budgets and getattr(model, "target_kb", None) is not None:
    budgets = [WithinBudget()]
    callbacks.append(budgets[0])
  for budget in budgets:
    budget.final = False
  # Last: it sees whether another callback stopped training at that epoch.
  check = _ShedCheck(shed_every_epochs, min_reduction, epochs)
  try:
    epoch = initial_epoch
    if 0 < epoch < epochs and epoch % shed_every_epochs == 0:
      model = _shed(model, epoch, min_reduction)
    while epoch < epochs:
      check.shed_at = None
      segment = distribute.fit(model, train(epoch) if callable(train) else train,
                               epochs=epochs, initial_epoch=epoch,
                               callbacks=callbacks + [check], **fit_kwargs)
      for key, values in segment.history.items():
        history.history.setdefault(key, []).extend(values)
      history.epoch.extend(segment.epoch)
      if check.shed_at is None:  # the last epoch, or stopped by a callback
        break
      epoch = check.shed_at
      model = _shed(model, epoch, min_reduction)
  finally:
    for budget in budgets:
      budget.final = True
  for budget in budgets:
    budget.land()
  history.set_model(model)
  return model, history


class _ShedCheck(keras.callbacks.Callback):
  """Stops `fit` at the end of the first epoch, of those `every` epochs
  apart, after which shedding pays; `shed_at` is the next epoch."""

  def __init__(self, every, min_reduction, epochs):
    super().__init__()
    self.every, self.min_reduction, self.epochs = every, min_reduction, epochs
    self.shed_at = None
    self._tried = None  # the liveness at the last shed that did not pay

  def on_epoch_end(self, epoch, logs=None):
    done = epoch + 1
    if (done % self.every or done >= self.epochs
        or self.model.stop_training):
      return
    # The same channels alive: the same shed model, which did not pay.
    # (Building one costs about 0.15 s for LeNet-300-100.)
    alive = _liveness(self.model)
    if alive == self._tried:
      return
    self._tried = alive
    if _smaller(self.model, self.min_reduction) is not None:
      self.shed_at = done
      self.model.stop_training = True


def _liveness(model):
  """Which channels of `model` are alive and which inputs its layers read.
  While they stay the same, `shed(model)` keeps the same channels (it may
  keep a dead one whose output is not a constant it can fold, rare)."""
  flow = graph_lib.ChannelGraph.of(model).propagate()
  return tuple(np.asarray(v).astype(bool).tobytes()
               for part in (flow.tensors, flow.in_alive)
               for v in part.values())


def _smaller(model, min_reduction):
  """`shed(model)` if it has at least `min_reduction` fewer parameters,
  else None."""
  with model.distribute_strategy.scope():  # new variables are distributed too
    smaller = shedding.shed(model)
  if smaller.count_params() > model.count_params() * (1.0 - min_reduction):
    return None
  return smaller


def _shed(model, epoch, min_reduction):
  before = model.count_params()
  smaller = _smaller(model, min_reduction)
  if smaller is None:
    return model
  with model.distribute_strategy.scope():
    shedding.carry_optimizer(model, smaller)
  logging.info("Shed after epoch %d: %d -> %d parameters.", epoch, before,
               smaller.count_params())
  print(f"shed after epoch {epoch}: {before:,} -> "
        f"{smaller.count_params():,} parameters "
        f"({_alive_summary(smaller)})", flush=True)
  return smaller


def _alive_summary(model):
  parts = []
  for layer in graph_lib.ChannelGraph.of(model).layers:
    kind = kinds.of(layer)
    if kind is not None:
      parts.append(f"{layer.name}: {kind.channels(layer)}")
  return ", ".join(parts)

"""Training that sheds dead channels as it goes: the network physically
shrinks during the run, so later epochs are cheaper."""

import keras
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

  Training runs in segments of `shed_every_epochs` epochs. Between segments
  the dead channels are removed (`selfcompress.shed`, exact) and the
  optimizer's step and per-weight state (Adam's moments) are carried over,
  sliced to the channels that remain, so the loss curve continues without a
  jump. A run resumed at a segment boundary sheds first, as the
  uninterrupted run did.

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
      see `on_train_begin`/`on_train_end` once per segment, except a
      `WithinBudget` (one is added for a model with a `target_kb`), which
      lands once, at the end of the whole training.

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
  try:
    epoch = initial_epoch
    while epoch < epochs and not getattr(model, "stop_training", False):
      if epoch > 0 and epoch % shed_every_epochs == 0:
        model = _shed(model, epoch, min_reduction)
      stop = min(epochs, (epoch // shed_every_epochs + 1) * shed_every_epochs)
      segment = distribute.fit(model, train(epoch) if callable(train) else train,
                               epochs=stop, initial_epoch=epoch,
                               callbacks=callbacks, **fit_kwargs)
      for key, values in segment.history.items():
        history.history.setdefault(key, []).extend(values)
      history.epoch.extend(segment.epoch)
      epoch = stop
  finally:
    for budget in budgets:
      budget.final = True
  for budget in budgets:
    budget.land()
  history.set_model(model)
  return model, history


def _shed(model, epoch, min_reduction):
  before = model.count_params()
  with model.distribute_strategy.scope():  # new variables are distributed too
    smaller = shedding.shed(model)
    if smaller.count_params() > before * (1.0 - min_reduction):
      return model
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

"""Iterative magnitude pruning (IMP) with rewinding: the lottery-ticket
baseline, `run(config, workdir)`.

Level 0 trains the dense network. Every further level prunes
`config.imp.fraction` of the weights still kept (strategy
`config.imp.strategy`), resets the network and trains it again. The reset
(`config.imp.reset`):

  init       kept weights back to their initial values (lottery ticket:
             Frankle & Carbin, "The Lottery Ticket Hypothesis: Finding
             Sparse, Trainable Neural Networks", ICLR 2019).
  rewind     kept weights back to their values after epoch `rewind_epoch`
             of level 0; training and the LR schedule resume from that
             epoch (weight rewinding: Frankle, Dziugaite, Roy & Carbin,
             "Linear Mode Connectivity and the Lottery Ticket Hypothesis",
             ICML 2020).
  lr_rewind  keep the trained weights; replay the LR schedule from step 0
             (learning-rate rewinding: Renda, Frankle & Carbin, "Comparing
             Rewinding and Fine-tuning in Neural Network Pruning", ICLR
             2020).
  finetune   keep the trained weights; train at the constant
             `finetune_learning_rate` (fine-tuning, as compared by Renda et
             al.).
  reinit     fresh random weights (the control). With `mask_from` set to
             another IMP workdir, its masks are used level by level: Frankle
             & Carbin's control, a winning ticket's structure with a new
             init.

Every level starts a fresh optimizer and trains on the same data order.
`workdir/level_NN/` holds `mask.npz`, `weights.npz` (end of training),
`metrics.json`/`.csv` (per epoch) and `results.json`, written last: a level
with `results.json` is finished and is skipped when the command is run again,
so a crashed run resumes at the level it was in. Accuracy is reported at the
end of training and at the epoch of best validation accuracy (the paper's
early-stopping criterion); the test set is never used to choose anything.
"""

import json
import os
import time

import keras
import numpy as np

from selfcompress import callbacks as cb
from selfcompress import (checkpoint, data, distribute, models, objectives,
                          pruning,
                          training, workdir as workdirs)
from selfcompress.errors import ConfigError

RESETS = ("init", "rewind", "lr_rewind", "finetune", "reinit")
# Fields a resumed run may change without changing its results: those of
# every workdir, and the number of levels (finished levels stay valid).
_FREE_FIELDS = workdirs.FREE_FIELDS | {"imp.levels"}


def validate(config):
  """Raises `ConfigError` naming any bad config value and how to fix it."""
  training.validate(config)
  imp = config.imp

  def bad(field, why):
    raise ConfigError(f"Bad config value: imp.{field}={imp.get(field)!r}: {why}.")
  if config.method != "dense":
    raise ConfigError(f"Bad config value: method={config.method!r}: IMP prunes "
                     "a float network; set method='dense'.")
  if objectives.is_regression(config.loss) or (
      tuple(config.metrics)[:1] != ("accuracy",)):
    raise ConfigError(
        f"Bad config value: loss={config.loss!r}, metrics="
        f"{tuple(config.metrics)!r}: IMP chooses its levels and bits by "
        "validation accuracy, so it needs a classification loss with "
        "'accuracy' as the first metric.")
  if not isinstance(imp.levels, int) or imp.levels < 0:
    bad("levels", "must be an integer >= 0 (0: the dense level only)")
  if not 0 < imp.fraction < 1:
    bad("fraction", "must be in (0, 1): the share of remaining weights "
        "pruned per level")
  if imp.strategy not in pruning.STRATEGIES:
    bad("strategy", f"must be one of {sorted(pruning.STRATEGIES)}")
  if not (imp.output_rate >= 0 and imp.fraction * imp.output_rate < 1):
    bad("output_rate", "must be >= 0 with fraction * output_rate < 1")
  if any(not 0 <= f < 1 for f in imp.layer_fractions):
    bad("layer_fractions", "each must be in [0, 1)")
  if imp.reset not in RESETS:
    bad("reset", f"must be one of {RESETS}")
  if imp.reset == "rewind" and not (
      isinstance(imp.rewind_epoch, int) and 0 < imp.rewind_epoch < config.epochs):
    bad("rewind_epoch", f"must be an integer in [1, epochs={config.epochs}) "
        "(use reset='init' to rewind to the initialisation)")
  if not imp.finetune_learning_rate > 0:
    bad("finetune_learning_rate", "must be > 0")
  if imp.mask_from is not None and not os.path.isdir(imp.mask_from):
    bad("mask_from", "must be the workdir of an IMP run (it does not exist)")
  if config.strategy == "multi_worker":
    raise ConfigError(
        "Bad config value: strategy='multi_worker': IMP reads each level's "
        "weights back from its workdir, which the workers of a cluster do not "
        "share; run it with 'mirrored' (the devices of one machine) or 'tpu'.")


def _save_arrays(path, arrays):
  checkpoint.atomic_write(path, lambda tmp: np.savez(tmp, *arrays))


def _load_arrays(path):
  with np.load(path, allow_pickle=False) as f:
    return [f[f"arr_{i}"] for i in range(len(f.files))]


def _new_model(config, ds, seed):
  keras.utils.set_random_seed(seed)
  model = models.get(config.model, ds.input_shape, ds.num_classes,
                     **dict(config.model_kwargs))
  return pruning.attach(model)


class _Snapshot(keras.callbacks.Callback):
  """Keeps the weights of the best validation epoch, and saves the weights
  after epoch `save_epoch` (the weight-rewinding point) to `save_path`."""

  def __init__(self, save_epoch=None, save_path=None):
    super().__init__()
    self.save_epoch, self.save_path = save_epoch, save_path
    self.best, self.best_epoch, self.best_weights = -1.0, None, None

  def on_epoch_end(self, epoch, logs=None):
    score = (logs or {}).get("val_accuracy", 0.0)
    if score >= self.best:  # without validation data: the last epoch
      self.best, self.best_epoch = score, epoch + 1
      self.best_weights = self.model.get_weights()
    if self.save_path and epoch + 1 == self.save_epoch:
      _save_arrays(self.save_path, self.model.get_weights())


def _mask_for(config, level, model, rng):
  imp = config.imp
  if imp.mask_from is not None:
    path = os.path.join(imp.mask_from, f"level_{level:02d}", "mask.npz")
    if not os.path.exists(path):
      raise ConfigError(f"imp.mask_from={imp.mask_from!r} has no mask for "
                       f"level {level} ({path}); run that IMP run to level "
                       f"{imp.levels} first.")
    return pruning.Mask.load(path)
  mask = pruning.mask_of(model)
  if level == 0:
    return mask
  fractions = pruning.layer_fractions(mask, imp.fraction, imp.output_rate,
                                      tuple(imp.layer_fractions))
  return pruning.get(imp.strategy)(pruning.kernels(model), mask, fractions,
                                   rng)


def prepare_level(config, ds, steps, level, workdir):
  """Builds level `level`'s network: pruned and reset, compiled.

  Returns `(model, mask, first_epoch)`; the previous level must be on disk.
  """
  imp = config.imp
  model = _new_model(config, ds, config.seed)
  init_path = os.path.join(workdir, "init.npz")
  if not os.path.exists(init_path):
    _save_arrays(init_path, model.get_weights())
  init = _load_arrays(init_path)
  if level > 0:  # the previous level's trained weights, with its mask
    model.set_weights(_load_arrays(
        os.path.join(workdir, f"level_{level - 1:02d}", "weights.npz")))
  mask = _mask_for(config, level, model,
                   np.random.default_rng([config.seed, level]))
  reset = imp.reset if level > 0 else "init"
  first_epoch, lr = 0, training.learning_rate(config, steps)
  if reset == "init":
    model.set_weights(init)
  elif reset == "rewind":
    first_epoch = imp.rewind_epoch
    model.set_weights(_load_arrays(os.path.join(workdir, "rewind.npz")))
    lr = training.learning_rate(config, steps, start_step=first_epoch * steps)
  elif reset == "finetune":
    lr = imp.finetune_learning_rate
  elif reset == "reinit":
    seed = int(np.random.SeedSequence([config.seed, level]).generate_state(1)[0])
    model.set_weights(_new_model(config, ds, seed).get_weights())
  pruning.apply(model, mask)
  training.compile_model(model, lr, config)
  return model, mask, first_epoch


def _train_level(config, ds, steps, level, workdir):
  """Prunes, resets and trains one level; returns its results row."""
  imp, folder = config.imp, os.path.join(workdir, f"level_{level:02d}")
  start = time.perf_counter()
  model, mask, first_epoch = prepare_level(config, ds, steps, level, workdir)

  history = []
  fit_verbose, print_fn = training.verbosity(config)
  snapshot = _Snapshot()
  if level == 0 and imp.reset == "rewind":
    snapshot = _Snapshot(imp.rewind_epoch, os.path.join(workdir, "rewind.npz"))
  distribute.fit(
      model, ds.train_from(first_epoch), epochs=config.epochs,
      initial_epoch=first_epoch, steps_per_epoch=steps,
      validation_data=ds.validation, shuffle=False, verbose=fit_verbose,
      callbacks=[cb.EpochLog(history, folder, config.epochs,
                             print_fn=print_fn), snapshot])
  test = distribute.evaluate(model, ds.test)
  _save_arrays(os.path.join(folder, "weights.npz"), model.get_weights())
  mask.save(os.path.join(folder, "mask.npz"))
  size = pruning.sparse_size(model)
  model.set_weights(snapshot.best_weights)
  best_test = distribute.evaluate(model, ds.test)
  row = {
      "level": level, "reset": imp.reset, "strategy": imp.strategy,
      "seed": config.seed, "density": mask.density,
      "weights_remaining": mask.num_remaining,
      "weights_total": mask.num_total,
      "test_accuracy": test["accuracy"],
      "val_accuracy": history[-1].get("val_accuracy"),
      "best_epoch": snapshot.best_epoch,
      "best_val_accuracy": history[snapshot.best_epoch - first_epoch - 1].get(
          "val_accuracy"),
      "test_accuracy_at_best_val": best_test["accuracy"],
      "size_kb": size.kb,
      "train_seconds": sum(r["seconds"] for r in history),
      "level_seconds": time.perf_counter() - start,
  }
  checkpoint.write_json(os.path.join(folder, "results.json"), row)
  return row


def run(config, workdir):
  """Runs (or resumes) IMP for `config` in `workdir`; returns one row per
  level (see `_train_level`), also written to `workdir/results.json`."""
  validate(config)
  workdirs.check(workdir, config, what="an IMP run", free=_FREE_FIELDS)
  with workdirs.Lock(workdir):
    workdirs.check(workdir, config, what="an IMP run", free=_FREE_FIELDS)
    return _run(config, workdir)


def _run(config, workdir):
  strategy = distribute.make(config)  # first: it may split the CPU
  distribute.log_strategy(strategy)
  ds = data.from_config(config, first_epoch=0)
  workdirs.record(workdir, config)  # the config and data are known good
  steps = ds.steps_per_epoch
  rows = []
  for level in range(config.imp.levels + 1):
    done = os.path.join(workdir, f"level_{level:02d}", "results.json")
    if os.path.exists(done):
      with open(done) as f:
        rows.append(json.load(f))
      print(f"Level {level} already finished; skipped.")
      continue
    with strategy.scope():  # the level's model, optimizer and masks
      rows.append(_train_level(config, ds, steps, level, workdir))
    print(format_row(rows[-1]))
  checkpoint.write_json(os.path.join(workdir, "results.json"), rows)
  return rows


def load_level(config, ds, workdir, level):
  """The trained network of a finished level (weights and mask), compiled."""
  path = os.path.join(workdir, f"level_{level:02d}", "weights.npz")
  if not os.path.exists(path):
    raise ValueError(f"Level {level} of {workdir} is not finished ({path} "
                     "is missing); run tools/imp.py on it first.")
  model = _new_model(config, ds, config.seed)
  model.set_weights(_load_arrays(path))
  return training.compile_model(model, config.learning_rate, config)


def tolerated_bits(model, validation, tolerance, bits=range(8, 1, -1)):
  """The fewest bits of `quantize_uniform` that keep validation accuracy
  within `tolerance` (a fraction, 0.002 = 0.2 points) of the float model's.

  Tries `bits` in decreasing order and stops at the first that fails;
  leaves `model` quantised to the answer. Returns `(bits, accuracy)`, or
  `(32, float accuracy)` if even the first fails.
  """
  weights = model.get_weights()
  reference = model.evaluate(validation, return_dict=True, verbose=0)["accuracy"]
  best = (32, reference)
  for b in bits:
    model.set_weights(weights)
    pruning.quantize_uniform(model, b)
    accuracy = model.evaluate(validation, return_dict=True, verbose=0)["accuracy"]
    if accuracy < reference - tolerance:
      break
    best = (b, accuracy)
  model.set_weights(weights)
  if best[0] != 32:
    pruning.quantize_uniform(model, best[0])
  return best


def format_row(r):
  return (f"level {r['level']:2d} | {100 * r['density']:6.2f}% weights "
          f"({r['weights_remaining']:,}) | test {100 * r['test_accuracy']:.2f}% "
          f"| at best val (epoch {r['best_epoch']}) "
          f"{100 * r['test_accuracy_at_best_val']:.2f}% | "
          f"{r['size_kb']:.1f} KB | {r['train_seconds']:.0f}s")

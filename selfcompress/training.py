"""`train_and_evaluate(config, workdir)`: one experiment, start to finish.

The workdir receives the resolved config, resumable checkpoints, TensorBoard
logs (size scalars, per-layer bit histograms), per-epoch metrics as CSV and
JSON, the final size report, the trained model and a PNG of accuracy and size
over training. Running the same command again after an interruption (even
`kill -9`) resumes from the last checkpoint; a finished run is not redone.
"""

import hashlib
import json
import math
import os

import keras
import numpy as np
import tensorflow as tf

import selfcompress as sc
from selfcompress import callbacks as cb
from selfcompress import (checkpoint, data, distribute, models, objectives,
                          plots, shed_training, workdir as workdirs)
from selfcompress import config as base_config
from selfcompress.errors import ConfigError

METHODS = ("selfcompress", "dense")
# config.compressor -> the ChannelCompressor class; "none" (per layer only)
# leaves a layer uncompressed.
COMPRESSORS = {
    "bits": sc.compressors.BitDepth,
    "gates": sc.compressors.HardConcreteGate,
    "gates+bits": sc.compressors.GatedBitDepth,
    # The same with per-input gates (which inputs each layer reads).
    "inputs+bits": sc.compressors.InputGates,
    "inputs+gates": sc.compressors.InputGates,
    "inputs+gates+bits": sc.compressors.InputGates,
    # Learned weight-level sparsity inside alive channels (entropy storage).
    "sparse_bits": sc.compressors.SparseBitDepth,
    "inputs+sparse_bits": sc.compressors.InputGates,
}


def validate(config):
  """Raises `ConfigError` naming any bad config value and how to fix it."""
  def bad(field, why):
    raise ConfigError(
        f"Bad config value: {field}={config.get(field)!r}: {why}.")

  def integer(field, low, why):
    value = config[field]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
      bad(field, why)
  if config.method not in METHODS:
    bad("method", f"must be one of {METHODS}")
  data.validate(config)  # dataset, and the fields of its source
  models.validate(config.model, config.model_kwargs)
  objectives.validate(config.loss, config.metrics)
  integer("epochs", 1, "must be a positive integer")
  integer("batch_size", 1, "must be a positive integer")
  integer("seed", 0, "must be an integer >= 0")
  integer("max_train_examples", 0,
          "must be an integer >= 0 (0: all the training examples)")
  integer("checkpoint_every_epochs", 1, "must be a positive integer")
  if config.num_validation is not None:
    integer("num_validation", 0, "must be an integer >= 0, or None for the "
            "dataset's default")
  if config.verbose not in (0, 1, 2):
    bad("verbose", "must be 0 (quiet), 1 (a line per epoch) or 2 (Keras' "
        "progress bar)")
  for field in ("learning_rate", "lr_multiplier", "bits_init",
                "gate_lr_multiplier"):
    if not config[field] > 0:
      bad(field, "must be > 0")
  if config.target_rate is not None and not config.target_rate > 0:
    bad("target_rate", "must be > 0, or None to set it from the run's length")
  if not math.isfinite(config.log_alpha_init):
    bad("log_alpha_init", "must be a finite number (3.0: gates start open)")
  if config.storage not in sc.compressors.BitDepth.STORAGE:
    bad("storage", f"must be one of {sc.compressors.BitDepth.STORAGE}")
  if config.compressor not in COMPRESSORS:
    bad("compressor", f"must be one of {sorted(COMPRESSORS)}")
  for name, method in config.compressor_per_layer.items():
    if method not in COMPRESSORS and method != "none":
      raise ConfigError(
          f"Bad config value: compressor_per_layer.{name}={method!r}: must "
          f"be one of {sorted(COMPRESSORS) + ['none']}.")
  sparse = [m for m in [config.compressor,
                        *config.compressor_per_layer.values()]
            if m.endswith("sparse_bits")]
  if sparse and config.storage != "entropy":
    bad("storage", f"must be entropy with compressor {sparse[0]}: its "
        "zeros save space only entropy-coded (--config.storage=entropy)")
  if not config.gamma >= 0:
    bad("gamma", "must be >= 0 (0 trains without a size penalty)")
  if config.target_kb is not None and not config.target_kb > 0:
    bad("target_kb", "must be > 0 KB, or None for a fixed gamma")
  if config.lr_schedule not in ("constant", "cosine"):
    bad("lr_schedule", "must be 'constant' or 'cosine'")
  integer("min_channels", 0, "must be an integer >= 0")
  integer("shed_every_epochs", 0, "must be an integer >= 0 (0: never shed)")
  if not 0 <= config.shed_min_reduction < 1:
    bad("shed_min_reduction", "must be in [0, 1)")
  if config.strategy not in distribute.STRATEGIES:
    bad("strategy", f"must be one of {distribute.STRATEGIES}")
  integer("cpu_devices", 0,
          "must be an integer >= 0 (0: the CPU as one device)")
  if config.method == "dense":
    # Settings of the compression that a dense run would silently ignore.
    defaults = base_config.base()
    for field in base_config.COMPRESSION_FIELDS:
      if config[field] != defaults[field]:
        bad(field, "has no meaning with method='dense' (a float32 model "
            "without compression); for the config's dense baseline use "
            "--config=FILE:dense, or set method='selfcompress'")
    if config.compressor_per_layer:
      bad("compressor_per_layer", "has no meaning with method='dense'; for "
          "the config's dense baseline use --config=FILE:dense, or set "
          "method='selfcompress'")


class OffsetSchedule(keras.optimizers.schedules.LearningRateSchedule):
  """`schedule(step + offset)`: a schedule replayed from step `offset` by a
  fresh optimizer (whose own step count, used by Adam's bias correction,
  starts at 0)."""

  def __init__(self, schedule, offset):
    self.schedule = schedule
    self.offset = offset

  def __call__(self, step):
    return self.schedule(step + self.offset)

  def get_config(self):
    return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
            "offset": self.offset}

  @classmethod
  def from_config(cls, config):
    return cls(keras.optimizers.schedules.deserialize(config["schedule"]),
               config["offset"])


def learning_rate(config, steps_per_epoch, start_step=0):
  """The config's learning rate: a float, or its schedule from `start_step`."""
  if config.lr_schedule == "constant":
    return config.learning_rate
  schedule = keras.optimizers.schedules.CosineDecay(
      config.learning_rate, steps_per_epoch * config.epochs)
  return OffsetSchedule(schedule, start_step) if start_step else schedule


def compile_model(model, lr, config=None):
  """Compiles with the project's optimizer (Adam at `lr`) and the loss and
  metrics of `config` (None: the defaults, classification)."""
  config = config if config is not None else base_config.base()
  model.compile(
      optimizer=keras.optimizers.Adam(lr),
      loss=objectives.keras_loss(config.loss), metrics=list(config.metrics))
  return model


def build_model(config, input_shape, num_classes, steps_per_epoch):
  """The config's model, compressed unless `method == "dense"`, compiled."""
  # Fresh layer-name counters: the layers are named as in a new process
  # (conv2d, dense, dense_1, ...), which compressor_per_layer refers to.
  # Not inside a strategy's scope, which clear_session() would drop:
  # train_and_evaluate clears the session before entering it.
  if not tf.distribute.has_strategy():
    keras.backend.clear_session()
  keras.utils.set_random_seed(config.seed)
  try:
    model = models.get(config.model, input_shape, num_classes,
                       **dict(config.model_kwargs))
  except TypeError as e:  # a model_kwargs field the builder does not take
    raise ConfigError(f"Bad config value: model_kwargs="
                      f"{dict(config.model_kwargs)}: {e}.") from e
  if config.method == "selfcompress":
    per_layer = dict(config.compressor_per_layer)
    unknown = sorted(set(per_layer) - {l.name for l in model.layers})
    if unknown:
      raise ConfigError(
          f"Bad config value: compressor_per_layer names {unknown}, which "
          f"are not layers of {config.model!r}: "
          f"{[l.name for l in model.layers if l.weights]}.")
    per_layer = {name: None if method == "none" else compressor(config, method)
                 for name, method in per_layer.items()}
    try:
      model = sc.compress(
          model, compressor=compressor(config, config.compressor),
          per_layer=per_layer, gamma=config.gamma, target_kb=config.target_kb,
          target_rate=config.target_rate or sc.model.target_rate_for(
              steps_per_epoch * config.epochs),
          min_channels=config.min_channels)
    except ValueError as e:  # compress() names the argument (config field)
      raise ConfigError(f"The config cannot compress {config.model!r}: {e}"
                        ) from e
  return compile_model(model, learning_rate(config, steps_per_epoch), config)


def compressor(config, method):
  """The `ChannelCompressor` named `method`, with the config's settings."""
  bits = dict(bits_init=config.bits_init, lr_multiplier=config.lr_multiplier,
              storage=config.storage)
  # The gate noise is seeded from Keras' global seed (set from config.seed),
  # a different stream per layer.
  gates = dict(log_alpha_init=config.log_alpha_init,
               gate_lr_multiplier=config.gate_lr_multiplier)
  kwargs = {"bits": bits, "gates": gates, "gates+bits": {**bits, **gates},
            "sparse_bits": bits}
  if method.startswith("inputs+"):
    inner = method[len("inputs+"):]
    return sc.compressors.get(method, **kwargs[inner],
                              input_log_alpha_init=config.log_alpha_init,
                              input_gate_lr_multiplier=(
                                  config.gate_lr_multiplier))
  return COMPRESSORS[method](**kwargs[method])


def train_and_evaluate(config, workdir, *, extend_epochs=False):
  """Trains and evaluates `config` in `workdir`; returns the results dict.

  The workdir is bound to its config and locked while this runs (see
  `selfcompress.workdir`): a workdir holding a run of another config raises
  `WorkdirError` listing the differences, and so does a workdir in use by
  another process. Bad config values, data and workdirs raise a `UserError`
  before anything in the workdir is written. `extend_epochs=True` lets a
  (finished) run with a constant learning rate continue to a larger
  `epochs`.
  """
  validate(config)
  workdirs.check(workdir, config, extend_epochs=extend_epochs)
  strategy = distribute.make(config)
  distribute.log_strategy(strategy)
  # Under multi_worker every worker trains, and the chief writes the files.
  chief = distribute.is_chief(strategy)
  if not chief:
    return _run(config, workdir, strategy, chief, extend_epochs)
  created = not os.path.exists(workdir)
  lock = workdirs.Lock(workdir).acquire()
  try:
    # Again, now that no other process can write the record.
    workdirs.check(workdir, config, extend_epochs=extend_epochs)
    return _run(config, workdir, strategy, chief, extend_epochs)
  except BaseException:
    if created and os.listdir(workdir) == [workdirs.LOCK]:
      # Nothing was recorded: leave no empty workdir behind.
      lock.release()
      os.remove(lock.path)
      os.rmdir(workdir)
    raise
  finally:
    lock.release()


def _run(config, workdir, strategy, chief, extend_epochs):
  results_path = os.path.join(workdir, "results.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    if results.get("epochs") == config.epochs:
      print(f"{workdir} holds this run, finished; not training again.")
      _print_report(workdir, results, objectives.reported(config.metrics))
      return results
  keras.backend.clear_session()  # see build_model
  with strategy.scope():
    restored = checkpoint.restore(ckpt_dir)
  start_epoch, history = (restored[1], restored[2]) if restored else (0, [])
  ds = data.from_config(config, first_epoch=start_epoch)
  if restored:
    model = restored[0]
    print(f"Resuming {workdir} from epoch {start_epoch} of {config.epochs}.")
  else:
    with strategy.scope():
      model = build_model(config, ds.input_shape, ds.num_classes,
                          ds.steps_per_epoch)
  # The config, data and model are known good: from here on the workdir
  # records this run.
  if chief:
    workdirs.record(workdir, config)
  budget = None  # WithinBudget, when the model has a target_kb
  if start_epoch < config.epochs:
    fit_verbose, print_fn = verbosity(config)
    callbacks = [cb.EpochLog(history, workdir if chief else None,
                             config.epochs, print_fn=print_fn)]
    if chief:
      callbacks += [
          cb.TensorBoard(os.path.join(workdir, "tensorboard")),
          checkpoint.Checkpoint(ckpt_dir, history, config.epochs,
                                config.checkpoint_every_epochs),
      ]
    if getattr(model, "target_kb", None) is not None:
      # Its kept weights go to the checkpoints: a resumed run can land
      # on an epoch from before the resume.
      budget = cb.WithinBudget(directory=ckpt_dir if chief else None)
      callbacks.insert(0, budget)
    if chief and config.method == "selfcompress":
      callbacks.append(cb.LayerHistograms(
          os.path.join(workdir, "tensorboard", "layers")))
    fit_kwargs = dict(
        validation_data=ds.validation, shuffle=False, verbose=fit_verbose,
        steps_per_epoch=ds.steps_per_epoch)
    if config.shed_every_epochs:
      model, _ = shed_training.fit_and_shed(
          model, ds.train_from, epochs=config.epochs,
          shed_every_epochs=config.shed_every_epochs,
          min_reduction=config.shed_min_reduction, initial_epoch=start_epoch,
          callbacks=callbacks, **fit_kwargs)
    else:
      distribute.fit(model, ds.train, epochs=config.epochs,
                     initial_epoch=start_epoch, callbacks=callbacks,
                     **fit_kwargs)

  # The epoch whose weights the model ends with: the last, unless the run
  # ended over its budget and `WithinBudget` restored an earlier one.
  kept = history[-1] if history else None
  if budget is not None and budget.restored_epoch:
    kept = next(r for r in history if r["epoch"] == budget.restored_epoch)
  test = distribute.evaluate(model, ds.test)
  report = sc.size(model)
  metric = objectives.reported(config.metrics)  # classification: accuracy
  results = {
      **{f"test_{m}": test[m] for m in config.metrics},
      "test_loss": test["loss"],
      "size_kb": report.kb, "float_kb": report.float_kb,
      "compression_ratio": report.compression_ratio,
      "bits_per_weight": report.bits_per_weight,
      "weights_alive": report.weights_alive,
      "weights_total": report.weights_total,
      "channels_alive": {l.name: f"{l.channels_alive}/{l.channels_total}"
                         for l in report.layers if l.weights_total},
      "epochs": config.epochs, "seed": config.seed, "method": config.method,
      "compressor": config.compressor,
      "gamma": config.gamma, "target_kb": config.target_kb,
      "train_seconds": sum(r["seconds"] for r in history),
      "final_epoch": kept["epoch"] if kept else None,
      f"val_{metric}": kept.get(f"val_{metric}") if kept else None,
      # Equal on every worker of a run, and between reruns of a seed.
      "weights_sha256": _digest(model),
  }
  if not chief:
    tested = objectives.describe(metric, results[f"test_{metric}"])
    print(f"{distribute.task_name(strategy)}: done (test {tested}, weights "
          f"{results['weights_sha256'][:12]}); the chief writes {workdir}.")
    return results
  checkpoint.write_json(os.path.join(workdir, "size.json"), report.as_dict())
  lines = []
  sc.summary(report, print_fn=lines.append)
  checkpoint.write_text(os.path.join(workdir, "size.txt"), "\n".join(lines) + "\n")
  checkpoint.atomic_write(os.path.join(workdir, "model.keras"), model.save)
  plots.training_curve(history, os.path.join(workdir, "training.png"),
                       title=f"{config.model} on {config.dataset}")
  checkpoint.write_json(results_path, results)
  _print_report(workdir, results, metric)
  return results


def verbosity(config):
  """`(fit_verbose, print_fn)` for `config.verbose`: 1 prints one line per
  epoch (`EpochLog`), 2 shows Keras' progress bar instead, 0 neither."""
  return (1 if config.verbose == 2 else 0,
          print if config.verbose == 1 else None)


def _print_report(workdir, results, metric="accuracy"):
  """The end-of-run report: the size summary's total and the reported
  metric (`config.metrics[0]`)."""
  path = os.path.join(workdir, "size.txt")
  if os.path.exists(path):
    with open(path) as f:
      lines = f.read().splitlines()
    if lines:
      print(lines[-1])
  print(f"Test {objectives.describe(metric, results[f'test_{metric}'])} at "
        f"{results['size_kb']:.3f} KB; results in {workdir}")


def _digest(model):
  h = hashlib.sha256()
  for w in model.weights:
    h.update(np.asarray(w).tobytes())
  return h.hexdigest()


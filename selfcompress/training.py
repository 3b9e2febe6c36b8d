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
from absl import logging

import selfcompress as sc
from selfcompress import callbacks as cb
from selfcompress import (checkpoint, data, distribute, models, plots,
                          shed_training)

METHODS = ("selfcompress", "dense")
# config.compressor -> the ChannelCompressor class; "none" (per layer only)
# leaves a layer uncompressed.
COMPRESSORS = {
    "bits": sc.compressors.BitDepth,
    "gates": sc.compressors.HardConcreteGate,
    "gates+bits": sc.compressors.GatedBitDepth,
}


def validate(config):
  """Raises ValueError naming any bad config value and how to fix it."""
  def bad(field, why):
    raise ValueError(f"Bad config value: {field}={config.get(field)!r}: {why}.")
  if config.method not in METHODS:
    bad("method", f"must be one of {METHODS}")
  if config.dataset not in data.DATASETS:
    bad("dataset", f"must be one of {data.DATASETS}")
  if config.model not in models.MODELS:
    bad("model", f"must be one of {sorted(models.MODELS)}")
  for field in ("epochs", "batch_size"):
    if not isinstance(config[field], int) or config[field] < 1:
      bad(field, "must be a positive integer")
  for field in ("learning_rate", "lr_multiplier", "bits_init",
                "gate_lr_multiplier"):
    if not config[field] > 0:
      bad(field, "must be > 0")
  if not math.isfinite(config.log_alpha_init):
    bad("log_alpha_init", "must be a finite number (3.0: gates start open)")
  if config.compressor not in COMPRESSORS:
    bad("compressor", f"must be one of {sorted(COMPRESSORS)}")
  for name, method in config.compressor_per_layer.items():
    if method not in COMPRESSORS and method != "none":
      raise ValueError(
          f"Bad config value: compressor_per_layer.{name}={method!r}: must "
          f"be one of {sorted(COMPRESSORS) + ['none']}.")
  if not config.gamma >= 0:
    bad("gamma", "must be >= 0 (0 trains without a size penalty)")
  if config.target_kb is not None and not config.target_kb > 0:
    bad("target_kb", "must be > 0 KB, or None for a fixed gamma")
  if config.lr_schedule not in ("constant", "cosine"):
    bad("lr_schedule", "must be 'constant' or 'cosine'")
  if config.min_channels < 0:
    bad("min_channels", "must be >= 0")
  if config.shed_every_epochs < 0:
    bad("shed_every_epochs", "must be >= 0 (0: never shed)")
  if not 0 <= config.shed_min_reduction < 1:
    bad("shed_min_reduction", "must be in [0, 1)")
  if config.strategy not in distribute.STRATEGIES:
    bad("strategy", f"must be one of {distribute.STRATEGIES}")
  if not isinstance(config.cpu_devices, int) or config.cpu_devices < 0:
    bad("cpu_devices", "must be an integer >= 0 (0: the CPU as one device)")
  if config.shed_every_epochs and config.method != "selfcompress":
    bad("shed_every_epochs", "needs method='selfcompress' (a dense model "
        "has no dead channels)")


def _check_resumable(config, workdir):
  """A cosine schedule is fixed by the run's length: resuming with another
  `epochs` would continue the old schedule (already at 0) and not learn."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    before = json.load(f)
  if (before.get("lr_schedule") == "cosine" and config.lr_schedule == "cosine"
      and before.get("epochs") != config.epochs):
    raise ValueError(
        f"{workdir} holds a run started with epochs={before.get('epochs')} "
        "and a cosine learning-rate schedule that decays to 0 at its end; "
        f"resuming it with epochs={config.epochs} would train at the old "
        "schedule's rate. Resume with the same epochs, or start a new "
        "--workdir.")


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


def compile_model(model, lr):
  """Compiles with the project's optimizer (Adam at `lr`), loss and metric."""
  model.compile(
      optimizer=keras.optimizers.Adam(lr),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
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
  model = models.get(config.model, input_shape, num_classes,
                     **dict(config.model_kwargs))
  if config.method == "selfcompress":
    per_layer = dict(config.compressor_per_layer)
    unknown = sorted(set(per_layer) - {l.name for l in model.layers})
    if unknown:
      raise ValueError(
          f"Bad config value: compressor_per_layer names {unknown}, which "
          f"are not layers of {config.model!r}: "
          f"{[l.name for l in model.layers if l.weights]}.")
    per_layer = {name: None if method == "none" else compressor(config, method)
                 for name, method in per_layer.items()}
    model = sc.compress(
        model, compressor=compressor(config, config.compressor),
        per_layer=per_layer, gamma=config.gamma, target_kb=config.target_kb,
        target_rate=config.target_rate, min_channels=config.min_channels)
  return compile_model(model, learning_rate(config, steps_per_epoch))


def compressor(config, method):
  """The `ChannelCompressor` named `method`, with the config's settings."""
  bits = dict(bits_init=config.bits_init, lr_multiplier=config.lr_multiplier)
  # The gate noise is seeded from Keras' global seed (set from config.seed),
  # a different stream per layer.
  gates = dict(log_alpha_init=config.log_alpha_init,
               gate_lr_multiplier=config.gate_lr_multiplier)
  kwargs = {"bits": bits, "gates": gates, "gates+bits": {**bits, **gates}}
  return COMPRESSORS[method](**kwargs[method])


def train_and_evaluate(config, workdir):
  """Trains and evaluates `config` in `workdir`; returns the results dict."""
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  results_path = os.path.join(workdir, "results.json")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  _check_resumable(config, workdir)
  checkpoint.write_text(os.path.join(workdir, "config.json"),
                        config.to_json_best_effort(indent=2))

  if os.path.exists(results_path):
    with open(results_path) as f:
      results = json.load(f)
    if results.get("epochs") == config.epochs:
      logging.info("%s already finished; not training again.", workdir)
      return results
  strategy = distribute.make(config)
  distribute.log_strategy(strategy)
  keras.backend.clear_session()  # see build_model
  # Under multi_worker every worker trains, and the chief writes the files.
  chief = distribute.is_chief(strategy)
  with strategy.scope():
    restored = checkpoint.restore(ckpt_dir)
  start_epoch, history = (restored[1], restored[2]) if restored else (0, [])
  ds = data.load(
      config.dataset, config.data_dir, batch_size=config.batch_size,
      num_validation=config.num_validation, seed=config.seed,
      download=config.download, verify_checksums=config.verify_checksums,
      first_epoch=start_epoch,
      max_train_examples=config.max_train_examples or None)
  if restored:
    model = restored[0]
    logging.info("Resuming %s from epoch %d of %d.", workdir, start_epoch,
                 config.epochs)
  else:
    with strategy.scope():
      model = build_model(config, ds.input_shape, ds.num_classes,
                          math.ceil(ds.num_train / config.batch_size))
  if start_epoch < config.epochs:
    callbacks = [cb.EpochLog(history, workdir if chief else None,
                             config.epochs)]
    if chief:
      callbacks += [
          keras.callbacks.TensorBoard(os.path.join(workdir, "tensorboard")),
          checkpoint.Checkpoint(ckpt_dir, history, config.epochs,
                                config.checkpoint_every_epochs),
      ]
    if chief and config.method == "selfcompress":
      callbacks.append(cb.LayerHistograms(
          os.path.join(workdir, "tensorboard", "layers")))
    fit_kwargs = dict(
        validation_data=ds.validation, shuffle=False, verbose=config.verbose,
        steps_per_epoch=math.ceil(ds.num_train / config.batch_size))
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

  test = distribute.evaluate(model, ds.test)
  report = sc.size(model)
  results = {
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
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
      "val_accuracy": history[-1].get("val_accuracy") if history else None,
      # Equal on every worker of a run, and between reruns of a seed.
      "weights_sha256": _digest(model),
  }
  if not chief:
    print(f"{distribute.task_name(strategy)}: done (test accuracy "
          f"{100 * results['test_accuracy']:.2f}%, weights "
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
  print(lines[-1] if lines else "")
  print(f"Test accuracy {100 * results['test_accuracy']:.2f}% at "
        f"{results['size_kb']:.3f} KB; results in {workdir}")
  return results


def _digest(model):
  h = hashlib.sha256()
  for w in model.weights:
    h.update(np.asarray(w).tobytes())
  return h.hexdigest()


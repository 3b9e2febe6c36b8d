"""Training under `tf.distribute`: one device, mirrored, multi-worker, TPU.

`make(config)` builds the strategy a config names. The model, its optimizer
and every compression variable are then created under `strategy.scope()`,
and training goes through the model's own `fit()`:

* `default`, `one_device`, `mirrored` and `tpu` run Keras' `fit`.
* `multi_worker` (`MultiWorkerMirroredStrategy`, which Keras 3's `fit` cannot
  drive: it fails converting a `PerReplica` batch) runs `fit_loop`, a loop on
  `strategy.run` over the model's own `train_step` and `test_step`. It is
  not a second copy of training: the loss, the size penalty, the metrics and
  the callbacks (checkpoints, logs, shedding) are the ones `fit` uses.
  `SelfCompressingModel.fit` switches to it by itself, so plain
  `model.fit()` works under every strategy.

The size penalty is added once per global step: each replica adds
`penalty / num_replicas` and the replicas' gradients are summed, as Keras
does for compiled losses.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

from selfcompress.errors import ConfigError

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")


def make(config):
  """The `tf.distribute.Strategy` that `config.strategy` names.

  Fields read: `strategy`, `tpu_address` (for `tpu`: a name or
  `grpc://host:port`; empty means the TPU of this VM) and `cpu_devices`
  (split the host CPU into this many logical devices, so `mirrored` can be
  tried, and tested, on a machine without accelerators; 0 leaves it whole).
  """
  name = config.strategy
  if name not in STRATEGIES:
    raise ConfigError(f"Bad config value: strategy={name!r}: must be one of "
                     f"{STRATEGIES}.")
  if config.cpu_devices:
    split_cpu(config.cpu_devices)
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "one_device":
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
  if name == "mirrored":
    devices = (tf.config.list_logical_devices("GPU")
               or tf.config.list_logical_devices("CPU"))
    return tf.distribute.MirroredStrategy([d.name for d in devices])
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ConfigError(
          "strategy='multi_worker' reads the cluster from the TF_CONFIG "
          "environment variable, which is not set. Set it on every worker "
          "(README, 'Scaling out'), or use strategy='mirrored' for the "
          "devices of one machine.")
    return tf.distribute.MultiWorkerMirroredStrategy()
  return _tpu(config.tpu_address)


def _tpu(address):
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
        tpu=address or None)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise ConfigError(
        f"strategy='tpu' could not reach a TPU at tpu_address="
        f"{address!r}: {e}. Run on a TPU VM (leave tpu_address empty), or "
        "give the TPU's name or grpc://host:port.") from e
  return tf.distribute.TPUStrategy(resolver)


def split_cpu(n):
  """Makes the host CPU `n` logical devices (before TensorFlow starts)."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  except RuntimeError as e:  # the runtime has started already
    have = len(tf.config.list_logical_devices("CPU"))
    if have != n:
      raise ConfigError(
          f"cpu_devices={n}: TensorFlow has already started with {have} "
          "logical CPU device(s), and they cannot be changed now. Set "
          "cpu_devices before anything else runs TensorFlow (a fresh "
          "process).") from e


def is_chief(strategy=None):
  """Whether this process writes the run's files (checkpoints, logs).

  Under `multi_worker` that is the chief, or worker 0 when the cluster has
  no chief; every other strategy runs in one process, which writes.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  resolver = strategy.cluster_resolver
  if resolver.task_type in (None, "chief"):
    return True
  return (resolver.task_type == "worker" and resolver.task_id == 0
          and "chief" not in resolver.cluster_spec().as_dict())


def task_name(strategy=None):
  """`worker-1`, ... under `multi_worker`; None elsewhere."""
  strategy = strategy or tf.distribute.get_strategy()
  if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return None
  resolver = strategy.cluster_resolver
  return f"{resolver.task_type}-{resolver.task_id}"


def needs_loop(model):
  """Whether `model.fit` must run `fit_loop` instead of Keras' loop."""
  return isinstance(model.distribute_strategy,
                    tf.distribute.MultiWorkerMirroredStrategy)


# -- the strategy.run loop -------------------------------------------------

_SUPPORTED = {"x", "epochs", "initial_epoch", "steps_per_epoch", "callbacks",
              "validation_data", "validation_steps", "verbose", "shuffle",
              "y", "batch_size"}


def fit_loop(model, x, *, epochs=1, initial_epoch=0, steps_per_epoch=None,
             callbacks=None, validation_data=None, validation_steps=None,
             verbose="auto", **others):
  """`model.fit` for strategies Keras' own loop cannot drive.

  Each step is `strategy.run(model.train_step)`, so the model's loss, size
  penalty and metrics are exactly those of `fit`; callbacks get the same
  calls (`on_epoch_end` with `val_` logs, `stop_training`), and the logs are
  averaged over the replicas. `x` (and `validation_data`) must be a
  `tf.data.Dataset` of `(inputs, targets)` batches of the global batch size;
  each worker reads its share of every batch.

  Returns a `keras.callbacks.History`, as `fit` does.
  """
  unsupported = {k: v for k, v in others.items()
                 if k not in _SUPPORTED and v not in (None, 0.0, False)}
  if unsupported or others.get("y") is not None:
    raise ValueError(
        f"Under {type(model.distribute_strategy).__name__}, fit() takes "
        "x (a tf.data.Dataset), epochs, initial_epoch, steps_per_epoch, "
        "callbacks, validation_data and verbose; not "
        f"{sorted(unsupported) or ['y']}.")
  strategy = model.distribute_strategy
  train = _distribute(strategy, x, "x")
  steps = steps_per_epoch or _cardinality(x, "x")
  _build(model, strategy, x)
  train_step = _replicated(model, strategy, "train_step")
  verbose = 1 if verbose == "auto" else verbose
  callbacks = keras.callbacks.CallbackList(
      callbacks, add_history=True, add_progbar=bool(verbose) and is_chief(),
      verbose=verbose, epochs=epochs, steps=steps, model=model)
  model.stop_training = False
  callbacks.on_train_begin()
  iterator = iter(train)
  logs = {}
  for epoch in range(initial_epoch, epochs):
    model.reset_metrics()
    callbacks.on_epoch_begin(epoch)
    if steps_per_epoch is None:  # one pass over a finite dataset
      iterator = iter(train)
    for step in range(steps):
      callbacks.on_train_batch_begin(step)
      logs = _numpy(train_step(iterator))
      callbacks.on_train_batch_end(step, logs)
      if model.stop_training:
        break
    epoch_logs = dict(logs)
    if validation_data is not None:
      val = evaluate_loop(model, validation_data, steps=validation_steps)
      epoch_logs.update({"val_" + k: v for k, v in val.items()})
    callbacks.on_epoch_end(epoch, epoch_logs)
    logs = epoch_logs
    if model.stop_training:
      break
  callbacks.on_train_end(logs)
  return model.history


def evaluate_loop(model, data, steps=None):
  """`model.evaluate(data, return_dict=True)` on `strategy.run`."""
  strategy = model.distribute_strategy
  dist = _distribute(strategy, data, "validation_data")
  _build(model, strategy, data)
  test_step = _replicated(model, strategy, "test_step")
  model.reset_metrics()
  iterator = iter(dist)
  logs = {}
  for _ in range(steps or _cardinality(data, "validation_data")):
    logs = test_step(iterator)
  logs = _numpy(logs)
  model.reset_metrics()
  return logs


def evaluate(model, data):
  """`model.evaluate(data, return_dict=True)` under any strategy."""
  if needs_loop(model):
    return evaluate_loop(model, data)
  return model.evaluate(data, return_dict=True, verbose=0)


def _distribute(strategy, data, name):
  if not isinstance(data, tf.data.Dataset):
    raise ValueError(
        f"Under {type(strategy).__name__}, `{name}` must be a "
        f"tf.data.Dataset of global batches; got {type(data).__name__}.")
  options = tf.data.Options()
  # Each worker keeps its share of every global batch: the same steps as one
  # device, whatever files the data came from.
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return strategy.experimental_distribute_dataset(data.with_options(options))


def _cardinality(data, name):
  n = int(data.cardinality())
  if n < 0:
    raise ValueError(
        f"`{name}` has no known length (infinite, or filtered): pass "
        "steps_per_epoch (validation_steps) with it.")
  return n


def _build(model, strategy, data):
  """Creates the optimizer's and metrics' variables under the strategy, from
  one local batch, before the step is traced in a replica context."""
  if model.built and model.optimizer is not None and model.optimizer.built:
    return
  with strategy.scope():
    model._symbolic_build(data_batch=next(iter(data)))


def _replicated(model, strategy, step_name):
  """A traced function: one global step of `model.<step_name>` on every
  replica, its logs averaged over the replicas. Cached on the model."""
  cache = model.__dict__.setdefault("_selfcompress_replicated", {})
  key = (step_name, id(strategy))
  if key not in cache:
    step = getattr(model, step_name)

    def run(iterator):
      outputs = strategy.run(step, args=(next(iterator),))
      return {k: strategy.reduce("MEAN", v, axis=None)
              for k, v in outputs.items()}

    cache[key] = tf.function(run)
  return cache[key]


def _numpy(logs):
  return {k: float(np.asarray(v)) for k, v in logs.items()}


def tf_config_for(ports, index):
  """The TF_CONFIG of worker `index` of a cluster on 127.0.0.1 (for tests
  and the README's example)."""
  return json.dumps({
      "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
      "task": {"type": "worker", "index": index}})


def log_strategy(strategy):
  """Prints the strategy in one line, unless it is the default one."""
  if not tf.distribute.has_strategy() and strategy is tf.distribute.get_strategy():
    return  # the default: one device, nothing to say
  task = task_name(strategy)
  print(f"Training under {type(strategy).__name__} with "
        f"{strategy.num_replicas_in_sync} replica(s)"
        + (f", this process {task}." if task else "."), flush=True)


def fit(model, *args, **kwargs):
  """`model.fit`, or `fit_loop` for a plain Keras model under a strategy
  whose Keras loop fails (a `SelfCompressingModel` switches by itself)."""
  if needs_loop(model) and type(model).fit is keras.Model.fit:
    return fit_loop(model, *args, **kwargs)
  return model.fit(*args, **kwargs)

"""What a run optimises and reports: `config.loss` and `config.metrics`.

Classification (the default) trains on integer class labels with
``sparse_categorical_crossentropy`` on the model's logits and reports
``accuracy``. Regression (``mse``, ``mae`` or ``huber``) trains on real-valued
targets, one output per target. `config.metrics` are Keras metric names; the
first is the one a run reports (``test_<metric>`` and ``val_<metric>`` in
``results.json``, the end-of-run line).
"""

from selfcompress.errors import ConfigError

CLASSIFICATION_LOSSES = ("sparse_categorical_crossentropy",)
REGRESSION_LOSSES = ("mse", "mae", "huber")
LOSSES = CLASSIFICATION_LOSSES + REGRESSION_LOSSES
# Metrics that count correct classes: meaningless on real-valued targets.
_CLASS_METRICS = ("accuracy", "acc", "sparse_categorical_accuracy",
                  "sparse_top_k_categorical_accuracy")


def is_regression(loss):
  """Whether `loss` (a `config.loss` name) trains on real-valued targets."""
  return loss in REGRESSION_LOSSES


def validate(loss, metrics):
  """Raises `ConfigError` for a loss or metric that Keras does not know, or
  that does not fit the task."""
  if loss not in LOSSES:
    raise ConfigError(
        f"Bad config value: loss={loss!r}: must be one of {LOSSES} "
        "(sparse_categorical_crossentropy: integer class labels; mse, mae, "
        "huber: real-valued targets).")
  if (isinstance(metrics, str) or not metrics
      or not all(isinstance(m, str) for m in metrics)):
    raise ConfigError(
        f"Bad config value: metrics={metrics!r}: give a tuple of Keras metric "
        "names, the first reported, e.g. ('accuracy',) or ('mae', 'mse').")
  known = _metric_names()
  for name in metrics:
    if name not in known:
      raise ConfigError(
          f"Bad config value: metrics={tuple(metrics)!r}: Keras does not "
          f"know the metric {name!r}; use a name from keras.metrics, "
          "e.g. 'accuracy', 'mae', 'mse', 'root_mean_squared_error'.")
    if is_regression(loss) and name in _CLASS_METRICS:
      raise ConfigError(
          f"Bad config value: metrics={tuple(metrics)!r}: {name!r} counts "
          f"correct classes, which real-valued targets (loss={loss!r}) do not "
          "have; use e.g. metrics=('mae',).")


def _metric_names():
  """The names `keras.metrics.get` resolves. Read from Keras' table, not by
  calling `get()`: that builds the metric, whose variables start
  TensorFlow's runtime, after which `cpu_devices` and multi-worker
  collectives can no longer be configured (validation runs first). The one
  private Keras name this module uses."""
  from keras.src.metrics import ALL_OBJECTS_DICT
  return set(ALL_OBJECTS_DICT)


def keras_loss(loss):
  """The Keras loss object for the `config.loss` name `loss`."""
  import keras
  return {
      "sparse_categorical_crossentropy":
          lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      "mse": keras.losses.MeanSquaredError,
      "mae": keras.losses.MeanAbsoluteError,
      "huber": keras.losses.Huber,
  }[loss]()


def reported(metrics):
  """The metric a run reports: the first of `config.metrics`."""
  return next(iter(metrics))


def describe(name, value):
  """`"accuracy 97.52%"` for an accuracy, `"mae 0.1234"` for anything else."""
  if value is None:
    return f"{name} n/a"
  if "accuracy" in name or name == "acc":
    return f"{name} {100 * value:.2f}%"
  return f"{name} {value:.4g}"

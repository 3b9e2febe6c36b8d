"""`SelfCompressingModel`: a Functional model whose loss includes its size."""

import inspect
import math

import keras
import tensorflow as tf
from keras import ops

from selfcompress import accounting as size_lib
from selfcompress.graph import ChannelGraph

_OPTIONS = ("gamma", "target_kb", "target_rate", "size_reference")
# The range `size_gamma` is held to while it adapts to `target_kb`.
GAMMA_RANGE = (1e-8, 1e4)


def target_rate_for(steps):
  """The `target_rate` with which `size_gamma` can cross its whole range
  (`GAMMA_RANGE`) once in `steps` training steps: a budget is reached in a
  short run as in a long one (0.0021 for 30 epochs of 430 steps)."""
  low, high = GAMMA_RANGE
  return math.log(high / low) / max(int(steps), 1)


@keras.saving.register_keras_serializable(package="selfcompress")
class SelfCompressingModel(keras.Model):
  """A Functional model trained with `loss + gamma * Q`.

  `Q` is the differentiable size of the network in bits per weight (see
  `selfcompress.accounting`). Plain `compile()` and `fit()` apply it: no custom loop
  and no callback is needed. Every step logs `size_kb`, `bits_per_weight`
  (of the alive weights), `compression_ratio` (against float32) and
  `alive_channels`. Build one with `selfcompress.compress(model)` or directly
  as `SelfCompressingModel(inputs, outputs, gamma=...)` over
  `selfcompress.layers`.

  Args:
    gamma: weight of the size term. With `target_kb` it is the starting value
      and is then adapted.
    target_kb: a size budget in KB (1000 bytes). When set, the size term
      acts only while the model is over budget, and `gamma` is multiplied
      every training step by `exp(target_rate * clip(log(size / target_kb),
      -1, 1))`: it grows while the model is too large and relaxes once it
      fits, so training lands on the budget instead of overshooting it.
    target_rate: step of that adaptation, in log-gamma per training step.
      The default suits about 14,000 steps; for a run of `n` steps,
      `target_rate_for(n)` lets gamma cover its range in time (in a short run
      the default cannot raise gamma fast enough to reach the budget).
  """

  def __init__(self, *args, gamma=0.05, target_kb=None, target_rate=0.002,
               size_reference=None, **kwargs):
    super().__init__(*args, **kwargs)
    if not gamma >= 0:
      raise ValueError(f"`gamma` must be >= 0. Received: gamma={gamma}")
    if target_kb is not None and not target_kb > 0:
      raise ValueError(f"`target_kb` must be > 0. Received: target_kb={target_kb}")
    if not target_rate > 0:
      raise ValueError(f"`target_rate` must be > 0. Received: {target_rate}")
    self.gamma = float(gamma)
    self.target_kb = None if target_kb is None else float(target_kb)
    self.target_rate = float(target_rate)
    self.size_gamma = self.add_weight(
        name="size_gamma", shape=(), trainable=False, autocast=False,
        initializer=keras.initializers.Constant(self.gamma),
        aggregation="only_first_replica")
    terms = size_lib.account(self)
    size_lib.size_penalty(terms)  # fails early if nothing is compressible
    # The network as first compressed: shedding shrinks the layers, but the
    # penalty's normaliser and the float32 reference must not move.
    self.size_reference = dict(size_reference or size_lib.reference(terms))
    if self.target_kb is not None:
      floor_kb = size_lib.minimum_bits(self) / 8000
      if self.target_kb < floor_kb:
        raise ValueError(
            f"target_kb={self.target_kb} cannot be reached: with every layer "
            f"down to its min_channels at 1 bit, this model still takes "
            f"{floor_kb:.3f} KB (float32 layers and per-channel storage "
            "included). Raise target_kb, lower min_channels, or compress "
            "more of the layers.")
    graph = ChannelGraph.of(self)
    if graph.unknown:
      names = sorted({l.name for l in graph.unknown})
      keras.src.utils.io_utils.print_msg(
          f"selfcompress: {names} are kept whole: the channel graph does "
          "not follow channels through them, so their inputs and outputs "
          "stay alive.")

  # -- the size term --------------------------------------------------------

  def size_terms(self):
    """`(totals, penalty_bits)` as tensors: the model totals of
    `selfcompress.accounting.totals()` (but `float_bits`) and the sum of the
    compressed layers' penalty bits, by `accounting.step_totals()`."""
    totals, penalty_bits = size_lib.step_totals(self)
    if not tf.executing_eagerly():
      # compute_metrics runs in the same traced step: let it reuse these
      # instead of tracing the accounting a second time.
      object.__setattr__(self, "_traced_totals",
                         (tf.compat.v1.get_default_graph(), totals))
    return totals, penalty_bits

  def _totals(self):
    cached = getattr(self, "_traced_totals", None)
    if (cached is not None and not tf.executing_eagerly()
        and cached[0] is tf.compat.v1.get_default_graph()):
      return cached[1]
    return self.size_terms()[0]

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None,
                   training=True):
    loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
    totals, penalty_bits = self.size_terms()
    gamma = ops.convert_to_tensor(self.size_gamma)
    penalty = gamma * (penalty_bits / self.size_reference["weights"])
    if self.target_kb is not None:
      # Push only while over budget: below it, channels that died cannot come
      # back, so a penalty that kept pushing would overshoot the budget.
      ratio = totals["bits"] / (8000.0 * self.target_kb)
      penalty = penalty * ops.cast(ops.greater(ratio, 1.0), penalty.dtype)
      if training:
        step = self.target_rate * ops.clip(ops.log(ratio), -1.0, 1.0)
        self.size_gamma.assign(ops.clip(gamma * ops.exp(step), *GAMMA_RANGE))
    # Under tf.distribute each replica's loss is summed: count the penalty
    # once per global step, as Keras does for compiled losses.
    return loss + penalty / num_replicas()

  def compute_metrics(self, x, y, y_pred, sample_weight=None):
    logs = super().compute_metrics(x, y, y_pred, sample_weight)
    logs = dict(logs)
    logs.update(self.size_logs())
    return logs

  def size_logs(self, exact=False):
    """Size metrics as tensors. Inside a train step they are those of the
    weights the step trained with; `exact=True` recomputes them now."""
    t = self.size_terms()[0] if exact else self._totals()
    bits = t["bits"]
    logs = {
        "size_kb": bits / 8000.0,
        "bits_per_weight": t["weight_bits"] / ops.maximum(t["weights_alive"], 1.0),
        "compression_ratio": (self.size_reference["float_bits"]
                              / ops.maximum(bits, 1.0)),
        "alive_channels": t["alive_channels"],
    }
    if self.target_kb is not None:
      logs["size_gamma"] = ops.convert_to_tensor(self.size_gamma)
    return logs

  # -- training -------------------------------------------------------------

  def compile(self, *args, jit_compile="auto", **kwargs):
    """`keras.Model.compile`; `jit_compile="auto"` means XLA whenever every
    layer supports it, on CPU too (Keras' own "auto" skips XLA on CPU),
    except for convolutional networks on a CPU. The quantizer is a chain of
    elementwise ops that XLA fuses into one pass; without it a small dense
    network's step is dominated by them. But XLA's CPU convolutions are about
    twice as slow as TensorFlow's oneDNN ones (LeNet-5: BENCHMARKS.md), which
    outweighs the fusion.

    On a CPU, "auto" compiles only training with XLA: evaluation would
    compile its step anew at each model build (each `shed()`) and for each
    new batch shape, about 3 s each for LeNet-300-100 on 2 cores, against
    about 0.1 s per epoch it saves on a 5,000-image validation set
    (BENCHMARKS.md). An explicit `jit_compile=True` compiles both."""
    self._xla_evaluation = True
    if jit_compile == "auto" and keras.backend.backend() == "tensorflow":
      jit_compile = _xla_pays_off(self)
      self._xla_evaluation = bool(tf.config.list_logical_devices("GPU"))
    super().compile(*args, jit_compile=jit_compile, **kwargs)

  def make_test_function(self, force=False):
    """Keras' test step, compiled by XLA only if training's is and
    `compile()` did not choose XLA itself on a CPU (see there)."""
    if getattr(self, "_xla_evaluation", True) or not self.jit_compile:
      return super().make_test_function(force)
    self.jit_compile = False
    try:
      return super().make_test_function(force)
    finally:
      self.jit_compile = True

  def fit(self, *args, **kwargs):
    """`keras.Model.fit` with a `CompressionMonitor` attached: a NaN loss
    stops training with an explanation, layers held at `min_channels` are
    reported, and each epoch's logs carry the exact size at its end. With
    `target_kb`, a `WithinBudget` too: a fit that ends over the budget ends
    with the weights of its latest epoch end within it. Under
    `MultiWorkerMirroredStrategy` it runs `selfcompress.distribute.fit_loop`
    (same step, loss and callbacks), as Keras' own loop fails there."""
    from selfcompress.callbacks import CompressionMonitor, WithinBudget
    bound = inspect.signature(keras.Model.fit).bind(self, *args, **kwargs)
    callbacks = list(bound.arguments.get("callbacks") or [])
    if (self.target_kb is not None
        and not any(isinstance(c, WithinBudget) for c in callbacks)):
      callbacks.insert(0, WithinBudget())
    if not any(isinstance(c, CompressionMonitor) for c in callbacks):
      # First, so that every other callback sees the exact epoch-end size.
      callbacks.insert(0, CompressionMonitor())
    bound.arguments["callbacks"] = callbacks
    bound.arguments.pop("self")
    extra = bound.arguments.pop("kwargs", {})
    from selfcompress import distribute
    if distribute.needs_loop(self):  # multi-worker: Keras' fit cannot
      return distribute.fit_loop(self, **bound.arguments, **extra)
    return super().fit(**bound.arguments, **extra)

  # -- serialisation --------------------------------------------------------

  def get_compile_config(self):
    return super().get_compile_config()

  def compile_from_config(self, config):
    # Keras skips this for models that override compile(); ours only changes
    # a default, so restore it, optimizer state included, like any model.
    config = keras.saving.deserialize_keras_object(config)
    self.compile(**config)
    if getattr(self, "optimizer", None) is not None and self.built:
      self.optimizer.build(self.trainable_variables)

  def options(self):
    """The constructor options (all but the graph)."""
    return {k: getattr(self, k) for k in _OPTIONS}

  def get_config(self):
    config = super().get_config()
    config.update(self.options())
    return config


def num_replicas():
  return tf.distribute.get_strategy().num_replicas_in_sync


_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D,
                 keras.layers.DepthwiseConv2D, keras.layers.SeparableConv2D,
                 keras.layers.Conv2DTranspose)


def _xla_pays_off(model):
  """Whether `jit_compile="auto"` turns XLA on for `model` (TensorFlow)."""
  from tensorflow.python.framework import config as tf_config
  layers = list(model._flatten_layers())
  if not all(l.supports_jit for l in layers):
    return False
  if tf_config.is_op_determinism_enabled():  # XLA has no deterministic mode
    return False
  on_cpu = not tf.config.list_logical_devices("GPU")
  if on_cpu and tf.distribute.get_strategy().num_replicas_in_sync > 1:
    return False  # an XLA step cannot read replicas on other CPU devices
  return not (on_cpu and any(isinstance(l, _CONVOLUTIONS) for l in layers))

"""Learnable per-channel bit depth and exponent (Cséfalvay & Imber, 2023)."""

import math

import keras
import numpy as np
from keras import ops

from selfcompress.compressors import base


class BitDepth(base.ChannelCompressor):
  """Quantizes each output channel to a learnable number of bits.

  `q(x, b, e) = 2^e * round(clip(2^-e * x, -2^(b-1), 2^(b-1) - 1))`

  with one real-valued bit depth `b` and exponent `e` per output channel.
  `round` is straight-through, so gradients reach the weights, `b` (through
  the clip bounds) and `e`. A channel with `b <= 0` is dead: its weights and
  bias are exactly zero. Stored, a weight of an alive channel takes `ceil(b)`
  bits (two's complement holds the clipped range exactly); the training
  penalty uses the real-valued `max(b, 0)`.

  `e` is initialised from each channel's largest |w| so that the first
  quantized weights are the float weights rounded to the `b`-bit grid (a fixed
  `e` init collapses training to chance when it rounds every weight to zero).

  Args:
    bits_init: initial bit depth of every channel, > 1.
    lr_multiplier: `b` and `e` are stored divided by this factor and
      multiplied back in the forward pass. With Adam-family optimizers, whose
      step does not depend on the gradient's scale, their learning rate is
      thus `lr_multiplier` times the optimizer's; with plain SGD it is
      `lr_multiplier**2` times.
    held_bits: bit depth given to channels that `min_channels` keeps alive
      after the penalty drove them below it.
    min_channels: channels kept alive whatever the penalty says.
    storage: how the codes are stored, the size accounting's rule for this
      layer. `"fixed"`: `ceil(b)` bits per weight. `"entropy"`: the layer's
      codes entropy-coded with a per-layer frequency table (table included
      in the count); the penalty is then the fixed-width one scaled by the
      layer's coded/fixed ratio (`selfcompress.accounting`).

  References:
    Cséfalvay & Imber, "Self-Compressing Neural Networks", arXiv 2301.13142.
  """

  #: The storage rules `storage` takes.
  STORAGE = ("fixed", "entropy")

  #: Per alive channel: the bit depth as uint8 and the scale 2^e as float32.
  overhead_bits_per_channel = 8 + 32
  stores_codes = True

  def __init__(self, bits_init=8.0, lr_multiplier=100.0, held_bits=2.0,
               min_channels=0, storage="fixed"):
    super().__init__(min_channels=min_channels)
    if storage not in self.STORAGE:
      raise ValueError(f"`storage` must be one of {self.STORAGE}. "
                       f"Received: storage={storage!r}")
    self.storage = storage
    if not bits_init > 1:
      raise ValueError(
          "`bits_init` must be > 1 (a 1-bit grid has no positive level to "
          f"initialise the exponent from). Received: bits_init={bits_init}")
    if not lr_multiplier > 0:
      raise ValueError("`lr_multiplier` must be > 0. "
                       f"Received: lr_multiplier={lr_multiplier}")
    if not held_bits >= 1:
      raise ValueError(f"`held_bits` must be >= 1. Received: held_bits={held_bits}")
    self.bits_init = float(bits_init)
    self.lr_multiplier = float(lr_multiplier)
    self.held_bits = float(held_bits)

  def build(self, layer, kernel, param_shape):
    super().build(layer, kernel, param_shape)
    self._quantize = _compile(_quantize_impl, int(np.prod(kernel.shape)))
    # One variable holds both: row o is channel o's (b, e), each divided by
    # `lr_multiplier`. Two variables would cost the optimizer's update twice
    # per layer (about 27 ops for Adam on TensorFlow; on a CPU each op costs
    # a launch, as much as the arithmetic on these small vectors).
    self.params = base.add_param(
        layer, "bits_exponent", (self.num_channels, 2), 0.0, compressor=self)
    self.initialize(kernel)

  def initialize(self, kernel):
    """Sets `e` so that each channel's largest |w| is the grid's top level."""
    top = 2.0 ** (self.bits_init - 1) - 1
    max_abs = ops.max(ops.abs(ops.convert_to_tensor(kernel)),
                      axis=base.reduce_axes(self._param_shape))
    max_abs = ops.maximum(self.flat(max_abs), 1e-12)
    self.assign(bits=self.bits_init,
                exponent=ops.log2(max_abs) - math.log2(top))

  def assign(self, bits=None, exponent=None):
    """Sets the bit depth and/or exponent of every channel (scalars or
    per-channel vectors), e.g. to start from a known grid."""
    n = (self.num_channels,)
    old = ops.unstack(ops.convert_to_tensor(self.params), 2, axis=1)
    new = [old[i] if v is None else
           ops.broadcast_to(ops.cast(v, "float32"), n) / self.lr_multiplier
           for i, v in enumerate((bits, exponent))]
    self.params.assign(ops.stack(new, axis=1))

  def legacy_variables(self, values, variables):
    """Reads a layer saved when `b` and `e` were two variables: `values`,
    the layer's saved list, holds them where `variables` (the layer's own,
    in saving order) holds this compressor's one `(num_channels, 2)`
    variable, and one more; returns the list with them merged."""
    start = next(i for i, v in enumerate(variables) if v is self.params)
    merged = np.stack([np.asarray(values[start]),
                       np.asarray(values[start + 1])], axis=1)
    return values[:start] + [merged] + values[start + 2:]

  # -- parameters -----------------------------------------------------------

  def raw_bits(self):
    """Bit depth per channel as trained, before `min_channels` is applied."""
    return ops.unstack(self.params, 2, axis=1)[0] * self.lr_multiplier

  def exponent(self):
    return ops.unstack(self.params, 2, axis=1)[1] * self.lr_multiplier

  def scale(self):
    """Per-channel step of the stored codes: `2^e`."""
    return ops.power(2.0, self.exponent())

  def bits(self):
    """Bit depth per channel in force: channels held by `min_channels` get at
    least `held_bits` (without gradient, so the penalty stops pushing)."""
    b = self.raw_bits()
    if self.min_channels == 0:
      return b
    held = ops.less(b, self.held_bits)
    if self.min_channels < self.num_channels:
      held = ops.logical_and(_top_channels(b, self.min_channels), held)
    return ops.where(held, self.held_bits, b)

  def ranking(self):
    return self.raw_bits()  # `min_channels` holds the deepest channels

  def held_channels(self):
    if self.min_channels == 0:
      return super().held_channels()
    b = self.raw_bits()
    top = base.keep_top_channels(b, self.min_channels)
    return top * ops.cast(ops.less_equal(b, 0.0), top.dtype)

  # -- forward pass ---------------------------------------------------------

  def codes(self, kernel, bits=None):
    """Integer codes (as floats) and per-channel scale `2^e` of `kernel`:
    `q = codes * scale` on alive channels. Export stores these codes."""
    b = self.broadcast(self.bits() if bits is None else bits)
    e = self.broadcast(self.exponent())
    half = ops.power(2.0, b - 1.0)
    x = ops.multiply(kernel, ops.power(2.0, -e))
    return ops.round(ops.minimum(ops.maximum(x, -half), half - 1.0)), \
        ops.power(2.0, e)

  def apply(self, kernel, bias, training=False):
    bits = self.bits()
    alive = ops.cast(ops.greater(bits, 0.0), "float32")
    kernel = self._quantize(
        base.value(kernel), self.broadcast(bits),
        self.broadcast(self.exponent()), self.broadcast(alive),
        base.reduce_axes(self._param_shape))
    return kernel, (None if bias is None else ops.multiply(bias, alive))

  # -- accounting -----------------------------------------------------------

  def state(self):
    bits = ops.relu(self.bits())
    return base.ChannelState(
        alive=ops.cast(ops.greater(bits, 0.0), bits.dtype),
        storage_bits=ops.ceil(bits), penalty_bits=bits)

  def get_config(self):
    return {
        "bits_init": self.bits_init,
        "lr_multiplier": self.lr_multiplier,
        "held_bits": self.held_bits,
        "storage": self.storage,
        **super().get_config(),
    }


_LN2 = math.log(2.0)


def _top_channels(values, k):
  """`base.keep_top_channels(values, k)` as a boolean mask, for 0 < k < n:
  without its float 0/1 and the cast back (two ops per call, and `bits()`
  runs in every layer call and in the size accounting of every step)."""
  if k == 1:
    kth = ops.max(values)
  else:
    kth = ops.top_k(values, k, sorted=True)[0][k - 1]
  return ops.greater_equal(values, kth)


def _quantize_impl(kernel, bits, exponent, alive, axes):
  """`alive * 2^e * round(clip(2^-e * kernel, -2^(b-1), 2^(b-1) - 1))` with
  a hand-written straight-through gradient: one fused pass forward and one
  backward instead of autodiff's chain of full-size temporaries.

  Gradients: d/dkernel = inside the clip range; d/de = ln2 * 2^e * (codes -
  x * inside); d/db = ln2 * 2^(b-1) * 2^e * (above - below), both summed over
  the kernel's non-channel axes (`axes`).

  On a CPU without XLA each op here costs a launch (a few microseconds, as
  much as the arithmetic on a small kernel) and each full-size one a pass
  over the kernel, so the backward pass uses as few as give the same values.
  """
  scale = ops.power(2.0, exponent)
  half = ops.power(2.0, bits - 1.0)
  x = ops.divide(kernel, scale)
  low, high = ops.negative(half), half - 1.0
  clipped = ops.clip(x, low, high)
  codes = ops.round(clipped)
  live_scale = scale * alive

  @ops.custom_gradient
  def quantize(kernel, bits, exponent):
    def grad(*args, upstream=None):
      g = args[0] if upstream is None else upstream
      return straight_through(g, x, x, clipped, codes, alive, live_scale,
                              half, axes)[1:]
    return codes * live_scale, grad

  return quantize(kernel, bits, exponent)


def straight_through(g, x, y, clipped, codes, alive, live_scale, half, axes):
  """`_quantize_impl`'s gradients for the upstream gradient `g`:
  `(keep, d/dkernel, d/dbits, d/dexponent)`, `keep` where the kernel's
  gradient passes. `x` is the kernel in code steps, `y` what is clipped
  to `[-half, half - 1]` (`x`, or a function of it that is the identity
  on the weights that pass), `clipped` and `codes` its clipped and
  rounded values.

  On an alive channel (high >= low), y - clip(y) is > 0 exactly where
  y > high, < 0 exactly where y < low and +0 inside (never a nonzero
  denormal), so its sign is `above - below` and `keep` (|sign| < alive)
  is `inside * alive`. On a dead channel `above - below` may differ
  (low > high), but the gradients there are multiplied by `live_scale`,
  0, as before; only the sign of those zeros can change.
  """
  side = ops.sign(y - clipped)
  keep = ops.less(ops.abs(side), alive)
  g_kernel = ops.where(keep, g, 0.0)
  g_exp = ops.sum(g * (codes - ops.where(keep, x, 0.0)), axis=axes,
                  keepdims=True)
  g_bits = ops.sum(g * side, axis=axes, keepdims=True)
  return (keep, g_kernel, g_bits * (live_scale * half * _LN2),
          g_exp * (live_scale * _LN2))


# Below this many weights an XLA launch costs more than the ops it fuses.
_FUSE_MIN_WEIGHTS = 1 << 16


def _compile(fn, num_weights):
  """Fuses the quantizer of a large kernel into one XLA kernel (TensorFlow
  backend): on a CPU this keeps the elementwise chain from dominating the
  step. One function per layer, so each traces once."""
  if keras.backend.backend() == "tensorflow" and num_weights >= _FUSE_MIN_WEIGHTS:
    import tensorflow as tf
    return tf.function(fn, jit_compile=True)
  return fn

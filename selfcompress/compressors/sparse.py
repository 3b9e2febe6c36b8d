"""Learned weight-level sparsity inside alive channels: soft thresholding
before the quantizer.

`SparseBitDepth` is `BitDepth` (Cséfalvay & Imber, 2023) with a learnable
soft threshold per channel (Kusupati et al., "Soft Threshold Weight
Reparameterization for Learnable Sparsity", ICML 2020): the codes are those
of `sign(x) * max(|x| - s, 0)`, `x = w / 2^e`, so a weight within
`t = s + 1/2` code steps of 0 is stored as code 0 and the kept ones
start from 1. A channel thus keeps only the weights worth their bits, as
magnitude pruning does (Han et al., "Learning both Weights and
Connections", NeurIPS 2015), but in one run and with the threshold learned
against the size penalty, as the bit depth is.

The zeros are paid for at their real cost by entropy-coded storage
(`storage="entropy"`, the only rule this compressor takes): the coder's
per-layer frequency table gives a frequent 0 a short code, so the count
includes what a sparse layer's index or mask costs. The penalty's stand-in
for one weight's bits is `H(p0) + (1 - p0) * b`, with `p0` a channel's
share of zeros (smoothed) and `H` the binary entropy: what a coder spends
to say zero or not, then `b` bits for a kept weight. Its gradient widens
the zero bin (and pulls small weights into it) while the task loss holds
the weights it needs. A channel whose codes are all 0 is dead.

Oktay et al., "Scalable Model Compression by Entropy Penalized
Reparameterization" (ICLR 2020) train LeNets towards low-entropy codes with
a learned probability model instead.
"""

import math

import keras
from keras import ops

from selfcompress.compressors import base
from selfcompress.compressors import bits as bits_lib

#: The threshold at which the dead zone is plain rounding's zero bin.
ROUNDING = 0.5


class SparseBitDepth(bits_lib.BitDepth):
  """Per-channel bit depth, exponent and soft threshold.

  `q(w) = 2^e * round(clip(sign(x) * max(|x| - s, 0), -2^(b-1),
  2^(b-1) - 1))`, `x = w / 2^e`, with one learnable `s >= 0` per output
  channel, in code steps (`s = 0` is `BitDepth`). Weights with `|x| < t`,
  `t = s + 1/2` (`threshold()`), get code 0. `s` is learned as a fraction
  of the grid's top, `2^(b-1)` steps (`shrink_fraction`, in [0, 1], from 0,
  at the optimizer's learning rate). A channel whose codes are all 0 is
  dead, as one at `b <= 0` is.

  Args:
    window: width, in code units, of the logistic window through which the
      penalty's share of zeros sees the weights near the threshold.
    max_bits: the largest bit depth. A wide dead zone on a fine grid would
      otherwise leave the kept weights' codes hundreds apart, and the
      entropy coder's frequency table (an entry per code of the range)
      would cost more than the codes.
    storage: must be `"entropy"`: with fixed-width codes a zero costs as
      much as any code, so a dead zone would cost accuracy and save nothing
      (use `"bits"` there).
    Other arguments: as `BitDepth`.
  """

  STORAGE = ("entropy",)
  #: `penalty_bits` models the coded length (`H(p0) + (1 - p0) * b`), so
  #: the accounting scales it by the coder's length over it (not over the
  #: fixed width, which would discount the zeros twice).
  penalty_models_coding = True

  def __init__(self, bits_init=8.0, lr_multiplier=100.0, held_bits=2.0,
               min_channels=0, storage="entropy", window=0.25, max_bits=8.0):
    if storage != "entropy":
      raise ValueError(
          "SparseBitDepth saves space only where a zero code is cheaper "
          "than others: it needs storage='entropy'. Received: "
          f"storage={storage!r}. Use BitDepth ('bits') for fixed-width codes.")
    if not max_bits >= max(held_bits, bits_init):
      raise ValueError(
          "`max_bits` must be >= `held_bits` and `bits_init`. Received: "
          f"max_bits={max_bits}, held_bits={held_bits}, bits_init={bits_init}")
    if not window > 0:
      raise ValueError(f"`window` must be > 0. Received: window={window}")
    super().__init__(bits_init=bits_init, lr_multiplier=lr_multiplier,
                     held_bits=held_bits, min_channels=min_channels,
                     storage=storage)
    self.window = float(window)
    self.max_bits = float(max_bits)

  def build(self, layer, kernel, param_shape):
    super().build(layer, kernel, param_shape)
    # Bit depths at most `max_bits` (applied by the optimizer after each
    # update): a wide dead zone on a fine grid would otherwise leave its
    # kept weights hundreds of codes apart, whose frequency table (one
    # entry per code of the range) costs more than the codes.
    self.params.constraint = _ClipColumn(0, self.max_bits / self.lr_multiplier)
    #: The kernel as its codes are stored, for the liveness check and the
    #: penalty's share of zeros: the layer's own, or what a wrapper gives
    #: (`InputGates`: times its test-time gates, closed inputs at 0).
    self.stored_kernel = lambda: base.value(kernel)
    # The soft threshold as a fraction of the grid's top, 2^(b-1) steps,
    # in [0, 1] (a constraint, applied by the optimizer after each update).
    # Not in code steps: then a coarser grid (a larger `e` and a smaller
    # `b`, which the penalty asks for) would also zero more weights, and
    # the task would hold the grid fine to keep them. (Nor in units of the
    # largest |w|: shed() removes dead inputs' weights, which must not
    # move the threshold.)
    self.shrink_fraction = layer.add_weight(
        name="shrink_fraction", shape=(self.num_channels,),
        initializer="zeros", constraint=_Clip(0.0, 1.0),
        trainable=True, autocast=False)
    self._channel_variables.append(self.shrink_fraction)
    self._quantize = bits_lib._compile(_sparse_quantize_impl,
                                       math.prod(kernel.shape))

  def shrink(self, bits=None):
    """Each channel's soft threshold in code steps (`t - 1/2`, >= 0)."""
    b = ops.relu(self.bits() if bits is None else bits)
    return self.shrink_fraction * ops.power(2.0, b - 1.0)

  def threshold(self):
    """Each channel's threshold `t` in code steps (>= 1/2): weights with
    `|w| / 2^e < t` get code 0."""
    return ROUNDING + self.shrink()

  def assign_threshold(self, value):
    """Sets every channel's `t` (a scalar or per-channel vector, from 1/2
    to 1/2 + 2^(b-1))."""
    t = ops.broadcast_to(ops.cast(value, "float32"), (self.num_channels,))
    top = ops.power(2.0, ops.relu(self.bits()) - 1.0)
    self.shrink_fraction.assign(ops.clip((t - ROUNDING) / top, 0.0, 1.0))

  # -- forward pass ---------------------------------------------------------

  def codes(self, kernel, bits=None):
    b = self.broadcast(self.bits() if bits is None else bits)
    scale = self.broadcast(self.scale())
    half = ops.power(2.0, b - 1.0)
    y = _shrink(ops.divide(kernel, scale), self.broadcast(self.shrink(bits)))
    return ops.round(ops.clip(y, -half, half - 1.0)), scale

  def kept_any(self, bits=None):
    """1 for each channel with at least one nonzero code: a channel whose
    every weight is in its dead zone (or rounds to 0) is dead, like one at
    `b <= 0`: its bias and parameters are not stored and `shed()` removes
    it (else the penalty, which widens whole channels' dead zones, would
    leave channels that cost their bias and parameters for a constant).

    Shrinking, clipping and rounding are monotone, so the largest and the
    smallest code of a channel are those of its largest and smallest
    weight: two reductions over the kernel, not its codes."""
    kernel = self.stored_kernel()
    axes = base.reduce_axes(self._param_shape)
    extremes = ops.stack([ops.max(kernel, axis=axes, keepdims=True),
                          ops.min(kernel, axis=axes, keepdims=True)])
    codes, _ = self.codes(extremes, bits)
    return ops.cast(ops.greater(self.flat(ops.max(ops.abs(codes), axis=0)),
                                0.0), "float32")

  def apply(self, kernel, bias, training=False):
    bits = self.bits()
    kernel = base.value(kernel)
    alive = ops.cast(ops.greater(bits, 0.0), "float32") * self.kept_any(bits)
    kernel = self._quantize(
        kernel, self.broadcast(bits), self.broadcast(self.exponent()),
        self.broadcast(self.shrink(bits)), self.broadcast(alive),
        base.reduce_axes(self._param_shape))
    return kernel, (None if bias is None else ops.multiply(bias, alive))

  # -- accounting -----------------------------------------------------------

  def zero_share(self):
    """Each channel's share of weights in its dead zone, smoothed by the
    logistic window (differentiable in the weights, `e` and `t`)."""
    kernel = self.stored_kernel()
    x = ops.abs(ops.divide(kernel, self.broadcast(self.scale())))
    inside = ops.sigmoid((self.broadcast(self.threshold()) - x) / self.window)
    return self.flat(ops.mean(inside, axis=base.reduce_axes(self._param_shape),
                              keepdims=True))

  def state(self):
    s = super().state()
    kept = self.kept_any()
    s = s._replace(alive=s.alive * kept, storage_bits=s.storage_bits * kept)
    p0 = ops.clip(self.zero_share(), 1e-6, 1.0 - 1e-6)
    flag = -(p0 * ops.log(p0) + (1.0 - p0) * ops.log(1.0 - p0)) / _LN2
    return s._replace(penalty_bits=(1.0 - p0) * s.penalty_bits
                      + flag * s.alive)

  def get_config(self):
    return {**super().get_config(), "window": self.window,
            "max_bits": self.max_bits}


_LN2 = math.log(2.0)


class _Clip(keras.constraints.Constraint):
  """Clips a variable to `[low, high]`."""

  def __init__(self, low, high):
    self.low, self.high = float(low), float(high)

  def __call__(self, w):
    return ops.clip(w, self.low, self.high)


class _ClipColumn(keras.constraints.Constraint):
  """Caps column `column` of a `(channels, 2)` variable at `high`."""

  def __init__(self, column, high):
    self.column, self.high = column, float(high)

  def __call__(self, w):
    columns = ops.unstack(w, 2, axis=1)
    columns[self.column] = ops.minimum(columns[self.column], self.high)
    return ops.stack(columns, axis=1)


def _shrink(x, shrink):
  """Soft thresholding: `sign(x) * max(|x| - shrink, 0)`."""
  return ops.sign(x) * ops.relu(ops.abs(x) - shrink)


def _sparse_quantize_impl(kernel, bits, exponent, shrink, alive, axes):
  """`alive * 2^e * round(clip(y))`, `y = sign(x) * max(|x| - shrink, 0)`,
  `x = kernel / 2^e`, with straight-through gradients as
  `bits._quantize_impl` (at `shrink = 0` they are `BitDepth`'s).

  A weight in the dead zone (`|x| <= shrink`) passes the kernel's gradient
  through, as one that rounds to 0 does: it keeps learning and comes back
  once it leaves the zone (as in dynamic pruning with feedback, Lin et al.,
  ICLR 2020). The shrink's gradient is soft thresholding's (Kusupati et
  al., "Soft Threshold Weight Reparameterization for Learnable Sparsity",
  ICML 2020): `-sum(g * 2^e * sign(x))` over the kept weights inside the
  clip range.
  """
  scale = ops.power(2.0, exponent)
  half = ops.power(2.0, bits - 1.0)
  x = ops.divide(kernel, scale)
  outside = ops.greater(ops.abs(x), shrink)
  y = _shrink(x, shrink)
  low, high = ops.negative(half), half - 1.0
  clipped = ops.clip(y, low, high)
  codes = ops.round(clipped)
  live_scale = scale * alive

  @ops.custom_gradient
  def quantize(kernel, bits, exponent, shrink):
    def grad(*args, upstream=None):
      g = args[0] if upstream is None else upstream
      keep, g_kernel, g_bits, g_exp = bits_lib.straight_through(
          g, x, y, clipped, codes, alive, live_scale, half, axes)
      g_shrink = ops.sum(ops.where(ops.logical_and(keep, outside),
                                   g * ops.sign(x), 0.0),
                         axis=axes, keepdims=True)
      return g_kernel, g_bits, g_exp, g_shrink * -live_scale
    return codes * live_scale, grad

  return quantize(kernel, bits, exponent, shrink)

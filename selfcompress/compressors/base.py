"""The interface every per-channel compression method implements.

A compressor owns the learnable compression parameters of one layer, one set
per output channel (a bit depth and an exponent, a gate, ...). The layer asks
it for the kernel and bias to use in the forward pass; the size accounting
asks it which channels are alive and how many bits each weight of a channel
costs. Layers never branch on the kind of compressor, so a new method slots in
by subclassing `ChannelCompressor` and registering it.
"""

import collections

import keras
from keras import ops

ChannelState = collections.namedtuple(
    "ChannelState", ["alive", "storage_bits", "penalty_bits"])


class ChannelCompressor:
  """Base class of the per-output-channel compression parameters of a layer.

  Subclasses create their variables in `build()` through `layer.add_weight`,
  so they live on the layer: they are checkpointed, saved in `.keras` files
  and placed by `tf.distribute` like any other weight.

  Args:
    min_channels: the number of channels that are kept alive whatever the
      size penalty says. The layer's `min_channels` argument sets it.
  """

  #: Storage, in bits, of one alive channel's compression parameters.
  overhead_bits_per_channel = 0
  #: True if export stores integer codes (`storage_bits` each) times a
  #: per-channel `scale()`; False if it stores the effective float32 kernel.
  stores_codes = False

  def __init__(self, min_channels=0):
    if int(min_channels) != min_channels or min_channels < 0:
      raise ValueError(
          "`min_channels` must be a non-negative integer. "
          f"Received: min_channels={min_channels}")
    self.min_channels = int(min_channels)
    self.num_channels = None
    self._param_shape = None
    self._channel_variables = []

  def build(self, layer, kernel, param_shape):
    """Creates the variables on `layer`.

    Args:
      layer: the layer that owns the variables.
      kernel: the layer's kernel variable (already initialised).
      param_shape: the shape a per-channel vector takes to broadcast against
        the kernel, e.g. `(1, units)` for Dense, `(1, 1, in, mult)` for
        DepthwiseConv2D. Channel `o` is the `o`-th element in row-major order.
    """
    self._param_shape = tuple(int(d) for d in param_shape)
    self.num_channels = 1
    for d in self._param_shape:
      self.num_channels *= d

  def initialize(self, kernel):
    """Re-derives data-dependent parameters from the kernel's current values.

    Called after weights are copied into a layer by `compress()`.
    """

  # -- forward pass ---------------------------------------------------------

  def apply(self, kernel, bias, training=False):
    """Returns the `(kernel, bias)` the layer computes with; `bias` may be
    None. Dead channels must come out exactly zero in both."""
    raise NotImplementedError

  # -- accounting -----------------------------------------------------------

  def state(self):
    """The channels' state in one pass (the accounting asks once per step).

    Returns:
      A `ChannelState` of per-channel vectors: `alive` (0/1, exact),
      `storage_bits` (bits per weight when stored, exact; 0 when dead) and
      `penalty_bits` (a differentiable stand-in for `storage_bits`).
    """
    raise NotImplementedError

  def alive(self):
    """A float 0/1 vector, 1 for each channel that is alive (exact)."""
    return self.state().alive

  def channel_variables(self):
    """The variables holding one value per output channel (what `shed()`
    slices along with the kernel's output axis)."""
    return list(self._channel_variables)

  def held_channels(self):
    """Channels kept alive only by `min_channels` (0/1 vector)."""
    return ops.zeros((self.num_channels,))

  def ranking(self):
    """The per-channel values by which `min_channels` picks the channels it
    holds (the largest), or None if no channel's fate depends on another's.
    """
    return None

  def pinned_count(self):
    """How many of the top channels by `ranking()` `pinned_channels()` keeps."""
    return self.min_channels

  def pinned_channels(self):
    """Channels (0/1) that `shed()` keeps even when they are dead, so that
    the smaller layer's compressor decides what this one does.

    `min_channels` holds the top channels by `ranking()` that would
    otherwise die: whether a channel is held depends on the channels
    ranked above it. `shed()` removes channels the compressor keeps alive
    (their inputs are dead) and keeps dead ones (a depthwise convolution
    keeps the outputs of the inputs it keeps); had it removed the top ones,
    the smaller layer would hold others: revive a channel this one lets
    die, or lift a channel's bit depth to `held_bits`. With its top
    `min_channels` channels (ties broken by index, so shedding again picks
    the same ones) the smaller layer ranks at the same threshold, so it
    holds exactly the channels this one holds.
    """
    n = self.num_channels
    values = self.ranking()
    k = min(self.pinned_count(), n)
    if values is None or self.min_channels == 0 or self.min_channels >= n:
      return ops.zeros((n,))
    indices = ops.top_k(ops.convert_to_tensor(values), k, sorted=True)[1]
    return ops.minimum(ops.sum(ops.one_hot(indices, n), axis=0), 1.0)

  def flat(self, tensor):
    return ops.reshape(tensor, (self.num_channels,))

  def broadcast(self, vector):
    return ops.reshape(vector, self._param_shape)

  def get_config(self):
    return {"min_channels": self.min_channels}

  @classmethod
  def from_config(cls, config):
    return cls(**config)

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


def value(kernel):
  """The backend tensor of a variable (traceable, no copy), or `kernel`."""
  return kernel.value if isinstance(kernel, keras.Variable) else kernel


def reduce_axes(param_shape):
  """Kernel axes that a per-channel parameter is broadcast over."""
  return tuple(i for i, d in enumerate(param_shape) if d == 1)


def keep_top_channels(values, min_channels):
  """0/1 vector marking the `min_channels` largest entries of `values`."""
  n = values.shape[0]
  k = min(int(min_channels), n)
  if k <= 0:
    return ops.zeros_like(values)
  if k >= n:
    return ops.ones_like(values)
  if k == 1:
    kth = ops.max(values)
  else:
    kth = ops.top_k(values, k, sorted=True)[0][k - 1]
  return ops.cast(ops.greater_equal(values, kth), values.dtype)


def add_param(layer, name, shape, value, trainable=True, compressor=None):
  """Adds a float32 variable to `layer`. Given `compressor`, the variable is
  one of its per-channel ones (shape `(num_channels,)`)."""
  var = layer.add_weight(
      name=name, shape=shape,
      initializer=keras.initializers.Constant(value),
      trainable=trainable, autocast=False)
  if compressor is not None:
    compressor._channel_variables.append(var)
  return var

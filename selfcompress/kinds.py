"""What each weighted layer kind does to channels: the one place that knows.

A `Kind` describes a family of Keras layers with a kernel (Dense,
convolutions, depthwise and transposed convolutions): how many output
channels it has and on which axis, how many weights feed each of them from
the alive inputs, which kernel axis its inputs are on (input gates), how
its kernel is cut along inputs and outputs, its linear
map (for the layer's forward pass and for folding dead inputs' constants),
how to rebuild it with fewer channels, and whether it reads padding. The
self-compressing layers, the channel graph, the size accounting, shedding and
export ask `of(layer)`; none of them switches on layer classes.

A layer that no kind describes (LSTM, attention, a custom layer) is not
compressed: the channel graph keeps its channels alive and shedding and
export copy its weights whole.

Liveness vectors are `keras.ops` tensors (they run inside the train step);
the cutting functions work on numpy arrays (shedding and export).
"""

import math

import keras
import numpy as np
from keras import ops

L = keras.layers


class Kind:
  """A weighted layer kind. Subclasses set `classes` and override what
  differs; the defaults describe a kernel whose last axis is the output
  channel and whose second-to-last is the input channel (Dense, Conv)."""

  #: Keras classes of this kind (our compressed layers subclass them).
  classes = ()
  #: The config field holding the number of output channels, if it has one.
  size_field = None

  def matches(self, layer):
    return isinstance(layer, self.classes)

  def kernel(self, layer):
    """The kernel variable (Keras keeps some behind a `kernel` property)."""
    kernel = getattr(layer, "_kernel", None)
    return layer.kernel if kernel is None else kernel

  def channels(self, layer):
    return int(self.kernel(layer).shape[-1])

  def channels_first(self, layer):
    return getattr(layer, "data_format", "channels_last") == "channels_first"

  def axis(self, layer, rank):
    """The channel axis (non-negative) of the layer's input and output."""
    return 1 if self.channels_first(layer) else rank - 1

  def area(self, layer):
    """Kernel taps per (input, output) channel pair."""
    return math.prod(getattr(layer, "kernel_size", ()) or (1,))

  def param_shape(self, layer):
    """Shape of a per-output-channel vector broadcast against the kernel."""
    shape = tuple(self.kernel(layer).shape)
    return (1,) * (len(shape) - 1) + shape[-1:]

  def fan_in(self, layer, in_alive):
    """Alive weights feeding each output channel, given the 0/1 liveness of
    the input channels (a tensor)."""
    return ops.broadcast_to(ops.sum(in_alive) * self.area(layer),
                            (self.channels(layer),))

  def full_fan_in(self, layer):
    """Weights per output channel with every input alive."""
    shape = tuple(self.kernel(layer).shape)
    return math.prod(shape) // self.channels(layer)

  def gates_inputs(self, layer):
    """Whether a per-input vector (input gates) can scale the kernel: each
    input channel of the layer is one slice of the kernel's input axis.
    From the config alone (the layer need not be built)."""
    return getattr(layer, "groups", 1) == 1

  def input_axis(self, layer):
    """`(axis, groups)`: the kernel axis that indexes the layer's input
    channels (None if it reads all its input, as an Embedding does), and
    the number of groups its inputs are split into (a grouped
    convolution's kernel holds one group's inputs on that axis; output
    channel `o` reads group `o // (channels / groups)`)."""
    return (len(self.kernel(layer).shape) - 2,
            int(getattr(layer, "groups", 1) or 1))

  def input_param_shape(self, layer):
    """Shape of a per-input-channel vector broadcast against the kernel
    (input channel `i` is its `i`-th element), or None if the kind cannot
    gate its inputs (`gates_inputs`)."""
    if not self.gates_inputs(layer):
      return None
    shape = tuple(self.kernel(layer).shape)
    axis = self.input_axis(layer)[0]
    return tuple(d if a == axis else 1 for a, d in enumerate(shape))

  def input_mask(self, layer, in_alive):
    """Which kernel elements read an alive input channel: 0/1, a tensor
    broadcastable to the kernel, given the 0/1 liveness of the layer's
    input channels (a tensor or array)."""
    shape = tuple(self.kernel(layer).shape)
    axis, groups = self.input_axis(layer)
    if axis is None:
      return ops.ones((1,) * len(shape))
    in_alive = ops.cast(ops.reshape(in_alive, (-1,)), "float32")
    if groups == 1:
      return ops.reshape(in_alive, tuple(
          d if a == axis else 1 for a, d in enumerate(shape)))
    # `(*kernel_size, in / groups, filters)`: filter `o` reads group
    # `o // (filters / groups)`.
    per_group = ops.reshape(in_alive, (groups, shape[axis]))
    per_filter = ops.repeat(per_group, shape[-1] // groups, axis=0)
    return ops.reshape(ops.transpose(per_filter),
                       (1,) * (len(shape) - 2) + shape[-2:])

  def linear(self, layer, x, kernel):
    """The layer's linear map (no bias, no activation) with `kernel`."""
    raise NotImplementedError

  def add_bias(self, layer, y, bias):
    if self.channels_first(layer):
      bias = ops.reshape(bias, (1, -1) + (1,) * (len(y.shape) - 2))
      # Not ops.add: on TensorFlow it turns a (1, C, 1, 1) bias into a
      # BiasAdd over the last axis whenever that axis also has C entries
      # (Keras 3.15), adding the bias to the wrong axis.
      return ops.subtract(y, ops.negative(bias))
    return ops.add(y, bias)

  def reads_padding(self, layer):
    """Whether the layer sees zero padding where a dead input channel holds
    a constant, so the constant's contribution is not the same everywhere."""
    return (getattr(layer, "padding", "valid") in ("same", "causal")
            and self.area(layer) > 1)

  def tie(self, layer, kept_in, kept_out):
    """Input and output channels that must be kept together (numpy bools)."""
    if getattr(layer, "groups", 1) > 1:  # a group's channels stay together
      return np.ones_like(kept_in), np.ones_like(kept_out)
    return kept_in, kept_out

  def cut_kernel(self, layer, kernel, kept_in, kept_out):
    """The kernel (numpy) restricted to the kept channels (a None mask keeps
    every channel)."""
    return kernel[..., _idx(kept_in), :][..., _idx(kept_out)]

  def resized(self, layer, config, n_out):
    """`layer`'s config for `n_out` output channels."""
    if self.size_field:
      config[self.size_field] = int(n_out)
    return config

  def with_bias(self, layer, config):
    """`layer`'s config with a bias (to hold folded constants)."""
    config["use_bias"] = True
    return config

  def untraceable(self, layer):
    """Why the channel graph cannot follow this (compressible) layer's
    channels, or None."""
    return None

  def unsupported(self, layer):
    """Why this layer cannot be compressed, or None."""
    if getattr(layer, "lora_enabled", False):
      return "it has LoRA enabled"
    if getattr(layer, "quantization_mode", None) is not None:
      return f"it is already quantized ({layer.quantization_mode})"
    return None


class Dense(Kind):
  classes = (L.Dense,)
  size_field = "units"

  def axis(self, layer, rank):
    return rank - 1

  def linear(self, layer, x, kernel):
    return ops.matmul(x, kernel)


class Conv(Kind):
  """Conv1D/2D/3D, grouped ones included: kernel `(*kernel_size, in /
  groups, filters)`."""
  classes = (L.Conv1D, L.Conv2D, L.Conv3D)
  size_field = "filters"

  def fan_in(self, layer, in_alive):
    groups = layer.groups
    if groups == 1:
      return super().fan_in(layer, in_alive)
    per_group = ops.sum(ops.reshape(in_alive, (groups, -1)), axis=1)
    return _repeat(per_group * self.area(layer), layer.filters // groups)

  def linear(self, layer, x, kernel):
    if layer.padding == "causal":  # Conv1D pads in `call`, not in the op
      x = ops.pad(x, layer._compute_causal_padding())
      return ops.conv(x, kernel, strides=list(layer.strides), padding="valid",
                      dilation_rate=layer.dilation_rate,
                      data_format=layer.data_format)
    return layer.convolution_op(x, kernel)


class Depthwise(Kind):
  """DepthwiseConv1D/2D: output channel `c * depth_multiplier + m` is input
  channel `c` filtered by kernel slice `[..., c, m]`, so inputs and outputs
  are shed together."""
  classes = (L.DepthwiseConv1D, L.DepthwiseConv2D)

  def kernel(self, layer):
    return layer.kernel

  def channels(self, layer):
    shape = tuple(self.kernel(layer).shape)
    return shape[-2] * shape[-1]

  def param_shape(self, layer):
    shape = tuple(self.kernel(layer).shape)
    return (1,) * (len(shape) - 2) + shape[-2:]

  def fan_in(self, layer, in_alive):
    fan_in = in_alive * self.area(layer)
    if layer.depth_multiplier > 1:  # (no op at all per layer and step if 1)
      fan_in = _repeat(fan_in, layer.depth_multiplier)
    return fan_in

  def full_fan_in(self, layer):
    return self.area(layer)

  def gates_inputs(self, layer):
    return False  # input `c` is output channels `c * m ...`: their gates

  def linear(self, layer, x, kernel):
    return ops.depthwise_conv(
        x, kernel, strides=layer.strides, padding=layer.padding,
        dilation_rate=layer.dilation_rate, data_format=layer.data_format)

  def tie(self, layer, kept_in, kept_out):
    m = layer.depth_multiplier
    kept_in = kept_in | kept_out.reshape(-1, m).any(axis=1)
    return kept_in, np.repeat(kept_in, m)

  def cut_kernel(self, layer, kernel, kept_in, kept_out):
    return kernel[..., _idx(kept_in), :]


class Transpose(Kind):
  """Conv1D/2D/3DTranspose: kernel `(*kernel_size, filters, in)`."""
  classes = (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)
  size_field = "filters"

  def channels(self, layer):
    return int(self.kernel(layer).shape[-2])

  def param_shape(self, layer):
    shape = tuple(self.kernel(layer).shape)
    return (1,) * (len(shape) - 2) + (shape[-2], 1)

  def input_axis(self, layer):
    return len(self.kernel(layer).shape) - 1, 1  # `(..., out, in)`

  def linear(self, layer, x, kernel):
    return ops.conv_transpose(
        x, kernel, strides=list(layer.strides), padding=layer.padding,
        output_padding=layer.output_padding, data_format=layer.data_format,
        dilation_rate=layer.dilation_rate)

  def reads_padding(self, layer):
    # Border outputs gather fewer taps, and strides leave gaps: a constant
    # input never contributes the same everywhere.
    return self.area(layer) > 1 or math.prod(layer.strides) > 1

  def cut_kernel(self, layer, kernel, kept_in, kept_out):
    return kernel[..., _idx(kept_out), :][..., _idx(kept_in)]


class Embedding(Kind):
  """Embedding: output channel `j` is column `j` of the `(vocab, dim)`
  table, so a dead column disappears downstream. Its input is token ids,
  not channels: all of it is read."""
  classes = (L.Embedding,)
  size_field = "output_dim"

  def kernel(self, layer):
    return layer._embeddings

  def fan_in(self, layer, in_alive):
    return ops.full((self.channels(layer),), float(layer.input_dim))

  def gates_inputs(self, layer):
    return False  # its input is token ids, not channels

  def input_axis(self, layer):
    return None, 1

  def linear(self, layer, x, kernel):
    if not str(getattr(x, "dtype", "int32")).startswith("int"):
      x = ops.cast(x, "int32")
    return ops.take(kernel, x, axis=0)

  def reads_padding(self, layer):
    return False

  def tie(self, layer, kept_in, kept_out):
    return np.ones_like(kept_in), kept_out

  def cut_kernel(self, layer, kernel, kept_in, kept_out):
    return kernel[:, _idx(kept_out)]

  def unsupported(self, layer):
    if getattr(layer, "embeddings_constraint", None) is not None:
      return "it has an embeddings constraint"
    return super().unsupported(layer)


class EinsumDense(Kind):
  """EinsumDense: every output feature (each combination of the output axes
  that come from the kernel, e.g. head and head dimension inside attention)
  is a channel. The channel graph follows it when the output's last axis is
  its only such axis and the input's last axis is contracted
  (`"abc,cd->abd"`, `"abc,cde->abe"`); otherwise (`"abc,cde->abde"`) it is
  compressed but kept whole."""
  classes = (L.EinsumDense,)

  def _letters(self, layer):
    inputs, output = layer.equation.split("->")
    x, k = inputs.split(",")
    return x, k, output

  def _channel_letters(self, layer):
    x, k, out = self._letters(layer)
    return [c for c in k if c in out and c not in x]

  def unsupported(self, layer):
    x, k, out = self._letters(layer)
    letters = self._channel_letters(layer)
    if "." in x + k + out or not letters:
      return f"its equation {layer.equation!r} has no output axis from the kernel"
    if layer.bias_axes and not set(layer.bias_axes) <= set(letters):
      return f"its bias axes {layer.bias_axes!r} are not output feature axes"
    if layer.bias_axes and [c for c in letters if c in layer.bias_axes] != \
        list(layer.bias_axes):
      return f"its bias axes {layer.bias_axes!r} are not in kernel order"
    return super().unsupported(layer)

  def untraceable(self, layer):
    x, k, out = self._letters(layer)
    if self._channel_letters(layer) != [out[-1]]:
      return "the output's last axis is not its only output feature axis"
    if x[-1] not in k or x[-1] in out:
      return "it does not contract the input's last axis"
    if layer.bias_axes not in (None, "", out[-1]):
      return "its bias is not per output feature"
    return None

  def _axes(self, layer):
    x, k, out = self._letters(layer)
    return k.index(x[-1]), k.index(out[-1])

  def channels(self, layer):
    shape = tuple(self.kernel(layer).shape)
    return math.prod(d for d, p in zip(shape, self.param_shape(layer)) if p != 1)

  def axis(self, layer, rank):
    return rank - 1

  def param_shape(self, layer):
    x, k, out = self._letters(layer)
    letters = self._channel_letters(layer)
    shape = tuple(self.kernel(layer).shape)
    return tuple(d if c in letters else 1 for c, d in zip(k, shape))

  def gates_inputs(self, layer):
    return self.untraceable(layer) is None

  def input_axis(self, layer):
    try:
      return self._axes(layer)[0], 1
    except ValueError:  # the input's last axis is not in the kernel
      return None, 1

  def fan_in(self, layer, in_alive):
    shape = tuple(self.kernel(layer).shape)
    i, c = self._axes(layer)
    per_input = math.prod(shape) // (shape[i] * shape[c])
    return ops.broadcast_to(ops.sum(in_alive) * per_input, (shape[c],))

  def linear(self, layer, x, kernel):
    return ops.einsum(layer.equation, x, kernel)

  def reads_padding(self, layer):
    return False

  def cut_kernel(self, layer, kernel, kept_in, kept_out):
    i, c = self._axes(layer)
    if kept_in is not None:
      kernel = np.take(kernel, np.flatnonzero(kept_in), axis=i)
    return np.take(kernel, np.flatnonzero(kept_out), axis=c)

  def with_bias(self, layer, config):
    config["bias_axes"] = self._letters(layer)[2][-1]
    return config

  def resized(self, layer, config, n_out):
    shape = config["output_shape"]
    shape = list(shape) if isinstance(shape, (list, tuple)) else [shape]
    shape[-1] = int(n_out)
    config["output_shape"] = shape if len(shape) > 1 else shape[0]
    return config


def _repeat(vector, times):
  """`ops.repeat(vector, times)` for a 1-D vector of static length, in three
  ops: the accounting runs in every training step, and TensorFlow's
  general `repeat` takes about fifteen (on a CPU each costs a launch)."""
  n = int(vector.shape[0])
  column = ops.reshape(vector, (n, 1))
  return ops.reshape(ops.broadcast_to(column, (n, times)), (n * times,))


def _idx(mask):
  return slice(None) if mask is None else np.flatnonzero(mask)


KINDS = (Dense(), Conv(), Depthwise(), Transpose(), Embedding(),
         EinsumDense())


def of(layer):
  """The `Kind` describing `layer`, or None (not a weighted kind we know)."""
  for kind in KINDS:
    if kind.matches(layer):
      return kind
  return None


def usable(layer):
  """`of(layer)` if the channel graph can follow this layer (and shed it),
  else None."""
  kind = of(layer)
  if kind is None or kind.unsupported(layer) or kind.untraceable(layer):
    return None
  return kind

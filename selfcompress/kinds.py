"""What each weighted layer kind does to channels: the one place that knows.

A `Kind` describes a family of Keras layers with a kernel (Dense,
convolutions, depthwise and transposed convolutions): how many output
channels it has and on which axis, how many weights feed each of them from
the alive inputs, how its kernel is cut along inputs and outputs, its linear
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

  def linear(self, layer, x, kernel):
    """The layer's linear map (no bias, no activation) with `kernel`."""
    raise NotImplementedError

  def add_bias(self, layer, y, bias):
    if self.channels_first(layer):
      bias = ops.reshape(bias, (1, -1) + (1,) * (len(y.shape) - 2))
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
    per_group = ops.sum(ops.reshape(in_alive, (groups, -1)), axis=1)
    return ops.repeat(per_group, layer.filters // groups) * self.area(layer)

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
    return ops.repeat(in_alive, layer.depth_multiplier) * self.area(layer)

  def full_fan_in(self, layer):
    return self.area(layer)

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


def _idx(mask):
  return slice(None) if mask is None else np.flatnonzero(mask)


KINDS = (Dense(), Conv(), Depthwise(), Transpose())


def of(layer):
  """The `Kind` describing `layer`, or None (not a weighted kind we know)."""
  for kind in KINDS:
    if kind.matches(layer):
      return kind
  return None

"""The mixin that makes a Keras layer with a kernel self-compressing."""

import inspect

import keras
from keras import ops

from selfcompress import compressors

COMPRESSION_ARGS = ("compressor", "min_channels")


class CompressedLayer:
  """Mixin for a Keras layer whose output channels carry a compressor.

  The layer keeps the Keras signature and adds two arguments:

  Args:
    compressor: the per-channel compression method: a name (`"bits"`), a
      serialized dict or a `ChannelCompressor` instance (copied, never shared).
    min_channels: channels kept alive whatever the size penalty says;
      overrides the compressor's own setting when given.

  Subclasses set `_kernel_attr` (where Keras keeps the kernel variable),
  `_param_shape()` and `_output_with()`; everything else is shared.
  """

  _kernel_attr = "_kernel"

  def __init__(self, *args, compressor="bits", min_channels=None, **kwargs):
    if kwargs.get("lora_rank"):
      raise ValueError(
          f"{type(self).__name__} does not support LoRA. Received: "
          f"lora_rank={kwargs['lora_rank']}. Use the plain Keras layer.")
    super().__init__(*args, **kwargs)
    if getattr(self, "data_format", "channels_last") != "channels_last":
      raise ValueError(
          f"{type(self).__name__} supports data_format='channels_last' only. "
          f"Received: data_format={self.data_format!r}. Transpose the input "
          "or set keras.config.set_image_data_format('channels_last').")
    overrides = {} if min_channels is None else {"min_channels": min_channels}
    self.compressor = compressors.get(compressor, **overrides)

  @property
  def kernel_variable(self):
    return getattr(self, self._kernel_attr)

  def build(self, input_shape):
    super().build(input_shape)
    kernel = self.kernel_variable
    self.compressor.build(self, kernel, self._param_shape(tuple(kernel.shape)))

  def _param_shape(self, kernel_shape):
    return (1,) * (len(kernel_shape) - 1) + (kernel_shape[-1],)

  def call(self, inputs, training=None):
    kernel, bias = self.compressor.apply(
        self.kernel_variable, self.bias, training=training)
    outputs = self._output_with(inputs, kernel)
    if bias is not None:
      outputs = ops.add(outputs, bias)
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs

  def _output_with(self, inputs, kernel):
    raise NotImplementedError

  @property
  def num_channels(self):
    return self.compressor.num_channels

  def quantize(self, *args, **kwargs):
    raise NotImplementedError(
        f"{type(self).__name__} learns its own quantization; Keras' post-hoc "
        "`quantize()` does not apply. Export it with selfcompress instead.")

  # Keras' Dense and Conv save only kernel and bias; save every variable.
  def save_own_variables(self, store):
    keras.layers.Layer.save_own_variables(self, store)

  def load_own_variables(self, store):
    keras.layers.Layer.load_own_variables(self, store)

  def get_config(self):
    config = super().get_config()
    config["compressor"] = compressors.serialize(self.compressor)
    return config


def keras_parent(cls):
  """The Keras layer class a self-compressing layer class extends."""
  return next(c for c in cls.__mro__[1:]
              if c.__module__.startswith("keras.")
              and issubclass(c, keras.layers.Layer))


def with_compression_signature(cls):
  """Gives `cls.__init__` the Keras parent's signature plus our arguments, so
  that `inspect.signature` and IDEs show the real parameters."""
  params = list(inspect.signature(keras_parent(cls).__init__).parameters.values())
  kwargs = [p for p in params if p.kind is p.VAR_KEYWORD]
  params = [p for p in params if p.kind is not p.VAR_KEYWORD]
  ours = inspect.signature(CompressedLayer.__init__).parameters
  params += [ours[name].replace(kind=inspect.Parameter.KEYWORD_ONLY)
             for name in COMPRESSION_ARGS]
  cls.__init__.__signature__ = inspect.Signature(params + kwargs)
  return cls

"""The mixin that makes a Keras layer with a kernel self-compressing."""

import inspect

import keras
from keras import ops

from selfcompress import compressors
from selfcompress import kinds

COMPRESSION_ARGS = ("compressor", "min_channels")


class CompressedLayer:
  """Mixin for a Keras layer whose output channels carry a compressor.

  The layer keeps the Keras signature and adds two arguments:

  Args:
    compressor: the per-channel compression method: a name (`"bits"`), a
      serialized dict or a `ChannelCompressor` instance (copied, never shared).
    min_channels: channels kept alive whatever the size penalty says;
      overrides the compressor's own setting when given.

  What the layer's kind does with channels (its kernel, linear map, bias
  axis) comes from `selfcompress.kinds`; the compressor computes in float32
  and the layer then computes in its dtype policy's compute dtype, as Keras
  layers do under mixed precision.
  """

  def __init__(self, *args, compressor="bits", min_channels=None, **kwargs):
    if kwargs.get("lora_rank"):
      raise ValueError(
          f"{type(self).__name__} does not support LoRA. Received: "
          f"lora_rank={kwargs['lora_rank']}. Use the plain Keras layer.")
    super().__init__(*args, **kwargs)
    self._kind = kinds.of(self)
    why = self._kind.unsupported(self)
    if why:
      raise ValueError(f"{type(self).__name__} cannot compress this layer: "
                       f"{why}. Use the plain Keras layer.")
    overrides = {} if min_channels is None else {"min_channels": min_channels}
    self.compressor = compressors.get(compressor, **overrides)
    check = getattr(self.compressor, "check_layer", None)
    if check is not None:  # e.g. input gates need one kernel input axis
      check(self)

  @property
  def kind(self):
    return self._kind

  @property
  def kernel_variable(self):
    return self._kind.kernel(self)

  def build(self, input_shape):
    super().build(input_shape)
    self.compressor.build(self, self.kernel_variable,
                          self._kind.param_shape(self))

  def effective_weights(self, training=False):
    """The `(kernel, bias)` the layer computes with, in float32 (bias None
    if it has none): quantized and gated, dead channels exactly zero."""
    bias = getattr(self, "bias", None)
    # The compressor reads the float32 variables (its quantizer must be
    # exact), whatever the dtype policy's compute dtype.
    with _float32_variables():
      flat = None if bias is None else ops.reshape(bias, (-1,))
      kernel, flat = self.compressor.apply(
          self.kernel_variable, flat, training=training)
    return kernel, None if bias is None else ops.reshape(flat, bias.shape)

  def call(self, inputs, training=None):
    kernel, bias = self.effective_weights(training=training)
    dtype = self.compute_dtype
    outputs = self._kind.linear(self, inputs, ops.cast(kernel, dtype))
    if bias is not None:
      outputs = self._kind.add_bias(self, outputs, ops.cast(bias, dtype))
    if getattr(self, "activation", None) is not None:
      outputs = self.activation(outputs)
    return ops.cast(outputs, dtype)

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
    own = self._trainable_variables + self._non_trainable_variables
    legacy = getattr(self.compressor, "legacy_variables", None)
    if legacy is not None and len(store.keys()) == len(own) + 1:
      # Saved before a compressor merged two per-channel variables into one.
      values = [store[str(i)] for i in range(len(own) + 1)]
      store = {str(i): v for i, v in enumerate(legacy(values, own))}
    keras.layers.Layer.load_own_variables(self, store)

  def get_config(self):
    config = super().get_config()
    config["compressor"] = compressors.serialize(self.compressor)
    return config


def _float32_variables():
  """A scope in which variables read as stored (float32), not autocast to a
  mixed policy's compute dtype. Keras has no public name for it: its own
  Layer.__call__ enters the same scope for non-autocasting layers."""
  from keras.src import backend
  return backend.AutocastScope(None)


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

"""Self-compressing multi-head attention: its four projections compress."""

import keras

from selfcompress import compressors
from selfcompress.compressors.inputs import without_input_gates
from selfcompress.layers import base
from selfcompress.layers.core import EinsumDense

# Where Keras' MultiHeadAttention keeps its projections (private names; the
# only place selfcompress reads them).
_PROJECTIONS = ("_query_dense", "_key_dense", "_value_dense", "_gate_dense",
                "_output_dense")


@keras.saving.register_keras_serializable(package="selfcompress")
class MultiHeadAttention(keras.layers.MultiHeadAttention):
  """`keras.layers.MultiHeadAttention` whose projections learn their size.

  The query, key, value (and gate) projections and the output projection
  are self-compressing `EinsumDense` layers: each output feature (one
  dimension of one head, or one output channel) has its own compression
  parameters. Per feature rather than per head: a head whose features are
  only partly useful keeps the useful ones, and the bit depths of the
  features of one head differ as much as those of any layer's channels.
  Dead features cost nothing in the size accounting and are stored as
  zero-bit codes; the layer keeps its shape (all heads share one key
  dimension), so `shed()` keeps it whole.

  Takes every `keras.layers.MultiHeadAttention` argument plus `compressor`
  and `min_channels` (see `CompressedLayer`).
  """

  def __init__(self, *args, compressor="bits", min_channels=None, **kwargs):
    super().__init__(*args, **kwargs)
    overrides = {} if min_channels is None else {"min_channels": min_channels}
    # The projections are kept whole (the channel graph does not follow
    # them): input gates would have nothing to remove, so they get none.
    self.compressor = without_input_gates(
        compressors.get(compressor, **overrides))
    self.min_channels = min_channels

  def build(self, query_shape, value_shape, key_shape=None):
    super().build(query_shape, value_shape, key_shape)
    for name, plain in self._projections(self):
      config = dict(plain.get_config(), compressor=self.compressor,
                    min_channels=self.min_channels)
      compressed = EinsumDense.from_config(config)
      compressed.build(plain._build_shapes_dict["input_shape"])
      _copy_projection(plain, compressed)
      self._tracker.replace_tracked_value("layers", plain, compressed)
      object.__setattr__(self, name, compressed)

  @staticmethod
  def _projections(layer):
    return [(name, getattr(layer, name)) for name in _PROJECTIONS
            if getattr(layer, name, None) is not None]

  def copy_from(self, plain):
    """Takes the weights of a built `keras.layers.MultiHeadAttention`."""
    for (_, source), (_, target) in zip(self._projections(plain),
                                        self._projections(self)):
      _copy_projection(source, target)

  def quantize(self, *args, **kwargs):
    raise NotImplementedError(
        f"{type(self).__name__} learns its own quantization; Keras' post-hoc "
        "`quantize()` does not apply. Export it with selfcompress instead.")

  def get_config(self):
    return dict(super().get_config(),
                compressor=compressors.serialize(self.compressor),
                min_channels=self.min_channels)


MultiHeadAttention = base.with_compression_signature(MultiHeadAttention)


def _copy_projection(plain, compressed):
  compressed.kernel_variable.assign(plain.kernel)
  if plain.bias is not None:
    compressed.bias.assign(plain.bias)
  compressed.compressor.initialize(compressed.kernel_variable)

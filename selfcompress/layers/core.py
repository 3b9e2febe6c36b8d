"""Self-compressing fully connected layer."""

import keras

from selfcompress.layers import base


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class Dense(base.CompressedLayer, keras.layers.Dense):
  """`keras.layers.Dense` whose output units learn their own size.

  `output = activation(dot(input, q(kernel)) + bias * alive)`, where `q` is the
  layer's compressor applied per output unit (see `selfcompress.compressors`).
  Takes every `keras.layers.Dense` argument plus `compressor` and
  `min_channels` (see `CompressedLayer`).

  Input shape: `(batch_size, ..., input_dim)`.
  Output shape: `(batch_size, ..., units)`.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)

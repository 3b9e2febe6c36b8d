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


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class EinsumDense(base.CompressedLayer, keras.layers.EinsumDense):
  """`keras.layers.EinsumDense` whose output features learn their own size.

  For equations whose one kernel-only output axis is the output's last
  (`"abc,cd->abd"`, `"abc,cde->abe"`): each output feature is a channel with
  its own compression parameters. Takes every `keras.layers.EinsumDense`
  argument plus `compressor` and `min_channels` (see `CompressedLayer`).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class Embedding(base.CompressedLayer, keras.layers.Embedding):
  """`keras.layers.Embedding` whose embedding columns learn their own size.

  Column `j` of the `(input_dim, output_dim)` table is channel `j`: a dead
  column is zero for every token and disappears downstream. Takes every
  `keras.layers.Embedding` argument plus `compressor` and `min_channels`
  (see `CompressedLayer`).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)

"""Self-compressing convolutions."""

import keras
from keras import ops

from selfcompress.layers import base


class _Conv(base.CompressedLayer):

  def _output_with(self, inputs, kernel):
    padding = self.padding
    if padding == "causal":  # Conv1D only: Keras pads in `call`, not the op.
      inputs = ops.pad(inputs, self._compute_causal_padding())
      padding = "valid"
    return ops.conv(inputs, kernel, strides=list(self.strides),
                    padding=padding, dilation_rate=self.dilation_rate,
                    data_format=self.data_format)


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class Conv1D(_Conv, keras.layers.Conv1D):
  """`keras.layers.Conv1D` whose filters learn their own size.

  Takes every `keras.layers.Conv1D` argument (`channels_last` only) plus
  `compressor` and `min_channels` (see `CompressedLayer`).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class Conv2D(_Conv, keras.layers.Conv2D):
  """`keras.layers.Conv2D` whose filters learn their own size.

  Takes every `keras.layers.Conv2D` argument (`channels_last` only) plus
  `compressor` and `min_channels` (see `CompressedLayer`).
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)


@keras.saving.register_keras_serializable(package="selfcompress")
@base.with_compression_signature
class DepthwiseConv2D(base.CompressedLayer, keras.layers.DepthwiseConv2D):
  """`keras.layers.DepthwiseConv2D` whose output channels learn their size.

  Output channel `c * depth_multiplier + m` is input channel `c` filtered by
  kernel slice `[:, :, c, m]`; each has its own compression parameters.
  Takes every `keras.layers.DepthwiseConv2D` argument (`channels_last` only)
  plus `compressor` and `min_channels` (see `CompressedLayer`).
  """

  _kernel_attr = "kernel"

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)

  def _param_shape(self, kernel_shape):
    return (1, 1) + tuple(kernel_shape[2:])

  def _output_with(self, inputs, kernel):
    return ops.depthwise_conv(
        inputs, kernel, strides=self.strides, padding=self.padding,
        dilation_rate=self.dilation_rate, data_format=self.data_format)

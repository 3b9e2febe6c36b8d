"""Self-compressing convolutions: plain, depthwise and transposed."""

import keras

from selfcompress.layers import base


def _compressed(keras_cls, doc):
  """The self-compressing subclass of `keras_cls`: the mixin does the work,
  `selfcompress.kinds` knows the kernel layout."""
  cls = type(keras_cls.__name__, (base.CompressedLayer, keras_cls), {
      "__doc__": (
          f"`keras.layers.{keras_cls.__name__}` whose {doc} learn their own "
          f"size.\n\n  Takes every `keras.layers.{keras_cls.__name__}` "
          "argument (both data formats)\n  plus `compressor` and "
          "`min_channels` (see `CompressedLayer`).\n  "),
      "__module__": __name__,
      "__init__": lambda self, *args, **kwargs: super(cls, self).__init__(
          *args, **kwargs),
  })
  cls = base.with_compression_signature(cls)
  return keras.saving.register_keras_serializable(package="selfcompress")(cls)


Conv1D = _compressed(keras.layers.Conv1D, "filters")
Conv2D = _compressed(keras.layers.Conv2D, "filters")
Conv3D = _compressed(keras.layers.Conv3D, "filters")
Conv1DTranspose = _compressed(keras.layers.Conv1DTranspose, "filters")
Conv2DTranspose = _compressed(keras.layers.Conv2DTranspose, "filters")
Conv3DTranspose = _compressed(keras.layers.Conv3DTranspose, "filters")
# Output channel `c * depth_multiplier + m` is input channel `c` filtered by
# kernel slice `[..., c, m]`; each has its own compression parameters.
DepthwiseConv1D = _compressed(keras.layers.DepthwiseConv1D, "output channels")
DepthwiseConv2D = _compressed(keras.layers.DepthwiseConv2D, "output channels")

"""`SelectChannels`: the channels a shed layer still reads."""

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="selfcompress")
class SelectChannels(keras.layers.Layer):
  """Keeps the channels `indices` of its input, in that order, along `axis`.

  `shed()` puts one in front of a layer whose input gates closed inputs
  that it cannot take out of their producer: a model input, a `Flatten` of
  pixels, a tensor that another layer still reads in full. It holds no
  weights and passes its input's dtype through.

  Args:
    indices: the kept channels (non-negative integers, in order).
    axis: the channel axis of the input (counting the batch axis).
  """

  def __init__(self, indices, axis=-1, **kwargs):
    # Features pass through in their own dtype (int ids stay int, float16
    # stays float16): no cast to this layer's compute dtype.
    kwargs["autocast"] = False
    super().__init__(**kwargs)
    self.indices = [int(i) for i in np.asarray(indices).reshape(-1)]
    if any(i < 0 for i in self.indices):
      raise ValueError(f"`indices` must be non-negative. Received: {indices}")
    self.axis = int(axis)
    self.supports_masking = True

  def call(self, inputs):
    return ops.take(inputs, np.asarray(self.indices, "int32"), axis=self.axis)

  def compute_output_shape(self, input_shape):
    shape = list(input_shape)
    shape[self.axis] = len(self.indices)
    return tuple(shape)

  def compute_mask(self, inputs, mask=None):
    return mask

  def cut(self, kept_in, kept_out):
    """This layer's config after its input keeps only `kept_in` (a boolean
    mask over its input channels) and its output only `kept_out` (over its
    output channels): the kept outputs, renumbered among the kept inputs."""
    kept_in, kept_out = np.asarray(kept_in, bool), np.asarray(kept_out, bool)
    position = np.cumsum(kept_in) - 1
    chosen = np.asarray(self.indices, np.int64)[kept_out]
    if not kept_in[chosen].all():
      raise ValueError(f"{self.name!r} reads channels that were removed.")
    return dict(self.get_config(), indices=position[chosen].tolist())

  def get_config(self):
    return dict(super().get_config(), indices=list(self.indices),
                axis=self.axis)

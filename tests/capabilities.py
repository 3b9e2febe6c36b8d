"""What this machine's TensorFlow can run, for tests that need it."""

import numpy as np
import pytest
import tensorflow as tf


def _runs_channels_first_convolutions():
  """TensorFlow's CPU Conv2D takes NCHW only through oneDNN, which is off
  on many x86 CPUs ("The Conv2D op currently only supports the NHWC tensor
  format on the CPU"): plain Keras cannot run such a model there either."""
  if tf.config.list_logical_devices("GPU"):
    return True
  try:
    tf.nn.conv2d(np.zeros((1, 1, 2, 2), "float32"),
                 np.zeros((1, 1, 1, 1), "float32"), 1, "VALID",
                 data_format="NCHW")
    return True
  except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
    return False


RUNS_CHANNELS_FIRST = _runs_channels_first_convolutions()
NO_CHANNELS_FIRST = ("TensorFlow here has no CPU kernel for channels_first "
                     "convolutions (oneDNN is off on this CPU)")
CHANNELS_FIRST = pytest.mark.skipif(not RUNS_CHANNELS_FIRST,
                                    reason=NO_CHANNELS_FIRST)

"""Imports TensorFlow without its native start-up noise.

TensorFlow 2.21 writes "oneDNN custom operations are on", "Could not find
cuda drivers" and, on every machine without a GPU, "failed call to cuInit"
to stderr from C++ before its log level (TF_CPP_MIN_LOG_LEVEL) applies.
`import_tensorflow()` imports it and finds its devices with the process's
stderr file descriptor pointed at /dev/null, so none of that reaches the
user; Python errors are raised after stderr is restored, so none is lost.
Nothing is silenced when TensorFlow is already imported, or when the user
asked for the logs (TF_CPP_MIN_LOG_LEVEL=0 or 1).
"""

import contextlib
import os
import sys


@contextlib.contextmanager
def silenced_stderr():
  """Points file descriptor 2 at /dev/null for the block (no-op if it
  cannot be duplicated, e.g. when it is closed)."""
  try:
    sys.stderr.flush()
    saved = os.dup(2)
  except (OSError, ValueError, AttributeError):
    yield
    return
  try:
    with open(os.devnull, "w") as null:
      os.dup2(null.fileno(), 2)
    yield
  finally:
    os.dup2(saved, 2)
    os.close(saved)


@contextlib.contextmanager
def quiet_native():
  """`silenced_stderr()` unless the user asked for the native logs
  (TF_CPP_MIN_LOG_LEVEL 0 or 1): for the LiteRT converter's and
  interpreter's C++ lines ("fully_quantize: 0, ...", "Created TensorFlow
  Lite XNNPACK delegate for CPU"), which no log level silences."""
  if os.environ.get("TF_CPP_MIN_LOG_LEVEL") in ("0", "1"):
    yield
  else:
    with silenced_stderr():
      yield


def import_tensorflow():
  if "tensorflow" in sys.modules or os.environ.get(
      "TF_CPP_MIN_LOG_LEVEL") in ("0", "1"):
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with silenced_stderr():
    import tensorflow as tf
    # Finding the devices is what logs cuInit's failure on a CPU machine;
    # logical devices and memory growth can still be configured after it.
    tf.config.list_physical_devices()

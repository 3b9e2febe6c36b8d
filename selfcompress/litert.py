"""LiteRT (TensorFlow Lite) export: the shed network as a `.tflite` file.

`selfcompress.export(model, path, format="tflite")` lands here.
"""

import os
import tempfile

import numpy as np
import tensorflow as tf  # the LiteRT converter

from selfcompress import checkpoint, exporting, shedding


def run_litert(path, x):
  """Outputs of the single-input, single-output LiteRT file `path` on the
  batch `x`, computed by the `ai-edge-litert` interpreter."""
  try:
    from ai_edge_litert import interpreter as interpreter_lib
  except ImportError as e:
    raise ImportError("Running a LiteRT file needs the LiteRT interpreter: "
                      "pip install ai-edge-litert") from e
  it = interpreter_lib.Interpreter(model_path=os.fspath(path))
  (inp,), (out,) = it.get_input_details(), it.get_output_details()
  it.resize_tensor_input(inp["index"], x.shape)
  it.allocate_tensors()
  it.set_tensor(inp["index"], np.asarray(x, inp["dtype"]))
  it.invoke()
  return it.get_tensor(out["index"])


def export(model, path, weights, size):
  """Writes `path` (a .tflite file) atomically; returns its `ExportReport`."""
  data = _convert_litert(exporting.float_model(shedding.shed(model)), weights)
  dense = _convert_litert(exporting.float_model(model), "float32")
  report = exporting.ExportReport(
      path=path, format="tflite", total_bytes=len(data),
      weight_bytes=_litert_buffer_bytes(data),
      graph_bytes=len(data) - _litert_buffer_bytes(data),
      accounting_bytes=size.bytes,
      float32_accounting_bytes=size.float_bits / 8,
      dense_float32_bytes=len(dense),
      dense_weight_bytes=_litert_buffer_bytes(dense))

  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
  checkpoint.atomic_write(path, write)
  return report


def _convert_litert(twin, weights):
  """The LiteRT flatbuffer of the plain Keras model `twin`, as bytes."""
  with tempfile.TemporaryDirectory(prefix="selfcompress-litert-") as tmp:
    # What from_keras_model does, without its printout of the signature.
    twin.export(tmp, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    if weights == "float16":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _litert_buffer_bytes(data):
  """Bytes of a LiteRT flatbuffer's constant buffers (its weights)."""
  from tensorflow.lite.python import schema_py_generated as schema
  model = schema.Model.GetRootAsModel(data, 0)
  total = 0
  for i in range(model.BuffersLength()):
    buffer = model.Buffers(i)
    # Files over 2 GB keep buffers outside the flatbuffer (offset, size).
    total += buffer.Size() if buffer.Offset() > 1 else buffer.DataLength()
  return total

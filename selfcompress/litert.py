"""LiteRT (TensorFlow Lite) export: the shed network as a `.tflite` file
whose weights are the learned integer codes.

`selfcompress.export(model, path, format="tflite")` lands here. The shed
network's float twin (`exporting.float_model`) goes through TensorFlow's
LiteRT converter; then each compressed layer's weight tensor in the
flatbuffer is found and rewritten in place as the layer's codes, typed
int2, int4 or int8 (the narrowest that holds every channel's codes), with
one scale per channel and zero point 0 (LiteRT's per-channel symmetric
quantization). The scale is the channel's learned step `2^e`, times any
per-channel factor the converter folded into the weights (a BatchNorm
after the layer): the codes stay the learned ones either way.

Two ways to compute with them (`compute`):

- "float" (default): a DEQUANTIZE op in front of each weight expands it to
  float32 once (LiteRT computes a constant input's DEQUANTIZE once, and
  XNNPACK folds it at delegation), and the model computes in float32 on
  `codes * scale`: the trained model's outputs up to float rounding.
- "dynamic": the ops that have LiteRT kernels for integer weights with
  float activations (FULLY_CONNECTED: int8, int4, int2; CONV_2D: int8,
  int4; DEPTHWISE_CONV_2D: int8) take the integer tensor directly and
  quantize their input on the fly, per batch row ("dynamic range"
  quantization): faster and smaller in memory, not exact. Other weights
  keep their DEQUANTIZE.

Kernel support was measured with ai-edge-litert 2.3.0 (TensorFlow 2.21):
DEQUANTIZE takes per-channel int8, int4 and int2 of either sign of scale;
CONV_2D with int2 weights returns NaN and XNNPACK refuses negative scales,
so integer kernels get int4 at the narrowest and positive scales only.
LiteRT's symmetric int8 weights stop at -127 (integer kernels may pair
products in 16 bits, where -128 * -128 twice overflows): an 8-bit code of
-128 (possible only at exactly 8 bits) stays as it is under DEQUANTIZE,
and is clamped to -127 for integer kernels, counted in the report.
"""

import dataclasses
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf  # the LiteRT converter
# The flatbuffer schema's object API (read, edit, write a .tflite file): part
# of TensorFlow's LiteRT tooling, used nowhere else.
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils

from selfcompress import checkpoint, exporting, native_logs, shedding
from selfcompress import codes as codes_lib
from selfcompress.exporting import StoredLayer
from selfcompress.layers import CompressedLayer

_OP = schema.BuiltinOperator
_TYPE = {2: schema.TensorType.INT2, 4: schema.TensorType.INT4,
         8: schema.TensorType.INT8}
# Ops with integer-weight kernels for float inputs: the weight input, the
# axis of its per-channel scales, and the integer widths that run correctly.
_DYNAMIC = {_OP.FULLY_CONNECTED: (1, 0, (2, 4, 8)),
            _OP.CONV_2D: (1, 0, (4, 8)),
            _OP.DEPTHWISE_CONV_2D: (1, 3, (8,))}
# Ops with kernels for int4 weights and int8 activations (full integer).
_INT4_WITH_INT8 = {_OP.FULLY_CONNECTED, _OP.CONV_2D}
COMPUTE = ("float", "dynamic", "integer")
WEIGHTS = ("codes", "float32", "float16")


@dataclasses.dataclass(frozen=True)
class LayerCodes:
  """A compressed layer's codes, one row per channel."""
  name: str
  codes: np.ndarray   # (channels, weights per channel), int64
  scale: np.ndarray   # (channels,) the learned 2^e, float32
  bits: np.ndarray    # (channels,) storage bits, 0 on dead channels


def layer_codes(model):
  """`LayerCodes` of every compressed layer of `model` that stores codes
  (`selfcompress.codes`; LiteRT stores them at fixed width, whatever the
  layer's `storage`)."""
  found = []
  for layer in exporting.surgery.layers(model):
    if not isinstance(layer, CompressedLayer) or not layer.compressor.stores_codes:
      continue
    layer_codes_ = codes_lib.of(layer)
    found.append(LayerCodes(layer.name, layer_codes_.rows(),
                            layer_codes_.scale, layer_codes_.bits))
  return found


def _matches(layer, values):
  """`(axis, codes, scales)` if the float tensor `values` holds `layer`'s
  codes times one factor per channel along some axis (the learned scale,
  maybe times a folded BatchNorm), else None. Compared as integers: each
  channel's codes, sorted, must equal the layer's."""
  channels, per = layer.codes.shape
  if values.size != channels * per:
    return None
  want = np.sort(layer.codes, axis=1)
  top = np.abs(layer.codes).max(axis=1)
  for axis in [a for a, d in enumerate(values.shape) if d == channels]:
    rows = np.moveaxis(values, axis, 0).reshape(channels, per).astype(np.float64)
    step = np.abs(rows).max(axis=1) / np.maximum(top, 1)
    fallback = np.where(layer.scale > 0, layer.scale, 1.0)
    scales = np.where((top > 0) & (step > 0), step, fallback)
    codes = np.rint(rows / scales[:, None])
    flip = ~(np.sort(codes, axis=1) == want).all(axis=1)
    scales[flip] *= -1
    codes[flip] *= -1
    if not (np.sort(codes, axis=1) == want).all():
      continue
    if np.abs(codes * scales[:, None] - rows).max() > 1e-6 * np.abs(rows).max():
      continue
    # Unfolded: the trained model's exact float32 2^e.
    same = np.abs(scales - layer.scale) <= 1e-6 * np.abs(layer.scale)
    scales = np.where(same, layer.scale, scales).astype(np.float32)
    codes = np.moveaxis(codes.reshape(
        (channels,) + tuple(np.delete(values.shape, axis))), 0, axis)
    return axis, codes.astype(np.int64), scales
  return None


def _pack(codes, bits):
  """`codes` in `bits`-bit two's complement, LiteRT's order: element 0 in
  the lowest bits of byte 0."""
  codes = np.asarray(codes, np.int64).reshape(-1)
  if bits == 8:
    return codes.astype(np.int8).view(np.uint8)
  per_byte = 8 // bits
  low = (codes & ((1 << bits) - 1)).astype(np.uint8)
  low = np.concatenate([low, np.zeros(-low.size % per_byte, np.uint8)])
  shifts = np.arange(per_byte, dtype=np.uint8) * bits
  return np.bitwise_or.reduce(low.reshape(-1, per_byte) << shifts, axis=1)


def _width(codes, choices=(2, 4, 8)):
  """The narrowest integer width in `choices` holding `codes`, or None."""
  for bits in choices:
    if codes.min() >= -(1 << (bits - 1)) and codes.max() < (1 << (bits - 1)):
      return bits
  return None


def store_codes(data, layers, compute="float"):
  """Rewrites the LiteRT flatbuffer `data` (float32 weights) so that each of
  `layers`' (`LayerCodes`) weight tensors holds its integer codes; returns
  `(new data, [StoredLayer], codes clamped from -128 to -127)`."""
  model = flatbuffer_utils.convert_bytearray_to_object(data)
  graph = model.subgraphs[0]
  consumers = {}
  for op in graph.operators:
    code = model.operatorCodes[op.opcodeIndex].builtinCode
    for position, t in enumerate(op.inputs):
      consumers.setdefault(t, []).append((code, position, op))
  candidates = {}
  for i, t in enumerate(graph.tensors):
    buffer = model.buffers[t.buffer]
    if (t.type == schema.TensorType.FLOAT32 and len(t.shape) >= 2
        and buffer.data is not None and len(buffer.data)):
      candidates[i] = np.frombuffer(bytes(buffer.data), np.float32).reshape(t.shape)
  stored, dequantize, clamped = [], [], 0
  for layer in layers:
    found = None
    for i in list(candidates):
      found = _matches(layer, candidates[i])
      if found is not None:
        del candidates[i]
        break
    if found is None:
      stored.append(StoredLayer(
          layer.name, "float32", "-", "no weight tensor of the converted "
          "graph holds its kernel whole (the converter split or merged it)"))
      continue
    axis, codes, scales = found
    uses = consumers.get(i, [])
    direct = None
    if compute == "dynamic" and len(uses) == 1:
      code, position, _ = uses[0]
      spec = _DYNAMIC.get(code)
      if spec and spec[0] == position and spec[1] == axis:
        direct = spec[2]
    if direct:
      # Integer kernels: positive scales, no -128.
      negative = scales < 0
      codes = np.moveaxis(codes, axis, 0)
      codes[negative] *= -1
      codes = np.moveaxis(codes, 0, axis)
      scales = np.abs(scales)
      clamped += int((codes < -127).sum())
      codes = np.maximum(codes, -127)
      bits = _width(codes, direct)
      if bits is None:
        direct = None
    if not direct:
      bits = _width(codes)
    if bits is None:
      stored.append(StoredLayer(
          layer.name, "float32", "-", f"codes need {int(layer.bits.max())} "
          "bits; LiteRT has no integer type between int8 and float"))
      continue
    t = graph.tensors[i]
    t.name = f"{layer.name}/codes".encode()
    groups = None if direct else _groups(codes, axis, bits)
    if groups is None:
      _set_codes(model, t, codes, scales, axis, bits)
      if not direct:
        dequantize.append((i, [i], None))
      stored.append(StoredLayer(layer.name, f"int{bits}",
                                "integer" if direct else "dequantize"))
      continue
    parts, order = [], np.concatenate([c for _, c in groups])
    for n, (width, channels) in enumerate(groups):
      part = t if n == 0 else _new_tensor(graph, t.name, t.shape)
      part.shape = list(t.shape)
      part.shape[axis] = channels.size
      if n:
        model.buffers.append(schema.BufferT())
        part.buffer = len(model.buffers) - 1
      _set_codes(model, part, np.take(codes, channels, axis=axis),
                 scales[channels], axis, width)
      parts.append(i if n == 0 else len(graph.tensors) - 1)
    dequantize.append((i, parts, (axis, np.argsort(order).astype(np.int32))))
    stored.append(StoredLayer(
        layer.name, "+".join(f"int{w}" for w, _ in groups), "dequantize",
        "channels grouped by width: " + ", ".join(
            f"{c.size} in int{w}" for w, c in groups)))
  _add_dequantize(model, graph, dequantize)
  _strip_names(model)
  return _to_bytes(model), stored, clamped


# Bytes a grouped weight adds besides its codes: per group a tensor, its
# buffer, its quantization and a DEQUANTIZE op; once a CONCATENATION, a
# GATHER, their output tensors and the int32 channel order (4 per channel).
_GROUP_BYTES, _REGROUP_BYTES = 160, 400


def _groups(codes, axis, bits):
  """`[(width, channels)]` splitting a weight's channels by the integer
  width each needs (int2, int4, int8), when that saves more bytes than the
  ops that put them back together cost; else None. Only for DEQUANTIZE:
  a LiteRT kernel takes one weight tensor of one type."""
  rows = np.moveaxis(codes, axis, 0).reshape(codes.shape[axis], -1)
  widths = np.array([_width(r) for r in rows])
  per = rows.shape[1]
  groups = [(w, np.flatnonzero(widths == w)) for w in (2, 4, 8)
            if (widths == w).any()]
  if len(groups) < 2:
    return None
  split = sum(-(-c.size * per * w // 8) for w, c in groups)
  cost = _REGROUP_BYTES + _GROUP_BYTES * len(groups) + 4 * rows.shape[0]
  whole = -(-rows.size * bits // 8)
  return groups if split + cost < whole else None


def _set_codes(model, tensor, codes, scales, axis, bits):
  model.buffers[tensor.buffer].data = _pack(codes, bits)
  tensor.type = _TYPE[bits]
  tensor.quantization = _Symmetric(scales, axis)


def _new_tensor(graph, name, shape, dtype=schema.TensorType.FLOAT32):
  tensor = schema.TensorT()
  tensor.shape, tensor.type, tensor.buffer = list(shape), dtype, 0
  tensor.name = name
  graph.tensors.append(tensor)
  return tensor


def _opcode(model, builtin, version):
  """The index of `builtin`'s operator code, added if missing."""
  for i, c in enumerate(model.operatorCodes):
    if c.builtinCode == builtin:
      return i
  model.operatorCodes.append(schema.OperatorCodeT(
      deprecatedBuiltinCode=min(builtin, 127), builtinCode=builtin,
      version=version))
  return len(model.operatorCodes) - 1


def _operator(model, builtin, version, inputs, outputs, options=None,
              options_type=0):
  op = schema.OperatorT()
  op.opcodeIndex = _opcode(model, builtin, version)
  op.inputs, op.outputs = list(inputs), list(outputs)
  op.builtinOptionsType, op.builtinOptions = options_type, options
  return op


def _add_dequantize(model, graph, weights):
  """Feeds each weight's consumers with its float32 values: `weights` are
  `(tensor, parts, regroup)`, the integer `parts` each through DEQUANTIZE
  and, when a weight's channels were grouped by width, `regroup = (axis,
  order)`: CONCATENATION along the axis, then GATHER in the original
  order. All run once: their inputs are constants."""
  ops = []
  for i, parts, regroup in weights:
    shape = graph.tensors[i].shape
    name = graph.tensors[i].name
    floats = []
    for part in parts:
      # Version 2 is DEQUANTIZE from int8, what resolvers all register; the
      # kernel reads the input type (int4, int2 included) from the tensor.
      _new_tensor(graph, None, graph.tensors[part].shape)
      floats.append(len(graph.tensors) - 1)
      ops.append(_operator(model, _OP.DEQUANTIZE, 2, [part], floats[-1:]))
    out = floats[0]
    if regroup is not None:
      axis, order = regroup
      _new_tensor(graph, None, shape)
      joined = len(graph.tensors) - 1
      options = schema.ConcatenationOptionsT()
      options.axis = axis
      ops.append(_operator(model, _OP.CONCATENATION, 1, floats, [joined],
                           options, schema.BuiltinOptions.ConcatenationOptions))
      model.buffers.append(schema.BufferT(data=order.view(np.uint8)))
      index = _new_tensor(graph, None, [order.size], schema.TensorType.INT32)
      index.buffer = len(model.buffers) - 1
      _new_tensor(graph, name + b"/dequantized", shape)
      out = len(graph.tensors) - 1
      options = schema.GatherOptionsT()
      options.axis = axis
      ops.append(_operator(model, _OP.GATHER, 1, [joined, out - 1], [out],
                           options, schema.BuiltinOptions.GatherOptions))
    else:
      graph.tensors[out].name = name + b"/dequantized"
    for op in graph.operators:
      op.inputs = [out if t == i else t for t in op.inputs]
  graph.operators = ops + list(graph.operators)


def store_codes_full_integer(data, layers):
  """The full-integer flatbuffer `data` (int8 weights the converter chose)
  with each layer's weights replaced by its learned codes: the converter's
  int8 values are `round(codes * 127 / max|codes|)` per channel, which
  gives back the codes; the channel's scale and the bias' (input scale *
  weight scale) follow. Returns `(new data, [StoredLayer], clamped)`."""
  model = flatbuffer_utils.convert_bytearray_to_object(data)
  graph = model.subgraphs[0]
  users = {}
  for op in graph.operators:
    for position, t in enumerate(op.inputs):
      users.setdefault(t, []).append((position, op))
  candidates = {i: t for i, t in enumerate(graph.tensors)
                if t.type == schema.TensorType.INT8 and len(t.shape) >= 2
                and model.buffers[t.buffer].data is not None
                and len(model.buffers[t.buffer].data) and t.quantization
                and t.quantization.scale is not None}
  stored, clamped = [], 0
  for layer in layers:
    channels, per = layer.codes.shape
    want = np.sort(layer.codes, axis=1)
    top = np.abs(layer.codes).max(axis=1)
    hit = None
    for i, t in candidates.items():
      q = np.frombuffer(bytes(model.buffers[t.buffer].data), np.int8).reshape(t.shape)
      if q.size != channels * per:
        continue
      for axis in [a for a, d in enumerate(q.shape) if d == channels]:
        rows = np.moveaxis(q, axis, 0).reshape(channels, per).astype(np.float64)
        qtop = np.abs(rows).max(axis=1)
        codes = np.rint(rows * (top / np.maximum(qtop, 1))[:, None])
        sign = np.where((np.sort(codes, axis=1) == want).all(axis=1), 1, -1)
        codes *= sign[:, None]
        if (np.sort(codes, axis=1) == want).all():
          hit = i, axis, codes * sign[:, None], qtop
          break
      if hit:
        break
    if hit is None:
      stored.append(StoredLayer(layer.name, "int8", "integer", "the "
                                "converter's int8 weights (codes not found)"))
      continue
    # `codes` has the int8 values' signs: a channel whose folded factor is
    # negative stores -codes, so that scales stay positive.
    i, axis, codes, qtop = hit
    del candidates[i]
    t = graph.tensors[i]
    old = np.broadcast_to(np.asarray(t.quantization.scale, np.float64), (channels,))
    scales = np.where(top > 0, old * qtop / np.maximum(top, 1), old)
    # XNNPACK (LiteRT's CPU delegate) refuses an op whose output steps per
    # product step, input scale * weight scale / output scale, reach 256:
    # where the learned grid is that much coarser than the calibrated
    # output, the converter's finer weights stay.
    ratio = max((graph.tensors[op.inputs[0]].quantization.scale[0]
                 * scales.max() / graph.tensors[op.outputs[0]].quantization.scale[0])
                for _, op in users.get(i, [])) if users.get(i) else 0
    if ratio >= 256:
      stored.append(StoredLayer(
          layer.name, "int8", "integer", "the converter's int8 weights: the "
          f"learned steps are {ratio:.0f} output steps, over LiteRT's 256"))
      continue
    clamped += int((codes < -127).sum())
    codes = np.maximum(codes, -127)
    shape = (channels,) + tuple(np.delete(t.shape, axis))
    codes = np.moveaxis(codes.reshape(shape), 0, axis)
    kinds = {model.operatorCodes[op.opcodeIndex].builtinCode
             for position, op in users.get(i, []) if position == 1}
    width = 4 if (kinds and kinds <= _INT4_WITH_INT8 and axis == 0
                  and _width(codes, (4,))) else 8
    model.buffers[t.buffer].data = _pack(codes, width)
    t.type = _TYPE[width]
    t.quantization = _Symmetric(scales, axis)
    for position, op in users.get(i, []):
      if position == 1 and len(op.inputs) > 2 and op.inputs[2] >= 0:
        _requantize_bias(model, graph, op, old, scales)
    t.name = f"{layer.name}/codes".encode()
    stored.append(StoredLayer(layer.name, f"int{width}", "integer"))
  _strip_names(model)
  return _to_bytes(model), stored, clamped


class _Symmetric(schema.QuantizationParametersT):
  """Per-channel scales with zero points 0. LiteRT wants one zero point per
  scale, as int64: 8 bytes a channel, more than the scale. All are 0, so
  the file holds one such vector per length, which every tensor's table
  points at (FlatBuffers allows shared vectors); see `_to_bytes`."""

  def __init__(self, scales, axis):
    super().__init__(scale=np.asarray(scales, np.float32).reshape(-1),
                     zeroPoint=np.zeros(np.size(scales), np.int64),
                     quantizedDimension=int(axis))

  def Pack(self, builder):  # noqa: N802 (the FlatBuffers object API's name)
    zeros = _ZEROS.setdefault(id(builder), {})
    n = self.scale.size
    if n not in zeros:
      zeros[n] = builder.CreateNumpyVector(self.zeroPoint)
    scale = builder.CreateNumpyVector(self.scale)
    schema.QuantizationParametersStart(builder)
    schema.QuantizationParametersAddScale(builder, scale)
    schema.QuantizationParametersAddZeroPoint(builder, zeros[n])
    schema.QuantizationParametersAddQuantizedDimension(
        builder, self.quantizedDimension)
    return schema.QuantizationParametersEnd(builder)


_ZEROS = {}  # id(builder) -> {length: offset of a vector of zeros}


def _to_bytes(model):
  """The flatbuffer of the object-API `model` (`flatbuffer_utils`' writer,
  with `_Symmetric`'s shared zero points)."""
  try:
    return flatbuffer_utils.convert_object_to_bytearray(model)
  finally:
    _ZEROS.clear()


def _strip_names(model):
  """Drops the converter's names of intermediate tensors (lists of the
  TensorFlow ops fused into each, ~40 bytes a tensor): the inputs, outputs
  and the weights (named `LAYER/codes`) keep theirs."""
  for graph in model.subgraphs:
    keep = set(graph.inputs) | set(graph.outputs)
    for i, t in enumerate(graph.tensors):
      if i not in keep and not (t.name or b"").endswith(b"/codes"):
        t.name = None


def _requantize_bias(model, graph, op, old, new):
  """An int32 bias is stored at input scale * weight scale: follows the
  weights' new per-channel scales."""
  bias = graph.tensors[op.inputs[2]]
  if bias.type != schema.TensorType.INT32:
    return
  data = model.buffers[bias.buffer]
  values = np.frombuffer(bytes(data.data), np.int32).astype(np.float64)
  input_scale = graph.tensors[op.inputs[0]].quantization.scale[0]
  values = np.rint(values * old / new)
  data.data = values.astype(np.int32).view(np.uint8)
  bias.quantization = _Symmetric(input_scale * new, 0)


def run_litert(path, x):
  """Outputs of the single-input, single-output LiteRT file `path` on the
  batch `x`, computed by the `ai-edge-litert` interpreter. A full-integer
  file's int8 input and output are quantized and dequantized here with
  the file's own scale and zero point."""
  return Runner(path)(x)


class Runner:
  """The LiteRT interpreter on one file, called on batches of any size."""

  def __init__(self, path):
    try:
      from ai_edge_litert import interpreter as interpreter_lib
    except ImportError as e:
      raise ImportError("Running a LiteRT file needs the LiteRT interpreter: "
                        "pip install ai-edge-litert") from e
    with native_logs.quiet_native():
      self._it = interpreter_lib.Interpreter(model_path=os.fspath(path))
    (self._in,), (self._out,) = (self._it.get_input_details(),
                                 self._it.get_output_details())
    self._shape = None

  def __call__(self, x):
    x = np.asarray(x, np.float32)
    if x.shape != self._shape:
      self._it.resize_tensor_input(self._in["index"], x.shape)
      with native_logs.quiet_native():  # XNNPACK says it was created
        self._it.allocate_tensors()
      self._shape = x.shape
    if self._in["dtype"] == np.int8:
      scale, zero = self._in["quantization"]
      x = np.clip(np.rint(x / scale + zero), -128, 127)
    self._it.set_tensor(self._in["index"], x.astype(self._in["dtype"]))
    self._it.invoke()
    y = self._it.get_tensor(self._out["index"])
    if self._out["dtype"] == np.int8:
      scale, zero = self._out["quantization"]
      y = (y.astype(np.float32) - zero) * scale
    return y


def accuracy(predict, dataset):
  """Top-1 accuracy of `predict` (a batch of inputs -> scores) on the
  `(inputs, labels)` batches of `dataset`."""
  right = total = 0
  for x, y in dataset:
    scores = np.asarray(predict(np.asarray(x)))
    right += int((scores.argmax(-1) == np.asarray(y).reshape(-1)).sum())
    total += len(scores)
  return right / max(total, 1)


def export(model, path, size, weights="codes", compute="float",
           representative_data=None):
  """Writes `path` (a .tflite file) atomically; returns its `ExportReport`.
  The arguments are `selfcompress.export`'s, checked there."""
  small = shedding.shed(model)
  twin = _in_float32(exporting.float_model(small))
  stored, clamped = [], 0
  if compute == "integer":
    data = _convert_litert(twin, "integer", representative_data)
    data, stored, clamped = store_codes_full_integer(data, layer_codes(small))
  elif weights == "codes":
    data = _convert_litert(twin, "float32")
    data, stored, clamped = store_codes(data, layer_codes(small), compute)
  else:
    data = _convert_litert(twin, weights)
  dense = _convert_litert(_in_float32(exporting.float_model(model)), "float32")
  report = exporting.ExportReport(
      path=path, format="tflite", total_bytes=len(data),
      weight_bytes=_litert_buffer_bytes(data),
      graph_bytes=len(data) - _litert_buffer_bytes(data),
      accounting_bytes=size.bytes,
      float32_accounting_bytes=size.float_bits / 8,
      dense_float32_bytes=len(dense),
      dense_weight_bytes=_litert_buffer_bytes(dense),
      compute=compute if weights == "codes" else None,
      layers=tuple(stored), clamped_codes=clamped,
      notes=exporting.fixed_width_note(model, "LiteRT"))

  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
  checkpoint.atomic_write(path, write)
  return report


def _in_float32(model):
  """`model` computing in float32: LiteRT's float kernels are float32 (a
  mixed-precision model's float16 ops have none), so a mixed-precision
  model is exported as its float32 twin, which differs from it by the
  float16 rounding of its activations."""
  if all(l.dtype_policy.compute_dtype == "float32"
         for l in model._flatten_layers(include_self=False)):
    return model

  def float32(layer):
    config = layer.get_config()
    if "dtype" in config:
      config["dtype"] = "float32"
    return layer.__class__.from_config(config)
  twin = keras.models.clone_model(model, clone_function=float32)
  twin.set_weights(model.get_weights())
  return twin


def _samples(data, count=256):
  """Up to `count` single inputs from `data`: an array of inputs, or a
  `tf.data.Dataset` of batches (or of `(inputs, labels)` batches)."""
  if isinstance(data, tf.data.Dataset):
    taken = []
    for batch in data:
      batch = batch[0] if isinstance(batch, (tuple, list)) else batch
      taken.extend(np.asarray(batch))
      if len(taken) >= count:
        break
    data = np.stack(taken)
  data = np.asarray(data, np.float32)[:count]
  for row in data:
    yield [row[None]]


def _convert_litert(twin, weights, representative_data=None):
  """The LiteRT flatbuffer of the plain Keras model `twin`, as bytes:
  float32 or float16 weights, or "integer": int8 weights, activations,
  input and output, calibrated on `representative_data`."""
  with tempfile.TemporaryDirectory(prefix="selfcompress-litert-") as tmp:
    # What from_keras_model does, without its printout of the signature.
    twin.export(tmp, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
    if weights == "float16":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.target_spec.supported_types = [tf.float16]
    elif weights == "integer":
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      converter.representative_dataset = lambda: _samples(representative_data)
      converter.target_spec.supported_ops = [
          tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = tf.int8
      converter.inference_output_type = tf.int8
    with native_logs.quiet_native():
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

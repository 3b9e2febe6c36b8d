"""Compact export: a SavedModel whose weights are the packed integer codes.

`export(model, path)` sheds the dead channels, packs each alive channel's
codes at its learned bit depth (`selfcompress.packing`), or for a layer
whose compressor has `storage="entropy"` entropy-codes them in a stream of
the layer's own (`selfcompress.entropy`), and writes a SavedModel that
decodes them (`codes * 2^e`) once, when it is loaded, for its
`serving_default` signature to use. Serving needs TensorFlow only. The
codes come from `selfcompress.codes`, as LiteRT's and Keras' exports (which
store them at fixed width whatever the layer's `storage`) take them.
"""

import dataclasses
import json
import math
import os
import shutil
import tempfile
import uuid
import zlib

import keras
import numpy as np
import tensorflow as tf  # the SavedModel format
from keras import ops

from selfcompress import accounting, entropy, kinds, packing, shedding, surgery
from selfcompress import codes as codes_lib
from selfcompress.layers import CompressedLayer
from selfcompress.layers.base import keras_parent

REPORT = "selfcompress_export.json"


@dataclasses.dataclass(frozen=True)
class StoredLayer:
  """How an export stores one compressed layer's kernel."""
  layer: str
  storage: str        # "int8", "int4", "int2", "int4+int8"..., or "float32"
  kernel: str         # LiteRT: "dequantize" or "integer"; else "-"
  note: str = ""


@dataclasses.dataclass(frozen=True)
class ExportReport:
  """What `export()` wrote, in bytes; `print(report)` shows it as a table.

  `total_bytes` = `weight_bytes` + `graph_bytes`, measured on disk. The dense
  columns describe the unshed network as a plain float32 model exported in
  the same format, the reference the ratios are taken against.
  """
  path: str
  format: str                    # "saved_model", "tflite" or "keras"
  total_bytes: int               # the whole SavedModel folder / .tflite file
  weight_bytes: int              # its weights: variables/, or constant buffers
  graph_bytes: int               # the rest: graph, signatures, metadata
  accounting_bytes: float        # what selfcompress.size() says
  float32_accounting_bytes: float  # the accounting's float32 reference
  dense_float32_bytes: int       # the dense float32 export, whole
  dense_weight_bytes: int        # the dense float32 export's weights
  packed_weight_bytes: int = None  # SavedModel: the packed codes alone
  zlib_weight_bytes: int = None    # the same, entropy-coded with zlib -9
  compute: str = None              # LiteRT: "float", "dynamic", "integer"
  layers: tuple = ()               # a `StoredLayer` each (LiteRT, Keras)
  clamped_codes: int = 0           # LiteRT: -128 codes stored as -127
  notes: tuple = ()                # remarks on the export as a whole

  @property
  def directory_bytes(self):
    """The whole export (the name from when only folders were written)."""
    return self.total_bytes

  def as_dict(self):
    return dataclasses.asdict(self)

  def __str__(self):
    name = {"saved_model": "SavedModel", "tflite": "LiteRT",
            "keras": "Keras (.keras)"}[self.format]
    whole = "whole folder" if self.format == "saved_model" else "whole file"
    where = {"saved_model": "variables/", "tflite": "constant buffers",
             "keras": "weight arrays"}[self.format]
    rows = [("", "this export", "dense float32", "dense / this"),
            (f"weights ({where})", self.weight_bytes,
             self.dense_weight_bytes),
            ("graph and metadata", self.graph_bytes,
             self.dense_float32_bytes - self.dense_weight_bytes),
            (whole, self.total_bytes, self.dense_float32_bytes)]
    cells = [[r[0]] + [_bytes(v) for v in r[1:]]
             + [_ratio(r[2], r[1])] for r in rows[1:]]
    cells.insert(0, list(rows[0]))
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [f"{name} export: {self.path}"]
    lines += ["  " + c[0].ljust(widths[0]) + "".join(
        "  " + v.rjust(w) for v, w in zip(c[1:], widths[1:])) for c in cells]
    if self.packed_weight_bytes is not None:
      lines.append(f"  packed weight codes: {_bytes(self.packed_weight_bytes)}"
                   f" (zlib -9: {_bytes(self.zlib_weight_bytes)})")
    lines.append(
        f"  accounting (selfcompress.size): {_bytes(self.accounting_bytes)}; "
        f"its float32 reference {_bytes(self.float32_accounting_bytes)} "
        f"({_ratio(self.float32_accounting_bytes, self.accounting_bytes)} "
        "smaller)")
    lines.append(
        f"  weights on disk / accounting: "
        f"{_ratio(self.weight_bytes, self.accounting_bytes)}")
    if self.compute:
      lines.append(f"  computes: {_COMPUTE[self.compute]}")
    for row in self.layers:
      kernel = {"dequantize": ", dequantized at load",
                "integer": ", integer kernel", "-": ""}[row.kernel]
      note = f" ({row.note})" if row.note else ""
      lines.append(f"    {row.layer}: {row.storage}{kernel}{note}")
    if self.clamped_codes:
      lines.append(f"  {self.clamped_codes} code(s) of -128 stored as -127 "
                   "(integer kernels take symmetric int8)")
    lines += [f"  note: {note}" for note in self.notes]
    return "\n".join(lines)


def fixed_width_note(model, runtime):
  """The notes of an export to `runtime` (LiteRT, Keras), which stores
  every layer's codes at fixed width: which layers the accounting and the
  SavedModel entropy-code instead (`storage="entropy"`)."""
  names = [l.name for l in surgery.layers(model)
           if codes_lib.storage(l) == "entropy"]
  if not names:
    return ()
  return (f"{', '.join(names)}: storage='entropy', stored here at fixed "
          f"width ({runtime} cannot decode entropy-coded weights); "
          "selfcompress.size() and the SavedModel export entropy-code "
          "them",)


_COMPUTE = {
    "float": "float32 on the dequantized codes (the trained model's outputs)",
    "dynamic": "integer-weight kernels, activations quantized on the fly",
    "integer": "full integer: int8 activations, input and output"}


def _bytes(n):
  return f"{n:,.0f} B"


def _ratio(a, b):
  return f"{a / b:.2f}x" if b else "-"


# -- SavedModel ---------------------------------------------------------------
#
# A SavedModel's size has a fixed part that grows with what it holds, not
# with the bytes: each variable costs a save and a restore op, graph nodes,
# a checkpoint key and object-graph entries (~1.7 KB), each subgraph its
# nodes (~100 B each), each resource two functions. So the export stores
# two variables whatever the model (`_Compact`): `packed` (uint8), each
# packed kernel channel's bit depth, then every packed kernel's codes in one
# bit stream (`selfcompress.packing`), then the entropy-coded layers'
# streams (`selfcompress.entropy`, one after the other); and `floats`, the
# code channels' scales, then every other weight. One subgraph decodes them
# into one resource at load (`_DecodedWeights`), which the serving function
# reads. Entropy-coded layers add one decoder for them all: a loop of at
# most `entropy.LANE_SYMBOLS` steps (~0.2 s for 100k codes on a CPU) and
# about 30 KB of graph, whatever the number of layers.

# A channel's "bit depth" when its weights are stored as float32: a
# compressor without codes, or one deeper than `packing.MAX_BITS`.
_FLOAT_BITS = 32


class _FoldedNorm(keras.layers.Layer):
  """A BatchNormalization at inference, as the scale and shift it applies.

  On TensorFlow, Keras computes it as `x * inv + (beta - mean * inv)` with
  `inv = rsqrt(variance + epsilon) * gamma` (`tf.nn.batch_normalization`).
  `fold()` computes both vectors once, with the same float32 ops, so the
  outputs are the layer's, from the two floats per channel that the
  accounting counts instead of the layer's four.
  """

  def __init__(self, axis, **kwargs):
    super().__init__(**kwargs)
    self.axis = axis

  def build(self, input_shape):
    shape = (input_shape[self.axis],)
    self.scale = self.add_weight(name="scale", shape=shape, trainable=False,
                                 initializer="ones")
    self.shift = self.add_weight(name="shift", shape=shape, trainable=False,
                                 initializer="zeros")

  def call(self, inputs, training=None, mask=None):
    # Like BatchNormalization at inference (which ignores the mask): float32
    # at least, then the compute dtype.
    x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
    scale = ops.cast(self.scale, x.dtype)
    shift = ops.cast(self.shift, x.dtype)
    if self.axis not in (-1, len(x.shape) - 1):  # else they broadcast
      shape = [1] * len(x.shape)
      shape[self.axis] = -1
      scale, shift = ops.reshape(scale, shape), ops.reshape(shift, shape)
    return ops.cast(x * scale + shift, self.compute_dtype)

  def fold(self, norm):
    """Takes the scale and shift of the BatchNormalization `norm`."""
    mean = ops.convert_to_tensor(norm.moving_mean)
    inv = ops.rsqrt(ops.convert_to_tensor(norm.moving_variance) + norm.epsilon)
    if norm.gamma is not None:
      inv = inv * ops.convert_to_tensor(norm.gamma)
    shift = -mean * inv
    if norm.beta is not None:
      shift = ops.convert_to_tensor(norm.beta) - mean * inv
    self.scale.assign(inv)
    self.shift.assign(shift)


@dataclasses.dataclass(frozen=True)
class _Kernel:
  """A compressed layer's kernel as the SavedModel stores it."""
  codes: np.ndarray     # int64, the kernel's shape: 0 where not a packed code
  widths: np.ndarray    # the packed codes' bit depths, the kernel's shape
  bits: np.ndarray      # per channel: 0 dead, 1 to MAX_BITS, or _FLOAT_BITS
  scales: np.ndarray    # float32, one per code channel (1 to MAX_BITS bits)
  floats: np.ndarray    # float32, the float32-stored channels' weights
  blocks: list          # (inner, dim, stride) per run of channel axes
  stream: bytes = b""   # storage="entropy": the code channels' codes, coded
  count: int = 0        # how many codes `stream` holds
  entropy: bool = False  # whether the codes are in `stream`, not packed
  inputs: np.ndarray = None  # the stream's inputs, if not all (bool)
  values: np.ndarray = None  # the kernel as stored (0 where nothing is)
  input_axis: tuple = None  # (inner, dim, channels per group)


def _packed_kernel(layer, q, liveness=None):
  """The `_Kernel` of the compressed `layer`, whose effective kernel is `q`.

  Codes stay in the kernel's own element order, so the decoded stream is
  the kernel with no transpose or gather: each element's channel (hence its
  bit depth and scale) follows from its position
  (`_Compact.channel_of_elements`). A layer whose compressor has
  `storage="entropy"` keeps its code channels' codes, in that order, in an
  entropy-coded stream of its own (`selfcompress.entropy`) instead: given
  `liveness` (`_stream_liveness`), those of the channels and inputs that the
  accounting counts, as `selfcompress.size()` counts the stream; the other
  weights are 0 (they read only inputs that are constantly 0).
  """
  c = layer.compressor
  param_shape = layer.kind.param_shape(layer)
  if c.stores_codes:
    layer_codes = codes_lib.of(layer, q)
    alive, codes = layer_codes.alive, layer_codes.codes
    bits = np.where(layer_codes.bits > packing.MAX_BITS, _FLOAT_BITS,
                    layer_codes.bits)
    scale = layer_codes.scale
  else:
    alive = np.asarray(c.state().alive).reshape(-1) > 0
    bits = np.where(alive, _FLOAT_BITS, 0)
    scale = np.ones(alive.size, np.float32)
    codes = np.zeros(q.shape, np.int64)
  channel = np.broadcast_to(
      np.arange(alive.size).reshape(param_shape), q.shape)
  is_code = (bits > 0) & (bits <= packing.MAX_BITS)
  codes = np.where(is_code[channel], codes, 0)
  floats = q[(bits == _FLOAT_BITS)[channel]].astype(np.float32)
  blocks = _blocks(q.shape, param_shape)
  if codes_lib.storage(layer) == "entropy":
    inputs = axis = None
    mask = is_code[channel]
    if liveness is not None:
      in_alive, out_alive = liveness
      bits = np.where(out_alive, bits, 0)
      is_code = (bits > 0) & (bits <= packing.MAX_BITS)
      floats = q[(bits == _FLOAT_BITS)[channel]].astype(np.float32)
      mask = is_code[channel]
      where, groups = codes_lib.input_axis(layer)
      if where is not None and not in_alive.all():
        inputs = in_alive
        mask = mask & codes_lib.input_mask(layer, in_alive)
        axis = (math.prod(q.shape[where + 1:]), q.shape[where],
                out_alive.size // groups)
    coded = codes[mask]
    values = np.where(mask | (bits == _FLOAT_BITS)[channel], q, 0)
    return _Kernel(np.zeros_like(codes), np.zeros_like(codes), bits,
                   scale[is_code], floats, blocks, stream=entropy.encode(coded),
                   count=int(coded.size), entropy=True, inputs=inputs,
                   input_axis=axis, values=values.astype(q.dtype))
  return _Kernel(codes, np.where(is_code, bits, 0)[channel], bits,
                 scale[is_code], floats, blocks, values=q)


def _blocks(shape, param_shape):
  """How an element's channel follows from its position `i` in a kernel of
  `shape` whose per-channel vectors broadcast as `param_shape`: the sum of
  `(i // inner) % dim * stride` over each run of consecutive channel axes
  (one run for all the kinds but some EinsumDense equations)."""
  runs = []
  for axis in (a for a, d in enumerate(param_shape) if d != 1):
    if runs and runs[-1][1] == axis:
      runs[-1][1] = axis + 1
    else:
      runs.append([axis, axis + 1])
  blocks, stride = [], 1
  for start, end in reversed(runs):
    dim = math.prod(shape[start:end])
    blocks.insert(0, (math.prod(shape[end:]), dim, stride))
    stride *= dim
  return blocks


@dataclasses.dataclass(frozen=True)
class _Compact:
  """The shed model's serving form: a plain Keras model (each compressed
  layer as its Keras parent, each BatchNormalization folded) whose weights
  the SavedModel reads from the two stored arrays, never from its own
  variables (which hold the same values, for `model` alone).

  `weights` are its floating-point variables in stored order: the packed
  kernels, then the others, as `floats` ends. `decode()` gives them all,
  flat, one after the other; the other variables are `constants`.
  """
  model: keras.Model
  packed: np.ndarray    # uint8: `channels` bit depths, the packed codes,
                        # then the entropy-coded streams
  channels: int         # packed kernel channels, all kernels together
  floats: np.ndarray    # float32: scales, float32-stored kernel weights, rest
  scales: int           # how many of `floats` are scales
  kernel_floats: int    # then how many are float32-stored kernel weights
  layout: np.ndarray    # int64, a row per packed kernel: size, then blocks
  weights: list
  constants: list       # (variable, value): the other variables
  # storage="entropy": whether each packed kernel's codes are in a stream,
  # the packed codes' bytes, and each stream's (start after them, codes).
  entropy: tuple = ()
  packed_code_bytes: int = 0
  streams: tuple = ()
  # Entropy-coded kernels with dead inputs: which inputs each one's stream
  # covers (one after the other, after a True for every other kernel), and
  # a row per packed kernel: where its inputs start, and how an element's
  # input follows from its position (inner, dim, channels per group).
  inputs: np.ndarray = None
  input_layout: np.ndarray = None

  @property
  def kernel_bytes(self):
    """The packed kernels as stored: their codes, then their float32
    weights (`ExportReport.packed_weight_bytes` counts these)."""
    start = self.scales
    return np.concatenate([self.packed[self.channels:], self.floats[
        start:start + self.kernel_floats].view(np.uint8)])

  def _elements(self, gather):
    """`(per_kernel, position)`: a function giving each packed kernel
    element a value per kernel (from an array of them), and each element's
    position in its kernel."""
    sizes = self.layout[:, 0]
    ends = np.cumsum(sizes)
    index = tf.int64 if ends[-1] >= 2 ** 31 else tf.int32
    position = tf.range(ends[-1], dtype=index)
    if len(sizes) > 1:  # each element's kernel, by a search on one row
      kernel = tf.reshape(tf.raw_ops.UpperBound(
          sorted_inputs=tf.constant(ends[None], index),
          values=tf.reshape(position, [1, -1]), out_type=index), [-1])

    def per_kernel(values):
      values = np.asarray(values)
      if (values == values[0]).all():
        return tf.constant(values[0], index)
      return gather(tf.constant(values, index), kernel)

    return per_kernel, position - per_kernel(ends - sizes)

  def input_alive(self, gather, channel, elements=None):
    """Whether each packed kernel element reads an input that its kernel's
    stream covers (entropy-coded kernels with dead inputs)."""
    per_kernel, position = elements or self._elements(gather)
    channels = np.prod(self.layout[:, 2::3], axis=1)
    local = channel - per_kernel(np.cumsum(channels) - channels)
    start, inner, dim, group = (self.input_layout[:, i] for i in range(4))
    inputs = (local // per_kernel(group) * per_kernel(dim)
              + position // per_kernel(inner) % per_kernel(dim))
    return gather(tf.constant(self.inputs), per_kernel(start) + inputs)

  def channel_of_elements(self, gather, elements=None):
    """Each packed kernel element's channel, numbered over all the packed
    kernels: vectorised over the elements, from a few numbers per kernel
    (a scalar where the kernels agree, as `inner` and `stride` mostly do).
    `elements`: `_elements(gather)`, if made already."""
    per_kernel, position = elements or self._elements(gather)
    channels = np.prod(self.layout[:, 2::3], axis=1)
    channel = per_kernel(np.cumsum(channels) - channels)
    for b in range(1, self.layout.shape[1], 3):
      inner, dim, stride = (self.layout[:, b + i] for i in range(3))
      if (dim == 1).all():
        continue
      term = position if (inner == 1).all() else position // per_kernel(inner)
      term %= per_kernel(dim)
      channel += term if (stride == 1).all() else term * per_kernel(stride)
    return channel

  def decode(self, packed, floats):
    """Every weight in `weights`, flat, one after the other: runs once, when
    the SavedModel loads, on the stored arrays.

    TensorFlow ops, unlike the rest of the export: this graph is stored in
    the SavedModel, and Keras' `take` adds a dozen nodes to each gather (for
    negative indices, which these never are).
    """
    axis = tf.constant(0)

    def gather(params, indices):
      return tf.gather(params, indices, axis=axis)

    scales, kernel_floats, rest = tf.split(
        floats, [self.scales, self.kernel_floats, -1])
    if not len(self.layout):
      return rest
    bits, codes = tf.split(packed, [self.channels, -1])
    elements = self._elements(gather)
    channel = self.channel_of_elements(gather, elements)
    bits = tf.cast(bits, tf.int32)
    width = gather(bits, channel)
    is_code = tf.cast(bits, tf.bool)
    if (self.packed[:self.channels] == _FLOAT_BITS).any():
      stored_float = tf.equal(width, _FLOAT_BITS)
      width = tf.where(stored_float, 0, width)
      is_code = tf.logical_and(is_code, bits <= packing.MAX_BITS)
    if any(self.entropy):
      # The code channels of entropy-coded kernels take their codes, in
      # order, from the streams (decoded all at once); the others' are
      # packed.
      codes, coded = tf.split(codes, [self.packed_code_bytes, -1])
      in_coded = tf.cast(elements[0](np.array(self.entropy, np.int64)),
                         tf.bool)
      width = tf.where(in_coded, 0, width)
      in_stream = tf.logical_and(in_coded, gather(is_code, channel))
      if self.inputs is not None:
        in_stream = tf.logical_and(
            in_stream, self.input_alive(gather, channel, elements))
      values = packing.unpack(codes, width, gather)
      rank = tf.cumsum(tf.cast(in_stream, tf.int32), exclusive=True)
      streams = entropy.decode_tf(coded, self.streams)
      last = max(sum(n for _, n in self.streams) - 1, 0)
      values = tf.where(in_stream, gather(
          streams, tf.minimum(rank, last)), values)
      values = tf.cast(values, tf.float32)
    else:
      values = tf.cast(packing.unpack(codes, width, gather), tf.float32)
    # Each channel's scale: the next stored one if it has codes, else 0.
    rank = tf.cumsum(tf.cast(is_code, tf.int32), exclusive=True)
    scale = gather(tf.concat([scales, [0.0]], 0),
                   tf.where(is_code, rank, self.scales))
    values *= gather(scale, channel)
    if self.kernel_floats:
      rank = tf.cumsum(tf.cast(stored_float, tf.int32), exclusive=True)
      values = tf.where(stored_float, gather(
          kernel_floats, tf.minimum(rank, self.kernel_floats - 1)), values)
    return tf.concat([values, rest], 0)


def _compact(small):
  """The `_Compact` serving form of the shed model `small`.

  Each compressed layer becomes its plain Keras parent, so that the served
  graph holds the layer's op, not its quantizer; BatchNormalizations are
  folded (`_FoldedNorm`); the other layers are copied as they are. Weights
  stored as float32 are exact for float32, float16 and bfloat16 variables;
  any other variable (an integer count, a float64 one) becomes a constant
  of the graph, with its exact value.
  """
  def twin(layer):
    if isinstance(layer, CompressedLayer):
      return _float_twin(layer)
    if isinstance(layer, keras.layers.BatchNormalization):
      return _FoldedNorm(layer.axis, name=layer.name, dtype=layer.dtype_policy)
    return surgery.same_layer(layer)

  model, made = surgery.rebuild(small, twin)
  kernels = {}
  liveness = _stream_liveness(small)
  for old, new in made:
    if isinstance(old, CompressedLayer):
      q, b = (None if w is None else np.asarray(w)
              for w in old.effective_weights())
      part = _packed_kernel(old, q, liveness.get(old))
      new.set_weights([part.values] + ([] if b is None else [b]))
      kernels[id(kinds.of(new).kernel(new))] = part
    elif isinstance(new, _FoldedNorm):
      new.fold(old)
    elif new is not old:
      for var, source in surgery.weight_pairs(old, new):
        var.assign(source)
  variables = list({id(v): v for v in model.variables}.values())
  packed = [v for v in variables if id(v) in kernels]
  rest = [v for v in variables if id(v) not in kernels]
  floating = [v for v in rest
              if str(v.dtype) in ("float32", "float16", "bfloat16")]
  parts = [kernels[id(v)] for v in packed]
  blocks = max((len(p.blocks) for p in parts), default=0)

  def row(part):  # its size, then its blocks (padded with ones that add 0)
    padded = part.blocks + [(1, 1, 0)] * (blocks - len(part.blocks))
    return [part.codes.size] + [x for block in padded for x in block]

  def joined(arrays, dtype):
    return np.concatenate([np.zeros(0, dtype)] + [
        np.asarray(a).astype(dtype).reshape(-1) for a in arrays])

  scales = joined([p.scales for p in parts], np.float32)
  kernel_floats = joined([p.floats for p in parts], np.float32)
  bits = joined([p.bits for p in parts], np.uint8)
  codes = packing.pack(joined([p.codes for p in parts], np.int64),
                       joined([p.widths for p in parts], np.int64))
  coded = [p for p in parts if p.entropy]
  starts = np.cumsum([0] + [len(p.stream) for p in coded])
  streams = np.frombuffer(b"".join(p.stream for p in coded), np.uint8)
  inputs = input_layout = None
  if any(p.inputs is not None for p in parts):
    masks = [np.ones(1, bool)] + [p.inputs for p in parts
                                  if p.inputs is not None]
    at = np.cumsum([m.size for m in masks]) - [m.size for m in masks]
    at = iter(at[1:])
    inputs = np.concatenate(masks)
    input_layout = np.array(
        [(next(at), *p.input_axis) if p.inputs is not None
         else (0, 1, 1, 1 << 30) for p in parts], np.int64)
  return _Compact(
      model=model, packed=np.concatenate([bits, codes, streams]),
      channels=bits.size,
      floats=np.concatenate([scales, kernel_floats,
                             joined(floating, np.float32)]),
      scales=scales.size, kernel_floats=kernel_floats.size,
      layout=np.array([row(p) for p in parts], np.int64).reshape(
          len(parts), 1 + 3 * blocks),
      weights=packed + floating,
      constants=[(v, np.asarray(v)) for v in rest
                 if all(v is not f for f in floating)],
      entropy=tuple(p.entropy for p in parts), packed_code_bytes=codes.size,
      streams=tuple((int(a), p.count) for a, p in zip(starts, coded)),
      inputs=inputs, input_layout=input_layout)


def _stream_liveness(small):
  """The accounting's liveness of each entropy-coded layer of the shed
  model `small`: `(inputs, channels)`, 0/1 vectors, the ones whose codes
  its stream holds, as `selfcompress.size()` counts them.

  `shed()` keeps some dead channels (a grouped or depthwise convolution's
  whole groups, channels a later layer reads through padding, those
  `min_channels` holds), and a layer's closed input gates leave inputs
  that others read: the weights of the layer on them are then stored as 0,
  which is exact where they are 0 or read a channel that is constantly 0.
  Where one is not (a dead channel's non-zero constant reaches the layer
  through it), the layer is left out: its stream holds every code of its
  alive channels, more than the accounting counts.
  """
  layers = [l for l in surgery.layers(small) if isinstance(
      l, CompressedLayer) and codes_lib.storage(l) == "entropy"]
  if not layers:
    return {}
  from selfcompress import graph as graph_lib
  terms = accounting.account(small)
  g = graph_lib.ChannelGraph.of(small)
  values, found = None, {}
  for layer in layers:
    t = terms.get(layer)
    if t is None or "in_alive" not in t:
      continue
    inputs = np.asarray(t["in_alive"]).reshape(-1) > 0
    channels = np.asarray(t["alive"]).reshape(-1) > 0
    layer_codes = codes_lib.of(layer)
    kept = codes_lib.stored(layer_codes, codes_lib.input_mask(
        layer, inputs), channels)[1]
    dropped = layer_codes.is_code[layer_codes.channel] & ~kept
    dropped &= layer_codes.codes != 0
    if dropped.any():
      if values is None:  # dead channels' constants, as shed() finds them
        values = shedding._probe(small, g)
      zero = np.ones(inputs.size, bool)  # inputs constantly 0 throughout
      for step in g.steps:
        if step.layer is layer and step.inputs:
          value = values.get(step.inputs[0])
          axis = g.axes[step.inputs[0]]
          if value is None or value.shape[axis] != inputs.size:
            zero[:] = False
          else:
            zero &= ~np.moveaxis(value, axis, -1).reshape(
                -1, inputs.size).any(axis=0)
      if np.any(dropped & ~codes_lib.input_mask(layer, zero)):
        continue
    found[layer] = (inputs, channels)
  return found


def _float_twin(layer):
  """The plain Keras layer computing the same thing in float32."""
  config = {k: v for k, v in layer.get_config().items() if k != "compressor"}
  return keras_parent(type(layer)).from_config(config)


def float_model(model):
  """A plain Keras model computing `model`'s inference in float32: each
  compressed layer becomes its Keras parent holding the quantized kernel."""
  def twin(layer):
    if isinstance(layer, CompressedLayer):
      return _float_twin(layer)
    return surgery.same_layer(layer)

  twin_model, made = surgery.rebuild(model, twin)
  _copy_weights(made)
  for old, new in made:
    if isinstance(old, CompressedLayer):
      q, b = old.effective_weights()
      new.set_weights([np.asarray(q)] + ([np.asarray(b)] if b is not None else []))
  return twin_model


def serving_models(model):
  """(compact, dense float32, packed): the serving form of the shed model
  (a `_Compact`), the float32 twin of the unshed network, and the packed
  kernels' bytes (their codes, then any float32-stored weights)."""
  compact = _compact(shedding.shed(model))
  return compact, float_model(model), compact.kernel_bytes


def _copy_weights(made):
  """Copies the weights of every layer that is not a compressed one (those
  get packed or float twins with weights of their own)."""
  for old, new in made:
    if not isinstance(old, CompressedLayer) and new is not old:
      for var, source in surgery.weight_pairs(old, new):
        var.assign(source)


def export(model, path, format="saved_model", overwrite=False,
           litert_weights=None, litert_compute="float",
           representative_data=None):
  """Writes `model` for serving; returns an `ExportReport` (`print()` it
  for the sizes: weights, graph, whole export, the accounting and the dense
  float32 model's export, with their ratios).

  Args:
    model: a trained `SelfCompressingModel` (or any model of
      `selfcompress.layers`).
    path: the SavedModel folder (or .tflite / .keras file) to create.
      Written to a hidden temporary folder (file) next to it and renamed,
      so a failure or an interrupt leaves neither a half-written export nor
      the temporary one. The export gets the usual permissions (umask), not
      tempfile's owner-only ones.
    format: "saved_model" (the packed codes, decoded once at load),
      "tflite" (LiteRT, see `selfcompress.litert`) or "keras" (a `.keras`
      file of Keras' own int8/int4 layers holding the codes, loadable
      without selfcompress; see `selfcompress.keras_export`).
    overwrite: replace an existing export at `path`.
    litert_weights: LiteRT only. "codes" (the default): each compressed
      layer's learned integer codes as int2/int4/int8 weights with a scale
      per channel. "float32": the quantized weights in float32. "float16":
      LiteRT's float16 weight quantization (up to 2^-11 relative rounding
      per weight: the learned exponents `e` are real, so even a 2-bit
      kernel's `codes * 2^e` is not exact in float16).
    litert_compute: LiteRT with "codes" only. "float" (exact: the weights
      are dequantized once and the model computes in float32), "dynamic"
      (LiteRT's integer-weight kernels, activations quantized on the fly:
      faster, not exact) or "integer" (full-integer for microcontrollers:
      int8 activations calibrated on `representative_data`, int8 input and
      output).
    representative_data: for litert_compute="integer": inputs the model
      sees in use (an array, or a `tf.data.Dataset` of batches or of
      `(inputs, labels)` batches); up to 256 are used for calibration.
  """
  from selfcompress import litert
  if format not in ("saved_model", "tflite", "keras"):
    raise ValueError(f"Unknown export format {format!r}; supported: "
                     "'saved_model', 'tflite', 'keras'.")
  if format != "tflite" and (litert_weights is not None
                             or litert_compute != "float"
                             or representative_data is not None):
    raise ValueError("litert_weights, litert_compute and representative_data "
                     "apply to format='tflite' only; the SavedModel stores "
                     "the packed integer codes.")
  litert_weights = litert_weights or "codes"
  if litert_weights not in litert.WEIGHTS:
    raise ValueError(f"Unknown litert_weights {litert_weights!r}; supported: "
                     + ", ".join(map(repr, litert.WEIGHTS)) + ".")
  if litert_compute not in litert.COMPUTE:
    raise ValueError(f"Unknown litert_compute {litert_compute!r}; supported: "
                     + ", ".join(map(repr, litert.COMPUTE)) + ".")
  if litert_compute != "float" and litert_weights != "codes":
    raise ValueError(f"litert_compute={litert_compute!r} computes with the "
                     "integer codes; it needs litert_weights='codes'.")
  if (litert_compute == "integer") != (representative_data is not None):
    raise ValueError(
        "A full-integer LiteRT model (litert_compute='integer') calibrates "
        "its int8 activations on representative_data (some of the training "
        "inputs), and only it does: pass both or neither.")
  if not any(isinstance(l, CompressedLayer) for l in surgery.layers(model)):
    raise ValueError(
        f"Model {model.name!r} has no self-compressing layers, so there is "
        "nothing to pack. Convert it with selfcompress.compress() and train "
        "it; a plain float model exports with model.export().")
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")
  size = accounting.size(model)
  if format == "tflite":
    return litert.export(model, path, size, litert_weights, litert_compute,
                         representative_data)
  if format == "keras":
    from selfcompress import keras_export
    return keras_export.export(model, path, size)
  compact, dense, packed = serving_models(model)
  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  # Hidden, next to `path` (one rename moves its "model" folder in: made by
  # TensorFlow, with the usual permissions, not mkdtemp's 0700); removed
  # whatever happens, KeyboardInterrupt included.
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-export-")
  try:
    final = os.path.join(tmp, "model")
    _write_saved_model(compact, final)
    dense_dir = os.path.join(tmp, "dense")
    _write_saved_model(dense, dense_dir)
    report = ExportReport(
        path=path, format="saved_model", total_bytes=0,
        weight_bytes=_folder_bytes(os.path.join(final, "variables")),
        graph_bytes=0, accounting_bytes=size.bytes,
        float32_accounting_bytes=size.float_bits / 8,
        dense_float32_bytes=_folder_bytes(dense_dir),
        dense_weight_bytes=_folder_bytes(os.path.join(dense_dir, "variables")),
        packed_weight_bytes=packed.size,
        zlib_weight_bytes=len(zlib.compress(packed.tobytes(), 9)))
    for _ in range(10):  # the report counts itself: until its size settles
      with open(os.path.join(final, REPORT), "w") as f:
        json.dump(report.as_dict(), f, indent=2)
      total = _folder_bytes(final)
      if total == report.total_bytes:
        break
      report = dataclasses.replace(report, total_bytes=total,
                                   graph_bytes=total - report.weight_bytes)
    old = None
    if os.path.exists(path):  # overwrite: the old export goes with `tmp`
      old = os.path.join(tmp, "old")
      os.replace(path, old)
    try:
      os.replace(final, path)
    except BaseException:
      if old is not None:
        os.replace(old, path)
      raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return report


class _DecodedWeights(tf.saved_model.experimental.TrackableResource):
  """Every float weight the serving graph reads, decoded once when the
  SavedModel loads: a TensorList, one tensor per weight, in one resource.

  A resource, not a variable, so its value is not saved: the SavedModel
  holds the packed arrays only, and the loader (`tf.saved_model.load`, or a
  session's init op for `saved_model_cli run` and TF Serving) runs
  `_initialize` after restoring them. The serving function then takes each
  weight from the list, which shares its buffer: a batch-1 call costs what
  the dense model's does (slices of one flat tensor would be copied on every
  call unless 64-byte aligned, and kernels' sizes are not). One resource
  however many layers: each costs two functions and their signatures in
  `saved_model.pb`. The resource name is unique per export, as a session
  needs one name to find it by.
  """

  def __init__(self, decode, sizes):
    self._decode = decode
    self._sizes = list(sizes)
    self._name = f"selfcompress_{uuid.uuid4().hex}"
    super().__init__()
    self._initialize()

  def _create_resource(self):
    return tf.raw_ops.VarHandleOp(dtype=tf.variant, shape=[],
                                  shared_name=self._name)

  def _initialize(self):
    weights = tf.raw_ops.TensorListSplit(
        tensor=self._decode(), element_shape=tf.constant([-1], tf.int64),
        lengths=tf.constant(self._sizes, tf.int64))
    return tf.raw_ops.AssignVariableOp(resource=self.resource_handle,
                                       value=weights)

  def read(self, shapes):
    """The weights, in their `shapes` (no copy)."""
    weights = tf.raw_ops.ReadVariableOp(resource=self.resource_handle,
                                        dtype=tf.variant)
    flat = tf.constant([-1])

    def item(i, shape):  # a vector in one node, else read flat and shaped
      weight = tf.raw_ops.TensorListGetItem(
          input_handle=weights, index=i,
          element_shape=shape if len(shape) == 1 else flat,
          element_dtype=tf.float32)
      return weight if len(shape) == 1 else tf.reshape(weight, shape)

    return [item(i, shape) for i, shape in enumerate(shapes)]


def _write_saved_model(model, path):
  """A SavedModel with one `serving_default` signature, of a `_Compact` or
  of a plain Keras model (the dense reference: a tf.Module holding each
  variable once, as Keras' ExportArchive tracks two lists of the same
  variables and the checkpoint stores both).

  Neither is compiled with XLA (`jit_compile`). XLA cannot read the
  compact export's weights (a TensorList in a resource), so they would
  reach it as the arguments of a second function (~1.5 KB, and ~90 B a
  weight); and on CPU it was slower: at batch 1, LeNet-5 0.55 vs 0.51 ms,
  MobileNetV2 (alpha 0.35, 32x32) 3.3 vs 0.88 ms, as its depthwise
  convolutions are slow under XLA. Grappler fuses each layer's op with its
  bias and activation instead.
  """
  keras_model = model.model if isinstance(model, _Compact) else model
  spec = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=n)
          for t, n in zip(keras_model.inputs, _input_names(keras_model))]

  def outputs_of(inputs):
    outputs = keras_model(list(inputs) if len(inputs) > 1 else inputs[0],
                          training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {f"output_{i}" if len(outputs) > 1 else "output": o
            for i, o in enumerate(outputs)}

  module = tf.Module()
  if isinstance(model, _Compact):
    module.serve = _compact_serving(model, module, spec, outputs_of)
  else:
    module.weights = [v.value for v in model.variables]
    module.serve = tf.function(lambda *inputs: outputs_of(inputs),
                               input_signature=spec, autograph=False)
  tf.saved_model.save(module, path,
                      signatures={"serving_default": module.serve})


def _compact_serving(compact, module, spec, outputs_of):
  """The serving function of `compact`, its arrays stored on `module`."""
  module.packed = tf.Variable(compact.packed, trainable=False, name="packed")
  module.floats = tf.Variable(compact.floats, trainable=False, name="floats")
  module.decoded = _DecodedWeights(
      lambda: compact.decode(module.packed.value(), module.floats.value()),
      [math.prod(v.shape) for v in compact.weights])

  def serve(*inputs):
    # The model reads its variables as the decoded tensors (StatelessScope):
    # none of them is captured, so none is saved.
    weights = module.decoded.read([v.shape for v in compact.weights])
    mapping = [(v, ops.cast(t, v.dtype))
               for v, t in zip(compact.weights, weights)]
    with keras.StatelessScope(state_mapping=mapping + compact.constants):
      return outputs_of(inputs)

  return tf.function(serve, input_signature=spec, autograph=False)


def _input_names(model):
  """`inputs` for a single-input model, else the model's input names."""
  if len(model.inputs) == 1:
    return ["inputs"]
  return [surgery.input_name(t).replace("/", "_") or f"input_{i}"
          for i, t in enumerate(model.inputs)]


def _folder_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)

"""Compact export: a SavedModel whose weights are the packed integer codes.

`export(model, path)` sheds the dead channels, packs each alive channel's
codes at its learned bit depth (`selfcompress.packing`), and writes a
SavedModel that decodes them (`codes * 2^e`) once, when it is loaded, for
its `serving_default` signature to use. Serving needs TensorFlow only.
"""

import dataclasses
import json
import os
import shutil
import tempfile
import uuid
import zlib

import keras
import numpy as np
import tensorflow as tf  # the SavedModel format
from keras import ops

from selfcompress import accounting, packing, shedding, surgery
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
    return "\n".join(lines)


_COMPUTE = {
    "float": "float32 on the dequantized codes (the trained model's outputs)",
    "dynamic": "integer-weight kernels, activations quantized on the fly",
    "integer": "full integer: int8 activations, input and output"}


def _bytes(n):
  return f"{n:,.0f} B"


def _ratio(a, b):
  return f"{a / b:.2f}x" if b else "-"


class _Serving:
  """Mixin of the serving twins: the layer's op with `serving_kernel()`,
  plus its own bias and activation. Weights come from the twin's setter."""

  def build(self, input_shape):
    self.built = True

  def serving_kernel(self):
    decoded = getattr(self, "_decoded", None)
    # In a SavedModel the kernel is rebuilt once, at load (`_DecodedKernel`).
    return self.stored_kernel() if decoded is None else decoded.read()

  def call(self, inputs, training=None):
    kernel = ops.cast(self.serving_kernel(), self.compute_dtype)
    outputs = self.kind.linear(self, inputs, kernel)
    if self._bias is not None:
      outputs = self.kind.add_bias(
          self, outputs, ops.cast(self._bias, self.compute_dtype))
    if getattr(self, "activation", None) is not None:
      outputs = self.activation(outputs)
    return ops.cast(outputs, self.compute_dtype)


class _Packed(_Serving):
  """Mixin: a compressed layer whose kernel is decoded from packed codes."""

  def set_packed(self, packed, scale, bias):
    self._packed_shape = packed.shape
    self._per_channel = int(np.prod(packed.shape[:-1]))
    order = np.full(packed.shape[-1], sum(len(c) for c, _ in packed.groups.values()))
    self._groups, row = [], 0
    for b, (channels, data) in sorted(packed.groups.items()):
      var = self.add_weight(name=f"codes_{b}bit", shape=data.shape,
                            dtype="uint8", trainable=False,
                            initializer=keras.initializers.Constant(0))
      var.assign(data)
      self._groups.append((b, len(channels), var))
      order[channels] = np.arange(row, row + len(channels))
      row += len(channels)
    self._order = _constant(self, "channel_order", order.astype("int32"), "int32")
    self._scale = _constant(self, "scale", scale.astype("float32"), "float32")
    self._bias = None if bias is None else _constant(self, "bias_packed", bias, "float32")

  def stored_kernel(self):
    per, rows = self._per_channel, []
    for b, n, data in self._groups:
      byte = ops.cast(ops.convert_to_tensor(data), "int32")
      bits = ops.bitwise_and(ops.right_shift(
          ops.expand_dims(byte, 1), ops.arange(7, -1, -1, dtype="int32")), 1)
      bits = ops.reshape(ops.reshape(bits, (-1,))[:n * per * b], (n * per, b))
      weights = ops.convert_to_tensor(2 ** np.arange(b - 1, -1, -1), "int32")
      values = ops.sum(bits * weights, axis=1)
      values = ops.where(values >= 2 ** (b - 1), values - 2 ** b, values)
      rows.append(ops.reshape(values, (n, per)))
    rows.append(ops.zeros((1, per), "int32"))  # dead channels
    table = ops.take(ops.concatenate(rows, axis=0), self._order, axis=0)
    kernel_t = ops.cast(table, "float32") * ops.expand_dims(self._scale, 1)
    return _unflatten(self, ops.transpose(kernel_t))


def _flatten(source, layer, kernel):
  """`kernel` (numpy) of the compressed layer `source` as `(weights per
  channel, channels)`; its serving twin `layer` learns how to undo it. The
  channel axes (where the kind's per-channel shape is not 1) go last."""
  param_shape = source.kind.param_shape(source)
  channel_axes = [i for i, d in enumerate(param_shape) if d != 1]
  perm = [i for i in range(kernel.ndim) if i not in channel_axes] + channel_axes
  moved = np.transpose(kernel, perm)
  layer._kernel_shape = kernel.shape
  layer._moved_shape = moved.shape
  layer._inverse = None if perm == sorted(perm) else list(np.argsort(perm))
  return moved.reshape(-1, source.compressor.num_channels)


def _unflatten(layer, flat):
  """The kernel from its `(weights per channel, channels)` layout."""
  kernel = ops.reshape(flat, layer._moved_shape)
  if layer._inverse is not None:
    kernel = ops.transpose(kernel, layer._inverse)
  return kernel


def _packed_class(layer):
  cls = type(layer)
  return type("Packed" + cls.__name__, (_Packed, cls), {})


def _pack_layer(layer):
  """A serving twin of a compressed layer, holding packed codes (or, for a
  compressor without codes, its alive channels in float32)."""
  c = layer.compressor
  if not c.stores_codes:
    return _float_layer(layer)
  q = np.asarray(c.apply(layer.kernel_variable, None)[0])
  state = c.state()
  bits = np.asarray(state.storage_bits).astype(int)
  alive = np.asarray(state.alive) > 0
  # The scale includes any gate folded into it (0 where a gate is closed).
  scale = np.asarray(c.scale())
  config = layer.get_config()
  new = _packed_class(layer).from_config(config)
  flat = _flatten(layer, new, q)
  codes = np.rint(flat / np.where(alive, scale, 1.0)).astype(np.int64)
  codes[..., ~alive] = 0
  bits[~alive] = 0
  packed = packing.pack(codes, bits)
  bias = None
  if getattr(layer, "bias", None) is not None:
    bias = np.asarray(layer.effective_weights()[1])
  new.set_packed(packed, scale, bias)
  return new, packed


class _Float(_Serving):
  """Mixin: a compressed layer serving its alive channels' effective kernel
  (gates folded in) as float32; dead channels are zero columns, not stored."""

  def set_float(self, source, kernel, alive, bias):
    columns = np.ascontiguousarray(_flatten(source, self, kernel)[:, alive])
    order = np.full(alive.size, columns.shape[1], "int32")
    order[alive] = np.arange(columns.shape[1])
    self._columns = _constant(self, "kernel_alive", columns, "float32")
    self._order = _constant(self, "channel_order", order, "int32")
    self._bias = None if bias is None else _constant(self, "bias_float", bias,
                                                     "float32")
    return _FloatWeights(alive, columns)

  def stored_kernel(self):
    columns = ops.convert_to_tensor(self._columns)
    table = ops.concatenate(
        [columns, ops.zeros((columns.shape[0], 1), "float32")], axis=1)
    return _unflatten(self, ops.take(table, self._order, axis=1))


@dataclasses.dataclass(frozen=True)
class _FloatWeights:
  """A float32-stored kernel's alive columns, reported like `packing.Packed`."""
  alive: np.ndarray
  columns: np.ndarray

  @property
  def nbytes(self):
    return self.columns.nbytes

  @property
  def groups(self):
    return {32: (np.flatnonzero(self.alive), self.columns.view(np.uint8))}


def _constant(layer, name, value, dtype):
  var = layer.add_weight(name=name, shape=value.shape, dtype=dtype,
                         trainable=False,
                         initializer=keras.initializers.Constant(0))
  var.assign(value)
  return var


def _float_layer(layer):
  """The serving twin of a layer whose compressor stores no codes."""
  kernel, bias = layer.effective_weights()
  alive = np.asarray(layer.compressor.state().alive) > 0
  cls = type(layer)
  new = type("Float" + cls.__name__, (_Float, cls), {}).from_config(
      layer.get_config())
  weights = new.set_float(layer, np.asarray(kernel), alive,
                          None if bias is None else np.asarray(bias))
  return new, weights


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
  """(compact, dense float32, packs): the packed serving twin of the shed
  model, the float32 twin of the unshed network, and the packed codes."""
  small = shedding.shed(model)
  packs = []

  def compact(layer):
    if isinstance(layer, CompressedLayer):
      new, packed = _pack_layer(layer)
      packs.append(packed)
      return new
    return surgery.same_layer(layer)

  compact_model, made = surgery.rebuild(small, compact)
  _copy_weights(made)
  return compact_model, float_model(model), packs


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
  compact, dense, packs = serving_models(model)
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
    stream = b"".join(d.tobytes() for p in packs for _, d in p.groups.values())
    report = ExportReport(
        path=path, format="saved_model", total_bytes=0,
        weight_bytes=_folder_bytes(os.path.join(final, "variables")),
        graph_bytes=0, accounting_bytes=size.bytes,
        float32_accounting_bytes=size.float_bits / 8,
        dense_float32_bytes=_folder_bytes(dense_dir),
        dense_weight_bytes=_folder_bytes(os.path.join(dense_dir, "variables")),
        packed_weight_bytes=sum(p.nbytes for p in packs),
        zlib_weight_bytes=len(zlib.compress(stream, 9)))
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


class _DecodedKernel(tf.saved_model.experimental.TrackableResource):
  """A serving layer's float32 kernel, rebuilt once when the SavedModel loads
  (decoded from the packed codes, or the alive float32 columns put in place).

  A resource, not a variable, so its value is not saved: the SavedModel holds
  only the packed codes, and the loader (`tf.saved_model.load`, or a
  session's init op for `saved_model_cli run` and TF Serving) runs
  `_initialize` after restoring them. The serving signature then reads the
  kernel, so a batch-1 call costs what the dense model's does. The resource
  name is unique per export, as a session needs one name to find it by.
  """

  def __init__(self, layer):
    self._layer = layer
    self._name = f"selfcompress_{uuid.uuid4().hex}_{layer.name}"
    super().__init__()
    self._initialize()

  def _create_resource(self):
    return tf.raw_ops.VarHandleOp(
        dtype=tf.float32, shape=self._layer._kernel_shape,
        shared_name=self._name)

  def _initialize(self):
    return tf.raw_ops.AssignVariableOp(
        resource=self.resource_handle, value=self._layer.stored_kernel())

  def read(self):
    value = tf.raw_ops.ReadVariableOp(resource=self.resource_handle,
                                      dtype=tf.float32)
    value.set_shape(self._layer._kernel_shape)
    return value


def _write_saved_model(model, path):
  """A SavedModel with one `serving_default` signature. A plain tf.Module
  holding each variable once: Keras' ExportArchive tracks two lists of the
  same variables and the checkpoint stores both."""
  spec = [tf.TensorSpec((None,) + tuple(t.shape[1:]), t.dtype, name=n)
          for t, n in zip(model.inputs, _input_names(model))]
  twins = [l for l in model._flatten_layers(include_self=False)
            if isinstance(l, _Serving)]

  def serve(*inputs):
    outputs = model(list(inputs) if len(inputs) > 1 else inputs[0],
                    training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    return {f"output_{i}" if len(outputs) > 1 else "output": o
            for i, o in enumerate(outputs)}

  module = tf.Module()
  module.weights = [v.value for v in model.variables]
  module.decoded = [_DecodedKernel(l) for l in twins]
  for layer, decoded in zip(twins, module.decoded):
    layer._decoded = decoded
  # XLA fuses each layer's op with the bias and activation around it.
  module.serve = tf.function(serve, input_signature=spec, jit_compile=True,
                             autograph=False)
  try:
    tf.saved_model.save(module, path,
                        signatures={"serving_default": module.serve})
  finally:
    for layer in twins:
      layer._decoded = None


def _input_names(model):
  """`inputs` for a single-input model, else the model's input names."""
  if len(model.inputs) == 1:
    return ["inputs"]
  return [surgery.input_name(t).replace("/", "_") or f"input_{i}"
          for i, t in enumerate(model.inputs)]


def _folder_bytes(path):
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)

"""Keras export: the shed network as a `.keras` file that Keras alone loads.

`selfcompress.export(model, path, format="keras")` lands here. The file holds
plain Keras layers only, so `keras.saving.load_model(path)` reads it in a
process that never imports selfcompress, on any backend:

- a compressed `Dense` or `EinsumDense` becomes Keras' own quantized layer
  (dtype policy `int8_from_float32`, or `int4/-1_from_float32` when every
  alive channel takes at most 4 bits) whose int8 (packed int4) kernel holds
  the learned integer codes exactly. Weight-only: the layer has no
  activation quantizer, so it multiplies its float inputs by the integer
  kernel. An `Embedding` does so when its columns share one scale (Keras
  scales a quantized embedding per token, not per column).
- every other compressed layer (convolutions: Keras 3.15 quantizes none; a
  compressor without codes; a channel of more than 8 bits; an Embedding
  with per-column scales) is its Keras parent holding the quantized kernel
  in float32, as `exporting.float_model()` makes it. So are the projections
  of a `MultiHeadAttention`, which becomes Keras' own: Keras saves no
  quantized layers inside one.

Keras dequantizes by dividing by `kernel_scale` (`outputs = (inputs @ codes)
/ kernel_scale`), so `kernel_scale = 2^-e` per channel (any gate folded into
the scale) makes it compute with `codes * 2^e`; dead channels hold code 0
and scale 1. `stored_as(path)` tells how each layer was stored, and why.
"""

import dataclasses
import json
import os
import tempfile
import zipfile

import h5py  # Keras' weight file format (Keras depends on it)
import keras
import numpy as np
from keras.quantizers import (Int4QuantizationConfig, Int8QuantizationConfig,
                              pack_int4)

from selfcompress import checkpoint, exporting, shedding, surgery
from selfcompress import codes as codes_lib
from selfcompress.layers import CompressedLayer
from selfcompress.layers.attention import MultiHeadAttention
from selfcompress.layers.base import COMPRESSION_ARGS, keras_parent

#: The zip member saying how each compressed layer is stored (a list of
#: records, see `stored_as`); Keras' loader ignores members it does not use.
LAYERS = "selfcompress_layers.json"
_WEIGHTS = "model.weights.h5"  # where Keras keeps the weight arrays

# Weight-only quantization: no activation quantizer (Keras' int8 default
# would round the inputs to int8 too); int4 with one scale per output
# channel (block_size None), no zero point.
_CONFIGS = {
    "int8": lambda: Int8QuantizationConfig(activation_quantizer=None),
    "int4": lambda: Int4QuantizationConfig(activation_quantizer=None,
                                           block_size=None),
}
# The dtype policy of each mode, as Keras' own `quantize()` names it.
_POLICIES = {"int8": "int8_from_{}", "int4": "int4/-1_from_{}"}


def export(model, path, size):
  """Writes `path` (a .keras file) atomically; returns its `ExportReport`.

  Sizes: `total_bytes` is the file; `weight_bytes` the sum of the `nbytes`
  of the arrays in its `model.weights.h5` (codes, scales, biases and float
  kernels as stored); `graph_bytes` the rest (config, metadata, HDF5 and zip
  bookkeeping). The dense columns measure the same for the unshed
  network's float32 twin (what `exporting.float_model(model)` computes,
  with Keras' own attention layers), saved as a .keras file.

  Args:
    model: a model holding compressed layers.
    path: the absolute path of the file; it must end in ".keras", as
      `keras.saving.load_model` requires.
    size: `accounting.size(model)`.
  """
  if not path.endswith(".keras"):
    raise ValueError(f"A Keras export is a '.keras' file; got {path!r}.")
  compact, layers = keras_model(shedding.shed(model))
  dense, _ = keras_model(model, quantize=False)
  with tempfile.TemporaryDirectory(prefix="selfcompress-keras-") as tmp:
    dense_path = os.path.join(tmp, "dense.keras")
    dense.save(dense_path)
    dense_total, dense_weights = os.path.getsize(dense_path), weight_bytes(
        dense_path)
  sizes = {}

  def write(tmp_path):
    compact.save(tmp_path)
    with zipfile.ZipFile(tmp_path, "a") as archive:
      archive.writestr(LAYERS, json.dumps(layers, indent=1))
    sizes["total"] = os.path.getsize(tmp_path)
    sizes["weights"] = weight_bytes(tmp_path)
  checkpoint.atomic_write(path, write)
  return exporting.ExportReport(
      path=path, format="keras", total_bytes=sizes["total"],
      weight_bytes=sizes["weights"],
      graph_bytes=sizes["total"] - sizes["weights"],
      accounting_bytes=size.bytes,
      float32_accounting_bytes=size.float_bits / 8,
      dense_float32_bytes=dense_total, dense_weight_bytes=dense_weights,
      layers=tuple(exporting.StoredLayer(r["layer"], r["stored"], "-", r["why"])
                   for r in layers),
      notes=exporting.fixed_width_note(model, "Keras"))


def stored_as(path):
  """How a Keras export stored each compressed layer.

  Args:
    path: a .keras file written by `export(..., format="keras")`.

  Returns:
    A dict from layer name to `{"stored": "int8" | "int4" | "float32",
    "why": str, "class": its Keras class, "bits": the most bits an alive
    channel takes (None without codes)}`.
  """
  with zipfile.ZipFile(os.fspath(path)) as archive:
    if LAYERS not in archive.namelist():
      raise ValueError(f"{path} is not a selfcompress Keras export (it has "
                       f"no {LAYERS}).")
    records = json.loads(archive.read(LAYERS))
  return {r["layer"]: {k: v for k, v in r.items() if k != "layer"}
          for r in records}


def weight_bytes(path):
  """Bytes of the weight arrays of the .keras file `path`: the `nbytes` of
  every dataset in its `model.weights.h5`."""
  sizes = []

  def visit(name, obj):
    if isinstance(obj, h5py.Dataset):
      sizes.append(obj.nbytes)
  with zipfile.ZipFile(os.fspath(path)) as archive:
    with archive.open(_WEIGHTS) as f, h5py.File(f, "r") as h5:
      h5.visititems(visit)
  return int(sum(sizes))


@dataclasses.dataclass
class _Plan:
  """How one compressed layer is stored: `mode` ("int8", "int4" or
  "float32"), `why`, and for a quantized one the arrays to put in its
  variables by name (a callable gets the variable's shape)."""
  mode: str
  why: str
  arrays: dict = None


def keras_model(model, quantize=True):
  """A model of plain Keras layers computing `model`'s inference.

  Returns `(twin, records)`: the model, and how each compressed layer (and
  each attention projection) is stored, as `stored_as` lists them. Without
  `quantize`, every compressed layer holds its quantized kernel in float32
  (`exporting.float_model()`, with Keras' own `MultiHeadAttention`).
  """
  plans = {}

  def replace(layer):
    if not isinstance(layer, (CompressedLayer, MultiHeadAttention)):
      return surgery.same_layer(layer)
    config = {k: v for k, v in layer.get_config().items()
              if k not in COMPRESSION_ARGS}
    if isinstance(layer, CompressedLayer):
      plan = _plan(layer) if quantize else _Plan("float32", "not quantized")
      plans[id(layer)] = plan
      if plan.arrays is not None:
        # Built from this config, the layer makes Keras' quantized
        # variables, as `keras.saving.load_model` does.
        config["dtype"] = keras.dtype_policies.get(
            _POLICIES[plan.mode].format(layer.dtype_policy.name))
        config["quantization_config"] = keras.saving.serialize_keras_object(
            _CONFIGS[plan.mode]())
    return keras_parent(type(layer)).from_config(config)

  twin, pairs = surgery.rebuild(model, replace)
  records = []
  for old, new in pairs:
    if isinstance(old, CompressedLayer):
      plan = plans[id(old)]
      if plan.arrays is None:
        _set_float(old, new)
      else:
        _set_quantized(old, new, plan)
      records.append(_record(old, new, plan.mode, plan.why))
    elif isinstance(old, MultiHeadAttention):
      for (_, source), (_, target) in zip(old._projections(old),
                                          old._projections(new)):
        _set_float(source, target)
        records.append(_record(
            source, target, "float32", "a MultiHeadAttention projection: "
            "Keras saves no quantized layers inside MultiHeadAttention"))
    elif new is not old:
      for var, source in surgery.weight_pairs(old, new):
        var.assign(source)
  return twin, records


def _set_float(old, new):
  """`new`, the Keras parent of `old`, gets `old`'s effective weights."""
  kernel, bias = old.effective_weights()
  new.set_weights([np.asarray(kernel)]
                  + ([] if bias is None else [np.asarray(bias)]))


def _set_quantized(old, new, plan):
  """Puts the planned arrays (and the bias) in Keras' quantized variables."""
  if new.quantization_mode != plan.mode:
    raise RuntimeError(f"Keras built {new.name!r} as {new.quantization_mode}"
                       f", not {plan.mode}.")
  arrays = dict(plan.arrays)
  bias = old.effective_weights()[1]
  if bias is not None:
    arrays["bias"] = np.asarray(bias)
  variables = {v.name: v for v in new.weights}
  if set(variables) != set(arrays):
    raise RuntimeError(
        f"Keras {keras.__version__}'s {plan.mode} {type(new).__name__} has "
        f"the variables {sorted(variables)}; selfcompress fills "
        f"{sorted(arrays)}.")
  for name, value in arrays.items():
    var = variables[name]
    var.assign(value(tuple(var.shape)) if callable(value) else value)


def _record(old, new, mode, why):
  c = old.compressor
  return {"layer": new.name, "class": type(new).__name__, "stored": mode,
          "why": why, "bits": _max_bits(c.state()) if c.stores_codes else None}


def _max_bits(state):
  """The most bits an alive channel takes (0 if none is alive)."""
  bits = np.asarray(state.storage_bits)[np.asarray(state.alive) > 0]
  return int(bits.max()) if bits.size else 0


def codes(layer):
  """The integer codes of a compressed layer whose compressor stores codes
  (`selfcompress.codes`; a Keras export stores them at fixed width,
  whatever the layer's `storage`).

  Returns:
    `(codes, scale, bits)`: the codes (int64, the kernel's shape, 0 on dead
    channels); the per-channel step `2^e` (any gate folded in) broadcast to
    the kernel's shape, 1 on dead channels, so that `codes * scale` is the
    quantized kernel; and the most bits an alive channel takes (0 if none
    is alive).
  """
  layer_codes = codes_lib.of(layer)
  return layer_codes.codes, layer_codes.step(), layer_codes.max_bits()


def _plan(layer):
  """How to store the compressed `layer`: as Keras' quantized parent if it
  can hold the layer's codes (int4 first, if they fit), else in float32."""
  parent = keras_parent(type(layer))
  if parent.quantize is keras.layers.Layer.quantize:
    return _Plan("float32",
                 f"Keras {keras.__version__} cannot quantize {parent.__name__}")
  layout = _LAYOUTS.get(parent)
  if layout is None:
    return _Plan("float32", "selfcompress does not know how Keras stores a "
                 f"quantized {parent.__name__}")
  if not layer.compressor.stores_codes:
    name = type(layer.compressor).__name__
    return _Plan("float32", f"its compressor ({name}) stores no integer codes")
  values, scale, bits = codes(layer)

  def fits(width):  # the codes as they are: a 9-bit grid may hold 8-bit codes
    return (values.min() >= -(1 << (width - 1))
            and values.max() < (1 << (width - 1)))
  if not fits(8):
    return _Plan("float32", f"its codes need more than 8 bits (a channel's "
                 f"grid has {bits}), more than int8 holds")
  refused = {}
  for mode in ("int4", "int8") if fits(4) else ("int8",):
    if mode == "int8" and layer.compute_dtype == "float16":
      refused[mode] = "Keras does not quantize to int8 under float16"
      continue
    arrays, why = layout(layer, values, scale, mode)
    if arrays is not None:
      notes = "".join(f" (not {m}: {w})" for m, w in refused.items())
      return _Plan(mode, f"codes of a grid up to {bits} bits{notes}", arrays)
    refused[mode] = why
  if len(set(refused.values())) == 1:
    return _Plan("float32", next(iter(refused.values())))
  return _Plan("float32",
               "; ".join(f"not {m}: {w}" for m, w in refused.items()))


def _inverse(scale):
  """Keras' scale for a step `scale`: it divides by it."""
  return (1.0 / np.asarray(scale, np.float64)).astype(np.float32)


def _stored(values, mode):
  """What Keras stores (int8): the codes, or for int4 the codes packed in
  pairs along the last axis (`keras.quantizers.pack_int4`, low nibble
  first)."""
  values = values.astype(np.int8)
  if mode == "int8":
    return values
  return np.asarray(pack_int4(values, axis=-1)[0])


def _dense(layer, values, scale, mode):
  """Dense: kernel `(input_dim, units)`, for int4 packed along units to
  `(input_dim, ceil(units / 2))`; `kernel_scale` `(units,)`."""
  return {"kernel": _stored(values, mode),
          "kernel_scale": _inverse(scale[0])}, None


def _einsum_dense(layer, values, scale, mode):
  """EinsumDense. int8: the kernel as it is; `kernel_scale` holds the
  kernel's axes that the output keeps, in the output's order, with size-1
  axes where Keras broadcasts it against the output. int4: the kernel
  reshaped as it is to `(rows, columns)` (columns: the product of the axes
  the output keeps), packed along columns, one scale per column; possible
  when every column holds one channel's step (the axes the output keeps
  come last)."""
  inputs, out = layer.equation.split("->")
  letters = inputs.split(",")[1]
  kept = [i for i, c in enumerate(letters) if c in out]
  if mode == "int4":
    columns = int(np.prod([values.shape[i] for i in kept]))
    flat = scale.reshape(-1, columns)
    if not (flat == flat[:1]).all():
      return None, ("Keras' int4 EinsumDense reshapes the kernel to (rows, "
                    "columns) as it is, which here mixes channels in a column")
    return {"kernel": _stored(values.reshape(-1, columns), mode),
            "kernel_scale": _inverse(flat[0])}, None
  per_axis = scale[tuple(slice(None) if i in kept else 0
                         for i in range(scale.ndim))]
  order = sorted(range(len(kept)), key=lambda j: out.index(letters[kept[j]]))
  per_axis = _inverse(np.transpose(per_axis, order))

  def kernel_scale(shape):  # the variable's shape, once Keras made it
    if [d for d in shape if d != 1] != [d for d in per_axis.shape if d != 1]:
      raise RuntimeError(
          f"Keras {keras.__version__} lays the kernel_scale of "
          f"{layer.equation!r} out as {shape}; selfcompress expected the "
          f"output's axes {per_axis.shape}.")
    return per_axis.reshape(shape)
  return {"kernel": _stored(values, mode), "kernel_scale": kernel_scale}, None


def _embedding(layer, values, scale, mode):
  """Embedding: table `(input_dim, output_dim)`, for int4 packed along
  output_dim; `embeddings_scale` `(input_dim,)`: one scale per token, so
  every column holding a nonzero code must have the same step."""
  steps = np.unique(scale[0][values.any(axis=0)])
  if steps.size > 1:
    return None, (f"its columns have {steps.size} different scales, and "
                  "Keras' quantized Embedding has one scale per token")
  step = _inverse(steps[0] if steps.size else 1.0)
  return {"embeddings": _stored(values, mode),
          "embeddings_scale": np.full(values.shape[0], step)}, None


#: How Keras 3.15 stores each quantized layer class selfcompress compresses
#: (those whose `quantize()` Keras implements).
_LAYOUTS = {keras.layers.Dense: _dense,
            keras.layers.EinsumDense: _einsum_dense,
            keras.layers.Embedding: _embedding}

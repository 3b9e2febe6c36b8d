"""`compress()`: turn an existing Keras model into a self-compressing one."""

import warnings

import keras

from selfcompress import compressors
from selfcompress import layers as sc_layers
from selfcompress import kinds
from selfcompress import surgery
from selfcompress.compressors.inputs import without_input_gates
from selfcompress.graph import ChannelGraph
from selfcompress.layers.base import keras_parent
from selfcompress.model import SelfCompressingModel

# Keras layer class -> its self-compressing replacement. Exact types only: a
# subclass may change `call` in ways the replacement would silently drop.
REPLACEMENTS = {keras_parent(cls): cls
                for cls in sc_layers.ALL + sc_layers.CONTAINERS}


def compress(model, *, compressor="bits", per_layer=None, gamma=0.05,
             target_kb=None, target_rate=0.002, min_channels=1,
             protect_outputs=True, **compressor_kwargs):
  """Returns a self-compressing copy of a Sequential or Functional model.

  Every Dense, EinsumDense, Embedding, Conv1D/2D/3D, Conv1D/2D/3DTranspose
  and DepthwiseConv1D/2D (nested models' too) is replaced by its
  `selfcompress.layers` counterpart with the same configuration and weights
  (a SeparableConv1D/2D by a compressed depthwise and 1x1 convolution);
  the compression parameters are initialised from the weights (so the first
  forward pass equals the original up to the quantization grid). Layers with
  weights that cannot be compressed stay as they are and are listed in a
  warning. The input model is not modified.

  Args:
    model: a built Sequential or Functional Keras model (nested ones too).
    compressor: the compression method for every replaced layer: a name
      (`"bits"`: learned bit depths; `"gates"`: L0 gates on float32
      channels; `"gates+bits"`: both; `"inputs+bits"`, `"inputs+gates"`,
      `"inputs+gates+bits"`: the same plus L0 gates on each layer's inputs,
      `compressors.InputGates`), a serialized dict or a
      `ChannelCompressor` instance. Layers that cannot gate their inputs
      (depthwise and grouped convolutions, embeddings, attention) get the
      input-gated compressor's inner one.
    per_layer: overrides `compressor` layer by layer: a dict of layer name
      -> compressor identifier, or a function of the Keras layer returning
      one; `None` (as a value or returned) leaves the layer uncompressed.
    gamma, target_kb, target_rate: see `SelfCompressingModel`.
    min_channels: channels every compressed layer keeps alive whatever the
      penalty says (0 lets a layer die; a warning is given if one does).
    protect_outputs: keep every output channel of the layers that produce the
      model's outputs (the logits: their channels are fixed by the task).
    **compressor_kwargs: passed to the compressor, e.g. `bits_init=8`,
      `lr_multiplier=100` (input gates: `min_inputs`,
      `input_log_alpha_init`, ...).

  Returns:
    A `SelfCompressingModel`.
  """
  choose = _chooser(per_layer, compressor)
  for layer in _all_layers(model):
    if isinstance(layer, sc_layers.CompressedLayer):
      raise ValueError(
          f"Model {model.name!r} is already self-compressing (layer "
          f"{layer.name!r}). Train it directly; compress() takes a plain model.")
  protected = {l.name for l in ChannelGraph.of(model).task_output_layers()}
  if isinstance(per_layer, dict):
    known = {l.name for l in _all_layers(model)}
    unknown = sorted(set(per_layer) - known)
    if unknown:
      raise ValueError(f"per_layer names layers that are not in the model: "
                       f"{unknown}. Layers: {sorted(known)}")

  skipped = []

  def clone(layer):
    identifier = choose(layer)
    if type(layer) in _SEPARABLE and identifier is not None:
      protect = protect_outputs and layer.name in protected
      return _split_separable(layer, identifier, compressor_kwargs,
                              min_channels, protect)
    replacement = REPLACEMENTS.get(type(layer))
    kind = kinds.of(layer)
    if replacement in sc_layers.CONTAINERS and identifier is not None:
      config = dict(layer.get_config(), min_channels=min_channels,
                    compressor=compressors.get(identifier, **compressor_kwargs))
      return replacement.from_config(config)
    if (replacement is None or identifier is None or kind is None
        or kind.unsupported(layer)):
      if layer.weights and not isinstance(layer, _NO_COMPRESSION_NEEDED):
        skipped.append(f"{layer.name} ({type(layer).__name__})")
      return surgery.same_layer(layer)
    kwargs = dict(compressor_kwargs)
    kwargs["min_channels"] = (kind.channels(layer) if protect_outputs
                              and layer.name in protected else min_channels)
    config = layer.get_config()
    config["compressor"] = compressors.get(identifier, **kwargs)
    if not kind.gates_inputs(layer):  # depthwise, grouped, embedding...
      config["compressor"] = without_input_gates(config["compressor"])
    return replacement.from_config(config)

  cloned, pairs = surgery.rebuild(model, clone)
  _warn_gates_before_batchnorm(pairs)
  for old, new in pairs:
    _copy_weights(old, new)
  if skipped:
    warnings.warn(
        "compress() left these layers uncompressed (no self-compressing "
        f"version, or excluded by per_layer): {', '.join(skipped)}. They are "
        "counted at float32 in the size report and kept whole by shed() and "
        "export().", stacklevel=2)
  return SelfCompressingModel(
      inputs=cloned.input, outputs=cloned.output, name=model.name,
      gamma=gamma, target_kb=target_kb, target_rate=target_rate)


def _warn_gates_before_batchnorm(pairs):
  """BatchNorm right after a gated layer normalises the gate's scaling away
  in training (batch statistics), so the loss cannot tell an open gate from
  a half-closed one and the penalty closes them all."""
  from selfcompress.compressors.gates import HardConcreteGate, GatedBitDepth
  gated = []
  for old, new in pairs:
    compressor = without_input_gates(getattr(new, "compressor", None))
    if isinstance(compressor, (HardConcreteGate, GatedBitDepth)):
      consumers = [n.operation for n in getattr(old, "_outbound_nodes", [])]
      if any(isinstance(c, keras.layers.BatchNormalization) for c in consumers):
        gated.append(old.name)
  if gated:
    warnings.warn(
        f"Layers {gated} are gated and feed a BatchNormalization, which "
        "undoes the gate's scaling in training: the data loss cannot keep "
        "their gates open, so the penalty closes them. Use compressor='bits' "
        "for these layers (per_layer=), or put the BatchNorm elsewhere.",
        stacklevel=3)


def _chooser(per_layer, default):
  """layer -> compressor identifier (or None), from `compress()`'s args."""
  if per_layer is None:
    return lambda layer: default
  if isinstance(per_layer, dict):
    return lambda layer: per_layer.get(layer.name, default)
  if callable(per_layer):
    return per_layer
  raise TypeError(
      "per_layer must be a dict of layer name -> compressor, or a function "
      f"of the layer returning one. Received: {per_layer!r}")


# Layers whose few parameters are folded or negligible; not worth a warning.
_NO_COMPRESSION_NEEDED = (keras.layers.BatchNormalization,
                          keras.layers.LayerNormalization,
                          keras.layers.Normalization)


def _all_layers(model):
  return surgery.layers(model)


_SEPARABLE = {keras.layers.SeparableConv1D: (sc_layers.DepthwiseConv1D,
                                              sc_layers.Conv1D),
              keras.layers.SeparableConv2D: (sc_layers.DepthwiseConv2D,
                                              sc_layers.Conv2D)}


def _split_separable(layer, identifier, compressor_kwargs, min_channels,
                     protect):
  """A SeparableConv as what it computes: a depthwise convolution, then a
  1x1 convolution with the bias and activation. Both halves are compressed
  kinds, so each sheds its own channels; they sit in a nested Sequential
  named after the layer."""
  depthwise_cls, conv_cls = _SEPARABLE[type(layer)]
  c = layer.get_config()
  common = {k: c[k] for k in ("data_format", "dtype")}

  def compressor(protect_all=False):
    kwargs = dict(compressor_kwargs, min_channels=min_channels)
    if protect_all:
      kwargs["min_channels"] = layer.filters
    return compressors.get(identifier, **kwargs)

  depthwise = depthwise_cls(
      kernel_size=c["kernel_size"], strides=c["strides"],
      padding=c["padding"], dilation_rate=c["dilation_rate"],
      depth_multiplier=c["depth_multiplier"], use_bias=False,
      depthwise_initializer=c["depthwise_initializer"],
      depthwise_regularizer=c["depthwise_regularizer"],
      depthwise_constraint=c["depthwise_constraint"],
      compressor=without_input_gates(compressor()),
      name=layer.name + "_depthwise", **common)
  pointwise = conv_cls(
      filters=c["filters"], kernel_size=1, activation=c["activation"],
      use_bias=c["use_bias"], kernel_initializer=c["pointwise_initializer"],
      bias_initializer=c["bias_initializer"],
      kernel_regularizer=c["pointwise_regularizer"],
      bias_regularizer=c["bias_regularizer"],
      activity_regularizer=c["activity_regularizer"],
      kernel_constraint=c["pointwise_constraint"],
      bias_constraint=c["bias_constraint"], compressor=compressor(protect),
      name=layer.name + "_pointwise", **common)
  return keras.Sequential(
      [keras.Input(tuple(layer.input.shape[1:]), dtype=layer.input.dtype),
       depthwise, pointwise], name=layer.name)


def _copy_weights(old, new):
  if new is old:
    return
  if isinstance(new, sc_layers.CONTAINERS):
    new.copy_from(old)
    return
  if type(old) in _SEPARABLE:
    depthwise, pointwise = new.layers
    depthwise.kernel_variable.assign(old.depthwise_kernel)
    pointwise.kernel_variable.assign(old.pointwise_kernel)
    if old.bias is not None:
      pointwise.bias.assign(old.bias)
    for half in (depthwise, pointwise):
      half.compressor.initialize(half.kernel_variable)
    return
  if isinstance(new, sc_layers.CompressedLayer):
    kind = new.kind
    new.kernel_variable.assign(kind.kernel(old))
    if getattr(new, "bias", None) is not None:
      new.bias.assign(old.bias)
    new.compressor.initialize(new.kernel_variable)
  else:
    for var, source in surgery.weight_pairs(old, new):
      var.assign(source)

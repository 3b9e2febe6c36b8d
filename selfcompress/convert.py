"""`compress()`: turn an existing Keras model into a self-compressing one."""

import warnings

import keras

from selfcompress import compressors
from selfcompress import layers as sc_layers
from selfcompress.graph import ChannelGraph, functional_of
from selfcompress.model import SelfCompressingModel

# Keras layer class -> its self-compressing replacement. Exact types only: a
# subclass may change `call` in ways the replacement would silently drop.
REPLACEMENTS = {
    keras.layers.Dense: sc_layers.Dense,
    keras.layers.Conv1D: sc_layers.Conv1D,
    keras.layers.Conv2D: sc_layers.Conv2D,
    keras.layers.DepthwiseConv2D: sc_layers.DepthwiseConv2D,
}


def compress(model, *, compressor="bits", per_layer=None, gamma=0.05,
             target_kb=None, target_rate=0.002, min_channels=1,
             protect_outputs=True, **compressor_kwargs):
  """Returns a self-compressing copy of a Sequential or Functional model.

  Every Dense, Conv1D, Conv2D and DepthwiseConv2D is replaced by its
  `selfcompress.layers` counterpart with the same configuration and weights;
  the compression parameters are initialised from the weights (so the first
  forward pass equals the original up to the quantization grid). Layers with
  weights that cannot be compressed stay as they are and are listed in a
  warning. The input model is not modified.

  Args:
    model: a built Sequential or Functional Keras model (nested ones too).
    compressor: the compression method for every replaced layer: a name
      (`"bits"`: learned bit depths; `"gates"`: L0 gates on float32
      channels; `"gates+bits"`: both), a serialized dict or a
      `ChannelCompressor` instance.
    per_layer: overrides `compressor` layer by layer: a dict of layer name
      -> compressor identifier, or a function of the Keras layer returning
      one; `None` (as a value or returned) leaves the layer uncompressed.
    gamma, target_kb, target_rate: see `SelfCompressingModel`.
    min_channels: channels every compressed layer keeps alive whatever the
      penalty says (0 lets a layer die; a warning is given if one does).
    protect_outputs: keep every output channel of the layers that produce the
      model's outputs (the logits: their channels are fixed by the task).
    **compressor_kwargs: passed to the compressor, e.g. `bits_init=8`,
      `lr_multiplier=100`.

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

  pairs, skipped = [], []

  def clone(layer):
    if isinstance(layer, keras.Model):
      new = keras.models.clone_model(layer, clone_function=clone)
      pairs.append((layer, new))
      return new
    replacement = REPLACEMENTS.get(type(layer))
    identifier = choose(layer)
    if replacement is None or identifier is None or not _supported(layer):
      if layer.weights and not isinstance(layer, _NO_COMPRESSION_NEEDED):
        skipped.append(f"{layer.name} ({type(layer).__name__})")
      new = layer.__class__.from_config(layer.get_config())
    else:
      kwargs = dict(compressor_kwargs)
      kwargs["min_channels"] = (_channels(layer) if protect_outputs
                                and layer.name in protected else min_channels)
      config = layer.get_config()
      config["compressor"] = compressors.get(identifier, **kwargs)
      new = replacement.from_config(config)
    pairs.append((layer, new))
    return new

  cloned = keras.models.clone_model(model, clone_function=clone)
  _warn_gates_before_batchnorm(pairs)
  for old, new in pairs:
    _copy_weights(old, new)
  if skipped:
    warnings.warn(
        "compress() left these layers uncompressed (no self-compressing "
        f"version, or excluded by per_layer): {', '.join(skipped)}. They are "
        "counted at float32 in the size report.", stacklevel=2)
  graph = functional_of(cloned)
  return SelfCompressingModel(
      inputs=graph.input, outputs=graph.output, name=model.name,
      gamma=gamma, target_kb=target_kb, target_rate=target_rate)


def _warn_gates_before_batchnorm(pairs):
  """BatchNorm right after a gated layer normalises the gate's scaling away
  in training (batch statistics), so the loss cannot tell an open gate from
  a half-closed one and the penalty closes them all."""
  from selfcompress.compressors.gates import HardConcreteGate, GatedBitDepth
  gated = []
  for old, new in pairs:
    if isinstance(getattr(new, "compressor", None),
                  (HardConcreteGate, GatedBitDepth)):
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
                          keras.layers.Normalization)


def _supported(layer):
  if getattr(layer, "data_format", "channels_last") != "channels_last":
    return False
  if getattr(layer, "lora_enabled", False):
    return False
  return getattr(layer, "quantization_mode", None) is None


def _channels(layer):
  if isinstance(layer, keras.layers.Dense):
    return layer.units
  if isinstance(layer, keras.layers.DepthwiseConv2D):
    return layer.kernel.shape[2] * layer.depth_multiplier
  return layer.filters


def _all_layers(model):
  return list(model._flatten_layers(include_self=False))


def _copy_weights(old, new):
  if isinstance(old, keras.Model):
    return
  if isinstance(new, sc_layers.CompressedLayer):
    by_name = {v.name: v for v in old.weights}
    new.kernel_variable.assign(by_name["kernel"])
    if new.bias is not None:
      new.bias.assign(by_name["bias"])
    new.compressor.initialize(new.kernel_variable)
  elif old.weights:
    new.set_weights(old.get_weights())

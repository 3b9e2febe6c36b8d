"""`shed()`: rebuild a model without its dead channels.

Which channels a tensor keeps is decided on the channel graph: a channel
stays if it is alive, if a merge needs it (residual `Add`: dead only if dead
in every branch), or if it is a model output; depthwise convolutions tie
their outputs to their inputs, grouped convolutions and layers the graph
cannot trace keep everything. A removed channel still carries a constant
(its producer's bias through BatchNorm and activation); its contribution to
each consumer is computed once and folded into the consumer's bias. Where
that contribution is not the same at every position (a 'same'-padded
convolution sees the padding), the channel is kept instead, so the shed
model always computes what the original did.
"""

import dataclasses
import weakref

import keras
import numpy as np
from keras import ops

from selfcompress import graph as graph_lib
from selfcompress.layers import CompressedLayer

L = keras.layers


@dataclasses.dataclass
class Plan:
  """What `shed()` keeps: per tensor a boolean mask over its channels, per
  weighted layer the bias increments from folded constants."""
  kept: dict
  fold: dict


def plan(model):
  """Decides which channels of `model` can go; see the module docstring."""
  g = graph_lib.ChannelGraph.of(model)
  if g.nested:
    raise ValueError(
        "shed() does not support nested models yet: build the model as one "
        "flat Functional or Sequential model.")
  flow = g.propagate()
  kept = {k: np.asarray(v) > 0 for k, v in flow.tensors.items()}
  for k in g.input_keys + g.output_keys:
    kept[k] = np.ones_like(kept[k])
  values = None
  while True:
    _close(g, kept)
    values = values or _probe(model, g)
    fold, grown = {}, False
    for step in g.steps:
      if step.rule != "weighted":
        continue
      key = step.inputs[0]
      x = values[key] * ~kept[key]
      if not np.any(x):
        continue
      contrib = np.asarray(_linear(step.layer, x))
      spatial = tuple(range(1, contrib.ndim - 1))
      mean = contrib.mean(axis=spatial) if spatial else contrib
      if np.abs(contrib - mean.reshape(mean.shape[:1] + (1,) * len(spatial)
                                       + mean.shape[-1:])).max() > \
          1e-6 * (1.0 + np.abs(contrib).max()):
        # Not a constant per channel: keep the channels that cause it.
        nonzero = np.any(x != 0, axis=tuple(range(x.ndim - 1)))
        kept[key] = kept[key] | nonzero
        grown = True
      else:
        fold[step.layer] = mean.reshape(-1)
    if not grown:
      return Plan(kept, fold)


def _close(g, kept):
  """Propagates keep-requirements along the graph until nothing changes."""
  changed = True
  while changed:
    changed = False
    for step in g.steps:
      ins, outs = step.inputs, step.outputs
      new = {}
      if step.rule == "passthrough" or step.rule == "merge_or":
        wide = [k for k in ins + outs if kept[k].size == kept[outs[0]].size]
        both = np.logical_or.reduce([kept[k] for k in wide])
        new = {k: both for k in wide}
      elif step.rule == "concat":
        joined = np.concatenate([kept[k] for k in ins]) | kept[outs[0]]
        new[outs[0]] = joined
        offset = 0
        for k in ins:
          n = kept[k].size
          new[k] = joined[offset:offset + n]
          offset += n
      elif step.rule == "flatten":
        c = kept[ins[0]].size
        per_channel = kept[outs[0]].reshape(-1, c).any(axis=0) | kept[ins[0]]
        new = {ins[0]: per_channel,
               outs[0]: np.tile(per_channel, kept[outs[0]].size // c)}
      elif step.rule == "weighted":
        layer = step.layer
        if isinstance(layer, L.DepthwiseConv2D):
          m = layer.depth_multiplier
          c_in = kept[ins[0]] | kept[outs[0]].reshape(-1, m).any(axis=1)
          new = {ins[0]: c_in, outs[0]: np.repeat(c_in, m)}
        elif getattr(layer, "groups", 1) > 1:
          new = {k: np.ones_like(kept[k]) for k in ins + outs}
      else:  # unknown: cannot say which channels it needs
        new = {k: np.ones_like(kept[k]) for k in ins + outs}
      for k, v in new.items():
        if not np.array_equal(v, kept[k]):
          kept[k] = kept[k] | v
          changed = True


def _probe(model, g):
  """Each tensor's value in inference mode for one all-zero input; dead
  channels are constant, so this is their value for any input."""
  keys = list(g.tensors)
  functional = graph_lib.functional_of(model)
  probe = keras.Model(functional.inputs, [g.tensors[k] for k in keys])
  zeros = [np.zeros((1,) + tuple(t.shape[1:]), "float32")
           for t in functional.inputs]
  outs = probe(zeros, training=False)
  return {k: np.asarray(v) for k, v in zip(keys, outs)}


def _kernel(layer):
  if isinstance(layer, CompressedLayer):
    return layer.compressor.apply(layer.kernel_variable, None)[0]
  return layer.kernel


def _linear(layer, x):
  """The layer's linear map (no bias, no activation) applied to `x`."""
  kernel = _kernel(layer)
  if isinstance(layer, CompressedLayer):
    return layer._output_with(x, kernel)
  if isinstance(layer, L.Dense):
    return ops.matmul(x, kernel)
  if isinstance(layer, L.DepthwiseConv2D):
    return ops.depthwise_conv(x, kernel, strides=layer.strides,
                              padding=layer.padding,
                              dilation_rate=layer.dilation_rate)
  if layer.padding == "causal":
    x = ops.pad(x, layer._compute_causal_padding())
    return ops.conv(x, kernel, layer.strides, "valid", None, layer.dilation_rate)
  return layer.convolution_op(x, kernel)


def shed(model):
  """Returns a new model without the dead channels of `model`.

  The result computes the same outputs (inference mode); a
  `SelfCompressingModel` stays one, with the same options and the original
  network's size reference (so its penalty and compression ratio continue
  where they were). Shedding a shed model changes nothing.
  """
  from selfcompress.model import SelfCompressingModel
  p = plan(model)
  g = graph_lib.ChannelGraph.of(model)
  masks = {}
  for step in g.steps:
    m = (p.kept[step.inputs[0]] if step.inputs else None, p.kept[step.outputs[0]])
    if step.layer in masks and not all(
        np.array_equal(a, b) for a, b in zip(masks[step.layer], m)
        if a is not None):
      raise ValueError(f"Layer {step.layer.name!r} is called on tensors that "
                       "keep different channels; shed() cannot split it.")
    masks[step.layer] = m
  def clone(layer):
    config = layer.get_config()
    m = masks.get(layer)
    if m is not None and isinstance(layer, (L.Dense, L.Conv1D, L.Conv2D)):
      config["units" if isinstance(layer, L.Dense) else "filters"] = int(m[1].sum())
      if layer in p.fold and not config.get("use_bias", True):
        config["use_bias"] = True
    if m is not None and isinstance(layer, L.Reshape):
      target = list(config["target_shape"])
      target[-1] = int(m[1].sum())
      config["target_shape"] = tuple(target)
    return copy_layer(layer, config)

  cloned, pairs = rebuild(model, clone)
  for old, new in pairs:
    _transfer(old, new, masks.get(old), p.fold.get(old))
  graph = graph_lib.functional_of(cloned)
  lineage = [(old, new, masks.get(old)) for old, new in pairs]
  if isinstance(model, SelfCompressingModel):
    shed_model = SelfCompressingModel(
        inputs=graph.input, outputs=graph.output, name=model.name,
        **model.options())
    shed_model.size_gamma.assign(model.size_gamma)
  else:
    shed_model = keras.Model(graph.input, graph.output, name=model.name)
  _LINEAGE[shed_model] = lineage
  return shed_model


def copy_layer(layer, config=None):
  """A new layer of `layer`'s class made from `config` (its own by default);
  shedding and export rebuild every layer this way."""
  try:
    return layer.__class__.from_config(
        layer.get_config() if config is None else config)
  except Exception as e:  # a custom layer without a working config
    raise ValueError(
        f"Cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from "
        f"its config: {e}. Give it a get_config() that returns its "
        "constructor's arguments and register it with "
        "@keras.saving.register_keras_serializable().") from e


def rebuild(model, replace):
  """A plain Functional copy of `model`'s graph with every layer replaced by
  `replace(layer)`; returns it and the `(old, new)` layer pairs. Cloned as
  a plain Functional view, so no wrapper class is constructed twice."""
  functional = graph_lib.functional_of(model)
  pairs = []

  def clone(layer):
    new = replace(layer)
    pairs.append((layer, new))
    return new

  plain = keras.Model(functional.input, functional.output)
  return keras.models.clone_model(plain, clone_function=clone), pairs


def slicers(old, new, masks):
  """For each weight of `new`: (it, the matching weight of `old`, a function
  that cuts an array shaped like it down to the new shape). Used for the
  weights themselves and for the optimizer's per-weight slots."""
  old_vars = {v.name: v for v in old.weights}
  # One value per output channel: the bias and every per-channel variable of
  # the compressor (bit depth, exponent, gate, ...), whatever the method.
  per_channel = {"bias"}
  if isinstance(old, CompressedLayer):
    per_channel |= {v.name for v in old.compressor.channel_variables()}
  m_in, m_out = masks if masks is not None else (None, None)
  in_idx = np.flatnonzero(m_in) if m_in is not None else None
  out_idx = np.flatnonzero(m_out) if m_out is not None else None
  result = []
  for var in new.weights:
    source = old_vars.get(var.name)
    cut = _identity
    if source is not None and tuple(source.shape) != tuple(var.shape):
      if isinstance(old, graph_lib.WEIGHTED) and var.name == "kernel":
        if isinstance(old, L.DepthwiseConv2D):
          cut = lambda a: a[..., in_idx, :]
        else:
          cut = lambda a: a[..., in_idx, :][..., out_idx]
      elif isinstance(old, graph_lib.WEIGHTED) and var.name in per_channel:
        cut = lambda a: a[out_idx]
      elif tuple(source.shape[-1:]) == tuple(m_out.shape):
        cut = lambda a: a[..., out_idx]  # BatchNorm, PReLU: per channel
    result.append((var, source, cut))
  return result


def _identity(a):
  return a


def _transfer(old, new, masks, fold):
  """Copies `old`'s weights into the smaller `new`, folding constants."""
  for var, source, cut in slicers(old, new, masks):
    if source is None and var.name == "bias":  # a bias added for the fold
      value = np.zeros(masks[1].size, "float32")
      cut = lambda a: a[np.flatnonzero(masks[1])]
    elif source is None:
      raise ValueError(f"shed() has no source for weight {var.name!r} of "
                       f"layer {old.name!r}.")
    else:
      value = np.asarray(source)
    if var.name == "bias" and fold is not None:
      value = value + fold
    value = cut(value)
    if tuple(value.shape) != tuple(var.shape):
      raise ValueError(
          f"shed() cannot map weight {var.name!r} of layer {old.name!r} "
          f"({value.shape} -> {tuple(var.shape)}).")
    var.assign(value)


# shed model -> [(old layer, new layer, masks)]: how to carry optimizer state.
_LINEAGE = weakref.WeakKeyDictionary()


def carry_optimizer(old_model, new_model):
  """Compiles `new_model` (a `shed()` of `old_model`) like `old_model`, with
  the optimizer's step count and per-weight slots (Adam's moments, ...)
  sliced down to the channels that remain, so training continues as if
  nothing had been removed."""
  lineage = _LINEAGE.get(new_model)
  if lineage is None:
    raise ValueError("carry_optimizer() takes a model returned by shed().")
  old_opt = old_model.optimizer
  config = keras.saving.deserialize_keras_object(old_model.get_compile_config())
  config["optimizer"] = old_opt.__class__.from_config(old_opt.get_config())
  new_model.compile(**config)
  new_opt = new_model.optimizer
  new_opt.build(new_model.trainable_variables)
  new_opt.iterations.assign(old_opt.iterations)
  old_slots = _slot_lists(old_opt, old_model.trainable_variables)
  new_slots = _slot_lists(new_opt, new_model.trainable_variables)
  sources = {}
  for old, new, masks in lineage:
    sources.update({id(v): (src, cut) for v, src, cut in slicers(old, new, masks)})
  for var in new_model.trainable_variables:
    source, cut = sources.get(id(var), (None, None))
    if source is None:
      continue
    i_old = old_opt._get_variable_index(source)
    i_new = new_opt._get_variable_index(var)
    for name, slots in new_slots.items():
      old_slot = old_slots[name][i_old]
      if old_slot is not None and slots[i_new] is not None:
        slots[i_new].assign(cut(np.asarray(old_slot)))


def _slot_lists(optimizer, variables):
  """The optimizer's per-variable slot lists (e.g. Adam's `_momentums`)."""
  n = len(variables)
  return {k: v for k, v in vars(optimizer).items()
          if isinstance(v, list) and len(v) == n and v
          and all(x is None or isinstance(x, keras.Variable) for x in v)}

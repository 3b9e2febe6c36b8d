"""`shed()`: rebuild a model without its dead channels.

Which channels a tensor keeps is decided on the channel graph: a channel
stays if it is alive, if a merge needs it (residual `Add`: dead only if dead
in every branch), if it is a model output, or if its layer's compressor
needs it to decide as before (`min_channels` holds channels by their rank
among the layer's channels: the top ones stay); depthwise convolutions tie
their outputs to their inputs, grouped convolutions and layers the graph
cannot trace keep everything. A removed channel still carries a constant
(its producer's bias through BatchNorm and activation); its contribution to
each consumer is computed once and folded into the consumer's bias. Where
that contribution is not the same at every position (a 'same'-padded
convolution sees the padding), the channel is kept instead, so the shed
model always computes what the original did.

A layer with input gates (`compressors.InputGates`) loses the inputs whose
gate is closed (its kernel's slices for them are exactly zero): a channel
that no consumer reads leaves its producer (the channel graph counts it
dead), and where the tensor keeps channels the layer does not read (a model
input, a `Flatten` of pixels, a channel another layer reads) a
`layers.SelectChannels` in front of the layer gathers the ones it reads.
A layer called several times keeps the same channels in every call.
"""

import dataclasses
import weakref

import keras
import numpy as np

from selfcompress import graph as graph_lib
from selfcompress import kinds
from selfcompress import surgery
from selfcompress.layers import CompressedLayer, SelectChannels

L = keras.layers


@dataclasses.dataclass
class Plan:
  """What `shed()` keeps: per tensor a boolean mask over its channels, per
  weighted layer the bias increments from folded constants, and per layer
  with input gates the channels of its input tensor that it reads (kept
  and open; a subset of the tensor's kept channels)."""
  kept: dict
  fold: dict
  reads: dict = dataclasses.field(default_factory=dict)


def settle_statistics(model):
  """Sets each BatchNormalization's moving mean, on its dead input channels,
  to the constant those channels carry; returns how many it changed.

  In training a BatchNormalization normalises with the batch's statistics,
  so a channel that died (its input exactly constant) leaves it as `beta`.
  Its moving statistics, what inference uses, only decay towards the
  channel's (mean `c`, variance 0), so inference adds
  `gamma * (c - moving_mean) / sqrt(moving_variance + epsilon)`, which
  training never saw and which shrinks by only `sqrt(momentum)` a step
  (half is left after 140 steps at 0.99): validation accuracy collapses
  while channels die, and `shed()` folds the stale value into the
  consumers' biases. The constant is the channel's true mean (its variance
  is 0), so after this inference computes what training did.
  `CompressionMonitor` calls it before each validation, at each epoch's end
  (before shedding) and when training ends. A layer called more than once
  is left alone.
  """
  flow = graph_lib.ChannelGraph.of(model).propagate()
  changed = 0
  for layer, calls in flow.norm_inputs.items():
    if len(calls) != 1 or layer.moving_mean is None:
      continue
    alive, const = (np.asarray(keras.ops.convert_to_numpy(v), np.float32)
                    for v in calls[0])
    mean = layer.moving_mean
    if tuple(mean.shape) != alive.shape:
      continue  # normalises over several axes: not per channel
    values = keras.ops.convert_to_numpy(mean)
    settle = (alive == 0) & np.isfinite(const) & (values != const)
    if settle.any():
      mean.assign(np.where(settle, const, values).astype(values.dtype))
      changed += int(settle.sum())
  return changed


def plan(model):
  """Decides which channels of `model` can go; see the module docstring."""
  g = graph_lib.ChannelGraph.of(model)
  flow = g.propagate()
  kept = {k: np.asarray(v) > 0 for k, v in flow.tensors.items()}
  for k in g.input_keys + g.output_keys:
    kept[k] = np.ones_like(kept[k])
  _pin(g, kept)
  values = None
  while True:
    _close(g, kept)
    values = values or _probe(model, g)
    fold, grown = {}, False
    for step in g.steps:
      if step.rule != "weighted" or step.foreign:
        continue
      key = step.inputs[0]
      axis = g.axes[key]
      dropped = _along(~kept[key], axis, values[key].ndim)
      x = values[key] * dropped
      if not np.any(x):
        continue
      layer = step.layer
      contrib = np.asarray(step.kind.linear(layer, x, _kernel(layer)))
      out_axis = step.kind.axis(layer, contrib.ndim)
      # Only what reaches a kept output channel matters.
      contrib = contrib * _along(kept[step.outputs[0]], out_axis, contrib.ndim)
      if not np.any(contrib):
        continue
      others = tuple(i for i in range(1, contrib.ndim) if i != out_axis)
      mean = contrib.mean(axis=others, keepdims=True)
      if np.abs(contrib - mean).max() > 1e-6 * (1.0 + np.abs(contrib).max()):
        # Not a constant per channel: keep the channels that cause it.
        nonzero = np.any(np.moveaxis(x, axis, -1) != 0,
                         axis=tuple(range(x.ndim - 1)))
        kept[key] = kept[key] | nonzero
        grown = True
      else:
        fold[layer] = mean.reshape(-1)
    reads = _reads(g, flow, kept)
    for step in _gated_steps(g, flow):
      key = step.inputs[0]
      if (reads[step.layer] & ~kept[key]).any():  # a shared layer: each
        kept[key] = kept[key] | reads[step.layer]  # call keeps what it reads
        grown = True
    if not grown:
      return Plan(kept, fold, reads)


def _gated_steps(g, flow):
  """The calls of input-gated layers whose input tensor the graph follows."""
  return [step for step in g.steps
          if step.rule == "weighted" and not step.foreign
          and step.layer in flow.input_states]


def _reads(g, flow, kept):
  """Each input-gated layer's input channels that it reads: the kept ones
  whose gate is open (a closed gate zeroes the kernel's slice, so the
  channel contributes exactly nothing). A layer called on several tensors
  reads the union."""
  reads = {}
  for step in _gated_steps(g, flow):
    key = step.inputs[0]
    mask = kept[key] & (np.asarray(flow.input_states[step.layer].alive) > 0)
    if not mask.any():  # reads nothing: keep the slices, all zero
      mask = kept[key]
    previous = reads.get(step.layer)
    reads[step.layer] = mask if previous is None else previous | mask
  return reads


def _pin(g, kept):
  """Keeps the channels each compressor needs to decide as it does now
  (see `ChannelCompressor.pinned_channels`, `InputGates.pinned_inputs`),
  alive or dead."""
  for step in g.steps:
    compressor = getattr(step.layer, "compressor", None)
    if step.rule != "weighted" or compressor is None:
      continue
    key = step.outputs[0]
    pinned = np.asarray(compressor.pinned_channels()) > 0
    if pinned.shape == kept[key].shape:
      kept[key] = kept[key] | pinned
    else:  # not one channel per output channel: keep them all
      kept[key] = np.ones_like(kept[key])
    pinned_inputs = getattr(compressor, "pinned_inputs", None)
    if pinned_inputs is not None and not step.foreign:
      key = step.inputs[0]
      pinned = np.asarray(pinned_inputs()) > 0
      kept[key] = kept[key] | pinned if pinned.shape == kept[key].shape \
          else np.ones_like(kept[key])


def _along(mask, axis, rank):
  """A channel mask shaped to broadcast along `axis` of a rank-`rank` array."""
  shape = [1] * rank
  shape[axis] = mask.size
  return mask.reshape(shape)


def _close(g, kept):
  """Propagates keep-requirements along the graph until nothing changes."""
  calls = {}  # a layer called several times keeps the same channels in each
  for step in g.steps:
    if step.rule in ("weighted", "select") and surgery.is_layer(step.layer):
      calls.setdefault(step.layer, []).append(step)
  shared = [steps for steps in calls.values() if len(steps) > 1]
  changed = True
  while changed:
    changed = False
    for steps in shared:
      keys = [[s.outputs[0] for s in steps]]
      if not any(s.foreign for s in steps) and not (
          steps[0].rule == "weighted"
          and getattr(getattr(steps[0].layer, "compressor", None),
                      "input_variables", None)):
        keys.append([s.inputs[0] for s in steps])  # (input gates: gathers)
      for group in keys:
        union = np.logical_or.reduce([kept[k] for k in group])
        for k in group:
          if not np.array_equal(union, kept[k]):
            kept[k], changed = union, True
    for step in g.steps:
      ins, outs = step.inputs, step.outputs
      new = {}
      if step.rule in ("passthrough", "merge_or"):
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
        out = kept[outs[0]]
        if step.flatten == "tile":
          per_channel = out.reshape(-1, c).any(axis=0) | kept[ins[0]]
          spread = np.tile(per_channel, out.size // c)
        else:
          per_channel = out.reshape(c, -1).any(axis=1) | kept[ins[0]]
          spread = np.repeat(per_channel, out.size // c)
        new = {ins[0]: per_channel, outs[0]: spread}
      elif step.rule == "select":  # its kept outputs need their inputs
        needed = np.zeros_like(kept[ins[0]])
        needed[step.select[kept[outs[0]]]] = True
        new[ins[0]] = needed | kept[ins[0]]
      elif step.rule == "weighted":
        if step.foreign:  # reads the tensor on another axis: all of it
          shape = step.in_shapes[0]
          every = np.ones(shape[step.kind.axis(step.layer, len(shape))], bool)
          new[ins[0]] = np.ones_like(kept[ins[0]])
          new[outs[0]] = step.kind.tie(step.layer, every, kept[outs[0]])[1]
        else:
          new[ins[0]], new[outs[0]] = step.kind.tie(
              step.layer, kept[ins[0]], kept[outs[0]])
      else:  # unknown: cannot say which channels it needs
        new = {k: np.ones_like(kept[k]) for k in ins + outs}
      for k, v in new.items():
        if not np.array_equal(v, kept[k]):
          kept[k] = kept[k] | v
          changed = True


def _probe(model, g):
  """Each tensor's value in inference mode for one all-zero input; dead
  channels are constant, so this is their value for any input."""
  functional = surgery.functional_of(model)
  zeros = [np.zeros((1,) + tuple(t.shape[1:]), t.dtype)
           for t in functional.inputs]
  values = surgery.evaluate(model, zeros)
  return {k: np.asarray(values[k]).astype("float32") for k in g.tensors
          if k in values}


def _kernel(layer):
  """The kernel a weighted layer computes with (quantized and gated)."""
  if isinstance(layer, CompressedLayer):
    return layer.effective_weights()[0]
  return kinds.of(layer).kernel(layer)


def shed(model):
  """Returns a new model without the dead channels of `model`.

  The result computes the same outputs (inference mode); a
  `SelfCompressingModel` stays one, with the same options and the original
  network's size reference (so its penalty and compression ratio continue
  where they were). Nested models stay nested. Shedding a shed model changes
  nothing.
  """
  from selfcompress.model import SelfCompressingModel
  p = plan(model)
  g = graph_lib.ChannelGraph.of(model)
  masks, selects, gathers = {}, {}, {}
  names = {l.name for l in model._flatten_layers(include_self=False)}
  for step in g.steps:
    if not surgery.is_layer(step.layer):
      continue
    layer = step.layer
    kept_in = p.kept[step.inputs[0]] if step.inputs else None
    m = (p.reads.get(layer, kept_in) if not step.foreign else None,
         p.kept[step.outputs[0]])
    if layer in masks and not all(
        np.array_equal(a, b) for a, b in zip(masks[layer], m)
        if a is not None):
      raise ValueError(f"Layer {layer.name!r} is called on tensors that "
                       "keep different channels; shed() cannot split it.")
    masks[layer] = m
    if step.rule == "select":
      selects[layer] = (kept_in, m[1])
    if layer in p.reads and not np.array_equal(m[0], kept_in):
      # Its closed inputs stay in the tensor (a model input, a Flatten of
      # pixels, a channel another layer reads): select what it reads.
      gathers[layer, id(step.node)] = SelectChannels(
          np.flatnonzero(m[0][kept_in]), axis=g.axes[step.inputs[0]],
          name=_unique(f"{layer.name}_inputs", names))

  def clone(layer):
    m = masks.get(layer)
    kind = kinds.of(layer)
    if m is None or (m[1].all() and (m[0] is None or m[0].all())
                     and layer not in p.fold):
      return surgery.same_layer(layer)
    config = layer.get_config()
    if kind is not None:
      config = kind.resized(layer, config, m[1].sum())
      if layer in p.fold:
        config = kind.with_bias(layer, config)
    if isinstance(layer, L.Reshape):
      target = list(config["target_shape"])
      target[-1] = int(m[1].sum())
      config["target_shape"] = tuple(target)
    if layer in selects:
      config = layer.cut(*selects[layer])
    return surgery.copy_layer(layer, config)

  def before(layer, node):  # the gather in front of this call, if any
    return gathers.get((layer, id(node)))

  cloned, pairs = surgery.rebuild(model, clone, before=before)
  for old, new in pairs:
    if new is not old:
      _transfer(old, new, masks.get(old), p.fold.get(old))
  if isinstance(model, SelfCompressingModel):
    shed_model = SelfCompressingModel(
        inputs=cloned.input, outputs=cloned.output, name=model.name,
        **model.options())
    shed_model.size_gamma.assign(model.size_gamma)
  else:
    shed_model = cloned
  _LINEAGE[shed_model] = [(old, new, masks.get(old)) for old, new in pairs]
  return shed_model


def slicers(old, new, masks):
  """For each weight of `new`: (it, the matching weight of `old` or None for
  a bias added to hold folded constants, a function that cuts an array
  shaped like the old weight down to the new shape). Weights are matched by
  position; used for the weights and for the optimizer's per-weight slots."""
  m_in, m_out = masks if masks is not None else (None, None)
  kind = kinds.of(old)
  kernel = kind.kernel(old) if kind is not None else None
  per_input = getattr(getattr(old, "compressor", None), "input_variables",
                      list)()
  result = []
  for var, source in _pairs(old, new):
    cut = _identity
    if source is None:
      cut = lambda a: a[np.flatnonzero(m_out)]
    elif tuple(source.shape) != tuple(var.shape):
      if source is kernel:
        cut = lambda a: kind.cut_kernel(old, a, m_in, m_out)
      elif any(source is v for v in per_input) and m_in is not None:
        cut = lambda a: a[np.flatnonzero(m_in)]
      else:
        cut = _cut_changed_axis(old, source, var, m_out)
    result.append((var, source, cut))
  return result


def _pairs(old, new):
  """`(new weight, old weight)` by position; a bias that `new` gained for
  folded constants is paired with None."""
  old_w, new_w = list(old.weights), list(new.weights)
  if len(new_w) == len(old_w) + 1:
    extra = [i for i, (a, b) in enumerate(zip(new_w, old_w + [None]))
             if b is None or a.name != b.name]
    if extra and new_w[extra[0]].name == "bias":
      i = extra[0]
      return (list(zip(new_w[:i], old_w[:i])) + [(new_w[i], None)]
              + list(zip(new_w[i + 1:], old_w[i:])))
  return surgery.weight_pairs(old, new)


def _cut_changed_axis(layer, source, var, keep):
  """A per-channel weight (BatchNorm's statistics, PReLU's slopes, a bias,
  bit depths): cut the one axis whose length changed."""
  changed = [i for i, (a, b) in enumerate(zip(source.shape, var.shape))
             if a != b]
  if len(source.shape) != len(var.shape) or len(changed) != 1 or \
      keep is None or source.shape[changed[0]] != keep.size:
    raise ValueError(
        f"shed() cannot map weight {source.path!r} of layer {layer.name!r} "
        f"({tuple(source.shape)} -> {tuple(var.shape)}).")
  idx, axis = np.flatnonzero(keep), changed[0]
  return lambda a: np.take(a, idx, axis=axis)


def _identity(a):
  return a


def _unique(name, taken):
  """`name`, or `name_1`, `name_2`... if a layer already has it."""
  candidate, i = name, 0
  while candidate in taken:
    i += 1
    candidate = f"{name}_{i}"
  taken.add(candidate)
  return candidate


def _transfer(old, new, masks, fold):
  """Copies `old`'s weights into the smaller `new`, folding constants."""
  for var, source, cut in slicers(old, new, masks):
    if source is None:  # a bias added for the fold
      value = np.zeros(masks[1].size, "float32")
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

"""The channel graph: which channels of a model feed which.

A channel is *dead* when its value no longer depends on the input (its
producer lost it, so it carries a constant that a consumer can fold into its
bias). `ChannelGraph` walks a Functional or Sequential model once and records,
for every layer call, how liveness moves from inputs to outputs. Size
accounting, shedding and export all ask this object; nothing else walks the
model.

Liveness vectors are float 0/1 tensors over a tensor's channel axis (the
last, or axis 1 after a `channels_first` layer), computed with `keras.ops` so
the same propagation runs eagerly for reports and inside the compiled train
step for the size penalty. What a weighted layer does to channels comes from
`selfcompress.kinds`; the walk itself (nested models, op nodes) from
`selfcompress.surgery`.
"""

import dataclasses
import math
import weakref

import keras
import numpy as np
from keras import ops

from selfcompress import kinds
from selfcompress import surgery
from selfcompress.compressors.inputs import input_state
from selfcompress.layers.select import SelectChannels

L = keras.layers

# Layers whose output channel c depends only on input channel c, whatever
# the channel axis.
_ELEMENTWISE_LAYERS = (
    L.Dropout, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.ActivityRegularization, L.Identity, L.ReLU, L.LeakyReLU, L.ELU,
    L.Rescaling,
)
# The same, on the channel axis their `data_format` (or `axis`) names.
_PER_CHANNEL_LAYERS = (
    L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D, L.PReLU,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.BatchNormalization,
)
# Merges where a channel is dead only if it is dead in every input.
_MERGE_OR = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")
# Op nodes (keras.ops on KerasTensors), by class name: elementwise ones...
_ELEMENTWISE_OPS = {
    "Relu", "Relu6", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu", "Silu",
    "LeakyRelu", "HardSigmoid", "HardSilu", "Softplus", "Softsign", "Mish",
    "Abs", "Absolute", "Square", "Sqrt", "Exp", "Negative", "Erf", "Cast",
}
# ...and merges.
_MERGE_OPS = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}


@dataclasses.dataclass
class Step:
  """One layer call: how liveness of `inputs` gives liveness of `outputs`."""
  layer: object
  inputs: list
  outputs: list
  rule: str
  out_channels: list
  in_shapes: list
  padded: bool = False       # reads padding: dead non-zero inputs count
  kind: object = None        # the `selfcompress.kinds.Kind` of a weighted layer
  foreign: bool = False      # reads its input on another axis: keep it whole
  flatten: str = "tile"      # how a flatten orders channels: tile or repeat
  select: object = None      # SelectChannels: the input channels it keeps
  node: object = None        # the Keras node of this call


@dataclasses.dataclass
class Flow:
  """Liveness after propagation, per layer (merged over repeated calls).

  `fan_in` is exact (alive weights per output channel, without gradient);
  `penalty_fan_in` is what the size penalty multiplies each channel's
  penalty bits by: the same count, but for a layer with input gates the
  expected number of open inputs (`P(z != 0)` over the alive inputs, times
  the kernel area), differentiable in the gates' `log_alpha`; 0 for a
  channel that no consumer reads (it is dead, and `shed()` removes it).
  `input_states` holds each input-gated layer's `InputState`;
  `norm_inputs` each BatchNormalization's input, `(alive, constant)` per
  call.
  """
  in_alive: dict
  out_alive: dict
  fan_in: dict
  tensors: dict
  states: dict
  folds: dict = dataclasses.field(default_factory=dict)  # layer -> 0/1: gets a bias
  penalty_fan_in: dict = dataclasses.field(default_factory=dict)
  input_states: dict = dataclasses.field(default_factory=dict)
  norm_inputs: dict = dataclasses.field(default_factory=dict)


class ChannelGraph:
  """The channel-level dataflow of a Functional or Sequential model.

  Build it with `ChannelGraph.of(model)` (cached per model). `propagate()`
  returns which channels are alive everywhere, given the compressors' state.
  Nested models are walked into and op nodes are steps like layers. Every
  tensor has a channel axis: the last one, or axis 1 after a
  `channels_first` layer.
  """

  def __init__(self, model):
    self.model = model
    self.steps = []
    self.unknown = []
    self.tensors = {}  # key -> KerasTensor
    self.axes = {}     # key -> channel axis (non-negative)
    functional = surgery.functional_of(model)
    self.input_keys = [id(t) for t in functional.inputs]
    for t in functional.inputs:
      self.tensors[id(t)] = t
      self.axes[id(t)] = max(len(t.shape) - 1, 0)
    self.input_channels = [_channels(t, self.axes[id(t)])
                           for t in functional.inputs]
    outputs, _ = surgery.walk(model, self.input_keys, self._step)
    self.output_keys = list(outputs)
    self.layers = []
    for step in self.steps:
      if surgery.is_layer(step.layer) and step.layer not in self.layers:
        self.layers.append(step.layer)

  _cache = weakref.WeakKeyDictionary()

  @classmethod
  def of(cls, model):
    graph = cls._cache.get(model)
    if graph is None:
      graph = cls._cache[model] = cls(model)
    return graph

  def _step(self, node, op, ins, args, kwargs):
    outs = [id(t) for t in node.outputs]
    in_axes = [self.axes[k] for k in ins]
    rule, axis, extra = _rule(op, node, in_axes)
    for t, k in zip(node.outputs, outs):
      self.tensors[k] = t
      self.axes[k] = axis if len(t.shape) > axis else max(len(t.shape) - 1, 0)
    self.steps.append(Step(
        layer=op, inputs=list(ins), outputs=outs, rule=rule,
        out_channels=[_channels(t, self.axes[k])
                      for t, k in zip(node.outputs, outs)],
        in_shapes=[tuple(t.shape) for t in node.input_tensors], node=node,
        **extra))
    if rule == "unknown" and surgery.is_layer(op):
      self.unknown.append(op)
    return outs

  def propagate(self, states=None, input_states=None):
    """Liveness of every channel, from the compressors' current state (or
    from `states`, a dict layer -> `ChannelState`, and `input_states`, a
    dict layer -> `InputState` for input-gated layers, for what-if
    questions).

    Alongside liveness it carries each dead channel's constant value
    (inference mode; NaN where it cannot be known). A dead channel with a
    non-zero constant (a BatchNorm shift, say) cannot be dropped before a
    padded convolution, whose border taps see the padding instead of the
    constant: such a consumer counts it as an input, exactly as `shed()`
    keeps it.

    A layer with input gates (`compressors.InputGates`) reads only the
    inputs whose gate is open: the others leave its fan-in, and a channel
    that no consumer reads (every reader closed its gate) is dead too.
    """
    tensors = {k: ops.ones((c,)) for k, c in
               zip(self.input_keys, self.input_channels)}
    consts = {k: ops.zeros((c,)) for k, c in
              zip(self.input_keys, self.input_channels)}
    flow = Flow({}, {}, {}, tensors, dict(states or {}),
                input_states=dict(input_states or {}))
    penalty_fan_in = []  # (layer, output key, fan-in of one call)
    for step in self.steps:
      ins = [tensors[k] for k in step.inputs]
      cs = [consts[k] for k in step.inputs]
      layer = step.layer
      if step.rule == "weighted":
        kind = step.kind
        if step.foreign:  # reads the tensor on another axis: all of it
          n = step.in_shapes[0][kind.axis(layer, len(step.in_shapes[0]))]
          ins, cs = [ops.ones((n,))], [ops.zeros((n,))]
        nonzero = _dead_nonzero(ins[0], cs[0])
        seen = ops.maximum(ins[0], nonzero) if step.padded else ins[0]
        compressor = getattr(layer, "compressor", None)
        gates = flow.input_states.get(layer) or input_state(compressor)
        if gates is not None:  # reads only the inputs its gates open
          flow.input_states[layer] = gates
          expected = kind.fan_in(layer, ops.stop_gradient(seen) * gates.expected)
          seen, nonzero = seen * gates.alive, nonzero * gates.alive
        fi = kind.fan_in(layer, seen)
        penalty_fan_in.append(
            (layer, step.outputs[0],
             ops.stop_gradient(fi) if gates is None else expected))
        out = ops.cast(ops.greater(fi, 0.0), "float32")
        bias = getattr(layer, "bias", None)
        own = ops.ones_like(out)  # the layer's own verdict on each channel
        if compressor is not None:
          flow.states[layer] = flow.states.get(layer) or compressor.state()
          own = flow.states[layer].alive
          out = out * own
          if bias is not None:
            bias = bias * own
        flow.in_alive[layer] = _merge(flow.in_alive.get(layer), seen)
        flow.fan_in[layer] = _merge(flow.fan_in.get(layer), fi)
        outs = [out]
        const = ops.zeros((out.shape[0],)) if bias is None else \
            ops.cast(bias, "float32")
        const = _apply(getattr(layer, "activation", None), const)
        if not step.padded:
          # Dead non-zero inputs shift the constant of the channels that
          # read them, unless the layer killed the channel itself (its
          # weights and bias are zero, so it is exactly activation(0)).
          # shed() folds their contribution into a bias: count one.
          shifted = ops.greater(kind.fan_in(layer, nonzero), 0.0)
          const = ops.where(ops.logical_and(shifted, ops.greater(own, 0.0)),
                            float("nan"), const)
          reaches = ops.sum(ops.cast(shifted, "float32") * out)
          flow.folds[layer] = ops.cast(ops.greater(reaches, 0.0), "float32")
        out_consts = [const]
      elif step.rule == "passthrough":
        outs = [ops.maximum(ins[0], _dead_nonzero(ins[0], cs[0]))
                if step.padded else ins[0]]
        out_consts = [_constant_through(layer, cs[0])]
        if isinstance(layer, L.BatchNormalization):
          flow.norm_inputs.setdefault(layer, []).append((ins[0], cs[0]))
      elif step.rule == "flatten":
        reps = step.out_channels[0] // step.in_shapes[0][self.axes[
            step.inputs[0]]]
        spread = ops.tile if step.flatten == "tile" else \
            (lambda v, r: ops.repeat(v, r[0]))
        outs, out_consts = [spread(ins[0], [reps])], [spread(cs[0], [reps])]
      elif step.rule == "merge_or":
        outs = [_or(ins, step.out_channels[0])]
        out_consts = [_merge_constants(layer, cs, step.out_channels[0])]
      elif step.rule == "concat":
        outs = [ops.concatenate(ins, axis=0)]
        out_consts = [ops.concatenate(cs, axis=0)]
      elif step.rule == "select":
        outs = [ops.take(ins[0], step.select, axis=0)]
        out_consts = [ops.take(cs[0], step.select, axis=0)]
      else:
        outs = [ops.ones((c,)) for c in step.out_channels]
        out_consts = [ops.full((c,), float("nan")) for c in step.out_channels]
      if step.rule != "weighted":
        flow.in_alive[layer] = _merge(flow.in_alive.get(layer), ins[0]) \
            if ins else None
      for k, v, c in zip(step.outputs, outs, out_consts):
        tensors[k], consts[k] = v, c
      flow.out_alive[layer] = _merge(flow.out_alive.get(layer), outs[0])
    used = self._drop_unread(flow) if flow.input_states else {}
    for layer, key, fi in penalty_fan_in:
      if key in used:  # a channel nobody reads costs nothing
        fi = fi * used[key]
      flow.penalty_fan_in[layer] = _merge(flow.penalty_fan_in.get(layer), fi)
    return flow

  def _drop_unread(self, flow):
    """Kills the channels that no consumer reads (closed input gates),
    walking back from the outputs, and updates the layers' liveness.
    Returns `read(flow)`."""
    tensors = flow.tensors
    used = self.read(flow)
    for k, u in used.items():
      tensors[k] = tensors[k] * u
    flow.out_alive.clear()
    for step in self.steps:
      layer = step.layer
      flow.out_alive[layer] = _merge(flow.out_alive.get(layer),
                                     tensors[step.outputs[0]])
      if step.rule != "weighted" and step.inputs:
        flow.in_alive[layer] = None
    for step in self.steps:
      if step.rule != "weighted" and step.inputs:
        flow.in_alive[step.layer] = _merge(flow.in_alive[step.layer],
                                           tensors[step.inputs[0]])
    return used

  def read(self, flow):
    """For every tensor, which of its channels some consumer reads (0/1):
    all of them for the model's outputs, for tensors nothing consumes and
    for consumers the graph cannot follow; a layer with input gates reads
    the inputs its gates open."""
    consumed = {k for s in self.steps for k in s.inputs}
    used = {}
    for k, v in flow.tensors.items():
      if k in self.output_keys or k not in consumed:
        used[k] = ops.ones_like(v)

    def add(k, v):
      used[k] = v if k not in used else ops.maximum(used[k], v)

    def every(k):
      add(k, ops.ones_like(flow.tensors[k]))

    for step in reversed(self.steps):
      ins, rule = step.inputs, step.rule
      if not ins:
        continue
      out = used.get(step.outputs[0]) if step.outputs else None
      sizes = [int(flow.tensors[k].shape[0]) for k in ins]
      n_out = None if out is None else int(out.shape[0])
      first = None
      if out is None or rule == "unknown":
        pass
      elif rule == "weighted":
        gates = flow.input_states.get(step.layer)
        if gates is not None and not step.foreign:
          first = gates.alive
      elif rule == "passthrough" and sizes[0] == n_out:
        first = out
      elif rule == "flatten":
        c = sizes[0]
        first = (ops.max(ops.reshape(out, (-1, c)), axis=0)
                 if step.flatten == "tile" else
                 ops.max(ops.reshape(out, (c, -1)), axis=1))
      elif rule == "select":  # (a channel selected twice counts once)
        first = ops.minimum(ops.scatter(
            ops.expand_dims(step.select, 1), out, (sizes[0],)), 1.0)
      elif rule == "merge_or":
        for k, n in zip(ins, sizes):
          if n == n_out:
            add(k, out)
          elif n == 1:
            add(k, ops.max(out, keepdims=True))
          else:
            every(k)
        continue
      elif rule == "concat":
        offset = 0
        for k, n in zip(ins, sizes):
          add(k, out[offset:offset + n])
          offset += n
        continue
      if first is None:
        every(ins[0])
      else:
        add(ins[0], first)
      for k in ins[1:]:
        every(k)
    return used

  def task_output_layers(self):
    """Weighted layers whose output channels are the model's outputs (the
    logits layer): walking back from each output through layers that keep
    channels one-to-one."""
    producer = {k: s for s in self.steps for k in s.outputs}
    found = []
    for key in self.output_keys:
      step = producer.get(key)
      while step is not None and step.rule != "weighted":
        one_to_one = step.rule == "passthrough" or isinstance(
            step.layer, (L.Activation, L.Softmax))
        if not one_to_one or not step.inputs:
          step = None
          break
        step = producer.get(step.inputs[0])
      if step is not None and step.layer not in found:
        found.append(step.layer)
    return found


def _channels(tensor, axis):
  if not tensor.shape:
    return 1
  c = tensor.shape[axis]
  if c is None:
    raise ValueError(
        f"Tensor {tensor.name!r} has an unknown channel dimension "
        f"(shape {tensor.shape}); give the model's inputs a full shape.")
  return int(c)


def _rule(op, node, in_axes):
  """`(rule, output channel axis, extra Step fields)` for one node."""
  outs = node.outputs
  rank = len(outs[0].shape) if outs else 0
  last = max(rank - 1, 0)
  unknown = ("unknown", last, {})
  ranks = [len(t.shape) for t in node.input_tensors]
  if not in_axes:
    return unknown
  axis, in_rank = in_axes[0], ranks[0]
  kind = kinds.usable(op)
  if kind is not None and len(outs) == 1:
    expected = kind.axis(op, in_rank)
    out_axis = kind.axis(op, rank)
    # With one output position there is no border: every constant input
    # contributes a constant.
    positions = math.prod(d or 2 for i, d in enumerate(outs[0].shape)
                          if i not in (0, out_axis))
    return "weighted", out_axis, {
        "kind": kind, "padded": kind.reads_padding(op) and positions > 1,
        "foreign": expected != axis}
  if isinstance(op, L.Activation):
    name = getattr(op.activation, "__name__", "")
    return unknown if name in _CHANNEL_MIXING_ACTIVATIONS else \
        ("passthrough", axis, {})
  if isinstance(op, _ELEMENTWISE_LAYERS) or (
      not surgery.is_layer(op) and type(op).__name__ in _ELEMENTWISE_OPS
      and len(node.input_tensors) == 1 and rank == in_rank):
    return "passthrough", axis, {}
  if isinstance(op, _PER_CHANNEL_LAYERS):
    if _layer_axis(op, in_rank) != axis:
      return unknown
    out_axis = axis if rank == in_rank else last  # global pooling: rank 2
    padded = isinstance(op, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D))
    return "passthrough", out_axis, {"padded": padded}
  if isinstance(op, L.Flatten):
    return _flatten_rule(op, axis, in_rank)
  if isinstance(op, L.Reshape):
    in_shape, out_shape = node.input_tensors[0].shape, outs[0].shape
    if axis != in_rank - 1:
      return unknown
    if out_shape[-1] == in_shape[-1]:
      return "passthrough", last, {}
    if len(out_shape) == 2:
      return "flatten", 1, {}
    return unknown
  is_merge = isinstance(op, _MERGE_OR) or (
      not surgery.is_layer(op) and type(op).__name__ in _MERGE_OPS)
  from_end = {r - a for r, a in zip(ranks, in_axes)}
  if is_merge:
    if len(from_end) != 1:
      return unknown
    return "merge_or", rank - from_end.pop(), {}
  if type(op).__name__ == "Concatenate":  # the layer or the op
    if len(from_end) != 1 or len(set(ranks)) != 1:
      return unknown
    out_axis = rank - from_end.pop()
    concat_axis = op.axis % rank
    return ("concat" if concat_axis == out_axis else "merge_or"), out_axis, {}
  if isinstance(op, L.InputLayer):
    return "passthrough", axis, {}
  if isinstance(op, SelectChannels):
    if op.axis % in_rank != axis or rank != in_rank:
      return unknown
    return "select", axis, {"select": np.asarray(op.indices, "int32")}
  return unknown


def _layer_axis(op, rank):
  """The channel axis a per-channel layer works on, for an input of `rank`."""
  if isinstance(op, L.BatchNormalization):
    return op.axis % rank
  if isinstance(op, L.PReLU):
    shared = {a % rank for a in (op.shared_axes or ())}
    # alpha varies along every non-shared axis; only a per-channel alpha
    # (all spatial axes shared) keeps channels independent of position.
    return rank - 1 if shared >= set(range(1, rank - 1)) else -1
  if getattr(op, "data_format", "channels_last") == "channels_first":
    return 1
  return rank - 1


def _flatten_rule(op, axis, rank):
  """Flatten puts channel `c` at positions `p * C + c` (tile) or
  `c * P + p` (repeat), depending on where the channel axis is and whether
  the layer first moves axis 1 last (`channels_first`)."""
  moves = getattr(op, "data_format", "channels_last") == "channels_first" \
      and rank > 2
  if axis == rank - 1 and (not moves or rank == 3):
    return "flatten", 1, {"flatten": "repeat" if moves else "tile"}
  if axis == 1 and rank > 2:
    return "flatten", 1, {"flatten": "tile" if moves else "repeat"}
  if rank == 2:
    return "passthrough", 1, {}
  return "unknown", 1, {}


def _dead_nonzero(alive, const):
  """1 for dead channels whose constant is not known to be exactly 0."""
  known_zero = ops.cast(ops.equal(const, 0.0), "float32")  # NaN: not zero
  return (1.0 - alive) * (1.0 - known_zero)


def _apply(activation, x):
  if activation is None:
    return x
  return ops.reshape(activation(ops.reshape(x, (1, -1))), (-1,))


_ELEMENTWISE = (L.ReLU, L.LeakyReLU, L.ELU, L.Activation)


def _constant_through(layer, c):
  """A dead channel's constant after a one-to-one layer (inference mode)."""
  if isinstance(layer, L.BatchNormalization):
    scale = ops.rsqrt(layer.moving_variance + layer.epsilon)
    if layer.gamma is not None:
      scale = scale * layer.gamma
    shifted = (c - layer.moving_mean) * scale
    return shifted + layer.beta if layer.beta is not None else shifted
  if isinstance(layer, L.Rescaling):
    return c * layer.scale + layer.offset
  if isinstance(layer, _ELEMENTWISE):
    return ops.reshape(layer(ops.reshape(c, (1, -1))), (-1,))
  if isinstance(layer, L.PReLU):
    return ops.where(ops.greater_equal(c, 0.0), c, float("nan"))
  if not surgery.is_layer(layer):  # an elementwise op node
    return ops.reshape(ops.cast(layer(ops.reshape(c, (1, -1))), "float32"),
                       (-1,))
  return c  # pooling, dropout, padding, cropping, upsampling: unchanged


def _merge_constants(layer, consts, channels):
  name = type(layer).__name__
  if len(consts) == 1 and not surgery.is_layer(layer):
    # `x + 1.0` and the like: the other operand is not a tensor we track.
    return ops.full((channels,), float("nan"))
  out = consts[0]
  for c in consts[1:]:
    if name in ("Add", "Average"):
      out = out + c
    elif name == "Subtract":
      out = out - c
    elif name == "Multiply":
      out = out * c
    elif name == "Maximum":
      out = ops.maximum(out, c)
    elif name == "Minimum":
      out = ops.minimum(out, c)
    else:
      return ops.full((channels,), float("nan"))
  if name == "Average":
    out = out / len(consts)
  return ops.broadcast_to(out, (channels,))


def _merge(previous, new):
  return new if previous is None else ops.maximum(previous, new)


def _or(vectors, channels):
  out = ops.zeros((channels,))
  for v in vectors:
    out = ops.maximum(out, v)  # broadcasts a 1-channel input
  return out

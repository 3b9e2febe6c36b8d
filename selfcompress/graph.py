"""The channel graph: which channels of a model feed which.

A channel is *dead* when its value no longer depends on the input (its
producer lost it, so it carries a constant that a consumer can fold into its
bias). `ChannelGraph` walks a Functional or Sequential model once and records,
for every layer call, how liveness moves from inputs to outputs. Size
accounting, shedding and export all ask this object; nothing else walks the
model.

Liveness vectors are float 0/1 tensors over the last (channel) axis, computed
with `keras.ops` so the same propagation runs eagerly for reports and inside
the compiled train step for the size penalty.
"""

import dataclasses
import math
import weakref

import keras
from keras import ops

L = keras.layers

# Layers whose output channel c depends only on input channel c.
_PASSTHROUGH = (
    L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
    L.GaussianNoise, L.GaussianDropout, L.AlphaDropout,
    L.ActivityRegularization, L.Identity, L.ReLU, L.LeakyReLU, L.ELU, L.PReLU,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D,
    L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.ZeroPadding3D, L.Cropping1D, L.Cropping2D, L.Cropping3D,
    L.UpSampling1D, L.UpSampling2D, L.UpSampling3D, L.Rescaling,
    L.BatchNormalization,
)
# Merges where a channel is dead only if it is dead in every input.
_MERGE_OR = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
_CHANNEL_MIXING_ACTIVATIONS = ("softmax", "log_softmax")
# Layers with weights whose per-output fan-in we know (ours subclass these).
WEIGHTED = (L.Dense, L.Conv1D, L.Conv2D, L.DepthwiseConv2D)


def fan_in(layer, in_alive):
  """Alive weights feeding each output channel of a weighted layer.

  Args:
    layer: a Dense, Conv1D, Conv2D or DepthwiseConv2D (plain or compressed).
    in_alive: 0/1 vector over the layer's input channels.

  Returns:
    A float vector over output channels.
  """
  if isinstance(layer, L.DepthwiseConv2D):
    area = math.prod(layer.kernel_size)
    return ops.repeat(in_alive, layer.depth_multiplier) * area
  if isinstance(layer, (L.Conv1D, L.Conv2D)):
    area = math.prod(layer.kernel_size)
    groups = layer.groups
    per_group = ops.sum(ops.reshape(in_alive, (groups, -1)), axis=1)
    return ops.repeat(per_group, layer.filters // groups) * area
  if isinstance(layer, L.Dense):
    return ops.broadcast_to(ops.sum(in_alive), (layer.units,))
  raise TypeError(f"No fan-in rule for {type(layer).__name__}.")


def kernel_fan_in(layer):
  """Weights per output channel of a weighted layer when all inputs live."""
  kernel = (layer.kernel_variable if hasattr(layer, "kernel_variable")
            else layer.kernel)
  shape = tuple(kernel.shape)
  if isinstance(layer, L.DepthwiseConv2D):
    return math.prod(shape[:2])
  return math.prod(shape[:-1])


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


@dataclasses.dataclass
class Flow:
  """Liveness after propagation, per layer (merged over repeated calls)."""
  in_alive: dict
  out_alive: dict
  fan_in: dict
  tensors: dict
  states: dict


class ChannelGraph:
  """The channel-level dataflow of a Functional or Sequential model.

  Build it with `ChannelGraph.of(model)` (cached per model). `propagate()`
  returns which channels are alive everywhere, given the compressors' state.
  """

  def __init__(self, model):
    self.model = model
    self.steps = []
    self.unknown = []
    self.tensors = {}  # key -> KerasTensor
    self.nested = False
    functional = functional_of(model)
    self.input_keys = [id(t) for t in functional.inputs]
    self.input_channels = [_channels(t) for t in functional.inputs]
    self.output_keys = [id(t) for t in functional.outputs]
    self.tensors.update({id(t): t for t in functional.inputs})
    self._add(functional, {k: k for k in self.input_keys})
    self.layers = []
    for step in self.steps:
      if step.layer not in self.layers:
        self.layers.append(step.layer)

  _cache = weakref.WeakKeyDictionary()

  @classmethod
  def of(cls, model):
    graph = cls._cache.get(model)
    if graph is None:
      graph = cls._cache[model] = cls(model)
    return graph

  def _add(self, functional, key_map):
    depths = sorted(functional._nodes_by_depth, reverse=True)
    for depth in depths:
      for node in functional._nodes_by_depth[depth]:
        if node.is_input or node.operation is None:
          continue
        op = node.operation
        inputs = [key_map.get(id(t), id(t)) for t in node.input_tensors]
        outputs = [id(t) for t in node.outputs]
        for t in list(node.input_tensors) + list(node.outputs):
          self.tensors.setdefault(id(t), t)
        if isinstance(op, keras.Model) and _is_graph_model(op):
          self.nested = True
          inner = functional_of(op)
          inner_map = {id(t): k for t, k in zip(inner.inputs, inputs)}
          self._add(inner, inner_map)
          for t, inner_out in zip(node.outputs, inner.outputs):
            key_map[id(t)] = inner_map.get(id(inner_out), id(inner_out))
          continue
        self.steps.append(Step(
            layer=op, inputs=inputs, outputs=outputs, rule=_rule(op, node),
            out_channels=[_channels(t) for t in node.outputs],
            in_shapes=[tuple(t.shape) for t in node.input_tensors],
            padded=_reads_padding(op)))
        if self.steps[-1].rule == "unknown":
          self.unknown.append(op)
        for k in outputs:
          key_map[k] = k

  def propagate(self, states=None):
    """Liveness of every channel, from the compressors' current state (or
    from `states`, a dict layer -> `ChannelState`, for what-if questions).

    Alongside liveness it carries each dead channel's constant value
    (inference mode; NaN where it cannot be known). A dead channel with a
    non-zero constant (a BatchNorm shift, say) cannot be dropped before a
    padded convolution, whose border taps see the padding instead of the
    constant: such a consumer counts it as an input, exactly as `shed()`
    keeps it.
    """
    tensors = {k: ops.ones((c,)) for k, c in
               zip(self.input_keys, self.input_channels)}
    consts = {k: ops.zeros((c,)) for k, c in
              zip(self.input_keys, self.input_channels)}
    flow = Flow({}, {}, {}, tensors, dict(states or {}))
    for step in self.steps:
      ins = [tensors[k] for k in step.inputs]
      cs = [consts[k] for k in step.inputs]
      layer = step.layer
      if step.rule == "weighted":
        nonzero = _dead_nonzero(ins[0], cs[0])
        seen = ops.maximum(ins[0], nonzero) if step.padded else ins[0]
        fi = fan_in(layer, seen)
        out = ops.cast(ops.greater(fi, 0.0), "float32")
        compressor = getattr(layer, "compressor", None)
        bias = layer.bias
        if compressor is not None:
          flow.states[layer] = flow.states.get(layer) or compressor.state()
          out = out * flow.states[layer].alive
          if bias is not None:
            bias = bias * flow.states[layer].alive
        flow.in_alive[layer] = _merge(flow.in_alive.get(layer), seen)
        flow.fan_in[layer] = _merge(flow.fan_in.get(layer), fi)
        outs = [out]
        const = ops.zeros((out.shape[0],)) if bias is None else \
            ops.convert_to_tensor(bias)
        const = _apply(layer.activation, const)
        if not step.padded:  # dead non-zero inputs shift the constant
          shifted = ops.greater(fan_in(layer, nonzero), 0.0)
          const = ops.where(shifted, float("nan"), const)
        out_consts = [const]
      elif step.rule == "passthrough":
        outs = [ops.maximum(ins[0], _dead_nonzero(ins[0], cs[0]))
                if step.padded else ins[0]]
        out_consts = [_constant_through(layer, cs[0])]
      elif step.rule == "flatten":
        reps = [math.prod(step.in_shapes[0][1:-1])]
        outs, out_consts = [ops.tile(ins[0], reps)], [ops.tile(cs[0], reps)]
      elif step.rule == "merge_or":
        outs = [_or(ins, step.out_channels[0])]
        out_consts = [_merge_constants(layer, cs, step.out_channels[0])]
      elif step.rule == "concat":
        outs = [ops.concatenate(ins, axis=0)]
        out_consts = [ops.concatenate(cs, axis=0)]
      else:
        outs = [ops.ones((c,)) for c in step.out_channels]
        out_consts = [ops.zeros((c,)) for c in step.out_channels]
      if step.rule != "weighted":
        flow.in_alive[layer] = _merge(flow.in_alive.get(layer), ins[0]) \
            if ins else None
      for k, v, c in zip(step.outputs, outs, out_consts):
        tensors[k], consts[k] = v, c
      flow.out_alive[layer] = _merge(flow.out_alive.get(layer), outs[0])
    return flow

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


def functional_of(model):
  """The Functional graph of a Functional or built Sequential model."""
  if isinstance(model, keras.Sequential):
    if getattr(model, "_functional", None) is None:
      raise ValueError(
          f"Sequential model {model.name!r} has no input shape yet. Start it "
          "with `keras.Input(shape=...)` or call `model.build(input_shape)`.")
    return model._functional
  if not hasattr(model, "_nodes_by_depth"):
    raise ValueError(
        f"Model {model.name!r} is a subclassed model; selfcompress needs a "
        "Functional or Sequential model whose graph it can read.")
  return model


def _is_graph_model(model):
  return isinstance(model, keras.Sequential) or hasattr(model, "_nodes_by_depth")


def _channels(tensor):
  if not tensor.shape:
    return 1
  c = tensor.shape[-1]
  if c is None:
    raise ValueError(
        f"Tensor {tensor.name!r} has an unknown channel dimension "
        f"(shape {tensor.shape}); give the model's inputs a full shape.")
  return int(c)


def _rule(op, node):
  if isinstance(op, WEIGHTED):
    if getattr(op, "data_format", "channels_last") != "channels_last":
      return "unknown"
    return "weighted"
  if isinstance(op, L.BatchNormalization):
    return "passthrough" if op.axis in (-1, [-1], len(node.outputs[0].shape) - 1) \
        else "unknown"
  if isinstance(op, L.Activation):
    name = getattr(op.activation, "__name__", "")
    return "unknown" if name in _CHANNEL_MIXING_ACTIVATIONS else "passthrough"
  if isinstance(op, _PASSTHROUGH):
    fmt = getattr(op, "data_format", "channels_last")
    return "passthrough" if fmt == "channels_last" else "unknown"
  if isinstance(op, L.Flatten):
    fmt = getattr(op, "data_format", "channels_last")
    return "flatten" if fmt == "channels_last" else "unknown"
  if isinstance(op, L.Reshape):
    in_shape = node.input_tensors[0].shape
    out_shape = node.outputs[0].shape
    if out_shape[-1] == in_shape[-1]:
      return "passthrough"
    if len(out_shape) == 2:
      return "flatten"
    return "unknown"
  if isinstance(op, _MERGE_OR):
    return "merge_or"
  if isinstance(op, L.Concatenate):
    rank = len(node.outputs[0].shape)
    return "concat" if op.axis in (-1, rank - 1) else "merge_or"
  if isinstance(op, L.InputLayer):
    return "passthrough"
  name = type(op).__name__
  if name in ("Relu", "Relu6", "Sigmoid", "Tanh", "Elu", "Selu", "Gelu",
              "Silu", "LeakyRelu", "HardSigmoid", "HardSilu", "Softplus"):
    return "passthrough"
  if name in ("Add", "Subtract", "Multiply", "Maximum", "Minimum"):
    return "merge_or"
  return "unknown"


def _reads_padding(op):
  """Whether the layer sees zero padding where its input has a constant."""
  if isinstance(op, (L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D)):
    return True
  if isinstance(op, WEIGHTED) and not isinstance(op, L.Dense):
    return op.padding in ("same", "causal") and math.prod(op.kernel_size) > 1
  return False


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
  return c  # pooling, dropout, padding, cropping, upsampling: unchanged


def _merge_constants(layer, consts, channels):
  name = type(layer).__name__
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

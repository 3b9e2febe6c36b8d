"""Model surgery: read, run and rebuild a Functional or Sequential graph.

`compress()`, `shed()` and `export()` all copy a model with some layers
replaced; the channel graph and shedding's constant probe walk it. They do so
here, and only here, so nested models (a backbone inside a head, Keras'
nested Sequentials), op nodes (`x + y`, `keras.ops.*` on KerasTensors) and
shared layers are handled once, for all of them.

Keras keeps a Functional model's graph in private attributes (nodes by depth,
each node's call arguments); this module is the one place that reads them.
"""

import keras

# Private Keras attributes read here, and nowhere else in selfcompress.
_NODES = "_nodes_by_depth"


def functional_of(model):
  """The Functional graph of a Functional or built Sequential model."""
  if isinstance(model, keras.Sequential):
    if getattr(model, "_functional", None) is None:
      raise ValueError(
          f"Sequential model {model.name!r} has no input shape yet. Start it "
          "with `keras.Input(shape=...)` or call `model.build(input_shape)`.")
    return model._functional
  if not hasattr(model, _NODES):
    raise ValueError(
        f"Model {model.name!r} is a subclassed model; selfcompress needs a "
        "Functional or Sequential model whose graph it can read.")
  return model


def is_graph_model(op):
  """Whether `op` is a model whose graph surgery can read (not subclassed)."""
  return isinstance(op, keras.Model) and (
      isinstance(op, keras.Sequential) or hasattr(op, _NODES))


def is_layer(op):
  """A Keras layer (has weights, can be copied), as opposed to an op node."""
  return isinstance(op, keras.layers.Layer)


def walk(model, inputs, call, nested=None):
  """Runs `model`'s graph on `inputs` (a flat list of anything: tensors,
  KerasTensors or keys), node by node in topological order.

  `call(node, op, ins, args, kwargs)` returns the outputs of one node, given
  the values of its input tensors (`ins`, in `node.input_tensors` order) and
  its call arguments with every KerasTensor of the original graph replaced by
  its value. Nested graph models are walked into, so `call` only sees layers and
  op nodes, unless `nested(op, inputs)` is given: then it is asked for the
  nested model's outputs (a flat list).

  Returns `(outputs, values)`: the flat outputs and a dict from `id()` of
  every original KerasTensor (nested ones too) to its value.
  """
  values = {}
  outputs = _walk(functional_of(model), list(inputs), call, nested, values)
  return outputs, values


def _walk(functional, inputs, call, nested, values):
  for t, v in zip(functional.inputs, inputs):
    values[id(t)] = v
  nodes = getattr(functional, _NODES)
  for depth in sorted(nodes, reverse=True):
    for node in nodes[depth]:
      if node.is_input or node.operation is None:
        continue
      if any(id(t) not in values for t in node.input_tensors):
        continue  # feeds only outputs the model does not return
      op = node.operation
      ins = [values[id(t)] for t in node.input_tensors]
      if is_graph_model(op):
        if nested is not None:
          outs = nested(op, ins)
        else:
          outs = _walk(functional_of(op), ins, call, None, values)
      else:
        args, kwargs = node.arguments.fill_in(values)
        outs = keras.tree.flatten(call(node, op, ins, args, kwargs))
      for t, v in zip(node.outputs, outs):
        values[id(t)] = v
  return [values[id(t)] for t in functional.outputs]


def structure(model):
  """`(inputs, outputs)` of a model's graph as the model nests them."""
  functional = functional_of(model)
  return functional._inputs_struct, functional._outputs_struct


def input_name(tensor):
  """The name of the `keras.Input` that made `tensor`."""
  history = getattr(tensor, "_keras_history", None)
  return history.operation.name if history else tensor.name


def rebuild(model, replace, name=None, before=None):
  """A plain Functional copy of `model`'s graph with every layer replaced by
  `replace(layer)`. Nested graph models are rebuilt as nested models (same
  names, new input shapes), op nodes are re-applied as they are, and a layer
  called several times is replaced once, so weight sharing is kept.

  `before(layer, node)`, if given, returns None or a layer (without
  weights) that the copy applies to the first input of `layer`'s
  replacement in the call `node` (`shed()` selects the channels a layer
  still reads this way).

  Returns `(copy, pairs)`: the new model and the `(old, new)` layer pairs.
  """
  memo, pairs = {}, []
  return _rebuild(model, replace, memo, pairs, None, name, before), pairs


def _first_input(args, kwargs, apply):
  """`(args, kwargs)` with `apply` applied to a layer call's first input."""
  if args:
    return (apply(args[0]),) + tuple(args[1:]), kwargs
  key = "inputs" if "inputs" in kwargs else next(iter(kwargs))
  return args, dict(kwargs, **{key: apply(kwargs[key])})


def _rebuild(model, replace, memo, pairs, like, name, before=None):
  functional = functional_of(model)
  like = like or functional.inputs
  inputs = [keras.Input(batch_shape=tuple(l.shape), dtype=l.dtype,
                        sparse=getattr(t, "sparse", False),
                        name=input_name(t))
            for t, l in zip(functional.inputs, like)]

  def call(node, op, ins, args, kwargs):
    if is_layer(op):
      first = None if before is None else before(op, node)
      if id(op) not in memo:
        memo[id(op)] = replace(op)
        pairs.append((op, memo[id(op)]))
      op = memo[id(op)]
      if first is not None:
        args, kwargs = _first_input(args, kwargs, first)
    return op(*args, **kwargs)

  def nested(op, ins):
    key = ("model", id(op))
    if key not in memo:
      memo[key] = _rebuild(op, replace, memo, pairs, ins, op.name, before)
    return keras.tree.flatten(memo[key](_pack(op, ins)))

  outputs, _ = walk(model, inputs, call, nested)
  in_struct, out_struct = structure(model)
  return keras.Model(keras.tree.pack_sequence_as(in_struct, inputs),
                     keras.tree.pack_sequence_as(out_struct, outputs),
                     name=name or model.name)


def _pack(model, flat):
  in_struct, _ = structure(model)
  return keras.tree.pack_sequence_as(in_struct, flat)


def evaluate(model, inputs):
  """Every tensor's value for `inputs` in inference mode: a dict from `id()`
  of each KerasTensor of the graph (nested ones too) to its value."""
  def call(node, op, ins, args, kwargs):
    if is_layer(op) and getattr(op, "_call_has_training_arg", False):
      kwargs = dict(kwargs, training=False)
    return op(*args, **kwargs)
  return walk(model, inputs, call)[1]


def layers(model):
  """Every layer of `model`, nested models' layers included (not models)."""
  return [l for l in model._flatten_layers(include_self=False)
          if not isinstance(l, keras.Model)]


def copy_layer(layer, config=None):
  """A new layer of `layer`'s class made from `config` (its own by default);
  compress, shed and export rebuild every layer this way."""
  try:
    return layer.__class__.from_config(
        layer.get_config() if config is None else config)
  except Exception as e:  # a custom layer without a working config
    raise ValueError(
        f"Cannot rebuild layer {layer.name!r} ({type(layer).__name__}) from "
        f"its config: {e}. Give it a get_config() that returns its "
        "constructor's arguments and register it with "
        "@keras.saving.register_keras_serializable().") from e


def same_layer(layer):
  """A copy of `layer` for a new model; a layer without state whose config
  cannot rebuild it (a Lambda of a closure, say) is shared instead, which is
  safe because it holds nothing that training could change."""
  try:
    return copy_layer(layer)
  except ValueError:
    if layer.weights:
      raise
    return layer


def weight_pairs(old, new):
  """`(new_weight, old_weight)` for each weight of `new`, matched by position
  (layers made from the same config create their weights in the same order;
  short names are not unique: every Keras sub-layer calls its kernel
  `kernel`). Raises if the two layers do not line up."""
  if len(old.weights) != len(new.weights) or any(
      len(a.shape) != len(b.shape) for a, b in zip(old.weights, new.weights)):
    raise ValueError(
        f"Layer {old.name!r} ({type(old).__name__}) and its copy have "
        f"different weights: {[w.path for w in old.weights]} vs "
        f"{[w.path for w in new.weights]}. It must create the same weights "
        "from its config.")
  return list(zip(new.weights, old.weights))

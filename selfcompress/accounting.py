"""Size accounting: the one place where a model's size is computed.

The training penalty, the metrics logged during training, the printed summary
and the export check all call `account()`.

Storage rules (bits):
  * compressed layer: `sum_o storage_bits_o * fan_in_o` over alive output
    channels `o`, where `fan_in_o` counts only inputs fed by alive channels
    (times the kernel area); plus a float32 bias and the compressor's
    per-channel parameters (bit depth, scale) for each alive channel. With
    `storage="entropy"`, the weights instead take what the entropy coder
    writes for those codes, frequency table included (`size()`: exact; in
    the training step: the codes' ideal length, `compressors.coding`).
  * uncompressed Dense/Conv: 32 bits per weight on alive inputs, plus bias.
  * BatchNormalization: folded into a per-channel scale and shift at
    inference, 2 x 32 bits per alive channel.
  * any other layer with weights: 32 bits per parameter.
The float32 reference is the same rules applied to the original network with
every channel alive and 32 bits everywhere, so the ratio compares like for
like. 1 KB = 1000 bytes.
"""

import dataclasses
import functools
import os

import keras
import numpy as np
from keras import ops

from selfcompress import codes as codes_lib
from selfcompress import entropy
from selfcompress import graph as graph_lib
from selfcompress import kinds
from selfcompress import surgery
from selfcompress.compressors import coding
from selfcompress.layers import CompressedLayer

FLOAT_BITS = 32


@dataclasses.dataclass(frozen=True)
class LayerSize:
  name: str
  kind: str
  channels_alive: int
  channels_total: int
  inputs_alive: int
  inputs_total: int
  weights_alive: int
  weights_total: int
  mean_bits: float
  weight_bits: int
  other_bits: int
  float_bits: int

  @property
  def bits(self):
    return self.weight_bits + self.other_bits

  @property
  def bytes(self):
    return self.bits / 8


@dataclasses.dataclass(frozen=True)
class SizeReport:
  """Size of a model, per layer and in total. Print it with `summary()`.

  `reference_float_bits`, when set, is the float32 size of the network as
  first compressed (a shed model's own layers are smaller than that).
  """
  layers: tuple
  reference_float_bits: float = None

  @property
  def bits(self):
    return sum(l.bits for l in self.layers)

  @property
  def bytes(self):
    return self.bits / 8

  @property
  def kb(self):
    return self.bytes / 1000

  @property
  def float_bits(self):
    if self.reference_float_bits is not None:
      return self.reference_float_bits
    return sum(l.float_bits for l in self.layers)

  @property
  def float_kb(self):
    return self.float_bits / 8000

  @property
  def compression_ratio(self):
    return self.float_bits / max(self.bits, 1)

  @property
  def weights_alive(self):
    return sum(l.weights_alive for l in self.layers)

  @property
  def weights_total(self):
    return sum(l.weights_total for l in self.layers)

  @property
  def bits_per_weight(self):
    weight_bits = sum(l.weight_bits for l in self.layers)
    return weight_bits / max(self.weights_alive, 1)

  def layer(self, name):
    for l in self.layers:
      if l.name == name:
        return l
    raise KeyError(f"No layer named {name!r} in the report.")

  def as_dict(self):
    return {
        "kb": self.kb, "bits": self.bits, "float_kb": self.float_kb,
        "compression_ratio": self.compression_ratio,
        "bits_per_weight": self.bits_per_weight,
        "weights_alive": self.weights_alive,
        "weights_total": self.weights_total,
        "layers": [dict(dataclasses.asdict(l), bits=l.bits)
                   for l in self.layers],
    }


def account(model, states=None, input_states=None):
  """Per-layer size terms of `model` as tensors (usable in a train step).

  `states` optionally replaces the compressors' state (layer ->
  `ChannelState`), and `input_states` the input gates' (layer ->
  `InputState`), e.g. to ask how small the model could get.

  Returns a dict of layer -> dict with the tensors `alive`, `fan_in`,
  `weight_bits`, `other_bits`, `penalty_bits` and the Python numbers
  `float_bits`, `weights_total`, `kind`.
  """
  g = graph_lib.ChannelGraph.of(model)
  return _terms(g.layers, g.propagate(states, input_states))


def _terms(layers, flow):
  """`account()`'s terms of `layers`, from the channel graph's `flow`."""
  terms = {}
  for layer in layers:
    out_alive = flow.out_alive[layer]
    t = {"kind": type(layer).__name__, "alive": out_alive,
         "channels_total": int(out_alive.shape[0])}
    if layer in flow.fan_in:
      fi = ops.stop_gradient(flow.fan_in[layer])
      full = kinds.of(layer).full_fan_in(layer)
      n_out = int(out_alive.shape[0])
      bias = FLOAT_BITS if getattr(layer, "bias", None) is not None else 0
      t["fan_in"] = fi
      t["in_alive"] = flow.in_alive[layer]
      t["weights_alive"] = ops.sum(fi * out_alive)
      t["weights_total"] = full * n_out
      t["float_bits"] = (full + (1 if bias else 0)) * n_out * FLOAT_BITS
      if isinstance(layer, CompressedLayer):
        state = flow.states[layer]
        t["weight_bits"] = ops.sum(state.storage_bits * fi * out_alive)
        t["penalty_bits"] = ops.sum(
            state.penalty_bits * flow.penalty_fan_in[layer])
        if _entropy_coded(layer):
          t["weight_bits"], t["penalty_bits"] = _entropy_terms(
              layer, flow, out_alive, t["weight_bits"], t["penalty_bits"])
      else:
        t["weight_bits"] = FLOAT_BITS * t["weights_alive"]
      t["other_bits"] = _channel_bits(layer, flow) * ops.sum(out_alive)
    elif _is_norm(layer, flow):
      t["weight_bits"] = 0.0
      t["other_bits"] = NORM_BITS * ops.sum(out_alive)
      t["float_bits"] = NORM_BITS * t["channels_total"]
    elif _compressed_inside(layer):
      t.update(_container_terms(layer, flow.states))
    elif getattr(layer, "weights", None):
      params = sum(int(np.prod(v.shape)) for v in layer.weights)
      t["weight_bits"] = 0.0
      t["other_bits"] = float(FLOAT_BITS * params)
      t["float_bits"] = FLOAT_BITS * params
    else:
      continue
    terms[layer] = t
  return terms


def _entropy_coded(layer):
  return codes_lib.storage(layer) == "entropy"


def _entropy_terms(layer, flow, out_alive, fixed_bits, fixed_penalty):
  """`(weight_bits, penalty_bits)` of an entropy-coded layer, as tensors.

  `weight_bits` is the ideal coded length of its stored codes (alive
  channels on alive inputs, `Kind.input_mask`) with their table
  (`compressors.coding`);
  `size()` replaces it by the coder's exact length. The penalty is the
  fixed-width one scaled by what the coder takes of the fixed width on this
  layer (held constant within the step): its value is the coded size, and
  the bit depths and gates feel the pressure in proportion to what their
  channels cost coded.
  """
  c = layer.compressor
  kind = kinds.of(layer)
  weight = c.broadcast(out_alive) * kind.input_mask(layer,
                                                   flow.in_alive[layer])
  ideal = coding.bits(c.codes(kind.kernel(layer))[0], weight)
  # A compressor whose penalty already models the coded length (its zeros
  # cheap) is scaled by what the coder takes of that model instead.
  reference = (fixed_penalty if getattr(c, "penalty_models_coding", False)
               else fixed_bits)
  saving = ops.stop_gradient(ideal / ops.maximum(reference, 1.0))
  return ideal, saving * fixed_penalty


# A BatchNormalization stores its scale and shift per alive channel (its
# moving statistics fold into them).
NORM_BITS = 2 * FLOAT_BITS


def _is_norm(layer, flow):
  return (layer not in flow.fan_in
          and isinstance(layer, keras.layers.BatchNormalization))


def _channel_bits(layer, flow):
  """Bits an alive output channel of a weighted layer stores besides its
  weights: its bias (or the one shed() gives it to hold dead inputs'
  constants, a tensor) and its compressor's parameters."""
  bits = FLOAT_BITS if getattr(layer, "bias", None) is not None else 0
  if not bits and layer in flow.folds:
    bits = FLOAT_BITS * flow.folds[layer]
  if isinstance(layer, CompressedLayer):
    bits = bits + layer.compressor.overhead_bits_per_channel
  return bits


def _compressed_inside(layer):
  """The self-compressing layers inside `layer` (attention's projections)."""
  if not hasattr(layer, "_flatten_layers"):
    return []
  return [l for l in layer._flatten_layers(include_self=False)
          if isinstance(l, CompressedLayer)]


def _container_terms(layer, states):
  """Size terms of a layer the channel graph keeps whole but that holds
  self-compressing layers: each of those counts its alive channels with all
  their inputs; the container's other weights count at float32."""
  alive, weight_bits, penalty_bits, other_bits = [], 0.0, 0.0, 0.0
  weights_alive, weights_total, float_bits = 0.0, 0, 0
  inner_ids = set()
  for l in _compressed_inside(layer):
    state = states.get(l) or l.compressor.state()
    states[l] = state
    full = l.kind.full_fan_in(l)
    n = l.compressor.num_channels
    bias = FLOAT_BITS if getattr(l, "bias", None) is not None else 0
    alive.append(state.alive)
    weight_bits += ops.sum(state.storage_bits * state.alive) * full
    penalty_bits += ops.sum(state.penalty_bits) * full
    other_bits += (bias + l.compressor.overhead_bits_per_channel) * ops.sum(
        state.alive)
    weights_alive += ops.sum(state.alive) * full
    weights_total += n * full
    float_bits += (full + (1 if bias else 0)) * n * FLOAT_BITS
    inner_ids |= {id(v) for v in l.weights}
  rest = sum(int(np.prod(v.shape)) for v in layer.weights
             if id(v) not in inner_ids)
  alive = ops.concatenate(alive, axis=0)
  return {"alive": alive, "channels_total": int(alive.shape[0]),
          "weight_bits": weight_bits, "penalty_bits": penalty_bits,
          "other_bits": other_bits + FLOAT_BITS * rest,
          "weights_alive": weights_alive, "weights_total": weights_total,
          "float_bits": float_bits + FLOAT_BITS * rest}


def size_penalty(terms, total_weights=None):
  """The differentiable size term Q: penalty bits per weight of the
  compressed layers (the paper's normalised size). `total_weights` fixes the
  normaliser (the original network's count, kept across shedding)."""
  compressed = [t for t in terms.values() if "penalty_bits" in t]
  if not compressed:
    raise ValueError("The model has no self-compressing layers.")
  total = total_weights or sum(t["weights_total"] for t in compressed)
  return ops.sum(ops.stack([t["penalty_bits"] for t in compressed])) / total


def reference(terms):
  """What a model is measured against: its compressed layers' weight count
  (the penalty's normaliser) and its float32 size in bits."""
  return {"weights": int(sum(t["weights_total"] for t in terms.values()
                             if "penalty_bits" in t)),
          "float_bits": float(totals(terms)["float_bits"])}


def totals(terms):
  """Model totals as tensors: bits, alive channels and alive weights."""
  bits = sum(t["weight_bits"] + t["other_bits"] for t in terms.values())
  weight_bits = sum(t["weight_bits"] for t in terms.values())
  compressed = [t for t in terms.values() if "penalty_bits" in t]
  alive = sum(ops.sum(t["alive"]) for t in compressed)
  weights = sum(t.get("weights_alive", 0.0) for t in terms.values())
  float_bits = sum(t["float_bits"] for t in terms.values())
  return {"bits": bits, "weight_bits": weight_bits, "alive_channels": alive,
          "weights_alive": weights, "float_bits": float_bits}


def step_totals(model, states=None):
  """What the training step needs, in a few ops for the whole model: the
  `totals()` of `account(model, states)` (as tensors, without `float_bits`)
  and the sum of the compressed layers' penalty bits (`size_penalty()`
  before its normaliser).

  The rules are `account()`'s (`_channel_bits`, `NORM_BITS`); only the
  sums differ: the compressed layers'
  and the BatchNormalizations' per-channel vectors are concatenated and
  summed once, instead of a dozen small ops per layer (each op costs a launch,
  on a CPU as much as its arithmetic). Bit counts are integers, so the
  totals are the same numbers while they stay below 2^24 (float32); the
  penalty may differ from `size_penalty()` in float rounding, its gradient
  does not.
  """
  g = graph_lib.ChannelGraph.of(model)
  flow = g.propagate(states)
  # Compressed layers that the graph follows (channels and fan-in): their
  # per-channel vectors, and per layer the bits of an alive channel's
  # bias and compressor parameters (a constant, or a tensor when a folded
  # bias may be added).
  storage, penalty, fan_in, alive, per_channel = [], [], [], [], []
  penalty_fan_in = []  # differentiable in input gates (graph.Flow)
  segments = []
  norm_alive = []  # BatchNormalization: NORM_BITS per alive channel
  rest = []        # everything else, as account() has it
  for layer in g.layers:
    if (isinstance(layer, CompressedLayer) and layer in flow.fan_in
        and not _entropy_coded(layer)):
      state = flow.states[layer]
      out_alive = flow.out_alive[layer]
      storage.append(state.storage_bits)
      penalty.append(state.penalty_bits)
      fan_in.append(flow.fan_in[layer])
      penalty_fan_in.append(flow.penalty_fan_in[layer])
      alive.append(out_alive)
      segments.append(np.full(int(out_alive.shape[0]), len(per_channel),
                              "int32"))
      per_channel.append(_channel_bits(layer, flow))
    elif _is_norm(layer, flow):
      norm_alive.append(flow.out_alive[layer])
    else:
      rest.append(layer)
  terms = _terms(rest, flow)
  out = totals(terms)
  del out["float_bits"]
  penalty_bits = [t["penalty_bits"] for t in terms.values()
                  if "penalty_bits" in t]
  if alive:
    alive = ops.concatenate(alive, axis=0)
    fan_in = ops.stop_gradient(ops.concatenate(fan_in, axis=0))
    alive_fan_in = fan_in * alive
    weight_bits = ops.sum(ops.concatenate(storage, axis=0) * alive_fan_in)
    penalty_bits.append(
        ops.sum(ops.concatenate(penalty, axis=0)
                * ops.concatenate(penalty_fan_in, axis=0)))
    per_layer_alive = ops.segment_sum(
        alive, np.concatenate(segments), num_segments=len(per_channel))
    if any(ops.is_tensor(b) for b in per_channel):  # folded biases
      per_channel = ops.stack([ops.cast(b, "float32") for b in per_channel])
    else:
      per_channel = np.asarray(per_channel, "float32")
    other_bits = ops.sum(per_layer_alive * per_channel)
    out["bits"] += weight_bits + other_bits
    out["weight_bits"] += weight_bits
    out["alive_channels"] += ops.sum(per_layer_alive)
    out["weights_alive"] += ops.sum(alive_fan_in)
  if norm_alive:
    out["bits"] += NORM_BITS * ops.sum(ops.concatenate(norm_alive, 0))
  if not penalty_bits:
    raise ValueError("The model has no self-compressing layers.")
  return out, functools.reduce(ops.add, penalty_bits)


def minimum_bits(model):
  """The smallest size training can reach: every compressed layer down to
  its `min_channels` (the first ones) at 1 bit per weight, reading its
  `min_inputs` (at least one) where it has input gates."""
  from selfcompress.compressors.base import ChannelState
  from selfcompress.compressors.inputs import InputState, input_state
  states, inputs = {}, {}
  for layer in surgery.layers(model):
    if isinstance(layer, CompressedLayer):
      c = layer.compressor
      keep = np.zeros(c.num_channels, "float32")
      keep[:max(c.min_channels, 0)] = 1.0
      states[layer] = ChannelState(keep, keep, keep)
      gates = input_state(c)
      if gates is not None:
        read = np.zeros(int(gates.alive.shape[0]), "float32")
        read[:max(c.min_inputs, 1)] = 1.0
        inputs[layer] = InputState(read, read)
  return float(totals(account(model, states, inputs))["bits"])


def _coded_weight_bits(layer, t):
  """The exact weight bits of `layer`'s row (`t`: its `account()` terms)
  if codes in it are entropy-coded (`storage="entropy"`), else None.

  Such a layer's weights take the bytes `selfcompress.entropy` writes for
  its stream: the codes of its alive channels on its alive inputs, in the
  kernel's order (`selfcompress.codes.stored`), table included; its alive
  channels too deep for codes (over `packing.MAX_BITS`) take their fixed
  width, as in `account()`. A container (attention) sums its projections,
  each with all its inputs, as `account()` counts them.
  """
  if "fan_in" in t:
    layers = [(layer, np.asarray(t["in_alive"]), np.asarray(t["alive"]),
               np.asarray(t["fan_in"]))]
  else:
    layers = [(l, None, None, None) for l in _compressed_inside(layer)]
  if not any(codes_lib.storage(l) == "entropy" for l, *_ in layers):
    return None
  bits = 0
  for l, in_alive, out_alive, fan_in in layers:
    state = l.compressor.state()
    storage_bits = np.asarray(state.storage_bits).reshape(-1)
    if out_alive is None:
      out_alive = np.asarray(state.alive)
      fan_in = np.full(out_alive.size, l.kind.full_fan_in(l))
    alive = out_alive.reshape(-1) > 0
    if codes_lib.storage(l) != "entropy":
      bits += int(np.sum(storage_bits[alive] * fan_in[alive]))
      continue
    layer_codes = codes_lib.of(l)
    mask = None if in_alive is None else codes_lib.input_mask(l, in_alive)
    stream, _ = codes_lib.stored(layer_codes, mask, alive)
    deep = alive & ~layer_codes.is_code
    bits += entropy.coded_bits(stream) + int(np.sum(
        storage_bits[deep] * fan_in[deep]))
  return bits


def size(model):
  """Exact size of `model`: a `SizeReport` with one row per layer."""
  rows = []
  for layer, t in account(model).items():
    alive = np.asarray(t["alive"])
    channels_alive = int(alive.sum())
    weight_bits = float(t["weight_bits"])
    coded = _coded_weight_bits(layer, t)
    if coded is not None:  # storage="entropy": what the coder writes
      weight_bits = float(coded)
    if "fan_in" in t:
      in_alive = np.asarray(t["in_alive"])
      inputs_alive, inputs_total = int(in_alive.sum()), int(in_alive.size)
      weights_alive = int(round(float(t["weights_alive"])))
      weights_total = int(t["weights_total"])
    else:
      inputs_alive = inputs_total = 0
      weights_alive = int(round(float(t.get("weights_alive", 0))))
      weights_total = int(t.get("weights_total", 0))
    if "penalty_bits" in t:
      mean_bits = weight_bits / max(weights_alive, 1)
    else:
      mean_bits = float(FLOAT_BITS) if weights_total else 0.0
    rows.append(LayerSize(
        name=layer.name, kind=t["kind"], channels_alive=channels_alive,
        channels_total=t["channels_total"], inputs_alive=inputs_alive,
        inputs_total=inputs_total, weights_alive=weights_alive,
        weights_total=weights_total, mean_bits=mean_bits,
        weight_bits=int(round(weight_bits)),
        other_bits=int(round(float(t["other_bits"]))),
        float_bits=int(t["float_bits"])))
  reference = getattr(model, "size_reference", None)
  return SizeReport(tuple(rows),
                    reference["float_bits"] if reference else None)


def summary(model, print_fn=print):
  """Prints the size report of `model` as a table (like larq's summary).

  `model` is a Keras model, a `SizeReport`, or the path of a `.keras` file
  (loaded with `selfcompress.load_model`). Returns the `SizeReport`.
  """
  if isinstance(model, (str, bytes, os.PathLike)):
    from selfcompress import saving
    path = os.fsdecode(model)
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"summary() received the path {path!r}, which is not a file. Pass "
          "a Keras model, a SizeReport, or the path of a .keras file.")
    model = saving.load_model(path, compile=False)
  if not isinstance(model, (SizeReport, keras.Model)):
    raise TypeError(
        "summary() takes a Keras model, a SizeReport (from size()) or the "
        f"path of a .keras file. Received: {model!r} of type "
        f"{type(model).__name__}.")
  report = model if isinstance(model, SizeReport) else size(model)
  header = ("Layer", "Kind", "Channels", "Inputs", "Weights", "Bits/w",
            "Size (B)", "Float (B)")
  rows = [(l.name, l.kind, f"{l.channels_alive}/{l.channels_total}",
           f"{l.inputs_alive}/{l.inputs_total}" if l.inputs_total else "-",
           f"{l.weights_alive}/{l.weights_total}" if l.weights_total else "-",
           f"{l.mean_bits:.2f}" if l.weights_total else "-",
           f"{l.bytes:,.1f}", f"{l.float_bits / 8:,.0f}")
          for l in report.layers]
  widths = [max(len(str(r[i])) for r in rows + [header])
            for i in range(len(header))]
  line = "+".join("-" * (w + 2) for w in widths)
  fmt = lambda r: " | ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(r, widths)))
  lines = [fmt(header), line] + [fmt(r) for r in rows] + [line]
  lines.append(
      f"Total: {report.kb:.3f} KB ({report.bits:,} bits) vs float32 "
      f"{report.float_kb:.3f} KB: {report.compression_ratio:.1f}x smaller; "
      f"{report.weights_alive:,}/{report.weights_total:,} weights alive at "
      f"{report.bits_per_weight:.2f} bits each (1 KB = 1000 bytes).")
  print_fn("\n".join(lines))
  return report

"""A compressed layer's integer codes: the one place that computes them.

A compressor that stores codes (`stores_codes`) computes its layer with
`kernel = codes * scale` on each alive channel: `codes` are integers of the
channel's bit depth and `scale` its step `2^e` (any gate folded in). Every
export (the SavedModel's packed or entropy-coded stream, LiteRT's integer
tensors, Keras' quantized layers) and the size accounting of an entropy-
coded layer (`selfcompress.accounting.size`) take them from `of(layer)`.

`stored(layer_codes, input_mask(layer, in_alive), out_alive)` gives the
codes that an entropy-coded layer stores, in its canonical order: those of
its alive channels on its alive inputs (what the accounting counts as the
layer's alive weights), in the kernel's element order. Shedding removes
whole rows and columns of the kernel and keeps the order of the rest, so a
model and its shed copy give the same codes in the same order.
"""

import dataclasses

import numpy as np

from selfcompress import kinds, packing

@dataclasses.dataclass(frozen=True)
class LayerCodes:
  """A compressed layer's kernel as integer codes and per-channel steps.

  Channels are the compressor's (row-major over `param_shape`).
  """
  kernel: np.ndarray       # float32: the effective (quantized) kernel
  codes: np.ndarray        # int64, the kernel's shape: 0 on dead channels
  scale: np.ndarray        # float32 per channel: the step 2^e, gate folded
  bits: np.ndarray         # int64 per channel: storage bits, 0 when dead
  alive: np.ndarray        # bool per channel
  param_shape: tuple       # a per-channel vector's shape against the kernel

  @property
  def is_code(self):
    """Channels stored as codes: alive and at most `packing.MAX_BITS` deep
    (deeper ones are stored as float32)."""
    return self.alive & (self.bits <= packing.MAX_BITS)

  @property
  def channel(self):
    """Each kernel element's channel (the kernel's shape)."""
    return np.broadcast_to(np.arange(self.alive.size).reshape(
        self.param_shape), self.codes.shape)

  def rows(self):
    """The codes as `(channels, weights per channel)`, each channel's in the
    kernel's element order."""
    axes = [i for i, d in enumerate(self.param_shape) if d != 1]
    rest = [i for i in range(self.codes.ndim) if i not in axes]
    return np.transpose(self.codes, axes + rest).reshape(self.alive.size, -1)

  def step(self):
    """The step `2^e` of each kernel element's channel, 1 on dead ones, so
    that `codes * step()` is the quantized kernel."""
    scale = np.where(self.alive, self.scale, 1.0).reshape(self.param_shape)
    return np.broadcast_to(scale, self.codes.shape)

  def max_bits(self):
    """The most bits an alive channel takes (0 if none is alive)."""
    bits = self.bits[self.alive]
    return int(bits.max()) if bits.size else 0


def of(layer, kernel=None):
  """The `LayerCodes` of the compressed `layer` (its compressor stores
  codes), whose effective kernel is `kernel` (by default the layer's own).
  """
  c = layer.compressor
  if kernel is None:
    kernel = layer.effective_weights()[0]
  kernel = np.asarray(kernel)
  state = c.state()
  alive = np.asarray(state.alive).reshape(-1) > 0
  bits = np.where(alive, np.asarray(state.storage_bits).reshape(-1),
                  0).astype(np.int64)
  scale = np.asarray(c.scale(), np.float32).reshape(-1)
  param_shape = tuple(layer.kind.param_shape(layer))
  live = alive.reshape(param_shape)
  # The scale includes any gate folded into it (0 where a gate is closed,
  # and such a channel is dead).
  step = np.where(live, scale.reshape(param_shape), 1.0)
  codes = np.where(live, np.rint(kernel / step), 0.0).astype(np.int64)
  return LayerCodes(kernel, codes, scale, bits, alive, param_shape)


def storage(layer):
  """How `layer`'s codes are stored: "fixed" (each at its channel's bit
  depth) or "entropy" (one entropy-coded stream, `selfcompress.entropy`);
  None for a layer without codes."""
  c = getattr(layer, "compressor", None)
  if c is None or not c.stores_codes:
    return None
  return getattr(c, "storage", "fixed")


def input_axis(layer):
  """`(axis, groups)` of `layer`'s input channels in its kernel
  (`kinds.Kind.input_axis`)."""
  return kinds.of(layer).input_axis(layer)


def input_mask(layer, in_alive):
  """Which kernel elements read an alive input channel (a bool array of
  the kernel's shape), given the 0/1 liveness of the layer's inputs as the
  channel graph has it (`accounting.account(model)[layer]["in_alive"]`)."""
  kind = kinds.of(layer)
  shape = tuple(kind.kernel(layer).shape)
  mask = np.asarray(kind.input_mask(layer, np.asarray(in_alive, np.float32)))
  return np.broadcast_to(mask > 0, shape)


def stored(layer_codes, in_mask=None, out_alive=None):
  """The codes an entropy-coded layer stores, flat, in the kernel's element
  order: those of its channels stored as codes (`is_code`) that are alive
  in `out_alive` (0/1 per channel; default all), on the elements of
  `in_mask` (from `input_mask`; default all).

  Returns:
    `(codes, mask)`: the codes (int64, 1-D), and the kernel elements they
    come from (bool, the kernel's shape).
  """
  keep = layer_codes.is_code
  if out_alive is not None:
    keep = keep & (np.asarray(out_alive).reshape(-1) > 0)
  mask = keep[layer_codes.channel]
  if in_mask is not None:
    mask = mask & in_mask
  return layer_codes.codes[mask], mask

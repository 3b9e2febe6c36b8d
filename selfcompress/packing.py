"""Packing integer weight codes at each channel's bit depth.

A kernel's codes are stored channel by channel in two's complement, `b_o`
bits each for output channel `o`. Channels are grouped by bit depth so that
unpacking is a handful of vectorised ops (no per-channel loop): in NumPy
(`unpack`), and in the exported SavedModel, where the serving layers decode
their kernels with Keras ops (`selfcompress.exporting._Packed.stored_kernel`).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Packed:
  """One kernel's codes. `groups` maps a bit depth to `(channels, data)`:
  the (sorted) output channels with that depth and their packed bytes,
  row-major over (channel, weight-within-channel)."""
  shape: tuple          # kernel shape, channels on the last axis
  groups: dict

  @property
  def nbytes(self):
    return sum(data.size for _, data in self.groups.values())


def pack(codes, bits):
  """Packs integer `codes` (kernel shape, channels last) at `bits[o]` bits
  for channel `o`. Channels with 0 bits must be all zero and take no bytes.

  Raises:
    ValueError: a code does not fit its channel's bit depth.
  """
  codes = np.asarray(codes)
  bits = np.asarray(bits, dtype=np.int64)
  per_channel = codes.reshape(-1, codes.shape[-1]).T  # (channels, weights)
  groups = {}
  for b in sorted(set(bits.tolist())):
    channels = np.flatnonzero(bits == b)
    values = per_channel[channels]
    if b == 0:
      if np.any(values):
        raise ValueError("A 0-bit (dead) channel has non-zero codes.")
      continue
    low, high = -(1 << (b - 1)), (1 << (b - 1)) - 1
    if values.min(initial=0) < low or values.max(initial=0) > high:
      raise ValueError(f"Codes of {b}-bit channels fall outside [{low}, {high}].")
    unsigned = (values.astype(np.int64) & ((1 << b) - 1)).reshape(-1)
    shifts = np.arange(b - 1, -1, -1)
    stream = ((unsigned[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    groups[b] = (channels, np.packbits(stream))
  return Packed(tuple(codes.shape), groups)


def unpack(packed):
  """The codes of `packed` as int32, in the kernel's shape."""
  channels_total = packed.shape[-1]
  per_channel = int(np.prod(packed.shape[:-1]))
  out = np.zeros((channels_total, per_channel), np.int32)
  for b, (channels, data) in packed.groups.items():
    n = len(channels) * per_channel
    stream = np.unpackbits(data)[:n * b].reshape(n, b).astype(np.int64)
    values = stream @ (1 << np.arange(b - 1, -1, -1))
    values = np.where(values >= 1 << (b - 1), values - (1 << b), values)
    out[channels] = values.reshape(len(channels), per_channel)
  return out.T.reshape(packed.shape)

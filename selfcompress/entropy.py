"""Entropy coding of a layer's integer codes: a static-model rANS coder.

A layer stored with `storage="entropy"` keeps its codes (those of its alive
channels on its alive inputs, in the kernel's element order; see
`selfcompress.codes`) in one stream of its own, with its own frequency
table. The coder is rANS (Duda, "Asymmetric numeral systems", 2013) in the
byte-wise form of Giesen's ryg_rans: a 32-bit state kept in [L, 256 L)
with L = 2^23, renormalised a byte at a time, frequencies quantised to a
power-of-two total M = 2^s (every code that occurs at least 1). It is exact
and deterministic: `decode(encode(codes), n)` gives `codes` back, and the
same codes always give the same bytes.

The stream of `n` codes (`n` is not stored: the reader knows it, as it
knows the layer's shape) is bytes, every field byte-aligned so that one
TensorFlow graph of a few gathers reads every stream's table at once:

  n = 0: no bytes at all.
  2 bytes     lo + 2^15, lo the smallest code (big-endian, as all fields)
  2 bytes     R - 1, where R = hi - lo + 1 is the alphabet's range
  1 byte      s - 1: the frequencies sum to M = 2^s, s from 1 to 16
  R entries   the frequencies of lo, ..., hi (0 where a code does not
              occur): a byte each if s <= 8, else two (a single distinct
              code: s = 1 and its frequency M = 2, which never
              renormalises; with two or more, each is below M)
  K * 4 bytes the decoder's initial state of each of K = ceil(n /
              LANE_SYMBOLS) interleaved lanes
  the renormalisation bytes, in the order the decoder reads them (none
  for a single distinct code)

Code `i` belongs to lane `i % K`, at step `i // K`. The lanes let NumPy and
TensorFlow decode K codes per step (a step of one lane is inherently
sequential): each step, every lane decodes its code, `slot = x mod M`,
`k` the code whose cumulative frequency range `[C_k, C_k + f_k)` holds
`slot`, `x <- f_k * (x >> s) + slot - C_k`; then lane by lane, in order,
each reads bytes while `x < L`: `x <- (x << 8) | byte` (at most two). At
the end every lane's state is L again and every byte has been read: a
corrupt or truncated stream fails these checks (`decode` raises).

`encode` chooses `s` (and so the table's precision) to minimise the whole
stream, table included; `ideal_bits` is that stream's length under the
quantised model (header and table, the lanes' states, and each code's
information `-log2(f_k / M)`), which `encode` matches to within about a
byte per lane. `decode_tf` decodes the streams of a whole model in one
TensorFlow loop (the SavedModel does so once, at load).
"""

import math

import numpy as np

#: The state's lower bound: a state lies in [L, 256 L), a 32-bit word.
L = 1 << 23
#: Largest code width: codes lie in [-2^15, 2^15 - 1].
MAX_CODE_BITS = 16
#: Largest frequency precision s (M = 2^s): at most two bytes per code.
MAX_SCALE_BITS = 16
#: Codes per lane: K = ceil(n / LANE_SYMBOLS) lanes. Each lane costs its
#: 4-byte state (about 0.008 bits per code); each step of the decoder runs
#: all lanes at once, so a stream decodes in at most this many steps.
LANE_SYMBOLS = 4096
#: Bytes of a lane's state.
STATE_BYTES = 4


class CorruptStreamError(ValueError):
  """The bytes are not a stream `encode` wrote for this many codes."""


def lanes(n):
  """The number of interleaved lanes of a stream of `n` codes."""
  return -(-int(n) // LANE_SYMBOLS)


# -- the model: alphabet and quantised frequencies ------------------------------


def quantize(counts, scale_bits):
  """Frequencies summing to `2^scale_bits` for the histogram `counts`:
  every code that occurs gets at least 1, the others 0; close to the
  optimum of `sum(counts * -log2(f / M))` (proportional, then the rounding
  error spent where it gains, or taken where it costs, the most).

  Raises:
    ValueError: more distinct codes occur than `2^scale_bits`.
  """
  counts = np.asarray(counts, np.int64)
  total_freq = 1 << int(scale_bits)
  occurs = counts > 0
  if occurs.sum() > total_freq:
    raise ValueError(f"{occurs.sum()} distinct codes do not fit "
                     f"{total_freq} frequency slots.")
  n = counts.sum()
  f = np.where(occurs, np.maximum(1, counts * total_freq // max(n, 1)), 0)
  short = total_freq - int(f.sum())
  while short:
    if short > 0:  # one more slot each where it saves the most bits
      gain = np.where(occurs, counts * np.log2((f + 1) / np.maximum(f, 1)),
                      -np.inf)
      k = min(short, int(occurs.sum()))
      f[np.argsort(-gain, kind="stable")[:k]] += 1
      short -= k
    else:  # one slot fewer each where it costs the least
      loss = np.full(f.size, np.inf)
      more = f > 1
      loss[more] = counts[more] * np.log2(f[more] / (f[more] - 1))
      k = min(-short, int((f > 1).sum()))
      f[np.argsort(loss, kind="stable")[:k]] -= 1
      short += k
  return f


class _Model:
  """A stream's alphabet and quantised frequencies, and what its header
  and its codes cost."""

  def __init__(self, counts, lo, scale_bits=None):
    counts = np.asarray(counts, np.int64)
    used = np.flatnonzero(counts)
    if not used.size:
      raise ValueError("An empty histogram has no model.")
    # The alphabet runs from the smallest code that occurs to the largest.
    self.counts = counts[used[0]:used[-1] + 1]
    self.lo = int(lo) + int(used[0])
    self.hi = self.lo + self.counts.size - 1
    if self.lo < -(1 << (MAX_CODE_BITS - 1)) or \
        self.hi > (1 << (MAX_CODE_BITS - 1)) - 1:
      raise ValueError(f"Codes must lie in [{-(1 << (MAX_CODE_BITS - 1))}, "
                       f"{(1 << (MAX_CODE_BITS - 1)) - 1}]; received "
                       f"[{self.lo}, {self.hi}].")
    self.n = int(self.counts.sum())
    if self.counts.size == 1:  # (its M = 2 slots never renormalise)
      scale_bits = 1
    if scale_bits is None:
      distinct = int((self.counts > 0).sum())
      first = max(1, math.ceil(math.log2(distinct)))
      scale_bits = min(range(first, MAX_SCALE_BITS + 1),
                       key=lambda s: _Model(counts, lo, s).bits)
    self.s = int(scale_bits)
    self.freqs = quantize(self.counts, self.s)

  @property
  def entry_bytes(self):
    """Bytes of a frequency in the table."""
    return 1 if self.s <= 8 else 2

  @property
  def header_bytes(self):
    """The header and the table."""
    return 5 + self.counts.size * self.entry_bytes

  @property
  def information_bits(self):
    """The codes' information under the quantised model."""
    used = self.counts > 0
    return float(np.sum(self.counts[used] * (
        self.s - np.log2(self.freqs[used]))))

  @property
  def bits(self):
    """The stream's ideal length (see `ideal_bits`)."""
    return (8 * self.header_bytes + 8 * STATE_BYTES * lanes(self.n)
            + self.information_bits)

  def header(self):
    fields = [self.lo + (1 << (MAX_CODE_BITS - 1)), self.counts.size - 1]
    head = np.array(fields, ">u2").tobytes()
    table = self.freqs.astype(">u2" if self.entry_bytes == 2 else "u1")
    return head + bytes([self.s - 1]) + table.tobytes()


def _as_codes(codes):
  codes = np.asarray(codes)
  if codes.dtype.kind not in "iub":
    if codes.size and not np.array_equal(codes, np.rint(codes)):
      raise ValueError("Entropy coding takes integer codes.")
  return codes.astype(np.int64).reshape(-1)


def ideal_bits(counts, lo=0):
  """The length in bits of the stream `encode` writes for codes with the
  histogram `counts` (`counts[i]` codes of value `lo + i`) under its
  quantised model: the header and table, 32 bits per lane for its state,
  and `sum_k counts_k * -log2(f_k / M)`. The encoder writes within about a
  byte per lane of it (a lane's final state holds between 0 and 8 bits of
  the codes' information)."""
  counts = np.asarray(counts, np.int64)
  if not counts.sum():
    return 0.0
  return _Model(counts, lo).bits


# -- NumPy encoder and decoder ---------------------------------------------------


def encode(codes):
  """The stream of the integer `codes` (any shape, read flat), as bytes."""
  codes = _as_codes(codes)
  n = codes.size
  if not n:
    return b""
  lo = int(codes.min())
  model = _Model(np.bincount(codes - lo), lo)
  header = model.header()
  k = codes - model.lo
  freq = model.freqs[k]
  start = (np.cumsum(model.freqs) - model.freqs)[k]
  s = model.s
  lanes_ = lanes(n)
  steps = -(-n // lanes_)
  last = n - (steps - 1) * lanes_  # lanes active at the last step
  pad = steps * lanes_ - n
  freq = np.concatenate([freq, np.ones(pad, np.int64)]).reshape(steps, lanes_)
  start = np.concatenate([start, np.zeros(pad, np.int64)]).reshape(
      steps, lanes_)
  top = ((L >> s) << 8) * freq  # a state this large writes a byte first
  before = _encode_lanes(freq, start, top, s, last)  # states, before bytes
  x = before[-1]
  # The decoder reads step by step, lane by lane, each lane's bytes high
  # byte first; a lane writes (and reads) 0 to 2 bytes a step.
  before = before[:-1]
  count = (before >= top).view(np.int8) + (before >= top << 8).view(np.int8)
  pairs = np.stack([(before >> 8) & 255, before & 255], axis=-1)
  valid = np.stack([count == 2, count >= 1], axis=-1)
  return (header + x.astype(">u4").tobytes()
          + pairs[valid].astype(np.uint8).tobytes())


def _encode_lanes(freq, start, top, s, last):
  """rANS-encodes the `(steps, lanes)` codes given by their frequencies and
  cumulative starts (the last step's first `last` lanes only), backwards.
  Returns each step's states before they write their bytes (0 where a lane
  has no code), then a row of the final states."""
  steps, lanes_ = freq.shape
  out = np.zeros((steps + 1, lanes_), np.int64)
  if lanes_ == 1:  # Python integers: faster than NumPy on one element
    x = L
    f_, c_, t_ = (a[:, 0].tolist() for a in (freq, start, top))
    column = [0] * steps
    for t in range(steps - 1, -1, -1):
      column[t] = x
      if x >= t_[t]:
        x >>= 16 if x >> 8 >= t_[t] else 8
      q, r = divmod(x, f_[t])
      x = (q << s) + r + c_[t]
    out[:steps, 0] = column
    out[steps, 0] = x
    return out
  x = np.full(lanes_, L, np.int64)
  top2 = top << 8
  shifts = np.array([0, 8, 16], np.int64)
  for t in range(steps - 1, -1, -1):
    m = last if t == steps - 1 else lanes_
    xs = x[:m]
    out[t, :m] = xs
    xs = xs >> shifts[(xs >= top[t, :m]).view(np.int8)
                      + (xs >= top2[t, :m]).view(np.int8)]
    q, r = np.divmod(xs, freq[t, :m])
    x[:m] = (q << s) + r + start[t, :m]
  out[steps] = x
  return out


def coded_bits(codes):
  """Exactly the bits `encode(codes)` writes: 8 per byte."""
  return 8 * len(encode(codes))


def _parse_header(data):
  """`(lo, R, s, freqs, header bytes)` of the stream `data` (uint8)."""
  if data.size < 4:
    raise CorruptStreamError(
        "The entropy-coded stream is truncated: it ends inside its header.")
  lo, r = data[:4].view(">u2").astype(np.int64)
  lo, r = int(lo) - (1 << (MAX_CODE_BITS - 1)), int(r) + 1
  if lo + r - 1 >= 1 << (MAX_CODE_BITS - 1):
    raise CorruptStreamError("The entropy-coded stream is corrupt: its "
                             "alphabet runs past the largest code.")
  if data.size < 5:
    raise CorruptStreamError(
        "The entropy-coded stream is truncated: it ends inside its header.")
  s = int(data[4]) + 1
  if s > MAX_SCALE_BITS:
    raise CorruptStreamError("The entropy-coded stream is corrupt: its "
                             f"frequencies' precision 2^{s} is too fine.")
  wide = 2 if s > 8 else 1
  end = 5 + r * wide
  if data.size < end:
    raise CorruptStreamError(
        "The entropy-coded stream is truncated: it ends inside its table.")
  freqs = data[5:end].view(">u2" if wide == 2 else "u1").astype(np.int64)
  if freqs.sum() != 1 << s or not freqs[0] or not freqs[-1]:
    raise CorruptStreamError(
        "The entropy-coded stream is corrupt: its frequencies do not sum "
        f"to 2^{s}.")
  return lo, r, s, freqs, end


def decode(data, n):
  """The `n` codes of the stream `data` (bytes or a uint8 array), int64.

  Raises:
    CorruptStreamError (a ValueError): `data` is not a stream that
      `encode` wrote for `n` codes (truncated, corrupt, or longer).
  """
  data = np.frombuffer(bytes(data), np.uint8) if not isinstance(
      data, np.ndarray) else np.asarray(data, np.uint8).reshape(-1)
  n = int(n)
  if not n:
    if data.size:
      raise CorruptStreamError(
          f"A stream of 0 codes is empty; received {data.size} bytes.")
    return np.zeros(0, np.int64)
  lo, r, s, freqs, at = _parse_header(data)
  lanes_ = lanes(n)
  steps = -(-n // lanes_)
  last = n - (steps - 1) * lanes_
  if data.size < at + STATE_BYTES * lanes_:
    raise CorruptStreamError(
        "The entropy-coded stream is truncated: it ends before its lanes' "
        "states.")
  x = data[at:at + STATE_BYTES * lanes_].view(">u4").astype(np.int64)
  if (x < L).any() or (x >= 256 * L).any():
    raise CorruptStreamError("The entropy-coded stream is corrupt: a lane's "
                             "state lies outside [2^23, 2^31).")
  pos = at + STATE_BYTES * lanes_
  buffer = np.concatenate([data, np.zeros(2, np.uint8)]).astype(np.int64)
  slot_code = np.repeat(np.arange(r), freqs)
  start = np.cumsum(freqs) - freqs
  mask = (1 << s) - 1
  out = np.zeros((steps, lanes_), np.int64)
  for t in range(steps):
    m = last if t == steps - 1 else lanes_
    xs = x[:m]
    slot = xs & mask
    k = slot_code[slot]
    out[t, :m] = k
    xs = freqs[k] * (xs >> s) + slot - start[k]
    nb = (xs < L).astype(np.int64) + (xs < (L >> 8))
    at_ = pos + np.cumsum(nb) - nb
    pos += int(nb.sum())
    if pos > data.size:
      raise CorruptStreamError(
          f"The entropy-coded stream is truncated or corrupt: {n} codes "
          f"need more than its {data.size} bytes.")
    b0, b1 = buffer[at_], buffer[at_ + 1]
    x[:m] = np.where(nb == 2, (xs << 16) | (b0 << 8) | b1,
                     np.where(nb == 1, (xs << 8) | b0, xs))
  if pos != data.size or (x != L).any():
    raise CorruptStreamError(
        "The entropy-coded stream is corrupt: " + (
            f"{data.size - pos} byte(s) left unread" if pos != data.size
            else "its lanes do not end in their initial state") + ".")
  return lo + out.reshape(-1)[:n]


# -- TensorFlow decoder ----------------------------------------------------------


def decode_tf(data, streams):
  """The codes of several streams in one TensorFlow graph: one loop of at
  most `LANE_SYMBOLS` steps decodes every lane of every stream at once.

  Args:
    data: a uint8 tensor (1-D) holding the streams.
    streams: `(start, n)` per stream, Python ints: where the stream starts
      in `data` (bytes) and how many codes it holds.

  Returns:
    An int32 tensor: every stream's codes, one stream after the other.
    Nothing is checked (`decode` does): the SavedModel decodes the streams
    that its export wrote.
  """
  import tensorflow as tf
  streams = [(int(a), int(n)) for a, n in streams if int(n)]
  if not streams:
    return tf.zeros([0], tf.int32)
  if tf.executing_eagerly():  # one graph, not an op at a time
    key = tuple(streams)
    if key not in _EAGER:
      _EAGER.clear()  # (the last one only: an export decodes once)
      _EAGER[key] = tf.function(lambda d: _decode_tf(d, streams),
                                autograph=False, reduce_retracing=True)
    return _EAGER[key](data)
  return _decode_tf(data, streams)


_EAGER = {}  # streams -> the tf.function decoding them


def _decode_tf(data, streams):
  """`decode_tf`'s graph, in few ops: the SavedModel stores each one."""
  import tensorflow as tf
  i32 = tf.int32
  axis = tf.constant(0)

  def gather(params, indices):
    return tf.gather(params, indices, axis=axis)

  def search(sorted_values, values):  # how many are <= each
    return tf.reshape(tf.raw_ops.UpperBound(
        sorted_inputs=tf.reshape(sorted_values, [1, -1]),
        values=tf.reshape(values, [1, -1]), out_type=i32), [-1])

  # The bytes, and `pair[i]`, bytes i and i + 1 as one integer.
  d = tf.pad(tf.cast(data, i32), [[0, 2]])
  pair = d[:-1] * 256 + d[1:]
  count = len(streams)
  starts = np.array([a for a, _ in streams], np.int32)
  sizes = np.array([n for _, n in streams], np.int64)
  lanes_ = np.array([lanes(n) for n in sizes], np.int32)
  # The headers, all streams at once, then every stream's table.
  lo, entries = tf.unstack(gather(pair, starts[:, None] + [0, 2]), axis=1)
  entries += 1
  s = gather(d, starts + 4) + 1
  entry_bytes = 1 + tf.cast(s > 8, i32)
  ends = tf.cumsum(entries)
  first_entry = ends - entries
  k = tf.range(ends[-1])
  of = search(ends, k)
  at = gather(starts + 5 - first_entry * entry_bytes, of) + k * gather(
      entry_bytes, of)
  freq = tf.where(gather(s > 8, of), gather(pair, at), gather(d, at))
  cum = tf.cumsum(freq, exclusive=True)
  # Slots numbered over all the streams: stream e's from `slot_base[e]`.
  slot_base = tf.cumsum(tf.bitwise.left_shift(1, s), exclusive=True)
  state_at = starts + 5 + entries * entry_bytes
  # The lanes, all streams' one after the other.
  lane_of = np.repeat(np.arange(count), lanes_).astype(np.int32)
  first_lane = (np.cumsum(lanes_) - lanes_).astype(np.int32)
  j = np.arange(lane_of.size, dtype=np.int32) - first_lane[lane_of]
  lane_steps = (-(-(sizes[lane_of] - j) // lanes_[lane_of])).astype(np.int32)
  lane_s = gather(s, lane_of)
  lane_mask = tf.bitwise.left_shift(1, lane_s) - 1
  lane_base = gather(slot_base, lane_of)
  lane_first = first_lane[lane_of]
  cum_row = tf.reshape(cum, [1, -1])
  pos = gather(state_at, lane_of) + STATE_BYTES * j
  x = gather(pair, pos) * 65536 + gather(pair, pos + 2)
  pointer = state_at + STATE_BYTES * lanes_
  end = tf.size(data)  # (a lane that reads nothing may point past it)

  def step(t, x, pointer, out):
    axis = tf.constant(0)  # (its own: a captured one hides shapes)

    def gather(params, indices):
      return tf.gather(params, indices, axis=axis)

    slot = tf.bitwise.bitwise_and(x, lane_mask) + lane_base
    entry = tf.reshape(tf.raw_ops.UpperBound(
        sorted_inputs=cum_row, values=tf.reshape(slot, [1, -1]),
        out_type=i32), [lane_of.size]) - 1
    x_new = (gather(freq, entry) * tf.bitwise.right_shift(x, lane_s) + slot
             - gather(cum, entry))
    active = t < lane_steps
    reads = (tf.cast(x_new < L, i32) + tf.cast(x_new < (L >> 8), i32)) * \
        tf.cast(active, i32)
    before = tf.cumsum(reads, exclusive=True)
    at = gather(pointer, lane_of) + before - gather(before, lane_first)
    # 0 to 2 bytes: `x << 8 reads | (bytes at, at + 1) >> (16 - 8 reads)`.
    shift = 8 * reads
    x_new = tf.bitwise.bitwise_or(
        tf.bitwise.left_shift(x_new, shift),
        tf.bitwise.right_shift(gather(pair, tf.minimum(at, end)),
                               16 - shift))
    pointer = tf.reshape(pointer + tf.math.unsorted_segment_sum(
        reads, lane_of, count), [count])
    return t + 1, tf.where(active, x_new, x), pointer, out.write(t, entry)

  rounds = int((-(-sizes // lanes_)).max())
  out = tf.TensorArray(i32, size=rounds, element_shape=[lane_of.size])
  _, _, _, out = tf.while_loop(
      lambda t, *_: t < rounds, step, (tf.constant(0), x, pointer, out),
      maximum_iterations=rounds)
  decoded = tf.reshape(out.stack(), [-1])
  # Code i of stream e: step i // K_e of lane first_lane[e] + i % K_e; its
  # value lo_e plus its entry's place in the stream's table.
  offset = lo - (1 << (MAX_CODE_BITS - 1)) - first_entry
  if count == 1:
    return decoded[:int(sizes[0])] + offset
  ends = np.cumsum(sizes).astype(np.int32)
  index = tf.range(int(ends[-1]))
  stream = search(ends, index)
  i = index - gather(ends - sizes.astype(np.int32), stream)
  width = gather(lanes_, stream)
  flat = (i // width) * lane_of.size + gather(first_lane, stream) + i % width
  return gather(decoded, flat) + gather(offset, stream)

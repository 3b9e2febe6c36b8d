"""Learnable per-channel L0 gates (hard concrete, Louizos et al., 2018).

Each output channel's weights are multiplied by a gate `z` in [0, 1]. In training `z`
is a hard-concrete sample

  `z = clip(sigmoid((log u - log(1 - u) + log_alpha) / beta)
            * (zeta - gamma) + gamma, 0, 1)`,  `u ~ U(0, 1)`,

which is exactly 0 or 1 with non-zero probability yet differentiable in
`log_alpha`; at inference it is the deterministic
`clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)`. A channel whose
test-time gate is exactly 0 is dead, like a zero-bit channel. The size
penalty is the expected L0 norm, `P(z != 0) = sigmoid(log_alpha - beta *
log(-gamma / zeta))` per channel, times the bits each weight would take.

`HardConcreteGate` gates float32 channels; `GatedBitDepth` gates channels
quantized by `BitDepth`, so a channel can be switched off or lose bits.
"""

import math

import keras
from keras import ops

from selfcompress.compressors import base
from selfcompress.compressors.bits import BitDepth

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1
FLOAT_BITS = 32.0
# Keeps log(u) and log(1 - u) finite.
_EPS = 1e-6


def sample(log_alpha, u, beta=BETA, gamma=GAMMA, zeta=ZETA):
  """The hard-concrete gate for uniform noise `u` (same shape)."""
  logits = (ops.log(u) - ops.log(1.0 - u) + log_alpha) / beta
  return ops.clip(ops.sigmoid(logits) * (zeta - gamma) + gamma, 0.0, 1.0)


def test_gate(log_alpha, gamma=GAMMA, zeta=ZETA):
  """The deterministic gate used at inference."""
  return ops.clip(ops.sigmoid(log_alpha) * (zeta - gamma) + gamma, 0.0, 1.0)


def prob_nonzero(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
  """`P(z != 0)`: the expected L0 norm of one gate."""
  return ops.sigmoid(log_alpha - beta * math.log(-gamma / zeta))


def gates(log_alpha, training, held, seed_generator):
  """A vector of gates: hard-concrete samples in training (one per entry,
  from `seed_generator`), the deterministic gate else; 1 where `held`."""
  if training:
    u = keras.random.uniform((int(log_alpha.shape[0]),), _EPS, 1.0 - _EPS,
                             seed=seed_generator)
    z = sample(log_alpha, u)
  else:
    z = test_gate(log_alpha)
  return ops.where(ops.cast(held, "bool"), 1.0, z)


#: Below this `log_alpha` the test-time gate is 0: `sigmoid(a) <= -gamma /
#: (zeta - gamma)`.
DEAD_LOG_ALPHA = math.log(-GAMMA / ZETA)


class _Gates:
  """The gate variables and their sampling, shared by both compressors.

  The host class provides `num_channels`, `min_channels`, `broadcast` and
  `_held_now()` (which passes `_held()` the channels alive but for the gate).
  """

  def _init_gates(self, log_alpha_init, gate_lr_multiplier, seed):
    if not gate_lr_multiplier > 0:
      raise ValueError("`gate_lr_multiplier` must be > 0. "
                       f"Received: gate_lr_multiplier={gate_lr_multiplier}")
    if not math.isfinite(log_alpha_init):
      raise ValueError("`log_alpha_init` must be finite. "
                       f"Received: log_alpha_init={log_alpha_init}")
    self.log_alpha_init = float(log_alpha_init)
    self.gate_lr_multiplier = float(gate_lr_multiplier)
    self.seed = None if seed is None else int(seed)

  def _build_gates(self, layer):
    self.log_alpha_param = base.add_param(
        layer, "log_alpha", (self.num_channels,),
        self.log_alpha_init / self.gate_lr_multiplier, compressor=self)
    # Set on the layer, so Keras tracks its state with the layer's variables.
    layer.gate_seed_generator = keras.random.SeedGenerator(
        self.seed, name="gate_seed")
    self._seed_generator = layer.gate_seed_generator

  def _reset_gates(self):
    self.log_alpha_param.assign(ops.full(
        (self.num_channels,), self.log_alpha_init / self.gate_lr_multiplier))

  def assign_log_alpha(self, log_alpha):
    """Sets every channel's `log_alpha` (a scalar or per-channel vector)."""
    self.log_alpha_param.assign(ops.broadcast_to(
        ops.cast(log_alpha, "float32"), (self.num_channels,))
                                / self.gate_lr_multiplier)

  def log_alpha(self):
    return self.log_alpha_param * self.gate_lr_multiplier

  def _held(self, otherwise_alive):
    """Channels that `min_channels` forces open: the strongest gates that
    would otherwise be dead. A layer that must keep every channel (the
    logits) is not gated at all: there is nothing to remove, only noise."""
    la = self.log_alpha()
    if self.min_channels >= self.num_channels:
      return ops.ones_like(la)
    if self.min_channels == 0:
      return ops.zeros_like(la)
    alive = otherwise_alive * ops.cast(
        ops.greater(test_gate(la), 0.0), la.dtype)
    return base.keep_top_channels(la, self.min_channels) * (1.0 - alive)

  def ranking(self):
    return self.log_alpha()  # `min_channels` holds the strongest gates

  def pinned_count(self):
    # One more than `min_channels`: a layer with no more channels than
    # `min_channels` is not gated (see `_held`), so a smaller layer left
    # with only those would lose its gates.
    return self.min_channels + 1

  def _gates(self, training, held):
    """Per-channel gate vector: sampled in training, deterministic else;
    1 (constant) on held channels."""
    return gates(self.log_alpha(), training, held, self._seed_generator)

  def _gate(self, kernel, bias, training):
    """The kernel times the gates; the bias zeroed on gated-off channels."""
    held = self._held_now()
    kernel = ops.multiply(kernel, self.broadcast(self._gates(training, held)))
    if bias is None:
      return kernel, None
    return kernel, ops.multiply(bias, self._open(held))

  def _open(self, held):
    """1 where the test-time gate is open (the channel is not gated off)."""
    return ops.cast(ops.greater(self._gates(False, held), 0.0), "float32")

  def _prob_nonzero(self, held):
    return ops.where(ops.cast(held, "bool"), 1.0, prob_nonzero(self.log_alpha()))

  def _gate_config(self):
    return {"log_alpha_init": self.log_alpha_init,
            "gate_lr_multiplier": self.gate_lr_multiplier, "seed": self.seed}


class HardConcreteGate(_Gates, base.ChannelCompressor):
  """An L0 gate on each output channel of float32 weights.

  `kernel_o <- z_o * kernel_o` (see the module docstring for `z`); the bias
  is kept while the channel is alive and zeroed with it, as a dead channel's
  must be (and as in Louizos et al.'s layers, the gate scales the weights
  only). One gate sample per channel per training step. Stored,
  an alive channel's weights are float32 with the test-time gate folded in;
  the penalty is `32 * P(z_o != 0)` bits per weight.

  Args:
    log_alpha_init: initial `log_alpha` of every gate. The default 3.0 gives
      a test-time gate of exactly 1 (the first forward pass equals the
      uncompressed layer's) and `P(z != 0)` of 0.99.
    gate_lr_multiplier: `log_alpha` is stored divided by this factor, so its
      Adam learning rate is this many times the optimizer's.
    seed: seed of the gate noise (None: from Keras' global seed).
    min_channels: channels kept alive whatever the penalty says; they are
      held fully open (`z = 1`). With `min_channels >= channels` (the logits
      under `compress(protect_outputs=True)`) the layer is not gated.

  References:
    Louizos, Welling & Kingma, "Learning Sparse Neural Networks through L0
    Regularization", ICLR 2018.
  """

  #: The gate is folded into the stored float32 weights and bias.
  overhead_bits_per_channel = 0
  stores_codes = False

  def __init__(self, log_alpha_init=3.0, gate_lr_multiplier=10.0, seed=None,
               min_channels=0):
    super().__init__(min_channels=min_channels)
    self._init_gates(log_alpha_init, gate_lr_multiplier, seed)

  def build(self, layer, kernel, param_shape):
    super().build(layer, kernel, param_shape)
    self._build_gates(layer)

  def initialize(self, kernel):
    self._reset_gates()

  def _held_now(self):
    return self._held(ops.ones((self.num_channels,)))

  def held_channels(self):
    if self.min_channels >= self.num_channels:
      return super().held_channels()  # ungated, not rescued
    return self._held_now()

  def apply(self, kernel, bias, training=False):
    return self._gate(kernel, bias, training)

  def state(self):
    held = self._held_now()
    alive = self._open(held)
    return base.ChannelState(
        alive=alive, storage_bits=FLOAT_BITS * alive,
        penalty_bits=FLOAT_BITS * self._prob_nonzero(held))

  def get_config(self):
    return {**self._gate_config(), **super().get_config()}


class GatedBitDepth(_Gates, BitDepth):
  """`BitDepth` quantization with an L0 gate on each output channel.

  `kernel_o <- z_o * q(kernel_o, b_o, e_o)`; the bias is kept while the
  channel is alive and zeroed with it. A channel is dead when its gate is closed or its bit depth is <= 0; stored,
  an alive channel takes `ceil(b_o)` bits per weight (the test-time gate is
  folded into its scale), and the penalty is `P(z_o != 0) * max(b_o, 0)`.

  Args:
    bits_init, lr_multiplier, held_bits, storage: as for `BitDepth`.
    log_alpha_init, gate_lr_multiplier, seed: as for `HardConcreteGate`.
    min_channels: channels kept alive whatever the penalty says: the
      strongest gates among channels that would die are held open with at
      least `held_bits` bits.
  """

  def __init__(self, bits_init=8.0, lr_multiplier=100.0, held_bits=2.0,
               log_alpha_init=3.0, gate_lr_multiplier=10.0, seed=None,
               min_channels=0, storage="fixed"):
    super().__init__(bits_init=bits_init, lr_multiplier=lr_multiplier,
                     held_bits=held_bits, min_channels=min_channels,
                     storage=storage)
    self._init_gates(log_alpha_init, gate_lr_multiplier, seed)

  def build(self, layer, kernel, param_shape):
    # Before BitDepth.build, which calls initialize().
    base.ChannelCompressor.build(self, layer, kernel, param_shape)
    self._build_gates(layer)
    super().build(layer, kernel, param_shape)

  def initialize(self, kernel):
    super().initialize(kernel)
    self._reset_gates()

  def _held_now(self):
    return self._held(ops.cast(ops.greater(self.raw_bits(), 0.0), "float32"))

  def bits(self):
    b = self.raw_bits()
    if self.min_channels == 0:
      return b
    lift = ops.logical_and(ops.cast(self._held_now(), "bool"),
                           ops.less(b, self.held_bits))
    return ops.where(lift, self.held_bits, b)

  def held_channels(self):
    if self.min_channels >= self.num_channels:
      # Ungated; as in BitDepth, only channels whose bits would be dead.
      return self._held_now() * ops.cast(
          ops.less_equal(self.raw_bits(), 0.0), "float32")
    return self._held_now()

  def scale(self):
    """Per-channel step of the stored codes: `2^e` times the test-time gate
    (0 on channels the gate closed)."""
    return super().scale() * self._gates(False, self._held_now())

  def apply(self, kernel, bias, training=False):
    kernel, bias = super().apply(kernel, bias, training)
    return self._gate(kernel, bias, training)

  def state(self):
    held = self._held_now()
    bits = ops.relu(self.bits())
    alive = self._open(held) * ops.cast(ops.greater(bits, 0.0), "float32")
    return base.ChannelState(
        alive=alive, storage_bits=ops.ceil(bits) * alive,
        penalty_bits=self._prob_nonzero(held) * bits)

  def get_config(self):
    return {**BitDepth.get_config(self), **self._gate_config()}
